//! Agent messages the controller does not take (stale reports, unknown nodes, unissued
//! command results), counted and logged at most every [`REFUSAL_LOG_EVERY`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// What the controller did not take from one agent message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Reports for an older spec generation than the last one.
    pub stale_reports: usize,
    /// Node statuses for nodes the machine's spec does not name.
    pub unknown_nodes: usize,
    /// Node statuses for an older generation than the node's last.
    pub stale_nodes: usize,
    /// Results of commands never issued (or answered twice).
    pub unissued_results: usize,
    /// Log pieces for a command the controller never sent that machine.
    pub unissued_log_data: usize,
    /// Shared-folder pushes for a group none of the machine's nodes is in (a spec that
    /// changed under the agent, or an agent reaching for another group's gateways).
    pub foreign_pushes: usize,
}

impl Refused {
    fn any(&self) -> bool {
        *self != Refused::default()
    }

    fn add(&mut self, o: Refused) {
        self.stale_reports += o.stale_reports;
        self.unknown_nodes += o.unknown_nodes;
        self.stale_nodes += o.stale_nodes;
        self.unissued_results += o.unissued_results;
        self.unissued_log_data += o.unissued_log_data;
        self.foreign_pushes += o.foreign_pushes;
    }
}

/// How often refusals are logged at most (per controller; counts add up in between).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts refused agent messages and logs them at most every [`REFUSAL_LOG_EVERY`], so a
/// misbehaving agent cannot flood the log.
#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    inner: Mutex<(BTreeMap<String, Refused>, Option<std::time::Instant>)>,
}

impl RefusalLog {
    pub(super) fn count(&self, machine: &str, r: Refused) {
        if !r.any() {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.entry(machine.to_owned()).or_default().add(r);
        let due = g.1.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY);
        if !due {
            return;
        }
        g.1 = Some(std::time::Instant::now());
        for (machine, r) in std::mem::take(&mut g.0) {
            tracing::warn!(
                %machine,
                stale_reports = r.stale_reports,
                unknown_nodes = r.unknown_nodes,
                stale_nodes = r.stale_nodes,
                unissued_command_results = r.unissued_results,
                unissued_log_data = r.unissued_log_data,
                foreign_pushes = r.foreign_pushes,
                "refused agent messages"
            );
        }
    }
}
