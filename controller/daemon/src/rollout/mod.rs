//! The rollout engine: from a stored plan generation to every node healthy on it.
//!
//! [`prepare`] validates and renders a plan from the operator's resolved secrets and builds the
//! *target* spec of every machine (all nodes desired RUNNING); [`check_memory`] refuses it when a
//! machine's agent reported less memory than its nodes need; [`start`] stores the plan as a new
//! generation with a [`RolloutRecord`]. The [`Engine`] then drives the record in the kube-rs
//! style: [`decide`] is a pure function of the record, what agents report and the time, and
//! returns a [`Decision`] (the next record, specs to push, when to look again) that the engine
//! carries out in one transaction — woken by every status report, connection change or
//! deadline:
//!
//! 1. **Staging**: every machine with a change gets one spec in which changed nodes are
//!    desired STAGED (unchanged nodes stay RUNNING); the engine waits until each changed node
//!    reports STAGED (or HEALTHY on the target digest) for that generation.
//! 2. **Starting**: tier by tier, changed nodes are released (desired RUNNING, a new machine
//!    generation), at most `max_parallel` at once and at most one at a time of a role that
//!    already had running nodes (HA peers restart one by one). A node is done when it reports
//!    HEALTHY on the target `config_digest` and, for a role a balancer of the plan fronts, that
//!    balancer answered for the role in a probe round newer than that (`served.rs`), so its pool
//!    always holds a peer; it fails on FAILED or after `health_timeout` (the balancer too). The
//!    rollout succeeds once every fronted role is served by its balancer's target
//!    configuration.
//! 3. On failure, `halt` stops releasing (dependents stay STAGED); `rollback` ends the rollout
//!    ROLLED_BACK and rolls the last successful generation out again as a new one
//!    ([`restore_baseline`]), through the same stages, tiers and health gates.
//!
//! A node's release and the spec push that carries it are written in one transaction, so
//! after a controller restart no node is released twice and none is skipped.

mod decide;
mod destroy;
pub mod diff;
mod engine;
mod error;
pub mod intent;
mod preflight;
mod prepare;
mod served;

use std::collections::{BTreeMap, BTreeSet};

use apim_plan::plan::OnFailure;
use apim_proto::v1::MachineSpec;

pub use crate::store::{NodeProgress, Phase, RolloutRecord};
pub use decide::{Decision, Next, NodeReport, World, decide};
pub use destroy::{Destroyed, destroy};
pub use engine::Engine;
pub use error::RolloutError;
pub use preflight::{MemoryShortfall, check_memory, memory_shortfalls};
pub use prepare::{Mode, Prepared, changed_machines, cluster_revision, prepare, same_spec};

use crate::state::ControllerState;
use crate::store::RunState;

/// Aborts the rollout in flight (only `only` when not empty): it is marked failed where it
/// stands, so nothing more is staged or released; nodes already released keep converging to
/// the specs they were sent. Returns the record as stored.
pub fn abort(
    state: &ControllerState,
    only: &str,
    who: &str,
) -> Result<RolloutRecord, RolloutError> {
    let record = state.store().write(|tx| {
        let latest = tx.latest_rollout()?;
        let mut r = match latest {
            Some(r) if r.state.active() && (only.is_empty() || r.id == only) => r,
            other => return Ok(Err(other.map(|r| (r.id, format!("{:?}", r.state))))),
        };
        r.message = format!(
            "aborted by {who} in {:?} at tier {}: nothing more is released",
            r.state,
            r.tier + 1
        );
        r.state = Phase::Failed;
        tx.save_rollout(&r)?;
        Ok(Ok(r))
    })?;
    match record {
        Ok(r) => {
            state.notify_change();
            Ok(r)
        }
        Err(latest) => Err(RolloutError::NotInFlight {
            latest: latest
                .map_or_else(|| "no rollout yet".into(), |(id, s)| format!("{id} is {s}")),
        }),
    }
}

/// A new rollout: the generation it stores and how it rolls out.
struct Launch<'a> {
    author: &'a str,
    plan_path: &'a str,
    plan_toml: &'a str,
    secrets: &'a BTreeMap<String, String>,
    run: RunState,
    tiers: Vec<Vec<String>>,
    rollback: bool,
    max_parallel: u32,
    health_timeout_s: u64,
}

/// What a rollout of `targets` touches: each node's progress (changed against the last success
/// or against what it is meant to run now), the machines it pushes to, and the roles that were
/// served before (their nodes restart one at a time).
struct Scope {
    nodes: BTreeMap<String, NodeProgress>,
    machines: BTreeSet<String>,
    ha_roles: BTreeSet<String>,
}

fn scope(
    state: &ControllerState,
    baseline: &BTreeMap<String, MachineSpec>,
    targets: &BTreeMap<String, MachineSpec>,
) -> Scope {
    let off = intent::off_target(state, targets);
    let mut machines = changed_machines(baseline, targets);
    for (machine, target) in targets {
        if target.nodes.iter().any(|n| off.contains_key(&n.name)) {
            machines.insert(machine.clone());
        }
    }
    // A machine a halted rollout gave nodes that the target does not have: emptied.
    for (machine, pushed) in state.desired_specs() {
        if !targets.contains_key(&machine) && !pushed.nodes.is_empty() {
            machines.insert(machine);
        }
    }
    let ha_roles = baseline
        .values()
        .flat_map(|s| s.nodes.iter().filter(|n| !diff::stopped(n)))
        .map(|n| n.role.clone())
        .collect();
    let mut nodes = BTreeMap::new();
    for (machine, target) in targets {
        for n in &target.nodes {
            let old = baseline
                .get(machine)
                .and_then(|b| b.nodes.iter().find(|o| o.name == n.name));
            nodes.insert(
                n.name.clone(),
                NodeProgress {
                    machine: machine.clone(),
                    role: n.role.clone(),
                    changed: diff::node_changed(old, n) || off.contains_key(&n.name),
                    target_digest: n.config_digest.clone(),
                    released_at_ms: None,
                    release_generation: 0,
                    done: false,
                    healthy_at_ms: None,
                },
            );
        }
    }
    Scope {
        nodes,
        machines,
        ha_roles,
    }
}

/// Stores the generation, its run state, targets and rollout record in `tx`.
fn insert(
    tx: &crate::store::Tx<'_>,
    targets: &BTreeMap<String, MachineSpec>,
    scope: Scope,
    l: Launch<'_>,
) -> Result<(u64, String), crate::store::StoreError> {
    let mut run = l.run;
    run.retain_nodes(&scope.nodes.keys().cloned().collect());
    let generation = tx.insert_plan(l.author, l.plan_path, l.plan_toml, l.secrets)?;
    tx.set_run_state(generation, &run)?;
    let id = format!("rollout-{generation}");
    // Every node is in some tier, or it would never be released.
    let mut tiers = l.tiers;
    let missing: Vec<String> = scope
        .nodes
        .keys()
        .filter(|n| !tiers.iter().flatten().any(|t| t == *n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        tiers.push(missing);
    }
    let record = RolloutRecord {
        id: id.clone(),
        generation,
        state: Phase::Staging,
        tier: 0,
        message: "staging".into(),
        rollback: l.rollback,
        max_parallel: l.max_parallel.max(1),
        health_timeout_s: l.health_timeout_s.max(1),
        tiers,
        ha_roles: scope.ha_roles,
        nodes: scope.nodes,
        machines: scope.machines.iter().map(|m| (m.clone(), 0)).collect(),
        settled_at_ms: None,
    };
    let specs: Vec<MachineSpec> = targets.values().cloned().collect();
    tx.save_targets(&id, &specs)?;
    tx.save_rollout(&record)?;
    Ok((generation, id))
}

/// Stores `prepared` as a new plan generation and starts its rollout. Returns `(generation,
/// rollout id)`; when nothing would change, nothing is stored and the id is empty.
pub fn start(
    state: &ControllerState,
    prepared: &Prepared,
    author: &str,
    plan_path: &str,
    plan_toml: &str,
) -> Result<(u64, String), RolloutError> {
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
        return Err(RolloutError::InProgress {
            id: r.id.clone(),
            state: format!("{:?}", r.state),
        });
    }
    // Against the last success and against what the nodes are meant to run now.
    let scope = scope(state, &baseline, &prepared.targets);
    if scope.machines.is_empty() {
        return Ok((current, String::new()));
    }
    let machines = scope.machines.len();
    let rollout = &prepared.plan.rollout;
    let launch = Launch {
        author,
        plan_path,
        plan_toml,
        secrets: &prepared.secrets.0,
        run: prepared.run.clone(),
        tiers: prepared.render.tiers.clone(),
        rollback: rollout.on_failure == OnFailure::Rollback,
        max_parallel: rollout.max_parallel,
        health_timeout_s: rollout.health_timeout.as_secs(),
    };
    let (generation, id) = store.write(|tx| insert(tx, &prepared.targets, scope, launch))?;
    tracing::info!(generation, rollout = %id, machines, %author, "plan stored; rollout started");
    state.notify_change();
    Ok((generation, id))
}

/// `on_failure = "rollback"`: rollout `failed` (ROLLING_BACK) ends ROLLED_BACK, and a new
/// generation equal to the last successful one (its plan, secrets, run state and rendered
/// specs) rolls out in its place like any other: staged, released tier by tier, gated on
/// health, HA peers one at a time. With nothing to return to (a first rollout) it halts.
pub fn restore_baseline(
    state: &ControllerState,
    failed: &RolloutRecord,
) -> Result<Option<(u64, String)>, RolloutError> {
    let store = state.store();
    let (baseline, source) = store.read(|tx| {
        let baseline = tx.baseline()?;
        let g = baseline.values().map(|s| s.plan_generation).max();
        let source = match g {
            Some(g) => {
                let plan = tx.plan(g)?;
                let run = tx.run_state(g)?;
                let tiers = tx
                    .rollouts_by_generation()?
                    .remove(&g)
                    .map(|r| r.tiers)
                    .unwrap_or_default();
                plan.map(|p| (p, run, tiers))
            }
            None => None,
        };
        Ok((baseline, source))
    })?;
    let mut done = failed.clone();
    let Some((plan, run, tiers)) = source.filter(|_| !baseline.is_empty()) else {
        done.state = Phase::Failed;
        done.message = format!(
            "{}; nothing to roll back to (no earlier generation succeeded): halted",
            failed.message
        );
        store.write(|tx| tx.save_rollout(&done))?;
        state.notify_change();
        return Ok(None);
    };
    let targets: BTreeMap<String, MachineSpec> = baseline
        .into_iter()
        .map(|(m, mut s)| {
            s.generation = 0;
            s.plan_generation = 0;
            (m, s)
        })
        .collect();
    // Changed: what does not run its baseline spec now (the failed rollout's nodes).
    let scope = scope(state, &targets, &targets);
    let author = format!(
        "controller (rollback of generation {} to generation {})",
        failed.generation, plan.generation
    );
    let launch = Launch {
        author: &author,
        plan_path: &plan.plan_path,
        plan_toml: &plan.plan_toml,
        secrets: &plan.secrets,
        run,
        tiers,
        rollback: false,
        max_parallel: failed.max_parallel,
        health_timeout_s: failed.health_timeout_s,
    };
    let (generation, id) = store.write(|tx| {
        let (generation, id) = insert(tx, &targets, scope, launch)?;
        done.state = Phase::RolledBack;
        done.message = format!(
            "{}; rolling back to generation {} as generation {generation} ({id})",
            failed.message, plan.generation
        );
        tx.save_rollout(&done)?;
        Ok((generation, id))
    })?;
    tracing::warn!(failed = %failed.id, rollout = %id, generation, "rolling back to the last success");
    state.notify_change();
    Ok(Some((generation, id)))
}
