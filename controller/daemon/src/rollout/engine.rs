//! [`Engine`]: the loop that carries out [`decide`]'s decisions. It gathers the [`World`] from
//! the store and the state, writes each decision in one transaction, publishes the pushed specs
//! to the agents' streams, and sleeps until something changes or a deadline passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apim_proto::v1::command::Action;
use apim_proto::v1::{ReportNow, ServiceStatus};
use tokio::sync::watch;

use super::{Decision, Next, NodeReport, RolloutError, World, decide};
use crate::state::ControllerState;

/// Drives rollouts; see the module documentation.
pub struct Engine {
    state: Arc<ControllerState>,
    /// When each machine was last asked for a report (`Decision::ask`), so a rollout waiting on
    /// a balancer asks at most once per [`super::served::POLL`].
    asked: Mutex<BTreeMap<String, Instant>>,
}

/// What the agents last said, as [`World`] takes it.
struct Reports {
    nodes: BTreeMap<(String, String), NodeReport>,
    services: BTreeMap<(String, String), ServiceStatus>,
    connected: BTreeSet<String>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Engine {
    /// An engine over `state`.
    pub fn new(state: Arc<ControllerState>) -> Self {
        Engine {
            state,
            asked: Mutex::new(BTreeMap::new()),
        }
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
        let seen = self.reports();
        let world = World {
            targets: &targets,
            pushed: &pushed,
            reports: &seen.nodes,
            services: &seen.services,
            connected: &seen.connected,
            now_ms: now_ms(),
        };
        let decision = decide(&record, &world);
        let next = decision.next;
        self.ask(&decision.ask);
        if decision.record != record || !decision.push.is_empty() || decision.baseline.is_some() {
            self.carry_out(decision, epoch)?;
        }
        Ok(next)
    }

    /// Asks the agents of `machines` for a report now (`ReportNow`), each at most once per
    /// [`super::served::POLL`]; the answer arrives as a status report like any other.
    fn ask(&self, machines: &[String]) {
        if machines.is_empty() {
            return;
        }
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        asked.retain(|_, at| now.duration_since(*at) < super::served::POLL);
        for m in machines {
            if asked.contains_key(m) {
                continue;
            }
            asked.insert(m.clone(), now);
            // The result is only logged; a closed stream drops it.
            if self
                .state
                .request(m, Action::ReportNow(ReportNow {}))
                .is_none()
            {
                tracing::debug!(machine = %m, "no report asked: its agent is not connected here");
            }
        }
    }

    /// The last report of every node, by (machine, node); of every managed service, by
    /// (machine, service); and the machines whose agent is connected.
    fn reports(&self) -> Reports {
        let mut out = BTreeMap::new();
        let mut services = BTreeMap::new();
        let mut connected = BTreeSet::new();
        for agent in self.state.agents() {
            if agent.connected {
                connected.insert(agent.machine.clone());
            }
            let Some(report) = agent.last_status else {
                continue;
            };
            for s in report.services {
                services.insert((agent.machine.clone(), s.name.clone()), s);
            }
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
        Reports {
            nodes: out,
            services,
            connected,
        }
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
