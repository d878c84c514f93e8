//! TLS 1.3 for the controller: the server configuration (its certificate chain includes the CA
//! so a first-contact agent can check its pin), the client-certificate policy, and the accept
//! loop that feeds finished handshakes to tonic.
//!
//! Client certificates are optional at the handshake (an unenrolled agent must reach `Enroll`).
//! The handshake proves that a peer holds the private key of the certificate it presents
//! (rustls checks its CertificateVerify signature); whether that certificate is *acceptable* —
//! chain to the control-plane CA, validity at this instant, clientAuth, identity, revocation —
//! is decided per call by [`super::auth::Authorizer`]. So a long-lived HTTP/2 connection cannot
//! outlive its certificate's expiry or revocation, and a bad certificate gets a precise
//! UNAUTHENTICATED / PERMISSION_DENIED instead of an opaque TLS alert.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::ServerConfig;
use super::error::ServerError;
use crate::state::ControllerState;

/// At most this many TLS handshakes run at once; further connections wait in the backlog.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;

/// The crypto provider used everywhere in the controller (ring; never the process default,
/// so a second provider elsewhere in the dependency graph cannot cause a panic).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::TlsConfig {
        reason: e.to_string(),
    }
}

/// A WebPKI client verifier trusting only the control-plane CA (`ca_der`); used per call.
pub fn ca_client_verifier(ca_der: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, ServerError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(tls_err)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(tls_err)
}

/// The handshake-time client policy: certificates are requested (the CA is named as the
/// acceptable issuer) but optional; a presented one must be backed by its private key. Chain
/// and time checks are left to the per-call authorizer (see the module docs).
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
        // Deliberately deferred: every call re-verifies the chain at its own instant.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Issues the controller's server certificate (SANs = `config.server_names`) and builds the
/// TLS 1.3-only server configuration presenting `[leaf, CA]`, with ALPN `h2`.
pub fn server_config(
    state: &ControllerState,
    config: &ServerConfig,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let ca = state.ca();
    let issued = ca
        .issue_server_cert(&config.server_names, config.server_cert_ttl)
        .map_err(|source| ServerError::Issue {
            action: "issuing the controller's TLS server certificate",
            source,
        })?;
    let chain = vec![
        CertificateDer::from(issued.cert.cert_der.clone()),
        CertificateDer::from(ca.cert_der().to_vec()),
    ];
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem().as_bytes()).map_err(tls_err)?;
    let verifier = Arc::new(PossessionOnly {
        webpki: ca_client_verifier(ca.cert_der())?,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    tracing::info!(
        names = ?config.server_names,
        serial = %issued.cert.serial,
        not_after = %issued.cert.not_after,
        "controller TLS certificate issued"
    );
    Ok(Arc::new(tls))
}

/// Accepts TCP connections until `stop` turns true, runs each TLS handshake in its own task
/// (bounded by a timeout, so a silent peer cannot hold a slot) and yields finished streams.
/// Failed handshakes are logged and dropped; they never reach tonic.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
        tracing::debug!("accept loop stopped");
    });
    ReceiverStream::new(rx)
}
