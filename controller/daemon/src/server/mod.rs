//! The controller's gRPC server (mTLS; enrollment is the only call allowed without a client
//! certificate).
//!
//! [`serve`] runs the four `apimctl.v1` services over TLS 1.3 on a listener the caller binds:
//!
//! | piece | job |
//! | --- | --- |
//! | [`tls`] | TLS 1.3 only, server chain `[leaf, CA]`, client certificates optional at the handshake but proven by key possession; handshakes in their own tasks with a timeout |
//! | [`auth`] | one tower service in front of every route: path → [`auth::Rpc`] → certificate verified *per call* (CA chain, validity now, clientAuth) → identity → revocation → access table; deny by default |
//! | [`enrollment`] | `Enroll` (join token → machine; CSR key only) and `Renew` (same machine as the presented certificate) |
//! | [`agent`] | `Connect`: Hello → desired spec, status reports, cut on revocation, expiry or shutdown |
//! | [`artifacts`] | `Fetch`/`Stat` for agents, `Upload` for operators, over [`crate::artifacts`] |
//! | [`operator`] | `Apply`/`Plan` (through [`crate::rollout`]), `Status`/`Watch`, `CreateToken`, `ListAgents`, `Revoke`; `ListArtifacts`/`PruneArtifacts` in `packs` |
//! | [`nodes`] | `OperateNodes`: restart, stop, start (a new generation with the nodes' run state) |
//! | [`show`] | `ShowNode` (a node's spec, secrets masked) and `Logs` (relayed through its agent) |
//! | [`destroy`] | `Destroy`: destroy specs pushed, the machines' progress streamed |
//! | `drift`, `repair` | `CheckDrift` (the agents' `CheckDrift` command, answered bounded); with `[rollout] drift = "repair"`, drifted nodes restarted through the gated path |
//! | `members` | `ListControllers`: the controllers of the cluster, which one leads, their versions and lag |
//! | [`health`] | `grpc.health.v1.Health` (`Check`/`Watch`): SERVING once the store is open and the rollout engine runs, NOT_SERVING from shutdown on; callable without a certificate |
//! | [`error`] | [`ServerError`] and its one mapping to `tonic::Status` |
//!
//! Identity always comes from the verified client certificate (never from a message field); a
//! message naming another machine is PERMISSION_DENIED.

pub mod agent;
pub mod artifacts;
pub mod auth;
pub mod destroy;
mod drift;
pub mod enrollment;
pub mod error;
pub mod health;
mod history;
mod members;
mod nodes;
pub mod operator;
mod packs;
mod repair;
pub mod show;

pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::agent_service_server::AgentServiceServer;
use apim_proto::v1::artifact_service_server::ArtifactServiceServer;
use apim_proto::v1::enrollment_server::EnrollmentServer;
use apim_proto::v1::operator_service_server::OperatorServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;

pub use crate::state::{AgentSnapshot, ControllerState};
pub use auth::{Access, Caller, Rpc};
pub use error::ServerError;

/// Default lifetime of a join token created with `ttl_s = 0`.
pub const DEFAULT_TOKEN_TTL: Duration = apim_certs::DEFAULT_TOKEN_TTL;
/// Longest join token an operator may ask for (kubeadm's default bootstrap-token lifetime).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long after its expiry an agent certificate may still recover by default (30 days).
pub const DEFAULT_AGENT_RECOVERY_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest piece of an artifact sent per `Chunk` (the contract's limit).
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024;

/// How the server runs. Build with [`ServerConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// DNS names and IP addresses agents and operators dial; they become the SANs of the
    /// controller's TLS certificate. At least one.
    pub server_names: Vec<String>,
    /// Lifetime of the controller's TLS certificate (issued at every start, renewed at 2/3).
    pub server_cert_ttl: Duration,
    /// Lifetime of agent certificates (agents renew at 2/3 of it).
    pub agent_cert_ttl: Duration,
    /// How long after its expiry an agent certificate may still `Recover` (an agent cut off by
    /// a controller outage longer than its certificate's life rejoins without a person).
    pub agent_recovery_grace: Duration,
    /// Lifetime of operator certificates renewed with `Renew`.
    pub operator_cert_ttl: Duration,
    /// Lifetime of a join token created with `ttl_s = 0`.
    pub token_default_ttl: Duration,
    /// Longest join token lifetime an operator may request.
    pub token_max_ttl: Duration,
    /// How long a TLS handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
    /// How long a new `Connect` stream may stay silent before its `Hello`.
    pub hello_timeout: Duration,
    /// Bytes per `Fetch` chunk (at most [`MAX_CHUNK_SIZE`]).
    pub chunk_size: usize,
    /// Largest artifact accepted by `Upload`.
    pub max_artifact_size: u64,
    /// HTTP/2 keepalive ping interval, to notice vanished agents.
    pub keepalive_interval: Duration,
}

impl ServerConfig {
    /// Production defaults for a controller reachable as `server_names`.
    pub fn new(server_names: Vec<String>) -> Self {
        ServerConfig {
            server_names,
            server_cert_ttl: apim_certs::DEFAULT_SERVER_CERT_TTL,
            agent_cert_ttl: apim_certs::DEFAULT_AGENT_CERT_TTL,
            agent_recovery_grace: DEFAULT_AGENT_RECOVERY_GRACE,
            operator_cert_ttl: apim_certs::DEFAULT_OPERATOR_CERT_TTL,
            token_default_ttl: DEFAULT_TOKEN_TTL,
            token_max_ttl: MAX_TOKEN_TTL,
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(30),
            chunk_size: MAX_CHUNK_SIZE,
            max_artifact_size: 16 * 1024 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

/// What every service holds: the state, the configuration and the shutdown flag.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    state: Arc<ControllerState>,
    config: Arc<ServerConfig>,
    stop: watch::Receiver<bool>,
}

/// Serves `apimctl.v1` on `listener` until `shutdown` completes, then closes open agent
/// streams (UNAVAILABLE, so agents reconnect elsewhere or later) and returns once every
/// connection is done. Issues the controller's TLS certificate from `state`'s CA first.
pub async fn serve<F>(
    config: ServerConfig,
    state: Arc<ControllerState>,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send,
{
    if config.chunk_size == 0 || config.chunk_size > MAX_CHUNK_SIZE {
        return Err(ServerError::InvalidArgument {
            field: "chunk_size",
            reason: format!("must be 1..={MAX_CHUNK_SIZE}"),
        });
    }
    let config = Arc::new(config);
    let (tls_config, serving) = tls::server_config(&state, &config)?;
    let verifier = apim_certs::tls::ca_client_verifier(state.ca().cert_der()).map_err(|e| {
        ServerError::TlsConfig {
            reason: e.to_string(),
        }
    })?;
    let authorizer =
        auth::Authorizer::new(verifier, Arc::clone(&state), config.agent_recovery_grace);
    let (stop_tx, stop_rx) = watch::channel(false);
    let incoming = tls::incoming(
        listener,
        TlsAcceptor::from(tls_config),
        config.handshake_timeout,
        stop_rx.clone(),
    );
    let (health, health_svc) = health::service(stop_rx.clone()).await;
    tokio::spawn(crate::rollout::Engine::new(Arc::clone(&state)).run(stop_rx.clone()));
    // Several controllers on one store: membership, the rollout lease, others' writes.
    let ha = tokio::spawn(Arc::clone(&state).run_ha(stop_rx.clone()));
    tokio::spawn(tls::renew(
        Arc::clone(&state),
        Arc::clone(&config),
        serving,
        stop_rx.clone(),
    ));
    let ctx = Ctx {
        state,
        config: Arc::clone(&config),
        stop: stop_rx,
    };
    // With `[rollout] drift = "repair"`: drifted nodes restarted through the gated path.
    let repairer = operator::OperatorSvc::new(ctx.clone());
    tokio::spawn(repair::run(
        Arc::clone(&ctx.state),
        move |nodes| {
            let svc = repairer.clone();
            async move { svc.restart_nodes(&nodes, repair::AUTHOR).await }
        },
        ctx.stop.clone(),
    ));
    let routes = Routes::new(EnrollmentServer::new(enrollment::EnrollmentSvc::new(
        ctx.clone(),
    )))
    .add_service(AgentServiceServer::new(agent::AgentSvc::new(ctx.clone())))
    .add_service(ArtifactServiceServer::new(artifacts::ArtifactSvc::new(
        ctx.clone(),
    )))
    .add_service(OperatorServiceServer::new(operator::OperatorSvc::new(ctx)))
    .add_service(health_svc)
    .prepare();
    // The store is open (it is in `state`) and the rollout engine is spawned.
    health::set_all(&health, tonic_health::ServingStatus::Serving).await;
    let signal = async move {
        shutdown.await;
        tracing::info!("controller shutting down: closing agent streams");
        let _ = stop_tx.send(true);
        health::set_all(&health, tonic_health::ServingStatus::NotServing).await;
    };
    tonic::transport::Server::builder()
        // Uploads stream 1 MiB messages: windows of a few messages keep them flowing instead
        // of one message per window update (hyper's default windows are 1 MiB).
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_interval))
        .serve_with_incoming_shutdown(auth::AuthService::new(routes, authorizer), incoming, signal)
        .await
        .map_err(|source| ServerError::Transport { source })?;
    // Let it hand the lease over (bounded: the lease runs out by itself anyway).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), ha).await;
    Ok(())
}
