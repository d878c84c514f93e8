//! The rollout engine: from a stored plan generation to every node healthy on it.
//!
//! [`prepare`] validates and renders a plan from the operator's resolved secrets and builds the
//! *target* spec of every machine (all nodes desired RUNNING); [`start`] stores the plan as a new
//! generation with a [`RolloutRecord`]. The [`Engine`] then drives the record with an
//! idempotent reconcile loop in the kube-rs style — woken by every status report, connection
//! change or deadline — and persists the record after every transition:
//!
//! 1. **Staging**: every machine with a change gets one spec in which changed nodes are
//!    desired STAGED (unchanged nodes stay RUNNING); the engine waits until each changed node
//!    reports STAGED (or HEALTHY on the target digest) for that generation.
//! 2. **Starting**: tier by tier, changed nodes are released (desired RUNNING, a new machine
//!    generation), at most `max_parallel` at once and at most one at a time of a role that
//!    already had running nodes (HA peers restart one by one). A node is done when it reports
//!    HEALTHY on the target `config_digest`; it fails on FAILED or after `health_timeout`.
//! 3. On failure, `halt` stops releasing (dependents stay STAGED) and `rollback` pushes every
//!    touched machine's previous spec again at a higher generation.
//!
//! A node's release and the spec push that carries it are written in one transaction, so
//! after a controller restart no node is released twice and none is skipped.

pub mod diff;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::{DesiredRun, ErrorDetail, MachineSpec, NodePhase, NodeStatus, RolloutState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::pki::ProductPki;
use crate::server::{ControllerState, ServerError};
use crate::spec::{SpecInputs, machine_spec};
use apim_plan::plan::{OnFailure, Plan};
use apim_plan::render::ClusterRender;
use apim_plan::secrets::ResolvedSecrets;
use apim_plan::validate;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Staging changed nodes on every machine in parallel.
    Staging,
    /// Releasing nodes tier by tier.
    Starting,
    /// Every changed node is healthy on the new generation.
    Succeeded,
    /// A node failed and the rollout halted.
    Failed,
    /// A node failed; the previous specs are being pushed again.
    RollingBack,
    /// The previous specs were pushed again.
    RolledBack,
}

impl Phase {
    /// Whether the engine still has work to do.
    pub fn active(self) -> bool {
        matches!(self, Phase::Staging | Phase::Starting | Phase::RollingBack)
    }

    /// The wire state.
    pub fn wire(self) -> RolloutState {
        match self {
            Phase::Staging => RolloutState::Staging,
            Phase::Starting => RolloutState::Starting,
            Phase::Succeeded => RolloutState::Succeeded,
            Phase::Failed => RolloutState::Failed,
            Phase::RollingBack => RolloutState::RollingBack,
            Phase::RolledBack => RolloutState::RolledBack,
        }
    }
}

/// The progress of one node in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    /// The node's machine.
    pub machine: String,
    /// The node's role.
    pub role: String,
    /// Whether the node's configuration or pack changes (only changed nodes are staged and
    /// released).
    pub changed: bool,
    /// The target `config_digest`.
    pub target_digest: String,
    /// When the node was released (unix ms); `None` until then.
    pub released_at_ms: Option<i64>,
    /// The machine generation that released it.
    pub release_generation: u64,
    /// Whether it reported HEALTHY on the target digest.
    pub done: bool,
}

/// One rollout, persisted after every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The rollout's id.
    pub id: String,
    /// The plan generation rolled out.
    pub generation: u64,
    /// Where it is.
    pub state: Phase,
    /// The tier being started.
    pub tier: u32,
    /// A human-readable summary (the failed node and why).
    pub message: String,
    /// `halt` or `rollback`.
    pub rollback: bool,
    /// Most nodes released and not yet healthy at once.
    pub max_parallel: u32,
    /// How long a released node may take to become healthy, seconds.
    pub health_timeout_s: u64,
    /// Start tiers (node names).
    pub tiers: Vec<Vec<String>>,
    /// Roles that had running nodes before this rollout (their nodes restart one at a time).
    pub ha_roles: BTreeSet<String>,
    /// Every node of the target plan.
    pub nodes: BTreeMap<String, NodeProgress>,
    /// Machines whose spec this rollout changes (including machines that lose every node),
    /// with the generation of their staging push (0 until pushed).
    pub machines: BTreeMap<String, u64>,
}

/// A validated, rendered plan and the target spec of every machine.
pub struct Prepared {
    /// The plan.
    pub plan: Plan,
    /// Its render.
    pub render: ClusterRender,
    /// Per machine, the spec with every node desired RUNNING (generation 0).
    pub targets: BTreeMap<String, MachineSpec>,
    /// The secret values, for masking diffs.
    pub secrets: ResolvedSecrets,
}

fn detail(
    code: &str,
    message: String,
    hint: String,
    file: &str,
    source: &str,
    at: usize,
) -> ErrorDetail {
    let (line, column) = apim_plan::diag::line_col(source, at);
    ErrorDetail {
        code: code.to_string(),
        message,
        hint,
        file: file.to_string(),
        line: line as u32,
        column: column as u32,
        field_path: String::new(),
    }
}

/// Validates and renders `plan_toml` with the operator's `secrets` (never the controller's own
/// environment or files), checks that its packs are stored, and builds the target specs.
/// Problems are [`ServerError::PlanRejected`] with `file:line:col`.
pub async fn prepare(
    state: &ControllerState,
    pki_dir: &Path,
    plan_path: &str,
    plan_toml: &str,
    secrets: BTreeMap<String, String>,
) -> Result<Prepared, ServerError> {
    let secrets = ResolvedSecrets(secrets);
    let path = if plan_path.is_empty() {
        "plan.toml"
    } else {
        plan_path
    };
    let (plan, report) = validate::check(
        Path::new(path),
        plan_toml,
        &secrets,
        validate::Options {
            verify_packs: false,
        },
    );
    let Some(plan) = plan else {
        let errors = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == apim_plan::diag::Severity::Error)
            .map(|d| {
                detail(
                    "plan.invalid",
                    d.message.clone(),
                    d.hint.clone().unwrap_or_default(),
                    path,
                    plan_toml,
                    d.span.start,
                )
            })
            .collect();
        return Err(ServerError::PlanRejected { errors });
    };
    let mut pack_sizes = BTreeMap::new();
    let mut missing = Vec::new();
    for d in plan.distributions.values() {
        match state.artifacts().size(&d.sha256.value).await {
            Ok(size) => {
                pack_sizes.insert(d.sha256.value.clone(), size);
            }
            Err(ServerError::ArtifactNotFound { .. })
            | Err(ServerError::InvalidArgument { .. }) => {
                missing.push(detail(
                    "plan.pack_missing",
                    format!(
                        "pack {} (sha256 {}) is not stored on the controller",
                        d.path.value, d.sha256.value
                    ),
                    "apimctl apply uploads packs; or upload it with ArtifactService.Upload".into(),
                    path,
                    plan_toml,
                    d.sha256.span.start,
                ));
            }
            Err(e) => return Err(e),
        }
    }
    if !missing.is_empty() {
        return Err(ServerError::PlanRejected { errors: missing });
    }
    let render = apim_plan::render::render(&plan, &secrets).map_err(|e| ServerError::Render {
        reason: e.to_string(),
    })?;
    let cluster = render.cluster.clone();
    let dir = pki_dir.join(&cluster);
    // Every node certificate the specs below need, issued up front on all cores.
    let nodes: Vec<(String, Vec<String>)> = render
        .machines
        .iter()
        .flat_map(|m| &m.nodes)
        .filter(|n| n.tls.issuer == apim_plan::plan::Issuer::ClusterCa)
        .map(|n| (n.hostname.clone(), n.tls.sans.clone()))
        .collect();
    let pki = tokio::task::spawn_blocking(move || {
        let pki = ProductPki::load_or_create(&dir, &cluster)?;
        pki.prepare_nodes(&nodes)?;
        Ok::<_, crate::pki::PkiError>(pki)
    })
    .await
    .map_err(|e| ServerError::Render {
        reason: e.to_string(),
    })?
    .map_err(|e| ServerError::Render {
        reason: e.to_string(),
    })?;
    let run = |_: &apim_plan::render::NodeRender| DesiredRun::Running;
    let inputs = SpecInputs {
        generation: 0,
        plan_generation: 0,
        pack_sizes: &pack_sizes,
        pki: Some(&pki),
        desired: &run,
    };
    let mut targets = BTreeMap::new();
    for m in &render.machines {
        let spec = machine_spec(&render, &m.name, &inputs)
            .map_err(|e| ServerError::Render {
                reason: e.to_string(),
            })?
            .ok_or_else(|| ServerError::Render {
                reason: format!("machine {} vanished from the render", m.name),
            })?;
        targets.insert(m.name.clone(), spec);
    }
    Ok(Prepared {
        plan,
        render,
        targets,
        secrets,
    })
}

/// Whether two machine specs are the same apart from their generations.
pub fn same_spec(a: &MachineSpec, b: &MachineSpec) -> bool {
    let norm = |s: &MachineSpec| MachineSpec {
        generation: 0,
        plan_generation: 0,
        ..s.clone()
    };
    norm(a) == norm(b)
}

/// The machines whose spec changes from `baseline` to `targets` (incl. removed machines).
pub fn changed_machines(
    baseline: &BTreeMap<String, MachineSpec>,
    targets: &BTreeMap<String, MachineSpec>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = targets
        .iter()
        .filter(|(m, t)| baseline.get(*m).is_none_or(|b| !same_spec(b, t)))
        .map(|(m, _)| m.clone())
        .collect();
    out.extend(
        baseline
            .keys()
            .filter(|m| !targets.contains_key(*m))
            .cloned(),
    );
    out
}

/// An opaque revision of (stored generation, latest rollout, pushed specs, agents' reported
/// configuration) — what `Plan` was computed against.
pub fn cluster_revision(state: &ControllerState) -> Result<String, ServerError> {
    let (generation, rollout) = state
        .store()
        .read(|tx| Ok((tx.latest_generation()?, tx.latest_rollout()?)))?;
    let mut text = format!("g{generation};");
    if let Some(r) = rollout {
        text.push_str(&format!("r{}:{:?};", r.id, r.state));
    }
    for (m, s) in state.desired_specs() {
        text.push_str(&format!("s{m}:{};", s.generation));
    }
    for a in state.agents() {
        if let Some(st) = &a.last_status {
            for n in &st.nodes {
                text.push_str(&format!("n{}:{}:{};", n.node, n.config_digest, n.running));
            }
        }
    }
    Ok(apim_plan::digest(text.as_bytes())[..16].to_string())
}

/// Stores `prepared` as a new plan generation and starts its rollout. Returns `(generation,
/// rollout id)`; when nothing would change, nothing is stored and the id is empty.
pub fn start(
    state: &ControllerState,
    prepared: &Prepared,
    author: &str,
    plan_path: &str,
    plan_toml: &str,
) -> Result<(u64, String), ServerError> {
    let store = state.store();
    let (baseline, latest, current) = store.read(|tx| {
        Ok((
            tx.baseline()?,
            tx.latest_rollout()?,
            tx.latest_generation()?,
        ))
    })?;
    if let Some(r) = &latest
        && r.state.active()
    {
        return Err(ServerError::RolloutInProgress {
            id: r.id.clone(),
            state: format!("{:?}", r.state),
        });
    }
    let machines = changed_machines(&baseline, &prepared.targets);
    if machines.is_empty() {
        return Ok((current, String::new()));
    }
    let ha_roles: BTreeSet<String> = baseline
        .values()
        .flat_map(|s| s.nodes.iter().map(|n| n.role.clone()))
        .collect();
    let mut nodes = BTreeMap::new();
    for (machine, target) in &prepared.targets {
        for n in &target.nodes {
            let old = baseline
                .get(machine)
                .and_then(|b| b.nodes.iter().find(|o| o.name == n.name));
            nodes.insert(
                n.name.clone(),
                NodeProgress {
                    machine: machine.clone(),
                    role: n.role.clone(),
                    changed: diff::node_changed(old, n),
                    target_digest: n.config_digest.clone(),
                    released_at_ms: None,
                    release_generation: 0,
                    done: false,
                },
            );
        }
    }
    let rollout = &prepared.plan.rollout;
    let targets: Vec<MachineSpec> = prepared.targets.values().cloned().collect();
    let (generation, id) = store.write(|tx| {
        let generation = tx.insert_plan(author, plan_path, plan_toml, &prepared.secrets.0)?;
        let id = format!("rollout-{generation}");
        let record = RolloutRecord {
            id: id.clone(),
            generation,
            state: Phase::Staging,
            tier: 0,
            message: "staging".into(),
            rollback: rollout.on_failure == OnFailure::Rollback,
            max_parallel: rollout.max_parallel.max(1),
            health_timeout_s: rollout.health_timeout.as_secs().max(1),
            tiers: prepared.render.tiers.clone(),
            ha_roles: ha_roles.clone(),
            nodes: nodes.clone(),
            machines: machines.iter().map(|m| (m.clone(), 0)).collect(),
        };
        tx.save_targets(&id, &targets)?;
        tx.save_rollout(&record)?;
        Ok((generation, id))
    })?;
    tracing::info!(generation, rollout = %id, machines = machines.len(), %author, "plan stored; rollout started");
    state.notify_change();
    Ok((generation, id))
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The last reported status of `node` on `machine`, if any.
fn node_status(state: &ControllerState, machine: &str, node: &str) -> Option<(NodeStatus, bool)> {
    let agent = state.agent(machine)?;
    let report = agent.last_status?;
    report
        .nodes
        .into_iter()
        .find(|n| n.node == node)
        .map(|n| (n, agent.connected))
}

/// Drives rollouts; see the module documentation.
pub struct Engine {
    state: Arc<ControllerState>,
}

/// What one reconcile pass decided.
enum Next {
    /// Nothing to do until something changes (or the deadline passes).
    Wait(Option<Duration>),
    /// The record changed; run again at once.
    Again,
}

impl Engine {
    /// An engine over `state`.
    pub fn new(state: Arc<ControllerState>) -> Self {
        Engine { state }
    }

    /// Runs until `stop` turns true: resumes the latest rollout if it is active, then
    /// reconciles on every change.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.state.changes();
        loop {
            let wait = match self.reconcile() {
                Ok(Next::Again) => continue,
                Ok(Next::Wait(d)) => d.unwrap_or(Duration::from_secs(5)),
                Err(e) => {
                    tracing::error!(error = %e, "rollout reconcile failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = changes.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn save(&self, r: &RolloutRecord, specs: Vec<MachineSpec>) -> Result<(), ServerError> {
        self.state.store().write(|tx| {
            for s in &specs {
                tx.save_spec(s)?;
            }
            tx.save_rollout(r)
        })?;
        self.state.publish_specs(specs);
        Ok(())
    }

    fn next_generation(&self, machine: &str) -> u64 {
        self.state.desired_spec(machine).map_or(0, |s| s.generation) + 1
    }

    /// One idempotent pass over the latest rollout.
    fn reconcile(&self) -> Result<Next, ServerError> {
        let store = self.state.store();
        let Some(mut r) = store.read(|tx| tx.latest_rollout())? else {
            return Ok(Next::Wait(None));
        };
        if !r.state.active() {
            return Ok(Next::Wait(None));
        }
        let targets = store.read(|tx| tx.targets(&r.id))?;
        match r.state {
            Phase::Staging => self.stage(&mut r, &targets),
            Phase::Starting => self.release(&mut r, &targets),
            Phase::RollingBack => self.roll_back(&mut r),
            _ => Ok(Next::Wait(None)),
        }
    }

    fn stage(
        &self,
        r: &mut RolloutRecord,
        targets: &BTreeMap<String, MachineSpec>,
    ) -> Result<Next, ServerError> {
        if r.machines.values().any(|g| *g == 0) {
            let mut specs = Vec::new();
            for (machine, generation) in r.machines.iter_mut() {
                let mut spec = targets
                    .get(machine)
                    .cloned()
                    .unwrap_or_else(|| MachineSpec {
                        machine: machine.clone(),
                        ..MachineSpec::default()
                    });
                for n in &mut spec.nodes {
                    let changed = r.nodes.get(&n.name).is_some_and(|p| p.changed);
                    n.desired = if changed {
                        DesiredRun::Staged
                    } else {
                        DesiredRun::Running
                    }
                    .into();
                }
                spec.generation = self.next_generation(machine);
                spec.plan_generation = r.generation;
                *generation = spec.generation;
                specs.push(spec);
            }
            tracing::info!(rollout = %r.id, machines = specs.len(), "staging pushed");
            self.save(r, specs)?;
            return Ok(Next::Again);
        }
        let mut waiting = Vec::new();
        for (name, p) in &r.nodes {
            if !p.changed {
                continue;
            }
            let stage_gen = r.machines.get(&p.machine).copied().unwrap_or(0);
            match node_status(&self.state, &p.machine, name) {
                Some((s, _)) if s.generation >= stage_gen => {
                    let phase = s.phase();
                    if phase == NodePhase::Failed {
                        let (name, why) = (name.clone(), s.last_error.clone());
                        return self.fail(r, &name, &why);
                    }
                    let ok = phase == NodePhase::Staged
                        || (phase == NodePhase::Healthy && s.config_digest == p.target_digest);
                    if !ok {
                        waiting.push(name.clone());
                    }
                }
                _ => waiting.push(name.clone()),
            }
        }
        if waiting.is_empty() {
            r.state = Phase::Starting;
            r.tier = 0;
            r.message = "starting tier 1".into();
            tracing::info!(rollout = %r.id, "every changed node staged");
            self.save(r, Vec::new())?;
            return Ok(Next::Again);
        }
        Ok(Next::Wait(None))
    }

    fn release(
        &self,
        r: &mut RolloutRecord,
        targets: &BTreeMap<String, MachineSpec>,
    ) -> Result<Next, ServerError> {
        let now = now_ms();
        let timeout_ms = (r.health_timeout_s * 1000) as i64;
        let mut deadline: Option<i64> = None;
        // Check released nodes.
        let mut dirty = false;
        let names: Vec<String> = r.nodes.keys().cloned().collect();
        for name in &names {
            let p = &r.nodes[name];
            let Some(at) = p.released_at_ms else { continue };
            if p.done {
                continue;
            }
            let status = node_status(&self.state, &p.machine, name);
            let connected = status.as_ref().is_some_and(|(_, c)| *c);
            match status {
                Some((s, _)) if s.generation >= p.release_generation => {
                    let phase = s.phase();
                    if phase == NodePhase::Healthy && s.config_digest == p.target_digest {
                        tracing::info!(rollout = %r.id, node = %name, "node healthy");
                        if let Some(p) = r.nodes.get_mut(name) {
                            p.done = true;
                        }
                        dirty = true;
                        continue;
                    }
                    if phase == NodePhase::Failed {
                        return self.fail(r, name, &s.last_error);
                    }
                }
                _ => {}
            }
            if connected && now - at > timeout_ms {
                let why = format!("not healthy within {}s", r.health_timeout_s);
                return self.fail(r, name, &why);
            }
            let d = at + timeout_ms;
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        // Advance through finished tiers.
        while (r.tier as usize) < r.tiers.len() {
            let tier = &r.tiers[r.tier as usize];
            let all_done = tier
                .iter()
                .all(|n| r.nodes.get(n).is_none_or(|p| !p.changed || p.done));
            if !all_done {
                break;
            }
            r.tier += 1;
            r.message = format!("starting tier {}", r.tier + 1);
            dirty = true;
        }
        if r.tier as usize >= r.tiers.len() {
            r.state = Phase::Succeeded;
            r.message = format!("generation {} is healthy", r.generation);
            // The baseline is what a later rollback restores; it says which plan it came from.
            let baseline: Vec<MachineSpec> = targets
                .values()
                .cloned()
                .map(|mut s| {
                    s.plan_generation = r.generation;
                    s
                })
                .collect();
            self.state.store().write(|tx| {
                tx.set_baseline(&baseline)?;
                tx.save_rollout(r)
            })?;
            self.state.notify_change();
            tracing::info!(rollout = %r.id, "rollout succeeded");
            return Ok(Next::Wait(None));
        }
        // Release what the limits allow in the current tier.
        let in_flight = |r: &RolloutRecord, role: Option<&str>| {
            r.nodes
                .values()
                .filter(|p| p.released_at_ms.is_some() && !p.done)
                .filter(|p| role.is_none_or(|x| p.role == x))
                .count()
        };
        let tier = r.tiers[r.tier as usize].clone();
        let mut per_machine: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &tier {
            let Some(p) = r.nodes.get(name) else { continue };
            if !p.changed || p.released_at_ms.is_some() {
                continue;
            }
            if in_flight(r, None) >= r.max_parallel as usize {
                break;
            }
            let role = p.role.clone();
            if r.ha_roles.contains(&role) && in_flight(r, Some(&role)) >= 1 {
                continue;
            }
            let machine = p.machine.clone();
            if let Some(p) = r.nodes.get_mut(name) {
                p.released_at_ms = Some(now);
            }
            per_machine.entry(machine).or_default().push(name.clone());
        }
        if per_machine.is_empty() {
            if dirty {
                self.save(r, Vec::new())?;
                return Ok(Next::Again);
            }
            let wait = deadline.map(|d| Duration::from_millis((d - now).max(0) as u64 + 10));
            return Ok(Next::Wait(wait));
        }
        let mut specs = Vec::new();
        for (machine, released) in &per_machine {
            let Some(mut spec) = self.state.desired_spec(machine) else {
                continue;
            };
            for n in &mut spec.nodes {
                if released.contains(&n.name) {
                    n.desired = DesiredRun::Running.into();
                }
            }
            spec.generation += 1;
            for name in released {
                if let Some(p) = r.nodes.get_mut(name) {
                    p.release_generation = spec.generation;
                }
                tracing::info!(rollout = %r.id, node = %name, %machine, generation = spec.generation, "node released");
            }
            specs.push(spec);
        }
        self.save(r, specs)?;
        Ok(Next::Again)
    }

    fn fail(&self, r: &mut RolloutRecord, node: &str, why: &str) -> Result<Next, ServerError> {
        let machine = r.nodes.get(node).map_or("", |p| p.machine.as_str());
        r.message = format!("node {node} on {machine} failed: {why}");
        tracing::warn!(rollout = %r.id, %node, %machine, error = %why, rollback = r.rollback, "rollout node failed");
        r.state = if r.rollback {
            Phase::RollingBack
        } else {
            Phase::Failed
        };
        self.save(r, Vec::new())?;
        Ok(Next::Again)
    }

    fn roll_back(&self, r: &mut RolloutRecord) -> Result<Next, ServerError> {
        let baseline = self.state.store().read(|tx| tx.baseline())?;
        let mut specs = Vec::new();
        for machine in r.machines.keys() {
            let mut spec = baseline
                .get(machine)
                .cloned()
                .unwrap_or_else(|| MachineSpec {
                    machine: machine.clone(),
                    ..MachineSpec::default()
                });
            spec.generation = self.next_generation(machine);
            for n in &mut spec.nodes {
                n.desired = DesiredRun::Running.into();
            }
            specs.push(spec);
        }
        r.state = Phase::RolledBack;
        r.message = format!("{}; the previous generation was restored", r.message);
        tracing::warn!(rollout = %r.id, machines = specs.len(), "rolled back");
        self.save(r, specs)?;
        Ok(Next::Wait(None))
    }
}
