//! Credentials: PEM pairs signed by a control-plane CA, certificates minted with rcgen for the
//! edge cases the CA itself never issues (expired, wrong usage), and a throwaway CA with a leaf
//! for node keystores.

use std::path::Path;

use apim_certs::{AgentKey, CA_CERT_FILE, CA_KEY_FILE, ControlPlaneCa, IssuedCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM certificate (chain) and its PEM key.
#[derive(Clone)]
pub struct Creds {
    /// The certificate, leaf first.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl Creds {
    /// The chain and key as rustls wants them for a client identity.
    pub fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key pem");
        (chain, key)
    }
}

/// An agent certificate for `machine` from `ca`, through a real CSR (what `Enroll` signs), and
/// the issued record (for the controller's state).
pub fn agent_creds(ca: &ControlPlaneCa, machine: &str) -> (Creds, IssuedCert) {
    let key = AgentKey::generate().expect("agent key");
    let issued = ca
        .sign_agent_csr(
            &key.csr_der(machine).expect("csr"),
            machine,
            apim_certs::DEFAULT_AGENT_CERT_TTL,
        )
        .expect("sign");
    let creds = Creds {
        cert_pem: issued.cert_pem.clone(),
        key_pem: key.key_pem(),
    };
    (creds, issued)
}

/// An operator certificate for `name` from `ca`.
pub fn operator_creds(ca: &ControlPlaneCa, name: &str) -> Creds {
    let issued = ca
        .issue_operator_cert(name, apim_certs::DEFAULT_OPERATOR_CERT_TTL)
        .expect("operator cert");
    Creds {
        cert_pem: issued.cert.cert_pem.clone(),
        key_pem: issued.key_pem().to_owned(),
    }
}

/// Signs an agent-shaped certificate for `machine` with the CA stored in `ca_dir`, after
/// `adjust` changed its parameters (validity, usages).
pub fn mint_with_rcgen(
    ca_dir: &Path,
    machine: &str,
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> Creds {
    let ca_key = std::fs::read_to_string(ca_dir.join(CA_KEY_FILE)).expect("CA key");
    let ca_cert = std::fs::read_to_string(ca_dir.join(CA_CERT_FILE)).expect("CA cert");
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &ca_cert,
        rcgen::KeyPair::from_pem(&ca_key).expect("CA key pem"),
    )
    .expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, machine);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://apimctl/agent/{machine}")
            .try_into()
            .expect("ia5"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    adjust(&mut params);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    Creds {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A self-signed CA and a leaf for `name`, as PEM (key is PKCS#8): (leaf key, leaf + CA chain,
/// CA certificate, leaf DER).
pub fn mint_tls(name: &str) -> (String, String, String, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(vec![]).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test cluster CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf_params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    (
        leaf_key.serialize_pem(),
        format!("{}{}", leaf.pem(), ca.pem()),
        ca.pem(),
        leaf.der().to_vec(),
    )
}

/// An operator's own stores for `[tls] issuer = "provided"`, made with rcgen and
/// [`apim_certs::KeystoreBuilder`]: a keystore with `alias` → a key whose certificate names
/// `names` (SAN DNS), signed by a throwaway CA, and a truststore with that CA.
pub struct ProvidedPair {
    /// The keystore file's bytes.
    pub keystore: Vec<u8>,
    /// The truststore file's bytes.
    pub truststore: Vec<u8>,
    /// The leaf certificate, DER.
    pub leaf_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 DER.
    pub leaf_key_der: Vec<u8>,
}

/// Makes a [`ProvidedPair`] in `format`: the keystore under `password` (store and key), the
/// truststore under `truststore_password`.
pub fn provided_stores(
    names: &[&str],
    format: apim_certs::StoreFormat,
    alias: &str,
    password: &str,
    truststore_password: &str,
) -> ProvidedPair {
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    provided_stores_with_key(
        names,
        format,
        alias,
        password,
        truststore_password,
        leaf_key,
    )
}

/// [`provided_stores`] with the leaf's key given (an RSA one for the secure vault, from
/// [`apim_certs::generate_rsa_key`]).
pub fn provided_stores_with_key(
    names: &[&str],
    format: apim_certs::StoreFormat,
    alias: &str,
    password: &str,
    truststore_password: &str,
    leaf_key: rcgen::KeyPair,
) -> ProvidedPair {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(vec![]).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator's CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let mut leaf_params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    leaf_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("apim"),
    );
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let keystore = apim_certs::KeystoreBuilder::new()
        .private_key(
            alias,
            &leaf_key.serialize_der(),
            &[leaf.der().to_vec(), ca.der().to_vec()],
        )
        .to_bytes(format, password)
        .expect("keystore");
    let truststore = apim_certs::KeystoreBuilder::new()
        .trusted_cert("operator-ca", ca.der())
        .to_bytes(format, truststore_password)
        .expect("truststore");
    ProvidedPair {
        keystore,
        truststore,
        leaf_der: leaf.der().to_vec(),
        leaf_key_der: leaf_key.serialize_der(),
    }
}

/// Decrypts a secure vault value (`[secrets]`) with `key_pkcs8`, as the product does
/// (RSA-OAEP, SHA-1).
pub fn vault_decrypt(key_pkcs8: &[u8], b64: &str) -> String {
    apim_e2e::sim::cipher::decrypt(
        key_pkcs8,
        apim_e2e::sim::cipher::Transformation::OaepSha1,
        b64,
    )
    .expect("the value decrypts with the vault key")
}
