//! The CLI commands that talk to the controller (`apply`, `plan`, `status`, `agents`,
//! `token create`, `revoke`) and the controller host's own (`controller run`,
//! `controller operator-cert`).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use apim_proto::v1::{
    ApplyRequest, ChangeKind, ClusterStatus, CreateTokenRequest, ListAgentsRequest, MachineStatus,
    NodePhase, NodeStatus, PlanRequest, RevokeRequest, RolloutState, StatusRequest, WatchRequest,
};

use crate::cli::{CliError, Command, ControllerCommand, Output, TokenCommand};
use crate::client::{self, Settings};
use apim_plan::secrets::EnvSource;
use apim_plan::validate;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("starting the async runtime: {e}")))
}

/// `apimctl controller …`.
pub fn controller(
    cmd: ControllerCommand,
    stdout: &mut dyn Write,
    _stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    match cmd {
        ControllerCommand::Run { config, log_format } => {
            apim_controller::run::init_logging(log_format == "json");
            let config = apim_controller::run::DaemonConfig::load(&config)?;
            runtime()?.block_on(apim_controller::run::run(config))?;
            Ok(0)
        }
        ControllerCommand::OperatorCert {
            name,
            out,
            data_dir,
        } => {
            let ca = apim_certs::ControlPlaneCa::load_or_create(&apim_controller::run::ca_dir(
                &data_dir,
            ))
            .map_err(apim_controller::run::DaemonError::Ca)?;
            let issued = ca
                .issue_operator_cert(&name, apim_certs::DEFAULT_OPERATOR_CERT_TTL)
                .map_err(apim_controller::run::DaemonError::Ca)?;
            std::fs::create_dir_all(&out)
                .map_err(|e| CliError::Other(format!("{}: {e}", out.display())))?;
            let write = |file: &str, text: &str| {
                let path = out.join(file);
                apim_plan::files::write_private(&path, text.as_bytes())
                    .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
            };
            write("operator.pem", &issued.cert.cert_pem)?;
            write("operator-key.pem", issued.key_pem())?;
            write("ca.pem", ca.cert_pem())?;
            let _ = writeln!(
                stdout,
                "wrote {0}/operator.pem, {0}/operator-key.pem and {0}/ca.pem (expires {1})",
                out.display(),
                issued.cert.not_after
            );
            Ok(0)
        }
    }
}

/// Runs a controller command.
pub fn run(
    cmd: Command,
    settings: Settings,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let settings = settings.with_file()?;
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            Command::Apply {
                plan,
                plan_revision,
                output,
                no_wait,
            } => {
                apply(
                    &settings,
                    &plan,
                    plan_revision,
                    output,
                    no_wait,
                    env,
                    stdout,
                    stderr,
                )
                .await
            }
            Command::Plan { plan, output } => {
                plan_cmd(&settings, &plan, output, env, stdout, stderr).await
            }
            Command::Status { watch, output } => status(&settings, watch, output, stdout).await,
            Command::Agents { output } => agents(&settings, output, stdout).await,
            Command::Token(TokenCommand::Create { machine, ttl }) => {
                let ttl_s = match ttl {
                    Some(t) => apim_plan::plan::parse_duration(&t)
                        .ok_or_else(|| CliError::Other(format!("`{t}` is not a duration")))?
                        .as_secs(),
                    None => 0,
                };
                let mut op = client::operator(settings.connect().await?);
                let r = op
                    .create_token(CreateTokenRequest { machine, ttl_s })
                    .await
                    .map_err(client::ClientError::from)?
                    .into_inner();
                let _ = writeln!(stdout, "{}", r.token);
                Ok(0)
            }
            Command::Revoke { machine } => {
                let mut op = client::operator(settings.connect().await?);
                let r = op
                    .revoke(RevokeRequest {
                        machine: machine.clone(),
                    })
                    .await
                    .map_err(client::ClientError::from)?
                    .into_inner();
                let _ = writeln!(
                    stdout,
                    "revoked {machine}{}",
                    if r.disconnected {
                        " (stream closed)"
                    } else {
                        ""
                    }
                );
                Ok(0)
            }
            Command::Validate { .. } | Command::Render { .. } | Command::Controller(_) => {
                Err(CliError::Other("not a controller command".into()))
            }
        }
    })
}

/// A plan checked on the operator's machine, with the controller holding its packs.
struct Ready {
    channel: tonic::transport::Channel,
    text: String,
    secrets: std::collections::HashMap<String, String>,
}

/// Validates locally, resolves the secrets, connects, and uploads the packs the controller
/// lacks. `None` when the plan has errors (already printed).
///
/// A pack the operator's digest cache knows is compared with the plan before anything is sent.
/// A new one is not hashed up front: when the controller lacks it, it is hashed as it is read
/// for the upload (one read of the pack instead of two; the controller hashes it too and
/// refuses a mismatch), and only when the controller has its digest already is it hashed
/// here. Either way a pack that is not the plan's is reported at the plan's `sha256` before
/// anything is applied.
async fn prepare(
    settings: &Settings,
    path: &Path,
    env: &dyn EnvSource,
    stderr: &mut dyn Write,
) -> Result<Option<Ready>, CliError> {
    let opts = validate::Options {
        verify_packs: false,
    };
    let Some(plan) = crate::cli::load_plan(path, env, opts, stderr)? else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    let report = |diagnostics| apim_plan::diag::Report {
        path: path.display().to_string(),
        source: text.clone(),
        diagnostics,
    };
    let cache = apim_plan::digest_cache::default_dir(&|k| env.var(k));
    let mut packs = Vec::new();
    let mut problems = Vec::new();
    for d in plan.distributions.values() {
        let pack = plan.resolve_path(&d.path.value);
        match validate::check_pack(d, &pack, cache.as_deref()) {
            Ok(pending) => packs.push((d, pack, pending)),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        let _ = write!(stderr, "{}", report(problems).render());
        return Ok(None);
    }
    let secrets = apim_plan::secrets::collect(&plan, env).map_err(CliError::Other)?;
    let channel = settings.connect().await?;
    for (d, pack, pending) in packs {
        let uploaded = client::upload_if_missing(channel.clone(), &pack, &d.sha256.value).await;
        if let Some(pending) = pending {
            let actual = match uploaded.as_ref().ok().and_then(|u| u.read_sha256.clone()) {
                Some(read) => read,
                // Not sent (or the upload failed): hash it here.
                None => {
                    let at = pending.path().to_path_buf();
                    tokio::task::spawn_blocking(move || apim_plan::digest_cache::sha256_file(&at))
                        .await
                        .map_err(|e| CliError::Other(format!("hashing {}: {e}", pack.display())))?
                        .map_err(|e| CliError::Other(format!("{}: {e}", pack.display())))?
                }
            };
            if !actual.eq_ignore_ascii_case(&d.sha256.value) {
                let mismatch = validate::pack_mismatch(d, &pack, &actual);
                let _ = write!(stderr, "{}", report(vec![mismatch]).render());
                return Ok(None);
            }
            pending.remember(&actual);
        }
        if uploaded?.sent {
            let _ = writeln!(stderr, "uploaded {}", pack.display());
        }
    }
    Ok(Some(Ready {
        channel,
        text,
        secrets: secrets.into_iter().collect(),
    }))
}

fn print_details(status: &tonic::Status, stderr: &mut dyn Write) {
    match apim_proto::error_details(status) {
        Some(d) if !d.errors.is_empty() => {
            for e in d.errors {
                let at = if e.line > 0 {
                    format!("{}:{}:{}: ", e.file, e.line, e.column)
                } else {
                    String::new()
                };
                let _ = writeln!(stderr, "{at}error: {}", e.message);
                if !e.hint.is_empty() {
                    let _ = writeln!(stderr, "  hint: {}", e.hint);
                }
            }
        }
        _ => {
            let _ = writeln!(stderr, "error: {}", status.message());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    settings: &Settings,
    path: &Path,
    plan_revision: Option<String>,
    output: Output,
    no_wait: bool,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let Some(Ready {
        channel,
        text,
        secrets,
    }) = prepare(settings, path, env, stderr).await?
    else {
        return Ok(1);
    };
    let mut op = client::operator(channel);
    let author = std::env::var("USER").unwrap_or_default();
    let resp = match op
        .apply(ApplyRequest {
            plan_toml: text,
            plan_path: path.display().to_string(),
            expected_cluster_revision: plan_revision,
            author,
            resolved_secrets: secrets,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            print_details(&status, stderr);
            return Ok(1);
        }
    };
    if resp.rollout_id.is_empty() {
        if output == Output::Json {
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::json!({"generation": resp.generation, "rollout": null, "state": "unchanged"})
            );
        } else {
            let _ = writeln!(stdout, "generation {}: nothing to change", resp.generation);
        }
        return Ok(0);
    }
    if output == Output::Text {
        let _ = writeln!(
            stdout,
            "generation {}: rollout {} started",
            resp.generation, resp.rollout_id
        );
    }
    if no_wait {
        return Ok(0);
    }
    let mut stream = op
        .watch(WatchRequest {})
        .await
        .map_err(client::ClientError::from)?
        .into_inner();
    let mut bars = (output == Output::Text && std::io::stderr().is_terminal()).then(LiveBars::new);
    let mut last_lines: Vec<String> = Vec::new();
    loop {
        let Some(status) = stream.message().await.map_err(client::ClientError::from)? else {
            return Err(CliError::Other(
                "the controller closed the watch stream".into(),
            ));
        };
        let Some(r) = status.rollout.clone() else {
            continue;
        };
        if r.id != resp.rollout_id {
            continue;
        }
        let lines = status_lines(&status);
        match (&mut bars, output) {
            (Some(b), _) => {
                // The engine's message already says where it is ("starting tier 2", …).
                let header = if r.message.is_empty() {
                    format!("{} tier {}", state_name(r.state()), r.tier + 1)
                } else {
                    r.message.clone()
                };
                b.update(&status, header)
            }
            (None, Output::Text) => {
                for l in lines.iter().filter(|l| !last_lines.contains(l)) {
                    let _ = writeln!(stdout, "{l}");
                }
            }
            (None, Output::Json) => {}
        }
        last_lines = lines;
        let state = r.state();
        if !matches!(
            state,
            RolloutState::Pending
                | RolloutState::Staging
                | RolloutState::Starting
                | RolloutState::RollingBack
        ) {
            if let Some(b) = bars {
                b.finish();
            }
            if output == Output::Json {
                let _ = writeln!(stdout, "{}", status_json(&status));
            } else {
                for l in &last_lines {
                    let _ = writeln!(stdout, "{l}");
                }
                let _ = writeln!(
                    stdout,
                    "rollout {}: {} ({})",
                    r.id,
                    state_name(state),
                    r.message
                );
            }
            return Ok(if state == RolloutState::Succeeded {
                0
            } else {
                1
            });
        }
    }
}

async fn plan_cmd(
    settings: &Settings,
    path: &Path,
    output: Output,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let Some(Ready {
        channel,
        text,
        secrets,
    }) = prepare(settings, path, env, stderr).await?
    else {
        return Ok(1);
    };
    let resp = match client::operator(channel)
        .plan(PlanRequest {
            plan_toml: text,
            plan_path: path.display().to_string(),
            resolved_secrets: secrets,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            print_details(&status, stderr);
            return Ok(1);
        }
    };
    let changed = resp
        .changes
        .iter()
        .any(|c| c.kind() != ChangeKind::Unchanged);
    if output == Output::Json {
        let changes: Vec<_> = resp
            .changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "machine": c.machine, "node": c.node,
                    "kind": c.kind().as_str_name().trim_start_matches("CHANGE_KIND_").to_lowercase(),
                    "deployment_toml_diff": c.deployment_toml_diff, "hosts_diff": c.hosts_diff,
                    "certificate_changes": c.certificate_changes, "restart": c.restart,
                })
            })
            .collect();
        let _ = writeln!(
            stdout,
            "{}",
            serde_json::json!({"cluster_revision": resp.cluster_revision, "changes": changes})
        );
    } else {
        for c in &resp.changes {
            let kind = c
                .kind()
                .as_str_name()
                .trim_start_matches("CHANGE_KIND_")
                .to_lowercase();
            let _ = writeln!(
                stdout,
                "{} {} ({}): {}{}",
                match c.kind() {
                    ChangeKind::Create => "+",
                    ChangeKind::Delete => "-",
                    ChangeKind::Update => "~",
                    _ => " ",
                },
                c.node,
                c.machine,
                kind,
                if c.restart { ", restarts" } else { "" }
            );
            for l in c.deployment_toml_diff.iter().chain(&c.hosts_diff) {
                let _ = writeln!(stdout, "    {l}");
            }
            for l in &c.certificate_changes {
                let _ = writeln!(stdout, "    cert: {l}");
            }
        }
        let _ = writeln!(stdout, "cluster revision: {}", resp.cluster_revision);
        if !changed {
            let _ = writeln!(stdout, "nothing to change");
        }
    }
    Ok(if changed { 2 } else { 0 })
}

fn state_name(s: RolloutState) -> String {
    s.as_str_name()
        .trim_start_matches("ROLLOUT_STATE_")
        .to_lowercase()
        .replace('_', "-")
}

fn phase_name(p: NodePhase) -> String {
    match p {
        NodePhase::Unspecified => "pending".into(),
        p => p
            .as_str_name()
            .trim_start_matches("NODE_PHASE_")
            .to_lowercase(),
    }
}

fn since(ts: Option<&apim_proto::prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|t| SystemTime::try_from(*t).ok())
}

fn elapsed(t: Option<SystemTime>) -> String {
    let Some(t) = t else { return "-".into() };
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One line per node: machine, node, phase, the plan generation the node's spec came from
/// (`gen N`; `gen -` when not known yet), elapsed time in the phase, step and last error; an
/// unreachable machine's nodes say "unreachable since T".
pub fn status_lines(status: &ClusterStatus) -> Vec<String> {
    status
        .machines
        .iter()
        .flat_map(|m| m.nodes.iter().map(move |n| node_line(m, n)))
        .collect()
}

/// The status line of one node (see [`status_lines`]).
pub fn node_line(m: &MachineStatus, n: &NodeStatus) -> String {
    let phase = if m.reachable {
        phase_name(n.phase())
    } else {
        match since(m.unreachable_since.as_ref()) {
            Some(t) => format!("unreachable since {}", rfc3339(t)),
            None => "unreachable (never connected)".into(),
        }
    };
    let generation = match n.plan_generation {
        0 => "-".to_string(),
        g => g.to_string(),
    };
    let mut line = format!(
        "{:<14} {:<14} {:<12} gen {:<4} {:>7}",
        m.machine,
        n.node,
        phase,
        generation,
        elapsed(since(n.phase_since.as_ref()))
    );
    if !n.step.is_empty() {
        line.push_str(&format!("  {}", n.step));
    }
    if !n.last_error.is_empty() {
        line.push_str(&format!("  error: {}", n.last_error));
    }
    line.trim_end().to_string()
}

/// How far along the way to healthy a phase is, out of [`PHASE_STEPS`], in the order the agent
/// goes through them (fetch, unpack, optimize, staged; once released: configure, certificates,
/// start, healthy).
pub fn phase_progress(phase: NodePhase) -> u64 {
    match phase {
        NodePhase::Unspecified | NodePhase::Pending | NodePhase::Stopping | NodePhase::Stopped => 0,
        NodePhase::Fetching => 1,
        NodePhase::Unpacking => 2,
        NodePhase::Optimizing => 3,
        NodePhase::Staged => 4,
        NodePhase::Configuring => 5,
        NodePhase::Certificates => 6,
        NodePhase::Starting => 7,
        NodePhase::Healthy => PHASE_STEPS,
        // A failed node keeps its bar where it was; its line says why.
        NodePhase::Failed => 0,
    }
}

/// The number of steps [`phase_progress`] counts to.
pub const PHASE_STEPS: u64 = 8;

/// Live progress in a terminal: a header with the rollout's state and one bar per node.
struct LiveBars {
    multi: indicatif::MultiProgress,
    header: indicatif::ProgressBar,
    nodes: std::collections::BTreeMap<(String, String), indicatif::ProgressBar>,
}

impl LiveBars {
    fn new() -> Self {
        let multi = indicatif::MultiProgress::new();
        let header = multi.add(indicatif::ProgressBar::new_spinner());
        header.enable_steady_tick(Duration::from_millis(120));
        LiveBars {
            multi,
            header,
            nodes: std::collections::BTreeMap::new(),
        }
    }

    fn update(&mut self, status: &ClusterStatus, header: String) {
        self.header.set_message(header);
        let style = indicatif::ProgressStyle::with_template("{bar:16} {msg}")
            .expect("a valid template")
            .progress_chars("##-");
        for m in &status.machines {
            for n in &m.nodes {
                let key = (m.machine.clone(), n.node.clone());
                let bar = self.nodes.entry(key).or_insert_with(|| {
                    let b = self.multi.add(indicatif::ProgressBar::new(PHASE_STEPS));
                    b.set_style(style.clone());
                    b
                });
                if n.phase() != NodePhase::Failed {
                    bar.set_position(phase_progress(n.phase()));
                }
                bar.set_message(node_line(m, n));
            }
        }
    }

    fn finish(self) {
        for b in self.nodes.values() {
            b.finish_and_clear();
        }
        self.header.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// The status as JSON for scripts.
pub fn status_json(status: &ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "generation": status.generation,
        "rollout": status.rollout.as_ref().map(|r| serde_json::json!({
            "id": r.id, "state": state_name(r.state()), "tier": r.tier,
            "message": r.message, "generation": r.generation,
        })),
        "machines": status.machines.iter().map(|m| serde_json::json!({
            "machine": m.machine,
            "reachable": m.reachable,
            "unreachable_since": since(m.unreachable_since.as_ref()).map(rfc3339),
            "nodes": m.nodes.iter().map(|n| serde_json::json!({
                "node": n.node, "phase": phase_name(n.phase()), "step": n.step,
                "generation": n.plan_generation, "spec_generation": n.generation,
                "last_error": n.last_error,
                "running": n.running, "config_digest": n.config_digest,
                "since": since(n.phase_since.as_ref()).map(rfc3339),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_status(status: &ClusterStatus, output: Output, stdout: &mut dyn Write) {
    if output == Output::Json {
        let _ = writeln!(stdout, "{}", status_json(status));
        return;
    }
    let rollout = status
        .rollout
        .as_ref()
        .map_or("no rollout yet".to_string(), |r| {
            format!("rollout {} {} ({})", r.id, state_name(r.state()), r.message)
        });
    let _ = writeln!(stdout, "generation {}: {rollout}", status.generation);
    for l in status_lines(status) {
        let _ = writeln!(stdout, "{l}");
    }
}

async fn status(
    settings: &Settings,
    watch: bool,
    output: Output,
    stdout: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut op = client::operator(settings.connect().await?);
    if !watch {
        let s = op
            .status(StatusRequest {})
            .await
            .map_err(client::ClientError::from)?
            .into_inner();
        print_status(&s, output, stdout);
        return Ok(0);
    }
    let mut stream = op
        .watch(WatchRequest {})
        .await
        .map_err(client::ClientError::from)?
        .into_inner();
    while let Some(s) = stream.message().await.map_err(client::ClientError::from)? {
        print_status(&s, output, stdout);
        let _ = stdout.flush();
    }
    Ok(0)
}

async fn agents(
    settings: &Settings,
    output: Output,
    stdout: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .list_agents(ListAgentsRequest {})
        .await
        .map_err(client::ClientError::from)?
        .into_inner();
    for a in r.agents {
        let last_seen = since(a.last_seen.as_ref()).map(rfc3339).unwrap_or_default();
        let not_after = since(a.cert_not_after.as_ref())
            .map(rfc3339)
            .unwrap_or_default();
        if output == Output::Json {
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::json!({
                    "machine": a.machine, "connected": a.connected, "revoked": a.revoked,
                    "last_seen": last_seen, "cert_not_after": not_after,
                })
            );
        } else {
            let _ = writeln!(
                stdout,
                "{:<16} {:<12} last seen {}  cert until {}{}",
                a.machine,
                if a.connected {
                    "connected"
                } else {
                    "disconnected"
                },
                last_seen,
                not_after,
                if a.revoked { "  REVOKED" } else { "" }
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn bars_advance_in_the_order_the_agent_works() {
        let order = [
            NodePhase::Pending,
            NodePhase::Fetching,
            NodePhase::Unpacking,
            NodePhase::Optimizing,
            NodePhase::Staged,
            NodePhase::Configuring,
            NodePhase::Certificates,
            NodePhase::Starting,
            NodePhase::Healthy,
        ];
        let steps: Vec<u64> = order.iter().map(|p| phase_progress(*p)).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
        assert_eq!(steps.last(), Some(&PHASE_STEPS));
    }

    #[test]
    fn a_node_line_names_machine_node_phase_and_error() {
        let m = MachineStatus {
            machine: "vm-gw-1".into(),
            reachable: true,
            ..MachineStatus::default()
        };
        let n = NodeStatus {
            node: "gw-1".into(),
            phase: NodePhase::Failed.into(),
            generation: 7,
            plan_generation: 3,
            step: "waiting for readiness".into(),
            last_error: "port 9447 refused".into(),
            ..NodeStatus::default()
        };
        let line = node_line(&m, &n);
        assert!(
            line.starts_with("vm-gw-1        gw-1           failed"),
            "{line}"
        );
        assert!(line.contains("gen 3"), "{line}");
        let unknown = NodeStatus {
            plan_generation: 0,
            ..n.clone()
        };
        assert!(node_line(&m, &unknown).contains("gen -"));
        assert!(
            line.ends_with("waiting for readiness  error: port 9447 refused"),
            "{line}"
        );
        let away = MachineStatus {
            reachable: false,
            ..m
        };
        assert!(node_line(&away, &n).contains("unreachable (never connected)"));
    }
}
