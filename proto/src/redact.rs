//! Hand-written `Debug` impls for the messages the generator is told not to derive `Debug` for
//! (see `SKIP_DEBUG` in `tests/contract/drift.rs`): secrets are redacted and bulky payloads are
//! shown by size, so logging a message with `?msg` never leaks a secret or floods the log.

use std::fmt;

use crate::v1::{
    ApplyRequest, Chunk, CreateTokenResponse, DatabaseInit, EnrollRequest, EnvVar, KeystoreSpec,
    LogChunk, LogData, NodeFile, NodeSpec, PlanRequest, ProvidedStores, ServiceFile, StoreType,
    UploadChunk,
};

/// A secret value: shows whether it is set, never its content.
struct Secret<'a>(&'a str);

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// A bulky (non-secret) payload: shows its size only.
struct Size(usize);

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// A map of secrets: shows the keys (references such as "env:NAME"), never the values.
struct SecretMap<'a>(&'a std::collections::HashMap<String, String>);

impl fmt::Debug for SecretMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort();
        f.debug_map()
            .entries(keys.into_iter().map(|k| (k, Secret("<set>"))))
            .finish()
    }
}

/// A secret byte payload: shows whether it is set and its size, never its content.
struct SecretBytes<'a>(&'a [u8]);

impl fmt::Debug for SecretBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            write!(f, "<redacted {} bytes>", self.0.len())
        }
    }
}

/// A map of secret files: shows the keys (paths as written in the plan), never the bytes.
struct SecretFiles<'a>(&'a std::collections::HashMap<String, Vec<u8>>);

impl fmt::Debug for SecretFiles<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<(&String, &Vec<u8>)> = self.0.iter().collect();
        entries.sort();
        f.debug_map()
            .entries(entries.into_iter().map(|(k, v)| (k, SecretBytes(v))))
            .finish()
    }
}

/// The store type by name when it is a known value, else the raw number.
struct StoreTypeName(i32);

impl fmt::Debug for StoreTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match StoreType::try_from(self.0) {
            Ok(t) => fmt::Debug::fmt(&t, f),
            Err(_) => fmt::Debug::fmt(&self.0, f),
        }
    }
}

impl fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("product", &self.product)
            .field("pack", &self.pack)
            .field("install_dir", &self.install_dir)
            .field("java_home", &self.java_home)
            .field("run_as_user", &self.run_as_user)
            .field("deployment_toml", &Secret(&self.deployment_toml))
            .field("deployment_toml_path", &self.deployment_toml_path)
            .field("optimizer", &self.optimizer)
            .field("start", &self.start)
            .field("stop", &self.stop)
            .field("env", &self.env)
            .field("readiness", &self.readiness)
            .field("keystores", &self.keystores)
            .field("config_digest", &self.config_digest)
            .field("desired", &self.desired)
            .field("java_min", &self.java_min)
            .field("java_max", &self.java_max)
            .field("process", &self.process)
            .field("memory_bytes", &self.memory_bytes)
            .field("files", &self.files)
            .field("libs", &self.libs)
            .field("databases", &self.databases)
            .field("log_dir", &self.log_dir)
            .finish()
    }
}

impl fmt::Debug for DatabaseInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseInit")
            .field("engine", &self.engine)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &Secret(&self.password))
            .field("scripts", &self.scripts)
            .finish()
    }
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("EnvVar");
        s.field("name", &self.name);
        if self.secret {
            s.field("value", &Secret(&self.value));
        } else {
            s.field("value", &self.value);
        }
        s.field("secret", &self.secret).finish()
    }
}

impl fmt::Debug for NodeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secret or not, a file's content is bulky: its size only.
        f.debug_struct("NodeFile")
            .field("path", &self.path)
            .field("content", &Size(self.content.len()))
            .field("secret", &self.secret)
            .field("before_each_start", &self.before_each_start)
            .finish()
    }
}

impl fmt::Debug for ServiceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A private key must never reach a log; other content is bulky: its size only.
        f.debug_struct("ServiceFile")
            .field("path", &self.path)
            .field("content", &Size(self.content.len()))
            .field("mode", &format_args!("{:o}", self.mode))
            .field("secret", &self.secret)
            .finish()
    }
}

impl fmt::Debug for KeystoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoreSpec")
            .field("store_type", &StoreTypeName(self.store_type))
            .field("keystore_file", &self.keystore_file)
            .field("alias", &self.alias)
            .field("password", &Secret(&self.password))
            .field("node_key_pem", &Secret(&self.node_key_pem))
            .field("node_chain_pem", &Size(self.node_chain_pem.len()))
            .field("primary_keystore_file", &self.primary_keystore_file)
            .field("primary_alias", &self.primary_alias)
            .field("primary_key_pem", &Secret(&self.primary_key_pem))
            .field("primary_chain_pem", &Size(self.primary_chain_pem.len()))
            .field("truststore_file", &self.truststore_file)
            .field("truststore_password", &Secret(&self.truststore_password))
            .field(
                "trusted",
                &self.trusted.iter().map(|t| &t.alias).collect::<Vec<_>>(),
            )
            .field("provided", &self.provided)
            .finish()
    }
}

impl fmt::Debug for ProvidedStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidedStores")
            .field("keystore", &SecretBytes(&self.keystore))
            .field("keystore_sha256", &self.keystore_sha256)
            .field("truststore", &SecretBytes(&self.truststore))
            .field("truststore_sha256", &self.truststore_sha256)
            .finish()
    }
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &Secret(&self.token))
            .field("machine", &self.machine)
            .field("csr_der", &Size(self.csr_der.len()))
            .finish()
    }
}

impl fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &Secret(&self.token))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl fmt::Debug for ApplyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The plan may hold literal secrets (warned about, but allowed): show its size only.
        f.debug_struct("ApplyRequest")
            .field("plan_toml", &Size(self.plan_toml.len()))
            .field("plan_path", &self.plan_path)
            .field("expected_cluster_revision", &self.expected_cluster_revision)
            .field("author", &self.author)
            .field("resolved_secrets", &SecretMap(&self.resolved_secrets))
            .field("strict", &self.strict)
            .field("provided_files", &SecretFiles(&self.provided_files))
            .finish()
    }
}

impl fmt::Debug for PlanRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanRequest")
            .field("plan_toml", &Size(self.plan_toml.len()))
            .field("plan_path", &self.plan_path)
            .field("resolved_secrets", &SecretMap(&self.resolved_secrets))
            .field("strict", &self.strict)
            .field("provided_files", &SecretFiles(&self.provided_files))
            .finish()
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("offset", &self.offset)
            .field("data", &Size(self.data.len()))
            .finish()
    }
}

impl fmt::Debug for UploadChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadChunk")
            .field("header", &self.header)
            .field("data", &Size(self.data.len()))
            .finish()
    }
}

impl fmt::Debug for LogData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogData")
            .field("command_id", &self.command_id)
            .field("data", &Size(self.data.len()))
            .field("notice", &self.notice)
            .finish()
    }
}

impl fmt::Debug for LogChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogChunk")
            .field("data", &Size(self.data.len()))
            .field("notice", &self.notice)
            .finish()
    }
}
