//! `apply`'s live progress in a terminal: a spinner with the rollout's state and one bar per
//! node that fills as the node goes from pending to healthy, labelled with its status line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use apim_proto::v1::{ClusterStatus, NodePhase, Rollout};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::lines::node_line;
use super::state_name;

/// The number of steps [`phase_progress`] counts to.
pub const PHASE_STEPS: u64 = 8;

/// How far along the way to healthy a phase is, out of [`PHASE_STEPS`], in the order the agent
/// goes through them (fetch, unpack, optimize, staged; once released: configure, certificates,
/// start, healthy).
pub fn phase_progress(phase: NodePhase) -> u64 {
    match phase {
        NodePhase::Unspecified | NodePhase::Pending | NodePhase::Stopping | NodePhase::Stopped => 0,
        NodePhase::Fetching => 1,
        NodePhase::Unpacking => 2,
        NodePhase::Optimizing | NodePhase::Initialising => 3,
        NodePhase::Staged => 4,
        NodePhase::Configuring => 5,
        NodePhase::Certificates => 6,
        NodePhase::Starting => 7,
        NodePhase::Healthy => PHASE_STEPS,
        // A failed node keeps its bar where it was; its line says why.
        NodePhase::Failed => 0,
    }
}

/// Live progress: a header with the rollout's state and one bar per node.
pub struct LiveBars {
    multi: MultiProgress,
    header: ProgressBar,
    nodes: BTreeMap<(String, String), ProgressBar>,
}

impl LiveBars {
    /// Bars when stderr (where they are drawn) is a terminal; `None` otherwise.
    pub fn for_terminal() -> Option<Self> {
        std::io::stderr().is_terminal().then(Self::new)
    }

    fn new() -> Self {
        let multi = MultiProgress::new();
        let header = multi.add(ProgressBar::new_spinner());
        header.enable_steady_tick(Duration::from_millis(120));
        LiveBars {
            multi,
            header,
            nodes: BTreeMap::new(),
        }
    }

    /// Shows `status` of `rollout`.
    pub fn update(&mut self, status: &ClusterStatus, rollout: &Rollout) {
        // The engine's message already says where it is ("starting tier 2", …).
        let header = if rollout.message.is_empty() {
            format!("{} tier {}", state_name(rollout.state()), rollout.tier + 1)
        } else {
            apim_proto::text::printable(&rollout.message).into_owned()
        };
        self.header.set_message(header);
        let style = ProgressStyle::with_template("{bar:16} {msg}")
            .expect("a valid template")
            .progress_chars("##-");
        for m in &status.machines {
            for n in &m.nodes {
                let key = (m.machine.clone(), n.node.clone());
                let bar = self.nodes.entry(key).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(PHASE_STEPS));
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

    /// Clears the bars (the final lines are printed after).
    pub fn finish(self) {
        for b in self.nodes.values() {
            b.finish_and_clear();
        }
        self.header.finish_and_clear();
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
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
}
