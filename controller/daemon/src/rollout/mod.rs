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
//!    HEALTHY on the target `config_digest`; it fails on FAILED or after `health_timeout`.
//! 3. On failure, `halt` stops releasing (dependents stay STAGED) and `rollback` pushes every
//!    touched machine's previous spec again at a higher generation.
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
    let off = intent::off_target(state, &prepared.targets);
    let mut machines = changed_machines(&baseline, &prepared.targets);
    for (machine, target) in &prepared.targets {
        if target.nodes.iter().any(|n| off.contains_key(&n.name)) {
            machines.insert(machine.clone());
        }
    }
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
                    changed: diff::node_changed(old, n) || off.contains_key(&n.name),
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
