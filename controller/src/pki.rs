//! The product PKI as the controller keeps it: one cluster CA, one shared primary key, and a
//! certificate per node hostname, issued once and kept on disk so that re-applying a plan
//! re-uses them (a new certificate would change the node's keystore and restart it).
//!
//! A node certificate is re-issued only when its SANs change (a new LB hostname) or when it
//! has less than [`RENEW_BEFORE`] left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use apim_certs::{
    CLUSTER_CA_ALIAS, ClusterCa, DEFAULT_NODE_CERT_VALIDITY, DEFAULT_PRIMARY_KEY_VALIDITY,
    GATEWAY_CERT_ALIAS, NodeCert, PrimaryKey,
};
use apim_proto::v1::{KeystoreSpec, StoreType as WireStoreType, TrustedCert};

use crate::plan::{Issuer, StoreType};
use crate::render::NodeRender;

/// Where WSO2 keeps its keystores, relative to the carbon home (`[keystore.*] file_name` is
/// resolved there).
pub const SECURITY_DIR: &str = "repository/resources/security";

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
    crate::files::write_private(path, contents.as_bytes()).map_err(io(path))
}

impl ProductPki {
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

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The node certificate for `hostname` with `sans`, issued on first use and re-used after.
    pub fn node_material(&self, hostname: &str, sans: &[String]) -> Result<NodeMaterial, PkiError> {
        let node_dir = self.dir.join("nodes").join(hostname);
        let (key_path, cert_path, meta_path) = (
            node_dir.join("key.pem"),
            node_dir.join("chain.pem"),
            node_dir.join("meta"),
        );
        let wanted_meta = sans.join(",");
        if let (Ok(key_pem), Ok(chain_pem), Ok(meta)) = (
            std::fs::read_to_string(&key_path),
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&meta_path),
        ) && let Some((meta_sans, not_after)) = meta.trim().split_once(' ')
            && meta_sans == wanted_meta
            && not_after.parse::<i64>().is_ok_and(|t| {
                t - time::OffsetDateTime::now_utc().unix_timestamp() > RENEW_BEFORE.as_secs() as i64
            })
        {
            return Ok(NodeMaterial { key_pem, chain_pem });
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&node_dir)
            .map_err(io(&node_dir))?;
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
        write_private(&key_path, &material.key_pem)?;
        write_private(&cert_path, &material.chain_pem)?;
        write_private(
            &meta_path,
            &format!("{wanted_meta} {}\n", cert.not_after()?.unix_timestamp()),
        )?;
        Ok(material)
    }

    /// What the agent needs to write a node's keystores, per the plan's `[tls]`. `None` when the
    /// plan keeps the pack's own keystores.
    pub fn keystore_spec(&self, node: &NodeRender) -> Result<Option<KeystoreSpec>, PkiError> {
        let tls = &node.tls;
        if tls.issuer != Issuer::ClusterCa {
            return Ok(None);
        }
        let material = self.node_material(&node.hostname, &tls.sans)?;
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
        }))
    }
}
