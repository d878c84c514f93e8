//! The agent's main loop: identity, the ledgered machine, and the stream to the controller.
//!
//! [`run`] (what the `apim-agent` binary calls, and what tests call with temp-dir config):
//!
//! 1. **Identity** — load it from the state dir, or enroll with the join token (first start
//!    only; a controller that is not reachable yet is retried with backoff, a refused token
//!    fails at once).
//! 2. **Ledger** — load the held spec ([`Machine::load`]) and hand every node to its task, so
//!    running nodes are adopted (and supervised) before the controller is even reached.
//! 3. **READY** — `sd_notify(READY=1)` once the ledger is loaded, *not* once connected: the
//!    agent's duty to the nodes it already runs does not depend on the controller, and a
//!    controller outage must not fail the unit's start. `STATUS=` says whether it is connected.
//! 4. **Connection loop** — `AgentService.Connect` with `Hello` (version, facts, held
//!    generation); each `DesiredSpec` is ledgered ([`Machine::accept`]: an older generation
//!    is refused and reported) and dispatched; a `StatusReport` goes out on every phase change
//!    and every `report_interval`, facts when they changed. Any error: reconnect after a
//!    jittered exponential backoff. The certificate is renewed in the background.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::agent_message::Kind as AgentKind;
use apim_proto::v1::agent_service_client::AgentServiceClient;
use apim_proto::v1::command::Action;
use apim_proto::v1::controller_message::Kind as CtlKind;
use apim_proto::v1::{
    AgentMessage, Command, CommandResult, Hello, MachineFacts as WireFacts, StatusReport,
};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::daemon::config::AgentConfig;
use crate::daemon::converge::ExecContext;
use crate::daemon::error::{DaemonError, DaemonResult};
use crate::daemon::fetch::{Fetcher, create_private_dir};
use crate::daemon::folders::FolderSync;
use crate::daemon::identity::{self, AgentIdentity, EnrollError, EnrollOptions};
use crate::daemon::link::{Control, ControlConfig};
use crate::daemon::machine::Machine;
use crate::daemon::report::{StatusBoard, wire_facts};
use crate::daemon::supervise::backoff;
use crate::daemon::tail::{Tails, Taken};
use crate::exec::unpack::UnpackLimits;

/// What the connection loop shares with the rest of the daemon.
struct Shared {
    config: AgentConfig,
    control: Control,
    board: Arc<StatusBoard>,
    machine: Arc<Mutex<Machine>>,
    folders: Mutex<FolderSync>,
}

/// Runs the agent until `shutdown` completes. Nodes keep running after it returns.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> DaemonResult<()> {
    if config.endpoints.is_empty() {
        return Err(DaemonError::Config {
            reason: "no controller address".into(),
        });
    }
    create_private_dir(&config.state_dir)?;
    let identity = obtain_identity(&config).await?;
    if identity.info().machine != config.machine {
        return Err(DaemonError::Config {
            reason: format!(
                "the agent identity in {} is for machine {:?}, not {:?}",
                config.state_dir.display(),
                identity.info().machine,
                config.machine
            ),
        });
    }
    let control = Control::with_identity(
        ControlConfig {
            endpoints: config.endpoints.clone(),
            state_dir: config.state_dir.clone(),
            connect_timeout: config.timings.connect_timeout,
        },
        identity,
    )?;
    let _renewal = control.spawn_renewal();
    let board = Arc::new(StatusBoard::new());
    let fetcher = Arc::new(Fetcher::new(
        config.cache_dir(),
        Some(control.clone()),
        config.timings.fetch_attempts,
    ));
    let ctx = Arc::new(ExecContext {
        config: config.clone(),
        fetcher,
        board: Arc::clone(&board),
        limits: UnpackLimits::default(),
    });
    let machine = Arc::new(Mutex::new(Machine::load(ctx).await?));
    let held = machine.lock().await.held_generation();
    notify(&format!(
        "ledger loaded (generation {held}); connecting to the controller at {}",
        addresses(&config)
    ));
    let shared = Arc::new(Shared {
        folders: Mutex::new(FolderSync::new(&config.state_dir, Arc::clone(&board))),
        config,
        control,
        board,
        machine: Arc::clone(&machine),
    });
    let conn = tokio::spawn(connection_loop(Arc::clone(&shared)));
    shutdown.await;
    tracing::info!("agent shutting down; nodes keep running");
    conn.abort();
    let _ = conn.await;
    machine.lock().await.shutdown().await;
    Ok(())
}

fn notify(status: &str) {
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

async fn obtain_identity(config: &AgentConfig) -> DaemonResult<AgentIdentity> {
    let files_exist = config.state_dir.join(identity::IDENTITY_FILE).exists();
    if files_exist {
        match AgentIdentity::load(&config.state_dir) {
            Ok(id) => return Ok(id),
            Err(e) if config.token.is_none() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "stored identity unusable; enrolling with the join token")
            }
        }
    }
    let Some(token) = config.token.clone() else {
        return Err(DaemonError::NoIdentity {
            state_dir: config.state_dir.clone(),
        });
    };
    let mut opts = EnrollOptions {
        endpoint: config.endpoints[0].clone(),
        machine: config.machine.clone(),
        token,
        state_dir: config.state_dir.clone(),
        connect_timeout: config.timings.connect_timeout,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Any controller of the list enrolls: the next one after each unreachable one.
        opts.endpoint = nth_endpoint(config, attempt - 1).clone();
        match identity::enroll(&opts).await {
            Ok(id) => {
                tracing::info!(machine = %id.info().machine, serial = %id.info().serial, "enrolled");
                return Ok(id);
            }
            Err(e @ EnrollError::Connect { .. }) => {
                let delay = jitter(backoff(
                    config.timings.reconnect_base,
                    config.timings.reconnect_max,
                    attempt,
                ));
                tracing::warn!(error = %e, address = %opts.endpoint.address, retry_in = ?delay, "controller not reachable for enrollment");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The `i`-th address of the list, round and round.
fn nth_endpoint(config: &AgentConfig, i: u32) -> &apim_certs::tls::ControllerEndpoint {
    &config.endpoints[i as usize % config.endpoints.len()]
}

/// The controller addresses, for messages (`a:7443, b:7443`).
fn addresses(config: &AgentConfig) -> String {
    config
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A delay in `[d/2, d]`, so a fleet of agents does not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.5..=1.0);
    d.mul_f64(f)
}

async fn connection_loop(shared: Arc<Shared>) {
    let t = &shared.config.timings;
    let mut attempt: u32 = 0;
    loop {
        let mut connected = false;
        let result = session(&shared, &mut connected).await;
        if connected {
            attempt = 0;
        }
        attempt += 1;
        if result.as_ref().is_err_and(DaemonError::is_revoked) {
            readmit(&shared).await;
            attempt = 0;
            continue;
        }
        // An expired certificate (the controller was away longer than its life) is recovered
        // now rather than at the renewal loop's next try; a revoked machine learns it here.
        if shared.control.identity().info().expired() {
            match shared.control.renew().await {
                Ok(_) => {
                    attempt = 0;
                    continue;
                }
                Err(e) if e.is_revoked() => {
                    readmit(&shared).await;
                    attempt = 0;
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "recovering the expired certificate failed"),
            }
        }
        let delay = jitter(backoff(t.reconnect_base, t.reconnect_max, attempt));
        let why = match &result {
            Ok(()) => "the controller closed the stream".to_owned(),
            Err(e) => e.to_string(),
        };
        let from = shared.control.address().to_owned();
        // Several controllers: the next one is tried (after the same backoff).
        let next = match shared.control.fail_over() {
            Ok(next) => next.unwrap_or(&from).to_owned(),
            Err(e) => {
                tracing::error!(error = %e, "cannot dial the next controller");
                from.clone()
            }
        };
        tracing::warn!(reason = %why, address = %from, next = %next, retry_in = ?delay, "disconnected from the controller");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
            "not connected ({why}); retrying in {:.1} s",
            delay.as_secs_f64()
        ))]);
        tokio::time::sleep(delay).await;
    }
}

/// This machine is revoked: it keeps its nodes running (its ledger) and waits for an operator
/// to re-admit it — a new join token in its token file (`apimctl token create --machine M`) —
/// then enrolls again with it. A token that was tried already is not sent twice.
async fn readmit(shared: &Shared) {
    let config = &shared.config;
    let mut tried: Option<String> = None;
    let mut attempt: u32 = 0;
    loop {
        let token = config.current_token().filter(|t| tried.as_ref() != Some(t));
        if let Some(token) = token {
            tried = Some(token.clone());
            let opts = EnrollOptions {
                endpoint: nth_endpoint(config, attempt).clone(),
                machine: config.machine.clone(),
                token,
                state_dir: config.state_dir.clone(),
                connect_timeout: config.timings.connect_timeout,
            };
            match identity::enroll(&opts).await {
                Ok(id) => {
                    tracing::warn!(machine = %config.machine, serial = %id.info().serial, "re-admitted: enrolled again with a new join token");
                    match shared.control.replace_identity(id) {
                        Ok(()) => return,
                        Err(e) => tracing::error!(error = %e, "cannot use the new identity"),
                    }
                }
                Err(e @ EnrollError::Connect { .. }) => {
                    // Not the token's fault: try it again.
                    tried = None;
                    tracing::warn!(error = %e, "controller not reachable for re-enrollment");
                }
                Err(e) => tracing::error!(error = %e, "re-enrollment refused"),
            }
        }
        attempt += 1;
        let delay = jitter(backoff(
            config.timings.reconnect_base,
            config.timings.reconnect_max,
            attempt,
        ));
        let hint = match &config.token_file {
            Some(p) => format!("put a new join token in {}", p.display()),
            None => "restart the agent with a new join token".to_owned(),
        };
        tracing::error!(
            machine = %config.machine,
            retry_in = ?delay,
            "this machine is revoked; to re-admit it run `apimctl token create --machine {}` and {hint}",
            config.machine
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
            "revoked; waiting for a new join token ({hint})"
        ))]);
        tokio::time::sleep(delay).await;
    }
}

async fn gather_facts(shared: &Shared) -> Option<WireFacts> {
    let java_home = shared.machine.lock().await.held_java_home();
    match crate::exec::facts::gather(
        &shared.config.install_root,
        java_home.as_deref().map(std::path::Path::new),
    )
    .await
    {
        Ok(f) => Some(wire_facts(&f)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot gather machine facts");
            None
        }
    }
}

async fn session(shared: &Shared, connected: &mut bool) -> DaemonResult<()> {
    let facts = gather_facts(shared).await;
    let held = shared.machine.lock().await.held_generation();
    let (tx, rx) = mpsc::channel::<AgentMessage>(32);
    let send = |tx: &mpsc::Sender<AgentMessage>, kind: AgentKind| {
        let tx = tx.clone();
        async move {
            tx.send(AgentMessage { kind: Some(kind) })
                .await
                .map_err(|_| DaemonError::Stream {
                    reason: "the outbound stream closed".into(),
                })
        }
    };
    send(
        &tx,
        AgentKind::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            facts: facts.clone(),
            held_generation: held,
        }),
    )
    .await?;
    let mut client = AgentServiceClient::new(shared.control.channel());
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| DaemonError::rpc("Connect", &s))?
        .into_inner();
    *connected = true;
    tracing::info!(address = %shared.control.address(), held_generation = held, "connected to the controller");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
        "connected to {} (generation {held})",
        shared.control.address()
    ))]);
    let mut last_facts = facts;
    let tails = Tails::new(Arc::clone(&shared.machine), shared.config.clone());
    let mut changes = shared.board.subscribe();
    let mut report_tick = tokio::time::interval(shared.config.timings.report_interval);
    let mut facts_tick = tokio::time::interval(shared.config.timings.facts_interval);
    facts_tick.tick().await;
    let mut folder_tick = tokio::time::interval(shared.config.timings.folder_scan_interval);
    folder_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shared.folders.lock().await.reconnected();
    send(&tx, AgentKind::Status(shared.board.snapshot())).await?;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|s| DaemonError::rpc("Connect", &s))?;
                let Some(msg) = msg else { return Ok(()) };
                match msg.kind {
                    Some(CtlKind::DesiredSpec(d)) => {
                        let Some(spec) = d.spec else { continue };
                        let offered = spec.generation;
                        let r = shared.machine.lock().await.accept(spec).await;
                        match r {
                            Ok(true) => {}
                            Ok(false) => tracing::debug!(generation = offered, "same spec again; nothing to do"),
                            Err(e) => {
                                tracing::warn!(error = %e, "machine spec refused");
                                // The report carries the generation still held: that is the refusal.
                                send(&tx, AgentKind::Status(shared.board.snapshot())).await?;
                            }
                        }
                    }
                    Some(CtlKind::Command(c)) if matches!(c.action, Some(Action::CheckDrift(_))) => {
                        // Answered once every node checked (bounded), without holding up the
                        // stream; the task ends with the stream (its sends fail).
                        tokio::spawn(check_drift(Arc::clone(&shared.board), tx.clone(), c.command_id));
                    }
                    Some(CtlKind::Command(c)) => {
                        let result = match tails.take(&c, &tx) {
                            Taken::NotMine => command(shared, &c),
                            Taken::Answer(r) => r,
                            Taken::Running => continue,
                        };
                        send(&tx, AgentKind::CommandResult(result)).await?;
                        if matches!(c.action, Some(Action::ReportNow(_))) {
                            send(&tx, AgentKind::Status(shared.board.snapshot())).await?;
                        }
                    }
                    Some(CtlKind::ArtifactUpdate(u)) => shared.folders.lock().await.apply(&u),
                    None => {}
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                send(&tx, AgentKind::Status(shared.board.snapshot())).await?;
            }
            _ = folder_tick.tick() => {
                for push in folder_pushes(shared).await {
                    send(&tx, AgentKind::ArtifactPush(push)).await?;
                }
            }
            _ = report_tick.tick() => {
                send(&tx, AgentKind::Status(shared.board.snapshot())).await?;
            }
            _ = facts_tick.tick() => {
                let f = gather_facts(shared).await;
                if f.is_some() && f != last_facts {
                    last_facts = f.clone();
                    let mut report: StatusReport = shared.board.snapshot();
                    report.facts = f;
                    send(&tx, AgentKind::Status(report)).await?;
                }
            }
        }
    }
}

/// The shared folders' local changes (and joins) to send, after following the held spec.
async fn folder_pushes(shared: &Shared) -> Vec<apim_proto::v1::ArtifactPush> {
    let held = shared.machine.lock().await.held_generation();
    if shared.folders.lock().await.stale(held) {
        let spec = shared.machine.lock().await.held_spec();
        shared
            .folders
            .lock()
            .await
            .refresh(spec.as_ref(), &shared.config);
    }
    shared.folders.lock().await.pushes()
}

/// `CheckDrift`: every node checks now; a fresh report, then the result (ok when every node
/// answered within [`DRIFT_CHECK_WAIT`]; the message names the others).
async fn check_drift(board: Arc<StatusBoard>, tx: mpsc::Sender<AgentMessage>, command_id: String) {
    let epoch = board.request_drift_check();
    let busy = board.wait_drift_checked(epoch, DRIFT_CHECK_WAIT).await;
    let report = board.snapshot();
    let drifted = report.nodes.iter().filter(|n| !n.drift.is_empty()).count();
    let checked = report.nodes.len() - busy.len();
    let message = if busy.is_empty() {
        format!("checked {checked} node(s); {drifted} drifted")
    } else {
        format!(
            "checked {checked} node(s); {drifted} drifted; not checked (busy converging): {}",
            busy.join(", ")
        )
    };
    let result = CommandResult {
        command_id,
        ok: busy.is_empty(),
        message,
    };
    for kind in [AgentKind::Status(report), AgentKind::CommandResult(result)] {
        if tx.send(AgentMessage { kind: Some(kind) }).await.is_err() {
            return;
        }
    }
}

/// How long a `CheckDrift` waits for nodes busy converging (each checks once its converge ends).
const DRIFT_CHECK_WAIT: Duration = Duration::from_secs(20);

fn command(_shared: &Shared, c: &Command) -> CommandResult {
    let (ok, message) = match &c.action {
        Some(Action::ReportNow(_)) => (true, "report sent".to_owned()),
        // Answered by `check_drift`.
        Some(Action::CheckDrift(_)) => (true, "drift check started".to_owned()),
        Some(Action::TailLog(_) | Action::CancelCommand(_)) => (
            false,
            "log commands are served by the log streams".to_owned(),
        ),
        None => (false, "empty command".to_owned()),
    };
    CommandResult {
        command_id: c.command_id.clone(),
        ok,
        message,
    }
}
