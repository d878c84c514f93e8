//! TLS for the control plane, in one place: every rustls configuration and verifier of apimctl
//! (ring as the crypto provider, never the process default).
//!
//! | who | what | here |
//! | --- | --- | --- |
//! | agent, operator → controller | TLS 1.3, trusts only the control-plane CA, client certificate, ALPN `h2` | [`client_config`] |
//! | agent enrolling (no CA yet) | the CA in the presented chain whose sha256 is the join token's pin | [`first_contact_config`] |
//! | controller | TLS 1.3, chain `[leaf, CA]`, client certificates requested but optional | [`server_config`] |
//! | controller, per call | WebPKI check of a client certificate against the CA | [`ca_client_verifier`] |
//! | agent → its own node's health endpoint | **any** certificate | [`insecure_local_probe_config`] |
//!
//! With the `channel` feature, [`connect`] and [`connect_lazy`] dial a tonic `Channel` through
//! these configurations ([`ControllerEndpoint`] says where).

use std::sync::{Arc, Mutex, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::control_plane::{ControlPlaneCa, IssuedKeyPair};
use crate::pki::sha256_fingerprint;

#[cfg(feature = "channel")]
mod channel;
#[cfg(feature = "channel")]
pub use channel::{ControllerEndpoint, connect, connect_lazy};

/// ALPN protocol of the control plane (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// A client identity: certificate chain (leaf first) and private key.
pub type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// What can go wrong building a TLS configuration or dialling through one.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configuration could not be built (bad PEM, no CA certificate, a rustls refusal).
    #[error("TLS configuration: {reason}")]
    Config {
        /// What rustls or the PEM parser said.
        reason: String,
    },

    /// The address to dial is unusable (not `host:port`, or a host that is no server name).
    #[error("address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The TCP connection or the TLS handshake failed.
    #[error("connecting to {address}: {reason}")]
    Connect {
        /// The address dialled.
        address: String,
        /// The transport's explanation, with its causes.
        reason: String,
    },
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config {
        reason: e.to_string(),
    }
}

/// The crypto provider of every configuration here (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(
    ders: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in ders {
        roots.add(der).map_err(config_err)?;
    }
    if roots.is_empty() {
        return Err(config_err("no CA certificate to trust"));
    }
    Ok(roots)
}

/// TLS 1.3 only, trusting only `ca_pem` (the control-plane CA), presenting `identity` when
/// given, ALPN `h2`.
pub fn client_config(
    ca_pem: &str,
    identity: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let cas = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(config_err)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_root_certificates(roots(cas)?);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// What the first-contact verifier saw when the pin did not match: the fingerprint of the last
/// certificate of the presented chain (`"none"` without one). Read it after a failed handshake.
#[derive(Debug, Clone, Default)]
pub struct PinMismatch(Arc<Mutex<Option<String>>>);

impl PinMismatch {
    /// The fingerprint seen instead of the pin, if the pin did not match (taken once).
    pub fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut seen| seen.take())
    }
}

/// First contact, before the agent has the CA: TLS 1.3, ALPN `h2`, no client certificate. The
/// controller presents `[leaf, CA]`; the CA is the certificate of the chain whose sha256 is
/// `ca_sha256` (the join token's pin), and the leaf must chain to it and match the dialled
/// name. A mismatch aborts the handshake before any application data is sent.
pub fn first_contact_config(
    ca_sha256: &str,
) -> Result<(rustls::ClientConfig, PinMismatch), TlsError> {
    let mismatch = PinMismatch::default();
    let verifier = PinnedCa {
        pin: ca_sha256.to_owned(),
        provider: provider(),
        mismatch: mismatch.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok((config, mismatch))
}

/// **Only for an agent probing its own node's local health endpoint**: accepts any server
/// certificate (the handshake signatures are still checked). A node may serve the pack's default
/// self-signed certificate, or one for its public name rather than the address probed; the
/// probe sends no credentials and reads only the status and a body marker, so the worst an
/// impostor can do is fake readiness, which the node's log and process checks contradict.
/// Never use it for anything else.
pub fn insecure_local_probe_config() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

/// The controller's server configuration: TLS 1.3 only, ALPN `h2`, presenting `[leaf, CA]`
/// (`issued` from [`ControlPlaneCa::issue_server_cert`], so a first-contact agent finds its
/// pin), client certificates requested with `ca` named as the issuer but optional (an
/// unenrolled agent must reach `Enroll`); a presented one must be backed by its private key,
/// and everything else about it is for [`ca_client_verifier`], per call.
pub fn server_config(
    ca: &ControlPlaneCa,
    issued: &IssuedKeyPair,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(ca, ServerCert::new(ca, issued)?)
}

/// [`server_config`] presenting whatever `cert` holds at each handshake, so the controller
/// renews its certificate without a restart: connections open keep their session, new ones
/// get the new certificate.
pub fn server_config_with(
    ca: &ControlPlaneCa,
    cert: Arc<ServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = PossessionOnly {
        webpki: ca_client_verifier(ca.cert_der())?,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The controller's serving certificate and key (`[leaf, CA]`), replaceable while it serves.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// The certificate `issued` by `ca`.
    pub fn new(ca: &ControlPlaneCa, issued: &IssuedKeyPair) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(certified_key(ca, issued)?),
        }))
    }

    /// Presents `issued` from the next handshake on.
    pub fn replace(&self, ca: &ControlPlaneCa, issued: &IssuedKeyPair) -> Result<(), TlsError> {
        let key = certified_key(ca, issued)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn certified_key(
    ca: &ControlPlaneCa,
    issued: &IssuedKeyPair,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = vec![
        CertificateDer::from(issued.cert.cert_der.clone()),
        CertificateDer::from(ca.cert_der().to_vec()),
    ];
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem().as_bytes()).map_err(config_err)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(config_err)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// A WebPKI client-certificate verifier trusting only the CA `ca_der` (chain, validity at the
/// given instant, clientAuth); the controller runs it on every call, an agent on its own
/// certificate before trusting it.
pub fn ca_client_verifier(ca_der: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = roots([CertificateDer::from(ca_der.to_vec())])?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(config_err)
}

// ---------------------------------------------------------------------------------------------
// verifiers

/// First contact: trust the presented CA whose sha256 is the pin, then verify as usual.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
    mismatch: PinMismatch,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<String> = intermediates
            .iter()
            .map(|c| sha256_fingerprint(c))
            .collect();
        let Some(ca) = intermediates
            .iter()
            .zip(&presented)
            .find(|(_, fp)| **fp == self.pin)
            .map(|(c, _)| c.clone().into_owned())
        else {
            let actual = presented.last().cloned().unwrap_or_else(|| "none".into());
            if let Ok(mut seen) = self.mismatch.0.lock() {
                *seen = Some(actual);
            }
            return Err(rustls::Error::General(
                "controller CA does not match the join token's pin".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Local health probes: any certificate; the handshake signatures are still checked.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The controller at the handshake: client certificates requested (the CA named as issuer) but
/// optional; a presented one must be backed by its key. Chain, time, identity and revocation
/// are checked per call, so a long-lived connection cannot outlive its certificate.
#[derive(Debug)]
struct PossessionOnly {
    webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for PossessionOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred on purpose: every call re-verifies the chain at its own instant.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
