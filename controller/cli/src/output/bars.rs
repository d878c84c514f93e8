//! `apply`'s live progress in a terminal: a spinner with the rollout's state and one bar per
//! node that fills as the node goes from pending to healthy, labelled with its status line.
//! The labels' elapsed times keep counting between changes: the caller ticks [`LiveBars::tick`]
//! every second.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

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
    /// The last status shown, redrawn by [`LiveBars::tick`].
    last: Option<ClusterStatus>,
}

impl LiveBars {
    /// Bars when stderr (where they are drawn) is a terminal; `None` otherwise.
    pub fn for_terminal() -> Option<Self> {
        std::io::stderr().is_terminal().then(Self::new)
    }

    fn new() -> Self {
        Self::drawn_to(indicatif::ProgressDrawTarget::stderr())
    }

    fn drawn_to(target: indicatif::ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(ProgressBar::new_spinner());
        header.enable_steady_tick(Duration::from_millis(120));
        LiveBars {
            multi,
            header,
            nodes: BTreeMap::new(),
            last: None,
        }
    }

    /// Shows `status` of `rollout` at `now`.
    pub fn update(&mut self, status: &ClusterStatus, rollout: &Rollout, now: SystemTime) {
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
                bar.set_message(node_line(m, n, now));
            }
        }
        self.last = Some(status.clone());
    }

    /// Redraws the labels of the last status at `now`, so their elapsed times count on while
    /// nothing changes.
    pub fn tick(&mut self, now: SystemTime) {
        let Some(status) = &self.last else { return };
        for m in &status.machines {
            for n in &m.nodes {
                if let Some(bar) = self.nodes.get(&(m.machine.clone(), n.node.clone())) {
                    bar.set_message(node_line(m, n, now));
                }
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

    #[test]
    fn a_waiting_nodes_elapsed_time_keeps_counting_between_changes() {
        use apim_proto::v1::{MachineStatus, NodeStatus, RolloutState};
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let status = ClusterStatus {
            machines: vec![MachineStatus {
                machine: "vm-km-1".into(),
                reachable: true,
                nodes: vec![NodeStatus {
                    node: "km-1".into(),
                    phase: NodePhase::Staged.into(),
                    phase_since: Some((t0 - Duration::from_secs(10)).into()),
                    ..NodeStatus::default()
                }],
                ..MachineStatus::default()
            }],
            ..ClusterStatus::default()
        };
        let rollout = Rollout {
            state: RolloutState::Starting.into(),
            ..Rollout::default()
        };
        let mut bars = LiveBars::drawn_to(indicatif::ProgressDrawTarget::hidden());
        bars.update(&status, &rollout, t0);
        let label = |b: &LiveBars| b.nodes.values().next().expect("a bar").message();
        assert!(label(&bars).contains(" 10s"), "{}", label(&bars));
        // No new status: the tick alone moves the time on.
        bars.tick(t0 + Duration::from_secs(65));
        assert!(label(&bars).contains(" 1m15s"), "{}", label(&bars));
        bars.finish();
    }
}
