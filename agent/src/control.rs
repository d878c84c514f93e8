//! The agent's mTLS connection to the controller, and the renewal of its certificate.
//!
//! [`Control`] loads the identity [`crate::enroll`] persisted, and hands out a
//! [`RenewingChannel`]: a tonic transport that always sends through the *current* TLS 1.3
//! channel (CA pinned, agent certificate presented). A background task
//! ([`Control::spawn_renewal`]) calls `Enrollment.Renew` at 2/3 of the certificate's life with
//! a fresh key, verifies and persists the answer atomically, and swaps the channel, so a client
//! built once keeps working across renewals. Errors are retried with capped backoff.
//!
//! The TLS pieces ([`client_config`], [`connect`], [`connect_lazy`]) are public so the CLI and
//! tests can dial the controller with other identities the same way.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use apim_certs::AgentKey;
use apim_proto::v1::RenewRequest;
use apim_proto::v1::enrollment_client::EnrollmentClient;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::enroll::{AgentIdentity, EnrollError, tls_err};

/// Shortest pause between two renewal attempts (protects the controller from a hot loop).
const MIN_RENEW_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between failed renewal attempts.
const MAX_RENEW_BACKOFF: Duration = Duration::from_secs(60);

/// The crypto provider for every agent TLS connection (ring, never the process default).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the controller listens, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerEndpoint {
    /// `host:port` to dial (a DNS name, an IPv4 address, or `[v6]`).
    pub address: String,
    /// The name checked against the controller certificate's SANs.
    pub server_name: String,
}

impl ControllerEndpoint {
    /// Parses `host:port`; the server name is the host (brackets of an IPv6 literal removed).
    pub fn parse(address: &str) -> Result<Self, EnrollError> {
        let bad = |reason: &str| EnrollError::Connect {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        port.parse::<u16>().map_err(|_| bad("invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(ControllerEndpoint {
            address: address.to_owned(),
            server_name: host.to_owned(),
        })
    }

    /// Checks the server certificate against `name` instead of the dialled host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }
}

/// A TLS 1.3-only client configuration trusting only `ca_pem`, presenting `identity` (chain and
/// key) when given, with ALPN `h2`.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, EnrollError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(tls_err)?).map_err(tls_err)?;
    }
    if roots.is_empty() {
        return Err(tls_err("no CA certificate in the trusted CA PEM"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Dials TCP and runs the TLS handshake with a fixed configuration; plugged into tonic with
/// `connect_with_connector` (the endpoint URI is `http://…` because TLS happens here).
#[derive(Clone)]
struct TlsDialer {
    address: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl Service<Uri> for TlsDialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            tcp.set_nodelay(true)?;
            let tls = this.connector.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

fn endpoint_and_dialer(
    endpoint: &ControllerEndpoint,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(Endpoint, TlsDialer), EnrollError> {
    let connect_err = |reason: String| EnrollError::Connect {
        address: endpoint.address.clone(),
        reason,
    };
    let server_name = ServerName::try_from(endpoint.server_name.clone())
        .map_err(|e| connect_err(format!("server name {:?}: {e}", endpoint.server_name)))?;
    let uri = Endpoint::from_shared(format!("http://{}", endpoint.address))
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(timeout)
        // Packs arrive in 1 MiB messages: room for several in flight (hyper's client default
        // is a 2 MiB stream window).
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    Ok((
        uri,
        TlsDialer {
            address: endpoint.address.clone(),
            server_name,
            connector: TlsConnector::from(config),
        },
    ))
}

/// Connects now (TCP + TLS handshake), so a bad address or certificate fails here.
pub async fn connect(
    endpoint: &ControllerEndpoint,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, EnrollError> {
    let (uri, dialer) = endpoint_and_dialer(endpoint, config, timeout)?;
    uri.connect_with_connector(dialer)
        .await
        .map_err(|e| EnrollError::Connect {
            address: endpoint.address.clone(),
            reason: error_chain(&e),
        })
}

/// A channel that connects on first use and reconnects after failures.
pub fn connect_lazy(
    endpoint: &ControllerEndpoint,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, EnrollError> {
    let (uri, dialer) = endpoint_and_dialer(endpoint, config, timeout)?;
    Ok(uri.connect_with_connector_lazy(dialer))
}

/// An error and its sources on one line (tonic's transport errors hide the cause otherwise).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A tonic transport that sends each call through the controller channel current at the time
/// of the call (see the module docs). Clone it freely.
#[derive(Clone, Debug)]
pub struct RenewingChannel {
    current: watch::Receiver<Channel>,
    ready: Option<Channel>,
}

impl Service<http::Request<Body>> for RenewingChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel polled ready is the one that must carry the call (tower's contract).
        let current = &self.current;
        self.ready
            .get_or_insert_with(|| current.borrow().clone())
            .poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let mut channel = self
            .ready
            .take()
            .unwrap_or_else(|| self.current.borrow().clone());
        channel.call(req)
    }
}

/// How the agent reaches the controller.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where the controller listens.
    pub endpoint: ControllerEndpoint,
    /// Where [`crate::enroll`] persisted the identity (renewals are written there too).
    pub state_dir: PathBuf,
    /// Limit for each TCP connect and TLS handshake.
    pub connect_timeout: Duration,
}

struct Inner {
    config: ControlConfig,
    identity: watch::Sender<Arc<AgentIdentity>>,
    channel: watch::Sender<Channel>,
    /// Serialises renewals (the task and an explicit [`Control::renew`]).
    renewing: tokio::sync::Mutex<()>,
}

/// The agent's authenticated link to the controller. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("endpoint", &self.inner.config.endpoint)
            .field("identity", &self.inner.identity.borrow().info())
            .finish()
    }
}

impl Control {
    /// Loads the persisted identity from `config.state_dir` and prepares the channel (it
    /// connects on first use, so the agent can start while the controller is down).
    pub fn open(config: ControlConfig) -> Result<Self, EnrollError> {
        let identity = AgentIdentity::load(&config.state_dir)?;
        Self::with_identity(config, identity)
    }

    /// Like [`Control::open`] with an identity already in hand (e.g. just enrolled).
    pub fn with_identity(
        config: ControlConfig,
        identity: AgentIdentity,
    ) -> Result<Self, EnrollError> {
        let channel = Self::channel_for(&config, &identity)?;
        Ok(Control {
            inner: Arc::new(Inner {
                config,
                identity: watch::channel(Arc::new(identity)).0,
                channel: watch::channel(channel).0,
                renewing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn channel_for(
        config: &ControlConfig,
        identity: &AgentIdentity,
    ) -> Result<Channel, EnrollError> {
        connect_lazy(
            &config.endpoint,
            Arc::new(identity.client_config()?),
            config.connect_timeout,
        )
    }

    /// The transport for gRPC clients, e.g. `AgentServiceClient::new(control.channel())`.
    pub fn channel(&self) -> RenewingChannel {
        RenewingChannel {
            current: self.inner.channel.subscribe(),
            ready: None,
        }
    }

    /// The identity in use now.
    pub fn identity(&self) -> Arc<AgentIdentity> {
        Arc::clone(&self.inner.identity.borrow())
    }

    /// Changes whenever a renewal installs a new identity.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AgentIdentity>> {
        self.inner.identity.subscribe()
    }

    /// Renews now: fresh key, CSR, `Renew` over the current channel; the answer must be for
    /// the same machine and the same (pinned) CA. Persists it, then swaps the channel.
    pub async fn renew(&self) -> Result<Arc<AgentIdentity>, EnrollError> {
        let _one_at_a_time = self.inner.renewing.lock().await;
        let current = self.identity();
        let machine = current.info().machine.clone();
        let key = AgentKey::generate().map_err(|source| EnrollError::Certs {
            action: "generating the renewal key",
            source,
        })?;
        let csr_der = key.csr_der(&machine).map_err(|source| EnrollError::Certs {
            action: "building the renewal CSR",
            source,
        })?;
        let response = EnrollmentClient::new(self.channel())
            .renew(RenewRequest { csr_der })
            .await
            .map_err(|status| EnrollError::Refused {
                call: "Renew",
                code: status.code(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        let pinned =
            CertificateDer::from_pem_slice(current.ca_pem().as_bytes()).map_err(tls_err)?;
        apim_certs::verify_ca_pin(&response.ca_pem, &apim_certs::sha256_fingerprint(&pinned))
            .map_err(|e| EnrollError::BadAnswer {
                reason: format!("renewal returned another CA (rotation is not supported): {e}"),
            })?;
        let renewed = AgentIdentity::from_parts(
            &key,
            &response.cert_chain_pem,
            current.ca_pem(),
            Some(&machine),
            OffsetDateTime::from(SystemTime::now()),
        )?;
        renewed.save(&self.inner.config.state_dir)?;
        let channel = Self::channel_for(&self.inner.config, &renewed)?;
        let renewed = Arc::new(renewed);
        self.inner.channel.send_replace(channel);
        self.inner.identity.send_replace(Arc::clone(&renewed));
        tracing::info!(
            %machine,
            serial = %renewed.info().serial,
            not_after = %renewed.info().not_after,
            "agent certificate renewed"
        );
        Ok(renewed)
    }

    /// Starts the renewal loop; it stops when the returned handle is dropped.
    pub fn spawn_renewal(&self) -> RenewalTask {
        let control = self.clone();
        RenewalTask(tokio::spawn(async move { control.renewal_loop().await }))
    }

    async fn renewal_loop(self) {
        let mut backoff = MIN_RENEW_PAUSE;
        loop {
            let due = self.identity().info().renew_due();
            let wait =
                Duration::try_from(due - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait.max(MIN_RENEW_PAUSE)).await;
            match self.renew().await {
                Ok(_) => backoff = MIN_RENEW_PAUSE,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "certificate renewal failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RENEW_BACKOFF);
                }
            }
        }
    }
}

/// The running renewal loop; dropping it stops the loop.
#[derive(Debug)]
pub struct RenewalTask(tokio::task::JoinHandle<()>);

impl Drop for RenewalTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_host_and_port() {
        let e = ControllerEndpoint::parse("ctl.example.com:7443").expect("dns");
        assert_eq!(e.server_name, "ctl.example.com");
        let e = ControllerEndpoint::parse("[::1]:7443").expect("v6");
        assert_eq!(
            (e.address.as_str(), e.server_name.as_str()),
            ("[::1]:7443", "::1")
        );
        let e = ControllerEndpoint::parse("10.0.0.5:7443")
            .expect("v4")
            .with_server_name("ctl");
        assert_eq!(e.server_name, "ctl");
        for bad in ["ctl.example.com", ":7443", "ctl:http", "ctl:70000"] {
            assert!(ControllerEndpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_config_offers_h2_and_needs_a_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = apim_certs::ControlPlaneCa::load_or_create(dir.path()).expect("CA");
        let config = client_config(ca.cert_pem(), None).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(client_config("not a pem", None).is_err());
    }
}
