//! [`Engine`]: the loop that carries out [`decide`]'s decisions. It gathers the [`World`] from
//! the store and the state, writes each decision in one transaction, publishes the pushed specs
//! to the agents' streams, and sleeps until something changes or a deadline passes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Decision, Next, NodeReport, RolloutError, World, decide};
use crate::state::ControllerState;

/// Drives rollouts; see the module documentation.
pub struct Engine {
    state: Arc<ControllerState>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
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
            // Only the holder of the rollout lease decides; the others watch (and take over the
            // stored record if it goes).
            let Some(epoch) = self.state.leading() else {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let wait = match self.reconcile(epoch) {
                Ok(Next::Again) => continue,
                Ok(Next::Wait(d)) => d.unwrap_or(Duration::from_secs(5)),
                Err(RolloutError::Store(crate::store::StoreError::LostLease)) => {
                    tracing::warn!("lost the rollout lease; another controller continues");
                    Duration::from_millis(100)
                }
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

    /// One idempotent pass over the latest rollout.
    fn reconcile(&self, epoch: i64) -> Result<Next, RolloutError> {
        let store = self.state.store();
        let Some(record) = store.read(|tx| tx.latest_rollout())? else {
            return Ok(Next::Wait(None));
        };
        if !record.state.active() {
            return Ok(Next::Wait(None));
        }
        if record.state == super::Phase::RollingBack {
            super::restore_baseline(&self.state, &record)?;
            return Ok(Next::Again);
        }
        let targets = self.state.rollout_targets(&record.id)?;
        let pushed = self.state.desired_specs();
        let reports = self.reports();
        let world = World {
            targets: &targets,
            pushed: &pushed,
            reports: &reports,
            now_ms: now_ms(),
        };
        let decision = decide(&record, &world);
        let next = decision.next;
        if decision.record != record || !decision.push.is_empty() || decision.baseline.is_some() {
            self.carry_out(decision, epoch)?;
        }
        Ok(next)
    }

    /// The last report of every node, by (machine, node).
    fn reports(&self) -> BTreeMap<(String, String), NodeReport> {
        let mut out = BTreeMap::new();
        for agent in self.state.agents() {
            let Some(report) = agent.last_status else {
                continue;
            };
            for status in report.nodes {
                let key = (agent.machine.clone(), status.node.clone());
                out.insert(
                    key,
                    NodeReport {
                        status,
                        connected: agent.connected,
                    },
                );
            }
        }
        out
    }

    /// Writes the decision in one transaction (only while this controller still holds the
    /// lease at `epoch`: a deposed leader writes nothing), then publishes its specs.
    fn carry_out(&self, d: Decision, epoch: i64) -> Result<(), RolloutError> {
        self.state.store().write(|tx| {
            if !self.state.still_leading(tx, epoch)? {
                return Err(crate::store::StoreError::LostLease);
            }
            for s in &d.push {
                tx.save_spec(s)?;
            }
            if let Some(b) = &d.baseline {
                tx.set_baseline(b)?;
            }
            tx.save_rollout(&d.record)
        })?;
        self.state.publish_specs(d.push);
        Ok(())
    }
}
