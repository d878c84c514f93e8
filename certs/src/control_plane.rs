//! The control-plane CA: the root of trust for controller ↔ agent ↔ operator mTLS.
//!
//! It is created on the controller's first start (ECDSA P-256, files 0600 in a 0700 directory)
//! and reloaded on later starts. It issues the controller's own TLS server certificate, signs
//! agent CSRs under a fixed policy (only the CSR's public key is used), and issues operator
//! client certificates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
    SubjectPublicKeyInfo,
};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::error::{CertsError, Result};
use crate::files::{self, PemPair};
use crate::identity::PeerIdentity;
use crate::pki::{self, cert_facts, sha256_fingerprint};

/// Default lifetime of an agent certificate; agents renew at 2/3 (see [`crate::renew_at`]).
pub const DEFAULT_AGENT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of an operator certificate.
pub const DEFAULT_OPERATOR_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default lifetime of the controller's TLS server certificate.
pub const DEFAULT_SERVER_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a newly created control-plane CA (10 years).
pub const CONTROL_PLANE_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";

/// A certificate the CA has just issued, with what the controller needs to record about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// DER bytes.
    pub cert_der: Vec<u8>,
    /// PEM text.
    pub cert_pem: String,
    /// Serial number (normalised hex), for revocation by serial.
    pub serial: String,
    /// Start of validity (already back-dated for clock skew).
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl IssuedCert {
    fn from_certificate(cert: &rcgen::Certificate) -> Result<Self> {
        let der = cert.der().as_ref().to_vec();
        let facts = cert_facts(&der)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: der,
            serial: facts.serial,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// When the holder should renew (2/3 of the lifetime).
    pub fn renew_at(&self) -> OffsetDateTime {
        pki::renew_at(self.not_before, self.not_after)
    }
}

/// A freshly generated private key with its certificate (server and operator certificates,
/// whose keys are made on the controller host). `Debug` never prints the key.
#[derive(Clone)]
pub struct IssuedKeyPair {
    /// The certificate.
    pub cert: IssuedCert,
    key_pem: String,
}

impl IssuedKeyPair {
    /// The PKCS#8 private key PEM. Secret: write it only with
    /// [`IssuedKeyPair::write_pem_files`] or hand it straight to the TLS stack.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `cert_path` and `key_path` atomically, both mode 0600 (the key is secret; the
    /// certificate reveals the identity layout, so it is kept private too).
    pub fn write_pem_files(&self, cert_path: &Path, key_path: &Path) -> Result<()> {
        files::write_private_file(key_path, self.key_pem.as_bytes(), false)?;
        files::write_private_file(cert_path, self.cert.cert_pem.as_bytes(), false)
    }
}

impl fmt::Debug for IssuedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKeyPair")
            .field("cert", &self.cert)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The control-plane certificate authority, loaded from (or created in) its directory.
pub struct ControlPlaneCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    fingerprint: String,
    dir: PathBuf,
}

impl fmt::Debug for ControlPlaneCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneCa")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ControlPlaneCa {
    /// Loads the CA from `dir`, or creates it there on the first start. The directory is made
    /// 0700, both PEM files 0600; a key file readable by others, or only one of the two files
    /// present, is an error (never a silent re-create, which would orphan every agent).
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (pair, created) =
            files::load_or_create_pair(dir, CA_KEY_FILE, CA_CERT_FILE, create_ca)?;
        let key = KeyPair::from_pem(&pair.key_pem)
            .map_err(CertsError::rcgen("loading control-plane CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key)
            .map_err(CertsError::rcgen("loading control-plane CA certificate"))?;
        let cert_der = pki::cert_pem_to_der(&pair.cert_pem)?;
        let fingerprint = sha256_fingerprint(&cert_der);
        if created {
            tracing::info!(dir = %dir.display(), %fingerprint, "created control-plane CA");
        } else {
            tracing::debug!(dir = %dir.display(), %fingerprint, "loaded control-plane CA");
        }
        Ok(ControlPlaneCa {
            issuer,
            cert_pem: pair.cert_pem,
            cert_der,
            fingerprint,
            dir: dir.to_path_buf(),
        })
    }

    /// The CA certificate PEM (what agents and operators trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate DER, lowercase hex: the pin carried in join tokens.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Issues the controller's own TLS server certificate (fresh P-256 key). `sans` are DNS
    /// names or IP addresses the agents and operators dial; EKU is serverAuth only, so this
    /// certificate can never be used to pose as an agent or operator.
    pub fn issue_server_cert(&self, sans: &[String], ttl: Duration) -> Result<IssuedKeyPair> {
        let first = sans.first().ok_or(CertsError::InvalidName {
            kind: "server SAN",
            name: String::new(),
            reason: "at least one DNS name or IP address is required",
        })?;
        let mut params = self.leaf_params(first, ttl)?;
        params.subject_alt_names = sans
            .iter()
            .map(|s| host_san(s))
            .collect::<Result<Vec<_>>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_with_new_key(params, "issuing controller server certificate")
    }

    /// Signs an agent's CSR under the fixed policy: the CSR's self-signature must verify, and
    /// only its public key is used. Subject, SAN (`spiffe://apimctl/agent/<machine>`), EKU
    /// (clientAuth only), CA flag (never) and lifetime come from the controller: `machine` is
    /// taken from the redeemed join token or from the already authenticated certificate on
    /// renewal, never from the CSR.
    pub fn sign_agent_csr(
        &self,
        csr_der: &[u8],
        machine: &str,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        let issued = self.sign_client_csr(csr_der, &PeerIdentity::agent(machine)?, ttl)?;
        tracing::info!(%machine, serial = %issued.serial, not_after = %issued.not_after, "signed agent certificate");
        Ok(issued)
    }

    /// Signs an operator's renewal CSR under the same policy as [`Self::sign_agent_csr`]: the
    /// name comes from the operator's authenticated certificate, only the CSR's key is used.
    pub fn sign_operator_csr(
        &self,
        csr_der: &[u8],
        name: &str,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        let issued = self.sign_client_csr(csr_der, &PeerIdentity::operator(name)?, ttl)?;
        tracing::info!(operator = %name, serial = %issued.serial, not_after = %issued.not_after, "signed operator certificate");
        Ok(issued)
    }

    fn sign_client_csr(
        &self,
        csr_der: &[u8],
        identity: &PeerIdentity,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        let public_key = csr_public_key(csr_der)?;
        let name = match identity {
            PeerIdentity::Agent { machine } => machine,
            PeerIdentity::Operator { name } => name,
        };
        let mut params = self.leaf_params(name, ttl)?;
        params.subject_alt_names = vec![uri_san(identity)?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(CertsError::rcgen("signing a client certificate"))?;
        IssuedCert::from_certificate(&cert)
    }

    /// Issues an operator client certificate with a fresh key (made here, on the controller
    /// host, and handed to the operator as files).
    pub fn issue_operator_cert(&self, name: &str, ttl: Duration) -> Result<IssuedKeyPair> {
        let identity = PeerIdentity::operator(name)?;
        let mut params = self.leaf_params(name, ttl)?;
        params.subject_alt_names = vec![uri_san(&identity)?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issued = self.issue_with_new_key(params, "issuing operator certificate")?;
        tracing::info!(operator = %name, serial = %issued.cert.serial, "issued operator certificate");
        Ok(issued)
    }

    /// Common leaf parameters: CN, random serial, skew-tolerant validity, explicit non-CA,
    /// digitalSignature only, authority key id for chain building.
    fn leaf_params(&self, common_name: &str, ttl: Duration) -> Result<CertificateParams> {
        let mut params = pki::base_params(common_name, ttl)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn issue_with_new_key(
        &self,
        params: CertificateParams,
        context: &'static str,
    ) -> Result<IssuedKeyPair> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CertsError::rcgen(context))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CertsError::rcgen(context))?;
        Ok(IssuedKeyPair {
            cert: IssuedCert::from_certificate(&cert)?,
            key_pem: key.serialize_pem(),
        })
    }
}

/// Makes a new self-signed control-plane CA.
fn create_ca() -> Result<PemPair> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(CertsError::rcgen("generating control-plane CA key"))?;
    let mut params = pki::base_params("apimctl control-plane CA", CONTROL_PLANE_CA_VALIDITY)?;
    // Path length 0: this CA signs leaves only, never an intermediate.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(CertsError::rcgen("self-signing control-plane CA"))?;
    Ok(PemPair {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
    })
}

/// Parses a CSR, verifies its self-signature and returns only its public key. Requested
/// subject, SANs, key usages and basic constraints are deliberately never looked at.
fn csr_public_key(csr_der: &[u8]) -> Result<SubjectPublicKeyInfo> {
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|e| CertsError::CsrRejected {
            reason: format!("not a DER PKCS#10 request: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(CertsError::CsrRejected {
            reason: "trailing bytes after the request".into(),
        });
    }
    csr.verify_signature()
        .map_err(|e| CertsError::CsrRejected {
            reason: format!("self-signature does not verify: {e}"),
        })?;
    let spki = SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CertsError::CsrRejected {
            reason: format!("unsupported public key: {e}"),
        })?;
    // Agents make P-256 keys; also allow the other curve types ring verifies. RSA is refused
    // so there is no weak-modulus case to police.
    let alg = rcgen::PublicKeyData::algorithm(&spki);
    if alg != &PKCS_ECDSA_P256_SHA256 && alg != &PKCS_ECDSA_P384_SHA384 && alg != &PKCS_ED25519 {
        return Err(CertsError::CsrRejected {
            reason: "only ECDSA P-256/P-384 and Ed25519 keys are accepted".into(),
        });
    }
    Ok(spki)
}

/// The URI SAN for an identity.
fn uri_san(identity: &PeerIdentity) -> Result<SanType> {
    let uri = identity.uri();
    uri.as_str()
        .try_into()
        .map(SanType::URI)
        .map_err(|_| CertsError::InvalidName {
            kind: "identity URI",
            name: uri,
            reason: "not an IA5 string",
        })
}

/// A DNS-name or IP-address SAN.
pub(crate) fn host_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    validate_hostname(name)?;
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|_| CertsError::InvalidName {
            kind: "hostname",
            name: name.to_owned(),
            reason: "not an IA5 string",
        })
}

/// Checks that `name` looks like a DNS host name (letters, digits, `-`, dots between labels;
/// a leading `*.` wildcard label is allowed for load-balancer names).
pub(crate) fn validate_hostname(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(CertsError::InvalidName {
            kind: "hostname",
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1–253 characters");
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("every label must be 1–63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("labels must not start or end with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only ASCII letters, digits, '-' and '.' are allowed");
        }
    }
    Ok(())
}
