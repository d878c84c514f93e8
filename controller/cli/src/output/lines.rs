//! The text lines of the controller commands: one line per node for `apply`'s progress (bars
//! in a terminal, lines otherwise), the changes of `plan`, and the details of a plan the
//! controller refused. Text an agent wrote (steps, errors, the rollout message that quotes
//! them) is shown through [`printable`]: it cannot forge a line or drive the terminal.

use std::time::SystemTime;

use apim_proto::v1::{ChangeKind, ClusterStatus, MachineStatus, NodeStatus, PlanResponse};

use apim_proto::text::printable;

use super::kind_name;
use super::tables::{generation, machine_or_node_phase};
use super::time::elapsed;

/// One line per node: machine, node, phase, the plan generation the node's spec came from
/// (`gen N`; `gen -` when not known yet), time in the phase, restarts, step and last error; an
/// unreachable machine's nodes say "unreachable for 3m12s", a revoked machine's "revoked".
pub fn status_lines(status: &ClusterStatus, now: SystemTime) -> Vec<String> {
    status
        .machines
        .iter()
        .flat_map(|m| m.nodes.iter().map(move |n| node_line(m, n, now)))
        .collect()
}

/// The status line of one node (see [`status_lines`]).
pub fn node_line(m: &MachineStatus, n: &NodeStatus, now: SystemTime) -> String {
    let mut line = format!(
        "{:<14} {:<14} {:<12} gen {:<4} {:>7}",
        printable(&m.machine),
        printable(&n.node),
        machine_or_node_phase(m, n, now),
        generation(n.plan_generation),
        elapsed(super::since(n.phase_since.as_ref()), now)
    );
    if n.restarts > 0 {
        line.push_str(&format!("  restarts {}", n.restarts));
    }
    if !n.step.is_empty() {
        line.push_str(&format!("  {}", printable(&n.step)));
    }
    if !n.last_error.is_empty() {
        line.push_str(&format!("  error: {}", printable(&n.last_error)));
    }
    line.trim_end().to_string()
}

/// `plan`: per node a `+`/`-`/`~` line with its change and whether it restarts, then its
/// `deployment.toml` and hosts diff lines and certificate changes, indented; then the cluster
/// revision (for `apply --plan-revision`) and "nothing to change" when nothing would.
pub fn plan(resp: &PlanResponse) -> Vec<String> {
    let mut lines = Vec::new();
    for c in &resp.changes {
        let sign = match c.kind() {
            ChangeKind::Create => "+",
            ChangeKind::Delete => "-",
            ChangeKind::Update => "~",
            _ => " ",
        };
        lines.push(format!(
            "{sign} {} ({}): {}{}",
            c.node,
            c.machine,
            kind_name(c.kind()),
            if c.restart { ", restarts" } else { "" }
        ));
        for l in c.deployment_toml_diff.iter().chain(&c.hosts_diff) {
            lines.push(format!("    {l}"));
        }
        for l in &c.certificate_changes {
            lines.push(format!("    cert: {l}"));
        }
        if !c.converge.is_empty() {
            lines.push(format!(
                "    converges: {}",
                apim_proto::text::printable(&c.converge)
            ));
        }
    }
    lines.push(format!("cluster revision: {}", resp.cluster_revision));
    if !resp
        .changes
        .iter()
        .any(|c| c.kind() != ChangeKind::Unchanged)
    {
        lines.push("nothing to change".into());
    }
    lines
}

/// The controller's refusal of a plan: one `file:line:col: error: MESSAGE` line (the location
/// when the problem has one) and `  hint: …` per problem in its details; `error: MESSAGE` when
/// it sent none. No trailing newline.
pub fn refusal(status: &tonic::Status) -> String {
    match apim_proto::error_details(status) {
        Some(d) if !d.errors.is_empty() => details(&d.errors, "error").join("\n"),
        _ => format!("error: {}", printable(status.message())),
    }
}

/// The controller's warnings about a plan, as [`refusal`] shows its errors.
pub fn warnings(ws: &[apim_proto::v1::ErrorDetail]) -> Vec<String> {
    details(ws, "warning")
}

fn details(ds: &[apim_proto::v1::ErrorDetail], severity: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for e in ds {
        let at = if e.line > 0 {
            format!("{}:{}:{}: ", printable(&e.file), e.line, e.column)
        } else {
            String::new()
        };
        lines.push(format!("{at}{severity}: {}", printable(&e.message)));
        if !e.hint.is_empty() {
            lines.push(format!("  hint: {}", printable(&e.hint)));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use apim_proto::v1::NodePhase;

    #[test]
    fn a_node_line_names_machine_node_phase_and_error() {
        let m = MachineStatus {
            machine: "vm-gw-1".into(),
            reachable: true,
            ..MachineStatus::default()
        };
        let n = NodeStatus {
            node: "gw-1".into(),
            phase: NodePhase::Failed.into(),
            generation: 7,
            plan_generation: 3,
            step: "waiting for readiness".into(),
            last_error: "port 9447 refused".into(),
            ..NodeStatus::default()
        };
        let now = SystemTime::UNIX_EPOCH;
        let line = node_line(&m, &n, now);
        assert!(
            line.starts_with("vm-gw-1        gw-1           failed"),
            "{line}"
        );
        assert!(line.contains("gen 3"), "{line}");
        let unknown = NodeStatus {
            plan_generation: 0,
            ..n.clone()
        };
        assert!(node_line(&m, &unknown, now).contains("gen -"));
        assert!(
            line.ends_with("waiting for readiness  error: port 9447 refused"),
            "{line}"
        );
        let away = MachineStatus {
            reachable: false,
            ..m
        };
        assert!(node_line(&away, &n, now).contains("unreachable (never connected)"));
        let revoked = MachineStatus {
            revoked: true,
            ..away
        };
        assert!(
            node_line(&revoked, &n, now).contains(" revoked "),
            "{}",
            node_line(&revoked, &n, now)
        );
    }

    #[test]
    fn a_refusal_names_each_problem_with_its_place_and_hint() {
        use apim_proto::v1::{ErrorDetail, ErrorDetails};
        let details = ErrorDetails {
            errors: vec![
                ErrorDetail {
                    message: "node `gw-1` is on unknown machine `vm-9`".into(),
                    hint: "add it to [[machines]]".into(),
                    file: "plan.toml".into(),
                    line: 54,
                    column: 11,
                    ..ErrorDetail::default()
                },
                ErrorDetail {
                    message: "a rollout is in progress".into(),
                    ..ErrorDetail::default()
                },
            ],
        };
        let status =
            apim_proto::status_with_details(tonic::Code::InvalidArgument, "invalid", &details);
        assert_eq!(
            refusal(&status),
            "plan.toml:54:11: error: node `gw-1` is on unknown machine `vm-9`\n  \
             hint: add it to [[machines]]\nerror: a rollout is in progress"
        );
        assert_eq!(refusal(&tonic::Status::unavailable("down")), "error: down");
    }
}
