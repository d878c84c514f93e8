//! Drift repair: when the plan last applied says `[rollout] drift = "repair"`, nodes the agents
//! report drifted are restarted through the gated restart path (a new generation, tier by tier,
//! health-gated, HA peers one at a time), whose converge writes their files again.
//!
//! Once per drift, never a loop: a node is repaired when its drift is new; the same drift again
//! (the repair did not fix it, or it failed) waits [`backoff`] — 1 min, doubling up to 1 h —
//! and nothing starts while any rollout is in flight. A node whose drift is gone is forgotten.
//! Only reachable machines' reports count (an unreachable one's drift may be stale).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::{ApplyResponse, ClusterStatus, Drift};
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::ServerError;
use super::operator::cluster_status;
use crate::state::ControllerState;

/// Who a repair's generation is stored as.
pub const AUTHOR: &str = "controller (drift repair)";
/// First wait before the same drift of a node is repaired again.
const BACKOFF_BASE: Duration = Duration::from_secs(60);
/// Longest wait before the same drift is repaired again.
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// `BACKOFF_BASE * 2^(n-1)` after the n-th repair of the same drift, capped at `BACKOFF_MAX`.
pub fn backoff(n: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// How often the task looks again without a change (a backoff may have passed).
const RECHECK: Duration = Duration::from_secs(15);

/// Runs until `stop` is set: after every change of the state (a status report, a rollout step)
/// and every [`RECHECK`], repairs what [`Repairs::due`] says with `restart` (the gated restart
/// of those nodes).
pub async fn run<F, Fut>(state: Arc<ControllerState>, restart: F, mut stop: watch::Receiver<bool>)
where
    F: Fn(BTreeSet<String>) -> Fut,
    Fut: Future<Output = Result<ApplyResponse, ServerError>>,
{
    let mut changes = state.changes();
    let mut repairs = Repairs::default();
    loop {
        if let Err(e) = step(&state, &restart, &mut repairs).await {
            tracing::warn!(error = %e, "drift repair: cannot look at the cluster; will retry");
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

async fn step<F, Fut>(
    state: &ControllerState,
    restart: &F,
    repairs: &mut Repairs,
) -> Result<(), ServerError>
where
    F: Fn(BTreeSet<String>) -> Fut,
    Fut: Future<Output = Result<ApplyResponse, ServerError>>,
{
    // Woken by every change: the rollout record (large with many nodes) is read only when
    // repair is on.
    // Several controllers: the one leading rollouts repairs (once), the others watch.
    if !state.store().read(|tx| tx.drift_repair())? || state.leading().is_none() {
        repairs.clear();
        return Ok(());
    }
    let latest = state.store().read(|tx| tx.latest_rollout())?;
    let active = latest.is_some_and(|r| r.state.active());
    let status = cluster_status(state)?;
    let nodes = repairs.due(&status, active, Instant::now());
    if nodes.is_empty() {
        return Ok(());
    }
    let names = nodes.iter().cloned().collect::<Vec<_>>().join(", ");
    tracing::warn!(nodes = %names, "drift repair: restarting drifted nodes through the gated restart path");
    match restart(nodes).await {
        Ok(r) => {
            tracing::info!(generation = r.generation, rollout = %r.rollout_id, nodes = %names, "drift repair started")
        }
        // Tried all the same: the same drift waits its backoff.
        Err(e) => tracing::warn!(error = %e, nodes = %names, "drift repair could not start"),
    }
    Ok(())
}

/// A repair started for a node.
#[derive(Debug, Clone)]
struct Tried {
    /// The drift it was started for.
    drift: Vec<Drift>,
    /// When.
    at: Instant,
    /// How many repairs were started for this same drift.
    attempts: u32,
}

/// The repairs started, per node.
#[derive(Debug, Default)]
pub struct Repairs {
    tried: BTreeMap<String, Tried>,
}

impl Repairs {
    /// Forgets everything (repair is off).
    pub fn clear(&mut self) {
        self.tried.clear();
    }

    /// The nodes to repair now, given the cluster's state, whether a rollout is in flight and
    /// the time; they are recorded as tried (call [`Repairs::due`] only when about to repair
    /// them). Forgets nodes whose drift is gone.
    pub fn due(
        &mut self,
        status: &ClusterStatus,
        rollout_active: bool,
        now: Instant,
    ) -> BTreeSet<String> {
        let reported: BTreeMap<&str, &Vec<Drift>> = status
            .machines
            .iter()
            .filter(|m| m.reachable && !m.revoked)
            .flat_map(|m| m.nodes.iter())
            .map(|n| (n.node.as_str(), &n.drift))
            .collect();
        self.tried
            .retain(|node, _| reported.get(node.as_str()).is_some_and(|d| !d.is_empty()));
        if rollout_active {
            return BTreeSet::new();
        }
        let mut due = BTreeSet::new();
        for (node, drift) in reported.into_iter().filter(|(_, d)| !d.is_empty()) {
            let attempts = match self.tried.get(node) {
                None => 1,
                Some(t) if t.drift != *drift => 1,
                Some(t) if now >= t.at + backoff(t.attempts) => t.attempts + 1,
                Some(_) => continue,
            };
            self.tried.insert(
                node.to_owned(),
                Tried {
                    drift: drift.clone(),
                    at: now,
                    attempts,
                },
            );
            due.insert(node.to_owned());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use apim_proto::v1::{MachineStatus, NodeStatus};

    use super::*;

    fn status(reachable: bool, nodes: &[(&str, &[&str])]) -> ClusterStatus {
        ClusterStatus {
            machines: vec![MachineStatus {
                machine: "vm-1".into(),
                reachable,
                nodes: nodes
                    .iter()
                    .map(|(n, keys)| NodeStatus {
                        node: (*n).into(),
                        drift: if keys.is_empty() {
                            vec![]
                        } else {
                            vec![Drift {
                                file: "conf/deployment.toml".into(),
                                problem: "changed".into(),
                                changed_keys: keys.iter().map(|k| (*k).into()).collect(),
                                ..Drift::default()
                            }]
                        },
                        ..NodeStatus::default()
                    })
                    .collect(),
                ..MachineStatus::default()
            }],
            ..ClusterStatus::default()
        }
    }

    fn names(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn each_drift_is_repaired_once_then_backs_off() {
        let mut r = Repairs::default();
        let t0 = Instant::now();
        let drifted = status(true, &[("gw-1", &["server.offset"]), ("km-1", &[])]);
        assert_eq!(r.due(&drifted, false, t0), names(&["gw-1"]));
        // Still reported (the repair's rollout has not got to it yet): not again.
        assert!(
            r.due(&drifted, false, t0 + Duration::from_secs(1))
                .is_empty()
        );
        assert!(
            r.due(&drifted, true, t0 + Duration::from_secs(3600))
                .is_empty()
        );
        // The same drift after the backoff: once more, and then a longer wait.
        let t1 = t0 + backoff(1);
        assert_eq!(r.due(&drifted, false, t1), names(&["gw-1"]));
        assert!(r.due(&drifted, false, t1 + backoff(1)).is_empty());
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(r.due(&drifted, false, t1 + backoff(2)), names(&["gw-1"]));
        assert_eq!(backoff(40), BACKOFF_MAX);
        // Another drift of the node is a new one: at once.
        let other = status(true, &[("gw-1", &["server.hostname"])]);
        assert_eq!(
            r.due(&other, false, t1 + backoff(2) + Duration::from_secs(1)),
            names(&["gw-1"])
        );
    }

    #[test]
    fn a_repaired_node_is_forgotten_and_nothing_starts_during_a_rollout() {
        let mut r = Repairs::default();
        let t0 = Instant::now();
        let drifted = status(true, &[("gw-1", &["server.offset"])]);
        assert!(
            r.due(&drifted, true, t0).is_empty(),
            "a rollout is in flight"
        );
        assert_eq!(r.due(&drifted, false, t0), names(&["gw-1"]));
        assert!(r.due(&status(true, &[("gw-1", &[])]), false, t0).is_empty());
        // Fixed, then edited again the same way: a new repair at once.
        assert_eq!(
            r.due(&drifted, false, t0 + Duration::from_secs(1)),
            names(&["gw-1"])
        );
        // An unreachable machine's report may be stale: not acted on.
        let mut r = Repairs::default();
        assert!(
            r.due(&status(false, &[("gw-1", &["x"])]), false, t0)
                .is_empty()
        );
    }
}
