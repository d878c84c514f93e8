//! TLS 1.3 for the controller: its serving certificate (issued at start, renewed at 2/3 of its
//! life and swapped in without a restart), the configuration from `apim_certs::tls` (the chain
//! includes the CA so a first-contact agent can check its pin), and the accept loop that feeds
//! finished handshakes to tonic.
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

use apim_certs::IssuedKeyPair;
use apim_certs::tls::{self, ServerCert};
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

/// Issues the controller's server certificate (SANs = `config.server_names`).
fn issue(state: &ControllerState, config: &ServerConfig) -> Result<IssuedKeyPair, ServerError> {
    let issued = state
        .ca()
        .issue_server_cert(&config.server_names, config.server_cert_ttl)
        .map_err(|source| ServerError::Issue {
            action: "issuing the controller's TLS server certificate",
            source,
        })?;
    tracing::info!(
        names = ?config.server_names,
        serial = %issued.cert.serial,
        not_after = %issued.cert.not_after,
        "controller TLS certificate issued"
    );
    Ok(issued)
}

/// The server configuration (see [`apim_certs::tls::server_config_with`]) presenting a
/// certificate issued now, and that certificate, for [`renew`] to replace.
pub fn server_config(
    state: &ControllerState,
    config: &ServerConfig,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServerCert>), ServerError> {
    let issued = issue(state, config)?;
    let cert = ServerCert::new(state.ca(), &issued).map_err(tls_err)?;
    let tls = tls::server_config_with(state.ca(), Arc::clone(&cert)).map_err(tls_err)?;
    Ok((tls, cert))
}

/// Renews the serving certificate at 2/3 of its lifetime (`config.server_cert_ttl`, counted from
/// its issue; its `not_before` is back-dated for clock skew), forever (until `stop`), swapping it
/// into `cert` without a restart. A failed issue is retried after a minute at most (sooner when
/// the old one ends first); the old certificate keeps serving meanwhile.
pub async fn renew(
    state: Arc<ControllerState>,
    config: Arc<ServerConfig>,
    cert: Arc<ServerCert>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = config.server_cert_ttl;
    let mut issued_at = tokio::time::Instant::now();
    let mut wait = ttl * 2 / 3;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep_until(issued_at + wait) => {}
        }
        let renewed = issue(&state, &config).and_then(|issued| {
            cert.replace(state.ca(), &issued).map_err(tls_err)?;
            Ok(issued)
        });
        match renewed {
            Ok(issued) => {
                tracing::info!(serial = %issued.cert.serial, "controller TLS certificate renewed and in use");
                issued_at = tokio::time::Instant::now();
                wait = ttl * 2 / 3;
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing the controller's TLS certificate failed; retrying");
                let left = ttl.saturating_sub(issued_at.elapsed());
                wait = issued_at.elapsed()
                    + Duration::from_secs(60)
                        .min(left / 2)
                        .max(Duration::from_secs(1));
            }
        }
    }
}

fn tls_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::TlsConfig {
        reason: e.to_string(),
    }
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
