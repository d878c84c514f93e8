//! The product PKI: what WSO2 API Manager itself uses for TLS and token signing. Separate from
//! the control-plane CA, so a WSO2 node's key can never authenticate to the controller.
//!
//! WSO2 wants RSA (JWTs are signed SHA256withRSA and the primary keystore certificate needs
//! Data Encipherment). ring, rcgen's backend, can sign with RSA but not generate RSA keys, so
//! keys come from the pure-Rust `rsa` crate (PKCS#8) and are handed to rcgen with
//! [`KeyPair::from_pkcs8_der_and_sign_algo`] and `PKCS_RSA_SHA256`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_RSA_SHA256, PublicKeyData,
};
use rsa::RsaPrivateKey;
use rsa::pkcs8::EncodePrivateKey;
use rustls_pki_types::PrivatePkcs8KeyDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::control_plane::{host_san, validate_hostname};
use crate::error::{CertsError, Result};
use crate::files::{self, PemPair};
use crate::identity::validate_name;
use crate::keypool;
use crate::pki::{self, cert_facts, sha256_fingerprint};

/// RSA modulus size for every product key.
pub const RSA_KEY_BITS: usize = 2048;
/// Lifetime of a newly created cluster CA (10 years).
pub const CLUSTER_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a node TLS certificate (2 years).
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Default lifetime of the primary (token-signing) key's certificate (5 years: rotating it
/// invalidates issued tokens and every gateway's `gateway_certificate_alias`).
pub const DEFAULT_PRIMARY_KEY_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Cluster CA key file name.
pub const CLUSTER_CA_KEY_FILE: &str = "cluster-ca-key.pem";
/// Cluster CA certificate file name.
pub const CLUSTER_CA_CERT_FILE: &str = "cluster-ca-cert.pem";
/// Primary key file name.
pub const PRIMARY_KEY_FILE: &str = "primary-key.pem";
/// Primary certificate file name.
pub const PRIMARY_CERT_FILE: &str = "primary-cert.pem";

/// Gives an RSA-2048 key loaded into rcgen for signing with SHA256withRSA (ring signs RSA
/// fine; it only cannot generate it). Takes a pre-generated key from the key pool when
/// [`start_key_pool`](crate::start_key_pool) runs and has one ready, else generates one in
/// place with the `rsa` crate; every product key goes through here.
pub fn generate_rsa_key() -> Result<KeyPair> {
    let key = match keypool::take_pooled_key() {
        Some(key) => key,
        None => keypool::fresh_rsa_key()?,
    };
    rsa_key_pair(&key)
}

/// Hands an `rsa` private key to rcgen (PKCS#8, SHA256withRSA).
fn rsa_key_pair(key: &RsaPrivateKey) -> Result<KeyPair> {
    let der = key.to_pkcs8_der().map_err(|e| CertsError::RsaKey {
        reason: e.to_string(),
    })?;
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der.as_bytes()),
        &PKCS_RSA_SHA256,
    )
    .map_err(CertsError::rcgen("loading generated RSA key"))
}

/// Loads an RSA PKCS#8 PEM key for SHA256withRSA signing.
fn load_rsa_key(pem: &str, context: &'static str) -> Result<KeyPair> {
    KeyPair::from_pkcs8_pem_and_sign_algo(pem, &PKCS_RSA_SHA256).map_err(CertsError::rcgen(context))
}

/// The cluster's own CA for product TLS certificates. Every node trusts it (it is imported into
/// each node's truststore as `apimctl-cluster-ca`), so node-to-node HTTPS verifies.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Loads the cluster CA from `dir`, or creates it (RSA-2048, 10 years, files 0600 in a
    /// 0700 directory). Same rules as the control-plane CA: no half pairs, no loose modes.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (pair, created) =
            files::load_or_create_pair(dir, CLUSTER_CA_KEY_FILE, CLUSTER_CA_CERT_FILE, || {
                create_cluster_ca()
            })?;
        let key = load_rsa_key(&pair.key_pem, "loading cluster CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key)
            .map_err(CertsError::rcgen("loading cluster CA certificate"))?;
        let cert_der = pki::cert_pem_to_der(&pair.cert_pem)?;
        if created {
            tracing::info!(dir = %dir.display(), fingerprint = %sha256_fingerprint(&cert_der), "created cluster CA");
        }
        Ok(ClusterCa {
            issuer,
            cert_pem: pair.cert_pem,
            cert_der,
        })
    }

    /// CA certificate PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// CA certificate DER (for truststores and chains).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate DER, lowercase hex.
    pub fn fingerprint(&self) -> String {
        sha256_fingerprint(&self.cert_der)
    }

    /// Signs `params` for a new RSA key; shared by node certificates and the primary key.
    fn issue(&self, params: &CertificateParams, context: &'static str) -> Result<ProductKeyCert> {
        let key = generate_rsa_key()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CertsError::rcgen(context))?;
        Ok(ProductKeyCert {
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().as_ref().to_vec(),
            cert_pem: cert.pem(),
            ca_cert_der: self.cert_der.clone(),
        })
    }
}

fn create_cluster_ca() -> Result<PemPair> {
    let key = generate_rsa_key()?;
    let mut params = pki::base_params("apimctl cluster CA", CLUSTER_CA_VALIDITY)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(CertsError::rcgen("self-signing cluster CA"))?;
    Ok(PemPair {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
    })
}

/// Leaf parameters shared by product certificates: RSA key usages WSO2 needs, server and
/// client auth, not a CA.
fn product_leaf_params(common_name: &str, validity: Duration) -> Result<CertificateParams> {
    let mut params = pki::base_params(common_name, validity)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DataEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// An RSA key with its certificate and issuing CA, ready for a keystore.
#[derive(Clone)]
struct ProductKeyCert {
    key_der: Vec<u8>,
    key_pem: String,
    cert_der: Vec<u8>,
    cert_pem: String,
    ca_cert_der: Vec<u8>,
}

macro_rules! key_cert_accessors {
    ($ty:ident) => {
        impl $ty {
            /// The PKCS#8 DER private key. Secret: only for keystore writers.
            pub fn key_pkcs8_der(&self) -> &[u8] {
                &self.inner.key_der
            }

            /// The PKCS#8 PEM private key. Secret.
            pub fn key_pem(&self) -> &str {
                &self.inner.key_pem
            }

            /// Certificate DER.
            pub fn cert_der(&self) -> &[u8] {
                &self.inner.cert_der
            }

            /// Certificate PEM.
            pub fn cert_pem(&self) -> &str {
                &self.inner.cert_pem
            }

            /// The chain for a private-key keystore entry: leaf first, then the cluster CA.
            pub fn chain_der(&self) -> Vec<Vec<u8>> {
                vec![self.inner.cert_der.clone(), self.inner.ca_cert_der.clone()]
            }

            /// Serial number (normalised hex).
            pub fn serial(&self) -> Result<String> {
                Ok(cert_facts(&self.inner.cert_der)?.serial)
            }

            /// End of validity.
            pub fn not_after(&self) -> Result<OffsetDateTime> {
                Ok(cert_facts(&self.inner.cert_der)?.not_after)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("subject", &self.subject)
                    .field("key", &"<redacted>")
                    .finish_non_exhaustive()
            }
        }
    };
}

/// A WSO2 node's TLS certificate: CN = node hostname, SANs = hostname plus the load-balancer
/// hostnames of its role, so clients that come through the LB verify too.
#[derive(Clone)]
pub struct NodeCert {
    subject: String,
    sans: Vec<String>,
    inner: ProductKeyCert,
}

key_cert_accessors!(NodeCert);

impl NodeCert {
    /// Issues a node certificate with a fresh RSA-2048 key, signed by the cluster CA.
    /// Key usages digitalSignature, keyEncipherment, dataEncipherment; EKU serverAuth and
    /// clientAuth (WSO2 nodes call each other over mutual TLS in places). Duplicate SANs are
    /// dropped; IP addresses among `extra_sans` become IP SANs.
    pub fn issue(
        ca: &ClusterCa,
        hostname: &str,
        extra_sans: &[String],
        validity: Duration,
    ) -> Result<Self> {
        validate_hostname(hostname)?;
        let mut sans: Vec<String> = vec![hostname.to_owned()];
        for s in extra_sans {
            if !sans.iter().any(|x| x.eq_ignore_ascii_case(s)) {
                sans.push(s.clone());
            }
        }
        let mut params = product_leaf_params(hostname, validity)?;
        params.subject_alt_names = sans.iter().map(|s| host_san(s)).collect::<Result<_>>()?;
        let inner = ca.issue(&params, "issuing node certificate")?;
        tracing::info!(%hostname, sans = ?sans, "issued node TLS certificate");
        Ok(NodeCert {
            subject: hostname.to_owned(),
            sans,
            inner,
        })
    }

    /// The node hostname (CN).
    pub fn hostname(&self) -> &str {
        &self.subject
    }

    /// All SANs, hostname first.
    pub fn sans(&self) -> &[String] {
        &self.sans
    }
}

/// The cluster's shared primary key (WSO2's `[keystore.primary]`): issued once per cluster,
/// CN = cluster name, identical on every node because it signs JWTs that every gateway must
/// verify, and encrypts data any node may have to decrypt.
#[derive(Clone)]
pub struct PrimaryKey {
    subject: String,
    inner: ProductKeyCert,
}

key_cert_accessors!(PrimaryKey);

impl PrimaryKey {
    /// Issues a new primary key and certificate (RSA-2048, SHA256withRSA, key usages including
    /// dataEncipherment) signed by the cluster CA.
    pub fn issue(ca: &ClusterCa, cluster_name: &str, validity: Duration) -> Result<Self> {
        validate_name("cluster", cluster_name)?;
        let params = product_leaf_params(cluster_name, validity)?;
        let inner = ca.issue(&params, "issuing primary key certificate")?;
        tracing::info!(cluster = %cluster_name, "issued cluster primary key");
        Ok(PrimaryKey {
            subject: cluster_name.to_owned(),
            inner,
        })
    }

    /// Loads the primary key from `dir`, or issues it once and stores it there (files 0600),
    /// so every later render hands every node the same key.
    pub fn load_or_create(
        dir: &Path,
        ca: &ClusterCa,
        cluster_name: &str,
        validity: Duration,
    ) -> Result<Self> {
        let mut issued = None;
        let (pair, created) =
            files::load_or_create_pair(dir, PRIMARY_KEY_FILE, PRIMARY_CERT_FILE, || {
                let pk = Self::issue(ca, cluster_name, validity)?;
                let pair = PemPair {
                    key_pem: pk.inner.key_pem.clone(),
                    cert_pem: pk.inner.cert_pem.clone(),
                };
                issued = Some(pk);
                Ok(pair)
            })?;
        if let (true, Some(pk)) = (created, issued) {
            return Ok(pk);
        }
        let key = load_rsa_key(&pair.key_pem, "loading primary key")?;
        let cert_der = pki::cert_pem_to_der(&pair.cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CertsError::parse("primary certificate", e))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CertsError::parse(
                "primary key",
                format!(
                    "{} does not match {}",
                    dir.join(PRIMARY_KEY_FILE).display(),
                    dir.join(PRIMARY_CERT_FILE).display()
                ),
            ));
        }
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or(cluster_name)
            .to_owned();
        Ok(PrimaryKey {
            subject,
            inner: ProductKeyCert {
                key_der: key.serialize_der(),
                key_pem: pair.key_pem,
                cert_der,
                cert_pem: pair.cert_pem,
                ca_cert_der: ca.cert_der.clone(),
            },
        })
    }

    /// The cluster name (CN).
    pub fn cluster_name(&self) -> &str {
        &self.subject
    }
}
