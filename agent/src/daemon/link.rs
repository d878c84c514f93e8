//! The agent's mTLS connection to the controller, and the renewal of its certificate.
//!
//! [`Control`] loads the identity [`crate::daemon::identity`] persisted, and hands out a
//! [`RenewingChannel`]: a tonic transport that always sends through the *current* TLS 1.3
//! channel (CA pinned, agent certificate presented). A background task
//! ([`Control::spawn_renewal`]) calls `Enrollment.Renew` at 2/3 of the certificate's life with
//! a fresh key, verifies and persists the answer atomically, and swaps the channel, so a client
//! built once keeps working across renewals. Errors are retried with capped backoff.
//!
//! The TLS configurations and the dialer are [`apim_certs::tls`]'s.
//!
//! Several controllers: the channel dials one address of [`ControlConfig::endpoints`] at a
//! time; [`Control::fail_over`] moves it to the next (the session loop calls it when a connect
//! fails or the stream drops). Each address keeps its own TLS server name check.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use apim_certs::AgentKey;
use apim_certs::tls::{self, ControllerEndpoint};
use apim_proto::v1::RenewRequest;
use apim_proto::v1::enrollment_client::EnrollmentClient;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::Channel;

use crate::daemon::identity::{AgentIdentity, EnrollError, tls_err};

/// Shortest pause between two renewal attempts (protects the controller from a hot loop).
const MIN_RENEW_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between failed renewal attempts.
const MAX_RENEW_BACKOFF: Duration = Duration::from_secs(60);

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
    /// Where the controllers listen, in the order they are tried (at least one).
    pub endpoints: Vec<ControllerEndpoint>,
    /// Where [`crate::daemon::identity`] persisted the identity (renewals are written there too).
    pub state_dir: PathBuf,
    /// Limit for each TCP connect and TLS handshake.
    pub connect_timeout: Duration,
}

struct Inner {
    config: ControlConfig,
    identity: watch::Sender<Arc<AgentIdentity>>,
    channel: watch::Sender<Channel>,
    /// Index in `config.endpoints` of the address the channel dials.
    at: AtomicUsize,
    /// Serialises renewals (the task and an explicit [`Control::renew`]).
    renewing: tokio::sync::Mutex<()>,
}

impl Inner {
    /// The endpoint the channel dials now.
    fn endpoint(&self) -> &ControllerEndpoint {
        &self.config.endpoints[self.at.load(Ordering::Acquire) % self.config.endpoints.len()]
    }
}

/// The agent's authenticated link to the controller. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("endpoint", self.inner.endpoint())
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
        if config.endpoints.is_empty() {
            return Err(EnrollError::BadAnswer {
                reason: "no controller address configured".into(),
            });
        }
        let channel = Self::channel_for(&config.endpoints[0], &config, &identity)?;
        Ok(Control {
            inner: Arc::new(Inner {
                config,
                identity: watch::channel(Arc::new(identity)).0,
                channel: watch::channel(channel).0,
                at: AtomicUsize::new(0),
                renewing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn channel_for(
        endpoint: &ControllerEndpoint,
        config: &ControlConfig,
        identity: &AgentIdentity,
    ) -> Result<Channel, EnrollError> {
        Ok(tls::connect_lazy(
            endpoint,
            Arc::new(identity.client_config()?),
            config.connect_timeout,
        )?)
    }

    /// The address the channel dials now.
    pub fn address(&self) -> &str {
        &self.inner.endpoint().address
    }

    /// Moves the channel to the next controller of the list (after the last: the first again)
    /// and returns its address; with a single address nothing changes (`None`).
    pub fn fail_over(&self) -> Result<Option<&str>, EnrollError> {
        let n = self.inner.config.endpoints.len();
        if n < 2 {
            return Ok(None);
        }
        let next = (self.inner.at.load(Ordering::Acquire) + 1) % n;
        let endpoint = &self.inner.config.endpoints[next];
        let channel = Self::channel_for(endpoint, &self.inner.config, &self.identity())?;
        self.inner.at.store(next, Ordering::Release);
        self.inner.channel.send_replace(channel);
        Ok(Some(&endpoint.address))
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

    /// Renews now: fresh key, CSR, `Renew` over the current channel (`Recover` when the
    /// certificate has expired, e.g. after a controller outage longer than its life); the
    /// answer must be for the same machine and the same (pinned) CA. Persists it, then swaps
    /// the channel.
    pub async fn renew(&self) -> Result<Arc<AgentIdentity>, EnrollError> {
        let _one_at_a_time = self.inner.renewing.lock().await;
        let current = self.identity();
        let expired = current.info().expired();
        let machine = current.info().machine.clone();
        let key = AgentKey::generate().map_err(|source| EnrollError::Certs {
            action: "generating the renewal key",
            source,
        })?;
        let csr_der = key.csr_der(&machine).map_err(|source| EnrollError::Certs {
            action: "building the renewal CSR",
            source,
        })?;
        let mut client = EnrollmentClient::new(self.channel());
        let (call, answer) = if expired {
            ("Recover", client.recover(RenewRequest { csr_der }).await)
        } else {
            ("Renew", client.renew(RenewRequest { csr_der }).await)
        };
        let response = answer
            .map_err(|status| EnrollError::refused(call, &status))?
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
        let channel = Self::channel_for(self.inner.endpoint(), &self.inner.config, &renewed)?;
        let renewed = Arc::new(renewed);
        self.inner.channel.send_replace(channel);
        self.inner.identity.send_replace(Arc::clone(&renewed));
        tracing::info!(
            %machine,
            serial = %renewed.info().serial,
            not_after = %renewed.info().not_after,
            recovered = expired,
            "agent certificate renewed"
        );
        Ok(renewed)
    }

    /// Replaces the identity (after enrolling again with a new join token) and swaps the
    /// channel.
    pub fn replace_identity(&self, identity: AgentIdentity) -> Result<(), EnrollError> {
        let channel = Self::channel_for(self.inner.endpoint(), &self.inner.config, &identity)?;
        self.inner.channel.send_replace(channel);
        self.inner.identity.send_replace(Arc::new(identity));
        Ok(())
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
