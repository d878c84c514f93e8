//! The controller's pre-flight of a prepared plan against what the agents last reported: every
//! machine must have the memory its nodes need together (each node's `NodeSpec.memory_bytes`:
//! its maximum heap plus the JVM's other memory), checked at `apply` and `plan` before anything
//! is stored or pushed. The agents check the same again before they start anything.

use std::collections::BTreeMap;

use apim_plan::catalogue::jvm::mib;
use apim_proto::v1::{ErrorDetail, MachineSpec};

use super::{Prepared, RolloutError};
use crate::state::ControllerState;

/// A machine whose nodes need more memory than it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryShortfall {
    /// The machine.
    pub machine: String,
    /// Its total memory, bytes, as its agent last reported it.
    pub memory: u64,
    /// What its nodes need together, bytes.
    pub needed: u64,
    /// Each node's need, bytes, in spec order.
    pub nodes: Vec<(String, u64)>,
}

impl std::fmt::Display for MemoryShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(n, b)| format!("{n} {} MiB", mib(*b)))
            .collect();
        write!(
            f,
            "machine `{}` has {} MiB of memory (as its agent last reported) and its nodes need \
             {} MiB together: {}",
            self.machine,
            mib(self.memory),
            mib(self.needed),
            nodes.join(" + ")
        )
    }
}

/// The machines of `targets` whose nodes need more memory than `memory_of(machine)` (total
/// bytes; `None` or 0: not reported yet, not checked).
pub fn memory_shortfalls(
    targets: &BTreeMap<String, MachineSpec>,
    memory_of: impl Fn(&str) -> Option<u64>,
) -> Vec<MemoryShortfall> {
    let mut out = Vec::new();
    for (machine, spec) in targets {
        let Some(memory) = memory_of(machine).filter(|m| *m > 0) else {
            continue;
        };
        let nodes: Vec<(String, u64)> = spec
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.memory_bytes))
            .collect();
        let needed = nodes.iter().fold(0u64, |s, (_, b)| s.saturating_add(*b));
        if needed > memory {
            out.push(MemoryShortfall {
                machine: machine.clone(),
                memory,
                needed,
                nodes,
            });
        }
    }
    out
}

/// Refuses `prepared` when a machine's agent last reported less memory than the machine's nodes
/// need: one error per such machine, at its `[[machines]]` entry in the plan.
pub fn check_memory(
    state: &ControllerState,
    prepared: &Prepared,
    plan_path: &str,
    plan_toml: &str,
) -> Result<(), RolloutError> {
    let file = if plan_path.is_empty() {
        "plan.toml"
    } else {
        plan_path
    };
    let shortfalls = memory_shortfalls(&prepared.targets, |m| {
        state.agent(m).and_then(|a| a.facts).map(|f| f.memory_bytes)
    });
    if shortfalls.is_empty() {
        return Ok(());
    }
    let errors = shortfalls
        .iter()
        .map(|s| {
            let at = prepared
                .plan
                .machine(&s.machine)
                .map_or(0, |m| m.name.span.start);
            let (line, column) = apim_plan::diag::line_col(plan_toml, at);
            ErrorDetail {
                code: "plan.memory".into(),
                message: format!(
                    "{s} (each node: heap_max, 1024m by default, + 512 MiB + a tenth of it)"
                ),
                hint: "lower heap_max in [jvm] for these nodes, move a node to another machine, \
                       or give the machine more memory"
                    .into(),
                file: file.to_string(),
                line: line as u32,
                column: column as u32,
                field_path: String::new(),
            }
        })
        .collect();
    Err(RolloutError::PlanRejected { errors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apim_proto::v1::NodeSpec;

    fn spec(nodes: &[(&str, u64)]) -> MachineSpec {
        MachineSpec {
            nodes: nodes
                .iter()
                .map(|(n, b)| NodeSpec {
                    name: n.to_string(),
                    memory_bytes: *b,
                    ..NodeSpec::default()
                })
                .collect(),
            ..MachineSpec::default()
        }
    }

    #[test]
    fn nodes_of_a_machine_add_up_against_its_reported_memory() {
        const MIB: u64 = 1 << 20;
        let targets: BTreeMap<String, MachineSpec> = [
            (
                "vm-1".to_string(),
                spec(&[("cp-1", 1639 * MIB), ("tm-1", 1639 * MIB)]),
            ),
            ("vm-2".to_string(), spec(&[("gw-1", 5018 * MIB)])),
            ("vm-3".to_string(), spec(&[("gw-2", 5018 * MIB)])),
        ]
        .into();
        let memory = |m: &str| match m {
            "vm-1" => Some(3000 * MIB), // 3278 MiB needed
            "vm-2" => Some(8192 * MIB),
            _ => None, // not reported: not checked here (its agent checks)
        };
        let found = memory_shortfalls(&targets, memory);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "machine `vm-1` has 3000 MiB of memory (as its agent last reported) and its nodes \
             need 3278 MiB together: cp-1 1639 MiB + tm-1 1639 MiB"
        );
        assert!(memory_shortfalls(&targets, |_| Some(0)).is_empty());
    }
}
