//! The product PKI as the controller keeps it: one cluster CA, one shared primary key, and a
//! certificate per node hostname, issued once and kept on disk so that re-applying a plan
//! re-uses them (a new certificate would change the node's keystore and restart it).
//!
//! A node certificate is re-issued only when its SANs change (a new LB hostname) or when it
//! has less than [`RENEW_BEFORE`] left.
//!
//! RSA key generation is the slow part (the pure-Rust `rsa` crate): keys come from the
//! controller's key pool ([`apim_certs::start_key_pool`]) when it has some ready, and
//! [`ProductPki::prepare_nodes`] issues every node certificate a rollout needs on all cores
//! before the specs are built (a large cluster drains the pool).

use std::path::{Path, PathBuf};
use std::time::Duration;

use apim_certs::{
    CLUSTER_CA_ALIAS, ClusterCa, DEFAULT_NODE_CERT_VALIDITY, DEFAULT_PRIMARY_KEY_VALIDITY,
    GATEWAY_CERT_ALIAS, NodeCert, PrimaryKey,
};
use apim_plan::provided::ProvidedStores;
use apim_proto::v1::{
    KeystoreSpec, ProvidedStores as WireProvided, StoreType as WireStoreType, TrustedCert,
};

use apim_plan::plan::{Issuer, StoreType};
use apim_plan::render::NodeRender;

/// Where WSO2 keeps its keystores, relative to the carbon home (`[keystore.*] file_name` is
/// resolved there).
pub const SECURITY_DIR: &str = apim_plan::catalogue::layout::SECURITY_DIR;

/// Node certificates with less than this left are re-issued on the next apply.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Errors of the product PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Issuing or loading a certificate failed.
    #[error("product PKI: {0}")]
    Certs(#[from] apim_certs::CertsError),
    /// Reading or writing the PKI folder failed.
    #[error("product PKI: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The cluster CA, the primary key and the node certificates, kept under one folder (0700).
pub struct ProductPki {
    dir: PathBuf,
    ca: ClusterCa,
    primary: PrimaryKey,
}

/// Encrypts plan secrets for the nodes' secure vault with the cluster's primary key.
pub struct VaultCipher(apim_certs::vault::VaultEncrypter);

impl apim_plan::render::VaultCipher for VaultCipher {
    fn encrypt(&self, alias: &str, value: &str) -> Result<String, String> {
        self.0.encrypt(alias, value).map_err(|e| e.to_string())
    }
}

/// A node's key and certificate chain, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeMaterial {
    /// PKCS#8 private key.
    pub key_pem: String,
    /// Leaf then cluster CA.
    pub chain_pem: String,
}

impl std::fmt::Debug for NodeMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMaterial")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    apim_atomic::write_atomic(path, contents.as_bytes(), 0o600).map_err(|e| io(path)(e.into()))
}

/// Where a node's key, chain and issuance record (`meta`: SANs and expiry) are kept.
struct NodeFiles {
    dir: PathBuf,
    key: PathBuf,
    chain: PathBuf,
    meta: PathBuf,
}

/// The secure vault's cipher for the operator's provided keystore: its key entry
/// (`keystore_alias`) is the vault key. The padding's seed comes from the keystore's bytes, so
/// an unchanged keystore gives unchanged ciphertexts.
pub fn provided_vault_cipher(stores: &ProvidedStores) -> Result<VaultCipher, PkiError> {
    let enc = apim_certs::vault::VaultEncrypter::new(&stores.key.cert_der, &stores.keystore.bytes)?;
    Ok(VaultCipher(enc))
}

impl ProductPki {
    /// The secure vault's cipher: the primary key is the vault key (`[keystore.primary]`).
    pub fn vault_cipher(&self) -> Result<VaultCipher, PkiError> {
        let enc = apim_certs::vault::VaultEncrypter::new(
            self.primary.cert_der(),
            self.primary.key_pem().as_bytes(),
        )?;
        Ok(VaultCipher(enc))
    }

    /// Opens (or makes, on first use) the PKI of a cluster under `dir`.
    pub fn load_or_create(dir: &Path, cluster_name: &str) -> Result<Self, PkiError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let ca = ClusterCa::load_or_create(dir)?;
        let primary =
            PrimaryKey::load_or_create(dir, &ca, cluster_name, DEFAULT_PRIMARY_KEY_VALIDITY)?;
        Ok(ProductPki {
            dir: dir.to_path_buf(),
            ca,
            primary,
        })
    }

    /// The PKI of a cluster under `dir` if it was made already; never creates anything (a dry
    /// run must not issue).
    pub fn existing(dir: &Path, cluster_name: &str) -> Result<Option<Self>, PkiError> {
        let made = [
            apim_certs::CLUSTER_CA_CERT_FILE,
            apim_certs::CLUSTER_CA_KEY_FILE,
            apim_certs::PRIMARY_CERT_FILE,
            apim_certs::PRIMARY_KEY_FILE,
        ]
        .iter()
        .all(|f| dir.join(f).is_file());
        if made {
            Self::load_or_create(dir, cluster_name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The node certificate for `hostname` with `sans`, issued on first use and re-used after.
    pub fn node_material(&self, hostname: &str, sans: &[String]) -> Result<NodeMaterial, PkiError> {
        match self.stored_node_material(hostname, sans) {
            Some(material) => Ok(material),
            None => self.issue_node_material(hostname, sans),
        }
    }

    /// The stored certificate for `hostname` with `sans` when it is still good (nothing issued).
    pub fn stored_material(&self, hostname: &str, sans: &[String]) -> Option<NodeMaterial> {
        self.stored_node_material(hostname, sans)
    }

    /// Issues, concurrently on every core, each node certificate that [`Self::node_material`]
    /// would issue for these `(hostname, sans)` pairs (missing, SANs changed, or near expiry),
    /// so the `node_material` calls that build the specs only read files. A hostname listed
    /// twice is prepared for its first SANs.
    pub fn prepare_nodes(&self, nodes: &[(String, Vec<String>)]) -> Result<(), PkiError> {
        let mut seen = std::collections::BTreeSet::new();
        let todo: Vec<&(String, Vec<String>)> = nodes
            .iter()
            .filter(|(hostname, _)| seen.insert(hostname.as_str()))
            .filter(|(hostname, sans)| self.stored_node_material(hostname, sans).is_none())
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(todo.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || -> Result<(), PkiError> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((hostname, sans)) = todo.get(i) else {
                    return Ok(());
                };
                self.issue_node_material(hostname, sans)?;
            }
        };
        let results: Vec<Result<(), PkiError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mut results = vec![work()];
            results.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            );
            results
        });
        tracing::debug!(issued = todo.len(), threads, "prepared node certificates");
        results.into_iter().collect()
    }

    fn node_files(&self, hostname: &str) -> NodeFiles {
        let dir = self.dir.join("nodes").join(hostname);
        NodeFiles {
            key: dir.join("key.pem"),
            chain: dir.join("chain.pem"),
            meta: dir.join("meta"),
            dir,
        }
    }

    /// The stored node material when it is still good: all three files readable, issued for
    /// exactly `sans`, and more than [`RENEW_BEFORE`] from expiry.
    fn stored_node_material(&self, hostname: &str, sans: &[String]) -> Option<NodeMaterial> {
        let files = self.node_files(hostname);
        let key_pem = std::fs::read_to_string(&files.key).ok()?;
        let chain_pem = std::fs::read_to_string(&files.chain).ok()?;
        let meta = std::fs::read_to_string(&files.meta).ok()?;
        let (meta_sans, not_after) = meta.trim().split_once(' ')?;
        let fresh = meta_sans == sans.join(",")
            && not_after.parse::<i64>().is_ok_and(|t| {
                t - time::OffsetDateTime::now_utc().unix_timestamp() > RENEW_BEFORE.as_secs() as i64
            });
        fresh.then_some(NodeMaterial { key_pem, chain_pem })
    }

    /// Issues a new node certificate for `hostname` with `sans` and stores it (0600 files in a
    /// 0700 folder), replacing what was there.
    fn issue_node_material(
        &self,
        hostname: &str,
        sans: &[String],
    ) -> Result<NodeMaterial, PkiError> {
        let files = self.node_files(hostname);
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&files.dir)
            .map_err(io(&files.dir))?;
        let extra: Vec<String> = sans
            .iter()
            .filter(|s| s.as_str() != hostname)
            .cloned()
            .collect();
        let cert = NodeCert::issue(&self.ca, hostname, &extra, DEFAULT_NODE_CERT_VALIDITY)?;
        let chain_pem = format!("{}{}", cert.cert_pem(), self.ca.cert_pem());
        let material = NodeMaterial {
            key_pem: cert.key_pem().to_string(),
            chain_pem,
        };
        // No record while the pair is rewritten: a crash in between means "issue again".
        match std::fs::remove_file(&files.meta) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&files.meta)(e)),
            _ => {}
        }
        write_private(&files.key, &material.key_pem)?;
        write_private(&files.chain, &material.chain_pem)?;
        write_private(
            &files.meta,
            &format!(
                "{} {}\n",
                sans.join(","),
                cert.not_after()?.unix_timestamp()
            ),
        )?;
        Ok(material)
    }

    /// What the agent needs to write a node's keystores, per the plan's `[tls]`. `None` when the
    /// plan keeps the pack's own keystores. With `issue` false (a dry run) nothing is issued: a
    /// certificate that would be is shown as a placeholder chain.
    pub fn keystore_spec(
        &self,
        node: &NodeRender,
        issue: bool,
    ) -> Result<Option<KeystoreSpec>, PkiError> {
        let tls = &node.tls;
        if tls.issuer != Issuer::ClusterCa {
            return Ok(None);
        }
        let material = if issue {
            self.node_material(&node.hostname, &tls.sans)?
        } else {
            self.stored_node_material(&node.hostname, &tls.sans)
                .unwrap_or_else(|| NodeMaterial {
                    key_pem: String::new(),
                    chain_pem: format!(
                        "(a certificate for {} to be issued by apply)\n",
                        tls.sans.join(",")
                    ),
                })
        };
        let primary_chain = format!("{}{}", self.primary.cert_pem(), self.ca.cert_pem());
        Ok(Some(KeystoreSpec {
            store_type: match tls.store_type {
                StoreType::Jks => WireStoreType::Jks,
                StoreType::Pkcs12 => WireStoreType::Pkcs12,
            }
            .into(),
            keystore_file: format!("{SECURITY_DIR}/{}", tls.keystore_file),
            alias: tls.alias.clone(),
            password: tls.keystore_password.0.clone(),
            node_key_pem: material.key_pem,
            node_chain_pem: material.chain_pem,
            primary_keystore_file: tls
                .primary_keystore_file
                .as_ref()
                .map(|f| format!("{SECURITY_DIR}/{f}")),
            primary_alias: Some(tls.primary_alias.clone()),
            primary_key_pem: self.primary.key_pem().to_string(),
            primary_chain_pem: primary_chain,
            truststore_file: format!("{SECURITY_DIR}/{}", tls.truststore_file),
            truststore_password: tls.truststore_password.0.clone(),
            trusted: vec![
                TrustedCert {
                    alias: CLUSTER_CA_ALIAS.to_string(),
                    cert_pem: self.ca.cert_pem().to_string(),
                },
                // The gateway verifies JWTs signed with the primary key when no kid matches.
                TrustedCert {
                    alias: GATEWAY_CERT_ALIAS.to_string(),
                    cert_pem: self.primary.cert_pem().to_string(),
                },
            ],
            provided: None,
        }))
    }
}

/// What the agent needs to ship a node the plan's provided stores (`issuer = "provided"`): the
/// files whole, by digest, in place of the node's keystore and (when provided) its truststore.
/// Nothing is issued and nothing imported; the provided keystore doubles as the primary one.
pub fn provided_keystore_spec(node: &NodeRender, stores: &ProvidedStores) -> KeystoreSpec {
    let tls = &node.tls;
    let (truststore, truststore_sha256) = stores
        .truststore
        .as_ref()
        .map(|t| (t.bytes.clone(), t.sha256.clone()))
        .unwrap_or_default();
    KeystoreSpec {
        store_type: match tls.store_type {
            StoreType::Jks => WireStoreType::Jks,
            StoreType::Pkcs12 => WireStoreType::Pkcs12,
        }
        .into(),
        keystore_file: format!("{SECURITY_DIR}/{}", tls.keystore_file),
        alias: tls.alias.clone(),
        password: tls.keystore_password.0.clone(),
        truststore_file: format!("{SECURITY_DIR}/{}", tls.truststore_file),
        truststore_password: tls.truststore_password.0.clone(),
        provided: Some(WireProvided {
            keystore: stores.keystore.bytes.clone(),
            keystore_sha256: stores.keystore.sha256.clone(),
            truststore,
            truststore_sha256,
        }),
        ..KeystoreSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_node(dir: &Path, hostname: &str) -> [Vec<u8>; 3] {
        let node = dir.join("nodes").join(hostname);
        ["key.pem", "chain.pem", "meta"].map(|f| std::fs::read(node.join(f)).unwrap())
    }

    fn node(hostname: &str, sans: &[&str]) -> (String, Vec<String>) {
        (
            hostname.to_string(),
            sans.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn prepare_nodes_issues_only_what_node_material_would() {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("apim-prod");
        let pki = ProductPki::load_or_create(&pki_dir, "apim-prod").unwrap();
        let mut nodes = vec![
            node("km.wso2.com", &["km.wso2.com"]),
            node("gw-1.wso2.com", &["gw-1.wso2.com", "gw-lb.wso2.com"]),
            node("gw-2.wso2.com", &["gw-2.wso2.com", "gw-lb.wso2.com"]),
        ];

        // A fresh PKI: three certificates, one per hostname, each signed for its SANs.
        pki.prepare_nodes(&nodes).unwrap();
        let first: Vec<[Vec<u8>; 3]> = nodes.iter().map(|(h, _)| read_node(&pki_dir, h)).collect();
        assert_eq!(std::fs::read_dir(pki_dir.join("nodes")).unwrap().count(), 3);
        let keys: std::collections::BTreeSet<&Vec<u8>> = first.iter().map(|f| &f[0]).collect();
        assert_eq!(keys.len(), 3, "every node has its own key");
        for ((hostname, sans), files) in nodes.iter().zip(&first) {
            let meta = String::from_utf8(files[2].clone()).unwrap();
            assert!(meta.starts_with(&format!("{} ", sans.join(","))), "{meta}");
            let chain = String::from_utf8(files[1].clone()).unwrap();
            assert!(
                chain.ends_with(pki.ca_pem()),
                "chain ends with the cluster CA"
            );
            // node_material now only reads what prepare_nodes stored.
            let m = pki.node_material(hostname, sans).unwrap();
            assert_eq!(m.key_pem.as_bytes(), files[0].as_slice());
            assert_eq!(m.chain_pem.as_bytes(), files[1].as_slice());
        }

        // Nothing changed: nothing is issued, no file is rewritten.
        pki.prepare_nodes(&nodes).unwrap();
        for ((hostname, _), files) in nodes.iter().zip(&first) {
            assert_eq!(
                &read_node(&pki_dir, hostname),
                files,
                "{hostname} re-issued"
            );
        }

        // A new LB hostname for one gateway: only that node is re-issued.
        nodes[1] = node(
            "gw-1.wso2.com",
            &["gw-1.wso2.com", "gw-lb.wso2.com", "gw-lb2.wso2.com"],
        );
        pki.prepare_nodes(&nodes).unwrap();
        let after: Vec<[Vec<u8>; 3]> = nodes.iter().map(|(h, _)| read_node(&pki_dir, h)).collect();
        assert_eq!(after[0], first[0]);
        assert_eq!(after[2], first[2]);
        assert_ne!(after[1][0], first[1][0], "new key for the changed node");
        assert_ne!(
            after[1][1], first[1][1],
            "new certificate for the changed node"
        );
        assert!(
            String::from_utf8(after[1][2].clone())
                .unwrap()
                .starts_with("gw-1.wso2.com,gw-lb.wso2.com,gw-lb2.wso2.com ")
        );
    }

    #[test]
    fn a_new_pki_is_reloaded_with_the_same_ca_and_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let created = ProductPki::load_or_create(dir.path(), "apim-prod").unwrap();
        let again = ProductPki::load_or_create(dir.path(), "apim-prod").unwrap();
        assert_eq!(created.ca_pem(), again.ca_pem());
        assert_eq!(created.primary.key_pem(), again.primary.key_pem());
        assert_eq!(created.primary.cert_pem(), again.primary.cert_pem());
        assert_eq!(created.primary.cluster_name(), "apim-prod");
        // The two keys were generated side by side: the primary is its own key, signed by the CA.
        use x509_parser::prelude::{FromDer, X509Certificate};
        let ca_der = apim_certs::cert_pem_to_der(created.ca_pem()).unwrap();
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let (_, primary) = X509Certificate::from_der(created.primary.cert_der()).unwrap();
        assert_ne!(primary.public_key().raw, ca.public_key().raw);
        assert_eq!(primary.issuer(), ca.subject());
        primary.verify_signature(Some(ca.public_key())).unwrap();
    }
}
