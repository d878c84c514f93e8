//! Java keystores for WSO2, written natively: PKCS#12 through `p12-keystore`, JKS through
//! [`crate::jks`], and idempotent trusted-certificate import into an existing truststore of
//! either format (one read, one atomic write, whatever the number of certificates).
//!
//! No JVM runs on the way: a keytool run costs 0.3–1 s of CPU, and a node used to need about
//! six. [`Keytool`] remains for inspection (`keytool -list -v`, e.g. drift checks); it gets
//! passwords through `-storepass:env VAR` with `VAR` set on that one child process only, never
//! on argv (where `ps` would show them).

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use p12_keystore::{
    Certificate, KeyStore, KeyStoreEntry, Pkcs12ImportPolicy, PrivateKey, PrivateKeyChain,
};
use sha2::{Digest, Sha256};

use crate::error::{CertsError, Result};
use crate::files;
use crate::jks::JksStore;

/// Conventional alias of the cluster CA in every node's truststore.
pub const CLUSTER_CA_ALIAS: &str = "apimctl-cluster-ca";
/// The truststore alias WSO2 gateways use to verify JWTs when no `kid` matches: it must hold
/// the primary key's public certificate.
pub const GATEWAY_CERT_ALIAS: &str = "gateway_certificate_alias";
/// keytool's minimum password length.
const MIN_PASSWORD_LEN: usize = 6;
/// Env var carrying the store password for single-store commands.
pub const ENV_STORE_PASS: &str = "APIMCTL_KEYTOOL_STORE_PASS";
/// Forces keytool's messages to English, so "does not exist" can be recognised whatever the
/// node's locale.
const JAVA_LOCALE_ARGS: [&str; 2] = ["-J-Duser.language=en", "-J-Duser.country=US"];

/// On-disk keystore format, as the JDK understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreFormat {
    /// Sun's proprietary JKS (magic `FEEDFEED`).
    Jks,
    /// PKCS#12 (a DER SEQUENCE, first byte `0x30`).
    Pkcs12,
}

impl StoreFormat {
    /// Detects the format from the first bytes. WSO2 4.4+ ships PKCS#12 bytes in files named
    /// `.jks`, so the file name is never trusted.
    pub fn detect(bytes: &[u8]) -> Option<StoreFormat> {
        match bytes {
            [0xFE, 0xED, 0xFE, 0xED, ..] => Some(StoreFormat::Jks),
            [0x30, ..] => Some(StoreFormat::Pkcs12),
            _ => None,
        }
    }

    /// Reads `path` and detects its format.
    pub fn detect_file(path: &Path) -> Result<StoreFormat> {
        let bytes = fs::read(path).map_err(CertsError::io("reading keystore", path))?;
        Self::detect(&bytes).ok_or_else(|| CertsError::UnknownStoreFormat {
            path: path.to_path_buf(),
            magic: hex::encode(&bytes[..bytes.len().min(4)]),
        })
    }

    /// The `-storetype` value keytool expects.
    pub fn keytool_name(self) -> &'static str {
        match self {
            StoreFormat::Jks => "JKS",
            StoreFormat::Pkcs12 => "PKCS12",
        }
    }
}

#[derive(Clone)]
enum Entry {
    PrivateKey {
        alias: String,
        key_der: Vec<u8>,
        chain: Vec<Vec<u8>>,
    },
    Trusted {
        alias: String,
        cert_der: Vec<u8>,
    },
}

impl Entry {
    fn alias(&self) -> &str {
        match self {
            Entry::PrivateKey { alias, .. } | Entry::Trusted { alias, .. } => alias,
        }
    }
}

/// The contents of a keystore to write: private-key entries (key + chain) and trusted
/// certificate entries. One password protects the store and the keys, as WSO2 requires.
#[derive(Clone, Default)]
pub struct KeystoreBuilder {
    entries: Vec<Entry>,
}

impl fmt::Debug for KeystoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let aliases: Vec<&str> = self.entries.iter().map(Entry::alias).collect();
        f.debug_struct("KeystoreBuilder")
            .field("aliases", &aliases)
            .finish()
    }
}

impl KeystoreBuilder {
    /// An empty keystore.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a PrivateKeyEntry: PKCS#8 DER key and its chain, leaf first (leaf + CA).
    pub fn private_key(mut self, alias: &str, key_pkcs8_der: &[u8], chain_der: &[Vec<u8>]) -> Self {
        self.entries.push(Entry::PrivateKey {
            alias: alias.to_owned(),
            key_der: key_pkcs8_der.to_vec(),
            chain: chain_der.to_vec(),
        });
        self
    }

    /// Adds a trustedCertEntry.
    pub fn trusted_cert(mut self, alias: &str, cert_der: &[u8]) -> Self {
        self.entries.push(Entry::Trusted {
            alias: alias.to_owned(),
            cert_der: cert_der.to_vec(),
        });
        self
    }

    /// Refuses a short password, bad aliases and aliases used twice (ignoring case, as both
    /// JKS and the JDK's PKCS#12 compare them).
    fn check(&self, password: &str) -> Result<()> {
        check_password(password)?;
        let mut seen: Vec<String> = Vec::new();
        for entry in &self.entries {
            let alias = entry.alias();
            validate_alias(alias)?;
            let lower = alias.to_lowercase();
            if seen.contains(&lower) {
                return Err(CertsError::InvalidName {
                    kind: "keystore alias",
                    name: alias.to_owned(),
                    reason: "used twice (aliases are case-insensitive in JKS)",
                });
            }
            seen.push(lower);
            if let Entry::PrivateKey { chain, .. } = entry
                && chain.is_empty()
            {
                return Err(CertsError::InvalidName {
                    kind: "keystore alias",
                    name: alias.to_owned(),
                    reason: "a private key entry needs at least its own certificate",
                });
            }
        }
        Ok(())
    }

    /// Encodes the store as PKCS#12 (PBES2/AES-256, HMAC-SHA256 MAC) under `password`.
    /// Aliases must be non-empty and unique ignoring case (JKS lowercases them).
    pub fn to_pkcs12(&self, password: &str) -> Result<Vec<u8>> {
        self.check(password)?;
        let mut store = KeyStore::new();
        for entry in &self.entries {
            let value = match entry {
                Entry::PrivateKey { key_der, chain, .. } => {
                    let key =
                        PrivateKey::from_der(key_der).map_err(|source| CertsError::Pkcs12 {
                            context: "reading private key",
                            source,
                        })?;
                    let certs = chain
                        .iter()
                        .map(|c| Certificate::from_der(c))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|source| CertsError::Pkcs12 {
                            context: "reading certificate chain",
                            source,
                        })?;
                    // Local key id ties the key bag to its certificate bag (check() made sure
                    // the chain has a leaf).
                    let local_key_id = Sha256::digest(&chain[0])[..20].to_vec();
                    KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs))
                }
                Entry::Trusted { cert_der, .. } => KeyStoreEntry::Certificate(
                    Certificate::from_der(cert_der).map_err(|source| CertsError::Pkcs12 {
                        context: "reading trusted certificate",
                        source,
                    })?,
                ),
            };
            store.add_entry(entry.alias(), value);
        }
        store
            .writer(password)
            .write()
            .map_err(|source| CertsError::Pkcs12 {
                context: "encoding keystore",
                source,
            })
    }

    /// Encodes the store as JKS under `password` (which also protects the keys, as WSO2
    /// requires).
    pub fn to_jks(&self, password: &str) -> Result<Vec<u8>> {
        self.check(password)?;
        let mut store = JksStore::new();
        for entry in &self.entries {
            match entry {
                Entry::PrivateKey {
                    alias,
                    key_der,
                    chain,
                } => store.set_private_key(alias, key_der, chain, password)?,
                Entry::Trusted { alias, cert_der } => {
                    store.set_trusted_cert(alias, cert_der);
                }
            }
        }
        store.encode(password)
    }

    /// Encodes the store in `format`.
    pub fn to_bytes(&self, format: StoreFormat, password: &str) -> Result<Vec<u8>> {
        match format {
            StoreFormat::Pkcs12 => self.to_pkcs12(password),
            StoreFormat::Jks => self.to_jks(password),
        }
    }

    /// Writes the store to `path` in `format`, atomically (temp file in the same directory,
    /// synced, renamed), mode 0600. A failure leaves the old store untouched.
    pub fn write(&self, path: &Path, format: StoreFormat, password: &str) -> Result<()> {
        let bytes = self.to_bytes(format, password)?;
        files::write_private_file(path, &bytes, false)
    }
}

/// Imports each `(alias, DER certificate)` as a trusted certificate entry into the EXISTING
/// store at `store` (e.g. the shipped `client-truststore.jks`), keeping its format as detected
/// from its magic bytes (4.4+ ship PKCS#12 bytes under a `.jks` name) and every other entry.
/// One read, one write: the new store goes to a temp file in the same directory with the
/// original's mode and owner and is renamed over it, so a failure never leaves a half-edited
/// truststore. Idempotent: an alias (ignoring case) is replaced, never duplicated, and when
/// every alias already holds its certificate nothing is written. Returns whether the store
/// changed.
pub fn import_trusted_certs(store: &Path, password: &str, certs: &[(&str, &[u8])]) -> Result<bool> {
    for (alias, _) in certs {
        validate_alias(alias)?;
    }
    let in_store = |source: CertsError| CertsError::InStore {
        path: store.to_path_buf(),
        source: Box::new(source),
    };
    let bytes = fs::read(store).map_err(CertsError::io("reading keystore", store))?;
    let format = StoreFormat::detect(&bytes).ok_or_else(|| CertsError::UnknownStoreFormat {
        path: store.to_path_buf(),
        magic: hex::encode(&bytes[..bytes.len().min(4)]),
    })?;
    let updated = match format {
        StoreFormat::Jks => {
            let mut jks = JksStore::parse(&bytes, password).map_err(in_store)?;
            let mut changed = false;
            for (alias, der) in certs {
                changed |= jks.set_trusted_cert(alias, der);
            }
            if changed {
                Some(jks.encode(password).map_err(in_store)?)
            } else {
                None
            }
        }
        StoreFormat::Pkcs12 => {
            let p12 = |context| move |source| in_store(CertsError::Pkcs12 { context, source });
            let mut ks = KeyStore::from_pkcs12(&bytes, password, Pkcs12ImportPolicy::Strict)
                .map_err(p12("reading truststore"))?;
            let mut changed = false;
            for (alias, der) in certs {
                let same: Vec<String> = ks
                    .entries()
                    .filter(|(name, _)| name.to_lowercase() == alias.to_lowercase())
                    .map(|(name, _)| name.clone())
                    .collect();
                let holds_it = same.len() == 1
                    && matches!(ks.entry(&same[0]), Some(KeyStoreEntry::Certificate(c)) if c.as_der() == *der);
                if holds_it {
                    continue;
                }
                for name in &same {
                    ks.delete_entry(name);
                }
                let cert =
                    Certificate::from_der(der).map_err(p12("reading trusted certificate"))?;
                ks.add_entry(alias, KeyStoreEntry::Certificate(cert));
                changed = true;
            }
            if changed {
                Some(
                    ks.writer(password)
                        .write()
                        .map_err(p12("encoding truststore"))?,
                )
            } else {
                None
            }
        }
    };
    let Some(updated) = updated else {
        return Ok(false);
    };
    replace_keeping_owner(store, &updated)?;
    let aliases: Vec<&str> = certs.iter().map(|(a, _)| *a).collect();
    tracing::info!(store = %store.display(), ?aliases, format = format.keytool_name(), "imported trusted certificates");
    Ok(true)
}

/// Writes `bytes` over `path` atomically, keeping `path`'s mode and owner.
fn replace_keeping_owner(path: &Path, bytes: &[u8]) -> Result<()> {
    let meta = fs::metadata(path).map_err(CertsError::io("reading metadata of", path))?;
    let owner = Some((meta.uid(), meta.gid()));
    files::write_atomic(path, bytes, meta.mode() & 0o7777, owner, false)
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(CertsError::PasswordTooShort);
    }
    Ok(())
}

fn validate_alias(alias: &str) -> Result<()> {
    if alias.is_empty() || alias.len() > 255 || alias.chars().any(char::is_control) {
        return Err(CertsError::InvalidName {
            kind: "keystore alias",
            name: alias.to_owned(),
            reason: "must be 1–255 printable characters",
        });
    }
    Ok(())
}

/// One keytool invocation: program, argv (no secrets), and environment variables set on that
/// child only (the secrets). `Debug` shows the variable names, never their values.
#[derive(Clone, PartialEq, Eq)]
pub struct KeytoolCommand {
    /// The keytool binary.
    pub program: PathBuf,
    /// Arguments, as an array (never a shell string).
    pub args: Vec<OsString>,
    /// Environment for this child only: (name, secret value).
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for KeytoolCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KeytoolCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &names)
            .finish()
    }
}

impl KeytoolCommand {
    fn new(program: &Path) -> Self {
        KeytoolCommand {
            program: program.to_path_buf(),
            args: JAVA_LOCALE_ARGS.iter().map(OsString::from).collect(),
            env: Vec::new(),
        }
    }

    fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    fn secret_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Runs keytool commands; a seam so tests can record argv and production can run the real
/// process.
pub trait CommandRunner: Send + Sync {
    /// Runs the command to completion and returns its output.
    fn run(&self, cmd: &KeytoolCommand) -> std::io::Result<Output>;
}

/// Runs commands as real child processes (stdin closed, output captured).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, cmd: &KeytoolCommand) -> std::io::Result<Output> {
        Command::new(&cmd.program)
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
    }
}

/// The node's `keytool`, plus the runner that executes it.
#[derive(Clone)]
pub struct Keytool {
    path: PathBuf,
    runner: Arc<dyn CommandRunner>,
}

impl fmt::Debug for Keytool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keytool").field("path", &self.path).finish()
    }
}

impl Keytool {
    /// keytool at `path`, run as a real process.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_runner(path, Arc::new(SystemRunner))
    }

    /// `$JAVA_HOME/bin/keytool` of a node.
    pub fn from_java_home(java_home: &Path) -> Self {
        Self::new(java_home.join("bin").join("keytool"))
    }

    /// keytool at `path` with a custom runner (tests, or a sandboxing wrapper).
    pub fn with_runner(path: impl Into<PathBuf>, runner: Arc<dyn CommandRunner>) -> Self {
        Keytool {
            path: path.into(),
            runner,
        }
    }

    /// The keytool binary path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `-list -v` of a store (format auto-detected by keytool).
    pub fn list_command(&self, store: &Path, password: &str) -> KeytoolCommand {
        KeytoolCommand::new(&self.path)
            .arg("-list")
            .arg("-v")
            .arg("-keystore")
            .arg(store)
            .arg("-storepass:env")
            .arg(ENV_STORE_PASS)
            .secret_env(ENV_STORE_PASS, password)
    }

    /// Runs `keytool -list -v` and returns its text (for inspection and drift checks).
    pub fn list_verbose(&self, store: &Path, password: &str) -> Result<String> {
        let out = self.run(&self.list_command(store, password))?;
        if !out.status.success() {
            return Err(self.failed("-list", store, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, cmd: &KeytoolCommand) -> Result<Output> {
        self.runner
            .run(cmd)
            .map_err(|source| CertsError::KeytoolSpawn {
                path: self.path.clone(),
                source,
            })
    }

    fn failed(&self, action: &'static str, store: &Path, out: &Output) -> CertsError {
        CertsError::KeytoolFailed {
            action,
            store: store.to_path_buf(),
            status: out.status.to_string(),
            output: combined_output(out).trim().to_owned(),
        }
    }
}

fn combined_output(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}
