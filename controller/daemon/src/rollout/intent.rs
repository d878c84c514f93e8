//! What the cluster is meant to run now against what it runs: a rollout that halted leaves nodes
//! failed, or staged on another spec, while the last successful generation still says otherwise.
//! A plan is compared with both, so applying any plan — the previous one included — converges
//! the cluster (issue 16, "converge to intent").

use std::collections::BTreeMap;

use apim_proto::v1::{DesiredRun, MachineSpec, NodePhase, NodeSpec};

use crate::state::ControllerState;

/// The nodes of `targets` that do not run their target now, with why: the spec last pushed to
/// their machine holds another one (ignoring only whether it was to run or stay staged), or
/// their agent reports them other than healthy on the target's configuration. A node whose agent
/// has not reported is taken at its pushed spec (it converges when the agent returns).
pub fn off_target(
    state: &ControllerState,
    targets: &BTreeMap<String, MachineSpec>,
) -> BTreeMap<String, String> {
    let pushed = state.desired_specs();
    let mut reports = BTreeMap::new();
    for a in state.agents() {
        for n in a.last_status.map(|s| s.nodes).unwrap_or_default() {
            reports.insert((a.machine.clone(), n.node.clone()), n);
        }
    }
    let mut out = BTreeMap::new();
    for (machine, target) in targets {
        for n in &target.nodes {
            let was = pushed
                .get(machine)
                .and_then(|s| s.nodes.iter().find(|p| p.name == n.name));
            let Some(was) = was else {
                // Its machine was last sent a spec without it (a halted rollout removed it).
                if pushed.contains_key(machine) {
                    out.insert(
                        n.name.clone(),
                        format!("{machine} was last sent a spec without it"),
                    );
                }
                continue;
            };
            if !same_node(was, n) {
                out.insert(
                    n.name.clone(),
                    format!("{machine} was last sent another spec for it (a rollout that did not finish)"),
                );
                continue;
            }
            if let Some(r) = reports.get(&(machine.clone(), n.name.clone())) {
                let healthy = if n.desired() == DesiredRun::Stopped {
                    r.phase() == NodePhase::Stopped
                } else {
                    r.phase() == NodePhase::Healthy && r.config_digest == n.config_digest
                };
                if !healthy {
                    let phase = r
                        .phase()
                        .as_str_name()
                        .trim_start_matches("NODE_PHASE_")
                        .to_lowercase();
                    out.insert(
                        n.name.clone(),
                        if n.desired() == DesiredRun::Stopped {
                            format!("its agent reports it {phase}, not stopped")
                        } else {
                            format!(
                                "its agent reports it {phase}, not healthy on this configuration"
                            )
                        },
                    );
                }
            }
        }
    }
    out
}

/// The same node spec, whether it was to run or to stay staged.
fn same_node(a: &NodeSpec, b: &NodeSpec) -> bool {
    if a.desired == b.desired {
        // The common case, compared without copying the specs.
        return a == b;
    }
    let norm = |n: &NodeSpec| NodeSpec {
        desired: DesiredRun::Running as i32,
        ..n.clone()
    };
    norm(a) == norm(b)
}
