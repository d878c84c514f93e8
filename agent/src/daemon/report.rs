//! The status board: the agent's one truth about its nodes, turned into `StatusReport`s.
//!
//! Node workers write their phase, step, error, pid and restarts here; the connection loop
//! sends a full report whenever a phase (or another field the controller acts on) changes,
//! and periodically. `phase_since` changes only when the phase does.
//!
//! It also carries drift checks asked for on demand: [`StatusBoard::request_drift_check`] opens
//! a new check epoch that every node loop answers with [`StatusBoard::drift_checked`];
//! [`StatusBoard::wait_drift_checked`] waits (bounded) for them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use apim_proto::prost_types::Timestamp;
use apim_proto::v1::{
    Drift, MachineFacts as WireFacts, NodePhase, NodeStatus, ServiceStatus, StatusReport,
};
use tokio::sync::watch;

use crate::exec::facts::{JavaFact, MachineFacts};

/// Shared, cheap-to-read status of every node of the held spec.
#[derive(Debug)]
pub struct StatusBoard {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// The latest drift check epoch asked for.
    drift_requests: watch::Sender<u64>,
    /// Bumped whenever a node answers a drift check.
    drift_answers: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    nodes: BTreeMap<String, NodeStatus>,
    version: u64,
    /// Per node, the latest drift check epoch it answered.
    drift_checked: BTreeMap<String, u64>,
    /// Why the held destroy spec could not be carried out whole (empty: it was, or none).
    destroy_error: String,
    /// The managed services of the held spec, by name, with when their last probe round began.
    services: BTreeMap<String, (ServiceStatus, Option<Instant>)>,
}

/// A change to one node's status; `None` fields stay as they are.
#[derive(Debug, Default, Clone)]
pub struct Update {
    /// New phase.
    pub phase: Option<NodePhase>,
    /// New step text.
    pub step: Option<String>,
    /// New last error (`Some("")` clears it).
    pub last_error: Option<String>,
    /// New generation the status refers to.
    pub generation: Option<u64>,
    /// New restart count.
    pub restarts: Option<u32>,
    /// New pid (`Some(None)` clears it).
    pub pid: Option<Option<u32>>,
    /// New running flag.
    pub running: Option<bool>,
    /// New config digest.
    pub config_digest: Option<String>,
    /// New drift (replaces the list).
    pub drift: Option<Vec<Drift>>,
    /// New shared-folders state.
    pub shared: Option<String>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
            drift_requests: watch::channel(0).0,
            drift_answers: watch::channel(0).0,
        }
    }
}

impl StatusBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the machine spec generation the agent converges to.
    pub fn set_generation(&self, generation: u64) {
        let mut g = self.lock();
        if g.generation != generation {
            g.generation = generation;
            g.version += 1;
            self.changed.send_replace(g.version);
        }
    }

    /// Applies `u` to `node` (creating it PENDING); notifies subscribers when anything but
    /// the step text changed.
    pub fn update(&self, node: &str, u: Update) {
        let mut g = self.lock();
        let st = g
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeStatus {
                node: node.to_owned(),
                phase: NodePhase::Pending as i32,
                phase_since: Some(now()),
                ..NodeStatus::default()
            });
        let before = st.clone();
        if let Some(p) = u.phase
            && st.phase != p as i32
        {
            st.phase = p as i32;
            st.phase_since = Some(now());
        }
        if let Some(s) = u.step {
            st.step = s;
        }
        if let Some(gen_) = u.generation {
            // Work on a new generation starts clean: an error of the previous one is history.
            if gen_ != st.generation && u.phase != Some(NodePhase::Failed) {
                st.last_error.clear();
            }
            st.generation = gen_;
        }
        if let Some(e) = u.last_error {
            st.last_error = e;
        }
        if let Some(r) = u.restarts {
            st.restarts = r;
        }
        if let Some(p) = u.pid {
            st.pid = p;
        }
        if let Some(r) = u.running {
            st.running = r;
        }
        if let Some(d) = u.config_digest {
            st.config_digest = d;
        }
        if let Some(d) = u.drift {
            st.drift = d;
        }
        if let Some(sh) = u.shared {
            st.shared = sh;
        }
        let mut cmp = st.clone();
        cmp.step = before.step.clone();
        if cmp != before {
            tracing::info!(
                node,
                phase = ?NodePhase::try_from(st.phase).unwrap_or(NodePhase::Unspecified),
                step = %st.step,
                last_error = %st.last_error,
                restarts = st.restarts,
                drifted = st.drift.len(),
                "node status"
            );
            g.version += 1;
            self.changed.send_replace(g.version);
        }
    }

    /// Records why a destroy could not be carried out whole (`""` clears it).
    pub fn set_destroy_error(&self, error: &str) {
        let mut g = self.lock();
        if g.destroy_error != error {
            g.destroy_error = error.to_owned();
            g.version += 1;
            self.changed.send_replace(g.version);
        }
    }

    /// Sets a managed service's status and when the probe round of its `probes` began;
    /// notifies subscribers when the status changed (a new round with the same results alone
    /// does not: it goes with the next report, which says how long ago it began).
    pub fn set_service(&self, status: ServiceStatus, probed: Option<Instant>) {
        let mut g = self.lock();
        let changed = g.services.get(&status.name).map(|(s, _)| s) != Some(&status);
        g.services.insert(status.name.clone(), (status, probed));
        if changed {
            g.version += 1;
            self.changed.send_replace(g.version);
        }
    }

    /// Forgets the managed services not in `keep`.
    pub fn retain_services(&self, keep: &[String]) {
        let mut g = self.lock();
        let before = g.services.len();
        g.services.retain(|k, _| keep.contains(k));
        if g.services.len() != before {
            g.version += 1;
            self.changed.send_replace(g.version);
        }
    }

    /// Forgets every node (the machine was destroyed).
    pub fn clear(&self) {
        let mut g = self.lock();
        if !g.nodes.is_empty() {
            g.nodes.clear();
            g.version += 1;
            self.changed.send_replace(g.version);
        }
    }

    /// Forgets a node that left the spec.
    pub fn remove(&self, node: &str) {
        let mut g = self.lock();
        g.drift_checked.remove(node);
        if g.nodes.remove(node).is_some() {
            g.version += 1;
            self.changed.send_replace(g.version);
        }
    }

    /// One node's status.
    pub fn node(&self, node: &str) -> Option<NodeStatus> {
        self.lock().nodes.get(node).cloned()
    }

    /// The full report (without facts).
    pub fn snapshot(&self) -> StatusReport {
        let g = self.lock();
        StatusReport {
            generation: g.generation,
            nodes: g.nodes.values().cloned().collect(),
            facts: None,
            destroy_error: g.destroy_error.clone(),
            services: g
                .services
                .values()
                .map(|(s, probed)| ServiceStatus {
                    // Rounded up: the round is never taken for newer than it is.
                    probed_ms_ago: probed.map(|t| {
                        u64::try_from(t.elapsed().as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
                    }),
                    ..s.clone()
                })
                .collect(),
        }
    }

    /// Changes whenever a report-worthy field changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Asks every node loop for a drift check now; returns the check's epoch.
    pub fn request_drift_check(&self) -> u64 {
        let mut epoch = 0;
        self.drift_requests.send_modify(|e| {
            *e += 1;
            epoch = *e;
        });
        epoch
    }

    /// The drift checks asked for (the value is the latest epoch).
    pub fn drift_requests(&self) -> watch::Receiver<u64> {
        self.drift_requests.subscribe()
    }

    /// `node` answered the drift check `epoch` (its drift is on the board).
    pub fn drift_checked(&self, node: &str, epoch: u64) {
        {
            let mut g = self.lock();
            let e = g.drift_checked.entry(node.to_owned()).or_default();
            *e = (*e).max(epoch);
        }
        self.drift_answers.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until every node on the board answered drift check `epoch`, at most `timeout`;
    /// returns the nodes that did not (busy converging).
    pub async fn wait_drift_checked(&self, epoch: u64, timeout: Duration) -> Vec<String> {
        let mut answers = self.drift_answers.subscribe();
        let pending = || {
            let g = self.lock();
            g.nodes
                .keys()
                .filter(|n| g.drift_checked.get(*n).is_none_or(|e| *e < epoch))
                .cloned()
                .collect::<Vec<_>>()
        };
        let wait = async {
            loop {
                answers.mark_unchanged();
                if pending().is_empty() {
                    return;
                }
                if answers.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        pending()
    }
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// The wire form of the machine facts.
pub fn wire_facts(f: &MachineFacts) -> WireFacts {
    let (java_version, java_home_found) = match &f.java {
        JavaFact::Found(j) => (j.version.clone(), true),
        JavaFact::Missing { .. } | JavaFact::NotChecked => (String::new(), false),
    };
    WireFacts {
        hostname: f.hostname.clone(),
        os: f.os.clone(),
        kernel: f.kernel.clone(),
        cpus: u32::try_from(f.cpus).unwrap_or(u32::MAX),
        memory_bytes: f.memory_total,
        disk_free_bytes: f.disk_free,
        java_version,
        java_home_found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error(board: &StatusBoard) -> String {
        board.snapshot().nodes[0].last_error.clone()
    }

    #[test]
    fn a_new_generation_clears_the_previous_error_but_not_its_own() {
        let board = StatusBoard::default();
        let fail = |generation, error: &str| Update {
            phase: Some(NodePhase::Failed),
            last_error: Some(error.to_owned()),
            generation: Some(generation),
            ..Update::default()
        };
        board.update("km-1", fail(1, "JDK 17 is not supported"));
        assert_eq!(last_error(&board), "JDK 17 is not supported");
        // Same generation, new step: the error stays.
        board.update(
            "km-1",
            Update {
                step: Some("retrying".into()),
                ..Update::default()
            },
        );
        assert_eq!(last_error(&board), "JDK 17 is not supported");
        // Generation 2 starts: the old error is gone.
        let working = Update {
            phase: Some(NodePhase::Unpacking),
            generation: Some(2),
            ..Update::default()
        };
        board.update("km-1", working);
        assert_eq!(last_error(&board), "");
        // A failure of generation 3 itself is reported.
        board.update("km-1", fail(3, "port 7000 in use"));
        assert_eq!(last_error(&board), "port 7000 in use");
    }

    #[test]
    fn a_new_probe_round_with_the_same_results_is_no_change_but_reports_say_how_old_it_is() {
        let board = StatusBoard::default();
        let mut changes = board.subscribe();
        let lb = ServiceStatus {
            name: "lb".into(),
            running: true,
            ..ServiceStatus::default()
        };
        let first = Instant::now();
        board.set_service(lb.clone(), Some(first));
        assert!(changes.has_changed().unwrap(), "a new service is a change");
        changes.mark_unchanged();
        let second = first + Duration::from_millis(1);
        board.set_service(lb.clone(), Some(second));
        assert!(
            !changes.has_changed().unwrap(),
            "same results: no report of its own"
        );
        let ago = board.snapshot().services[0].probed_ms_ago.expect("dated");
        // At least as old as the round really is, rounded up.
        assert!(u128::from(ago) >= second.elapsed().as_millis(), "{ago}");
        assert!(ago < 60_000, "{ago}");
        // The controller dates it; the agent never does.
        assert_eq!(board.snapshot().services[0].probed_at_ms, None);
        board.set_service(lb, None);
        assert_eq!(board.snapshot().services[0].probed_ms_ago, None);
    }
}
