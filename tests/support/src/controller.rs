//! The real controller in-process on 127.0.0.1 over real TLS: a fresh data directory (CA,
//! SQLite store, artifacts, product PKIs) that survives [`Controller::restart`], configuration
//! tweaks, credentials of every kind, channels, and the operator calls tests make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apim_certs::ControlPlaneCa;
use apim_certs::tls::{self, ControllerEndpoint};
use apim_controller::server::{self, ControllerState, ServerConfig};
use apim_controller::store::Store;
use apim_proto::v1::{
    ApplyRequest, ClusterStatus, CreateTokenRequest, RolloutState, StatusRequest,
    enrollment_client::EnrollmentClient, operator_service_client::OperatorServiceClient,
};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::ca::{self, Creds, mint_with_rcgen};
use crate::plans::secrets;
use crate::wait::{PATIENCE, within};

/// Connect timeout for test clients.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A running controller over its own data directory.
pub struct Controller {
    /// The data directory (`ca/`, the store, `artifacts/`, `pki/`).
    pub dir: TempDir,
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    /// What clients dial.
    pub endpoint: ControllerEndpoint,
    /// Its state (the store's contents, the CA, the agents' sessions).
    pub state: Arc<ControllerState>,
    config: ServerConfig,
    /// Plan generations whose secrets the store keeps (kept across restarts).
    secrets_retention: u64,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), server::ServerError>>>,
}

/// A listener on `addr` that a restarted controller can bind again at once.
fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("bind loopback");
    socket.listen(128).expect("listen")
}

impl Controller {
    /// Starts a controller with default settings on a fresh data directory.
    pub async fn start() -> Controller {
        Self::start_with(|_| {}).await
    }

    /// Starts a controller after `tweak` adjusted its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Controller {
        Self::start_keeping(apim_controller::store::DEFAULT_SECRETS_RETENTION, tweak).await
    }

    /// Starts a controller whose store keeps the secrets of the last `secrets_retention`
    /// generations (the controller's `secrets_retention`), after `tweak`.
    pub async fn start_keeping(
        secrets_retention: u64,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = "127.0.0.1:0".parse().expect("addr");
        let mut config = ServerConfig::new(vec!["127.0.0.1".into(), "localhost".into()]);
        tweak(&mut config);
        Self::start_on(dir, addr, config, secrets_retention).await
    }

    async fn start_on(
        dir: TempDir,
        addr: SocketAddr,
        config: ServerConfig,
        secrets_retention: u64,
    ) -> Controller {
        let data = dir.path();
        let ca = ControlPlaneCa::load_or_create(&data.join("ca")).expect("CA");
        let mut store = Store::open(data).expect("store");
        store.set_secrets_retention(secrets_retention);
        let state = Arc::new(
            ControllerState::open(ca, &data.join("artifacts"), &data.join("pki"), store)
                .expect("controller state"),
        );
        let listener = bind(addr);
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            config.clone(),
            Arc::clone(&state),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let c = Controller {
            dir,
            addr,
            endpoint: ControllerEndpoint::parse(&addr.to_string()).expect("endpoint"),
            state,
            config,
            secrets_retention,
            stop: Some(stop),
            task: Some(task),
        };
        // The test plans' MySQL driver, as `apimctl apply` would have uploaded it.
        c.store_pack(&crate::plans::mysql_driver_jar());
        c
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), server::ServerError> {
        self.stop_server().await
    }

    async fn stop_server(&mut self) -> Result<(), server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server task");
        within("server shutdown", task)
            .await
            .expect("server task panicked")
    }

    /// Stops the server (its task and the rollout engine) and starts a new one on the same
    /// data directory, port and configuration — a controller restart.
    pub async fn restart(mut self) -> Controller {
        let _ = self.stop_server().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        Self::start_on(dir, self.addr, self.config.clone(), self.secrets_retention).await
    }

    /// The CA certificate clients pin.
    pub fn ca_pem(&self) -> String {
        self.state.ca().cert_pem().to_owned()
    }

    /// Where the control-plane CA's files are.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// A channel presenting `creds` (or nothing), trusting this controller's CA.
    pub async fn channel(&self, creds: Option<&Creds>) -> Channel {
        channel_to(&self.endpoint, &self.ca_pem(), creds).await
    }

    /// An operator certificate issued by this controller's CA.
    pub fn operator_creds(&self, name: &str) -> Creds {
        ca::operator_creds(self.state.ca(), name)
    }

    /// An agent certificate for `machine` signed by this CA (recorded as enrolled, as if it had
    /// come through `Enroll`).
    pub fn agent_creds(&self, machine: &str) -> Creds {
        let (creds, issued) = ca::agent_creds(self.state.ca(), machine);
        self.state.record_issued(machine, &issued, true);
        creds
    }

    /// An agent certificate for `machine` signed by the real CA key with rcgen, whose validity
    /// ended an hour ago.
    pub fn expired_agent_creds(&self, machine: &str) -> Creds {
        mint_with_rcgen(&self.ca_dir(), machine, |p| {
            let now = OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::hours(2);
            p.not_after = now - time::Duration::hours(1);
        })
    }

    /// An operator client (`alice`).
    pub async fn operator(&self) -> OperatorServiceClient<Channel> {
        let creds = self.operator_creds("alice");
        OperatorServiceClient::new(self.channel(Some(&creds)).await)
    }

    /// Creates a join token through the real `CreateToken` RPC.
    pub async fn token_for(&self, machine: &str, ttl_s: u64) -> String {
        self.operator()
            .await
            .create_token(CreateTokenRequest {
                machine: machine.into(),
                ttl_s,
            })
            .await
            .expect("create token")
            .into_inner()
            .token
    }

    /// Stores a pack's bytes as an artifact (as an upload would); returns its sha256.
    pub fn store_pack(&self, bytes: &[u8]) -> String {
        let sha = apim_plan::digest(bytes);
        let path = self.state.artifacts().path_for(&sha).expect("path");
        std::fs::write(path, bytes).expect("write pack");
        sha
    }

    /// Applies `plan` with the test plans' [`secrets`]; returns (generation, rollout id).
    pub async fn apply(&self, plan: &str) -> Result<(u64, String), tonic::Status> {
        let r = self
            .operator()
            .await
            .apply(ApplyRequest {
                strict: false,
                plan_toml: plan.into(),
                plan_path: "plan.toml".into(),
                expected_cluster_revision: None,
                author: "test".into(),
                resolved_secrets: secrets(),
                provided_files: Default::default(),
            })
            .await?
            .into_inner();
        Ok((r.generation, r.rollout_id))
    }

    /// The cluster's status.
    pub async fn status(&self) -> ClusterStatus {
        self.operator()
            .await
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Waits until the latest rollout is in `state`.
    pub async fn wait_rollout(&self, state: RolloutState) -> ClusterStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let s = self.status().await;
            if s.rollout.as_ref().is_some_and(|r| r.state() == state) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollout never reached {state:?}: {:?}",
                s.rollout
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Dials `endpoint` over TLS 1.3, trusting `ca_pem`, presenting `creds` when given.
pub async fn channel_to(
    endpoint: &ControllerEndpoint,
    ca_pem: &str,
    creds: Option<&Creds>,
) -> Channel {
    let config = tls::client_config(ca_pem, creds.map(Creds::identity)).expect("client config");
    tls::connect(endpoint, Arc::new(config), CONNECT_TIMEOUT)
        .await
        .expect("TLS connect")
}

/// An enrollment client without a certificate.
pub async fn anonymous_enrollment(c: &Controller) -> EnrollmentClient<Channel> {
    EnrollmentClient::new(c.channel(None).await)
}
