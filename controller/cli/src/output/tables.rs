//! The tables of the listing commands: `status` (one row per node), `agents` (one per
//! machine) and `history` (one per generation). Times are human (`2m ago`, `unreachable for
//! 3m12s`) against the `now` given, so a table renders the same in a test as it did on screen.

use std::time::SystemTime;

use apim_proto::text::printable;
use apim_proto::v1::{AgentInfo, ClusterStatus, GenerationInfo, MachineStatus, NodeStatus};

use super::table::Table;

/// A table's lines, or `empty` alone when it has no row.
pub fn or_empty(table: &Table, empty: &str) -> Vec<String> {
    if table.is_empty() {
        vec![empty.to_string()]
    } else {
        table.lines()
    }
}
use super::time::{ago, elapsed, until};
use super::{phase_name, since, state_name};

/// The status table's columns.
pub const STATUS_COLUMNS: [&str; 8] = [
    "MACHINE",
    "NODE",
    "PHASE",
    "GEN",
    "RESTARTS",
    "PID",
    "IN PHASE",
    "STEP / ERROR",
];

/// `status`: the generation and the rollout on one line, then the table of nodes (none when
/// the plan has no machine yet).
pub fn status(status: &ClusterStatus, now: SystemTime) -> Vec<String> {
    let mut lines = vec![status_header(status)];
    let table = status_table(status, now);
    if !table.is_empty() {
        lines.extend(table.lines());
    }
    let services = services(status);
    if !services.is_empty() {
        lines.push(String::new());
        lines.push("Services (a role is served when its balancer answers for it):".into());
        lines.extend(services.into_iter().map(|l| format!("  {l}")));
    }
    let drift = super::drift::section(status);
    if !drift.is_empty() {
        lines.push(String::new());
        lines.push(
            "Drift (files that differ from what the agent wrote; see `apimctl check`):".into(),
        );
        lines.extend(drift.into_iter().map(|l| format!("  {l}")));
    }
    lines
}

/// One line per managed service (a load balancer), then one per probe through it: whether it
/// runs, its last error, and for each role it fronts whether the balancer answers for it.
/// Agent text is escaped.
pub fn services(status: &ClusterStatus) -> Vec<String> {
    let mut out = Vec::new();
    for m in &status.machines {
        for svc in &m.services {
            let state = if svc.running {
                format!(
                    "running, pid {}",
                    svc.pid.map_or("-".into(), |p| p.to_string())
                )
            } else {
                "not running".into()
            };
            let error = if svc.last_error.is_empty() {
                String::new()
            } else {
                format!(": {}", printable(&svc.last_error))
            };
            out.push(format!(
                "{} {}: {state}{error}",
                m.machine,
                printable(&svc.name)
            ));
            for p in &svc.probes {
                out.push(format!(
                    "  {} {} ({})",
                    printable(&p.name),
                    if p.ok { "served" } else { "NOT served" },
                    printable(&p.detail)
                ));
            }
        }
    }
    out
}

/// `generation N: rollout ID STATE (MESSAGE)`, or `generation N: no rollout yet`.
pub fn status_header(status: &ClusterStatus) -> String {
    let rollout = status
        .rollout
        .as_ref()
        .map_or("no rollout yet".to_string(), |r| {
            format!(
                "rollout {} {} ({})",
                printable(&r.id),
                state_name(r.state()),
                printable(&r.message)
            )
        });
    format!("generation {}: {rollout}", status.generation)
}

/// One row per node: machine, node, phase (`unreachable for 3m12s` and `revoked` for its
/// machine's state), the plan generation its spec came from (`-` when not known), restarts
/// after unexpected exits, the server's pid (`-` when not running), time in the phase, and the
/// step and last error.
pub fn status_table(status: &ClusterStatus, now: SystemTime) -> Table {
    let mut t = Table::new(&STATUS_COLUMNS);
    for m in &status.machines {
        for n in &m.nodes {
            t.row([
                m.machine.clone(),
                n.node.clone(),
                machine_or_node_phase(m, n, now),
                generation(n.plan_generation),
                n.restarts.to_string(),
                n.pid.map_or("-".into(), |p| p.to_string()),
                elapsed(since(n.phase_since.as_ref()), now),
                step_and_error(n),
            ]);
        }
    }
    t
}

/// The node's phase (`healthy, drifted` when its agent reports drift), or what its machine's
/// state makes of it: `revoked`, `unreachable for 3m12s`, `unreachable (never connected)`.
pub fn machine_or_node_phase(m: &MachineStatus, n: &NodeStatus, now: SystemTime) -> String {
    if m.revoked {
        "revoked".into()
    } else if m.reachable && !n.drift.is_empty() {
        format!("{}, drifted", phase_name(n.phase()))
    } else if m.reachable {
        phase_name(n.phase())
    } else {
        match since(m.unreachable_since.as_ref()) {
            Some(t) => format!("unreachable for {}", elapsed(Some(t), now)),
            None => "unreachable (never connected)".into(),
        }
    }
}

/// A plan generation, `-` for 0 (not known yet).
pub fn generation(g: u64) -> String {
    match g {
        0 => "-".into(),
        g => g.to_string(),
    }
}

/// `STEP  error: ERROR  shares: STATE`, each part left out when empty.
fn step_and_error(n: &NodeStatus) -> String {
    let mut s = n.step.clone();
    let mut part = |label: &str, text: &str| {
        if !s.is_empty() {
            s.push_str("  ");
        }
        s.push_str(label);
        s.push_str(text);
    };
    if !n.last_error.is_empty() {
        part("error: ", &n.last_error);
    }
    if !n.shared.is_empty() {
        part("shares: ", &n.shared);
    }
    s
}

/// `agents`: machine, connection, when last heard from, when its certificate expires.
pub fn agents(agents: &[AgentInfo], now: SystemTime) -> Table {
    let mut t = Table::new(&["MACHINE", "STATE", "LAST SEEN", "CERTIFICATE"]);
    for a in agents {
        let state = if a.revoked {
            "revoked"
        } else if a.connected {
            "connected"
        } else {
            "disconnected"
        };
        let cert = match since(a.cert_not_after.as_ref()) {
            Some(t) if t >= now => format!("expires {}", until(Some(t), now, "expired")),
            t => until(t, now, "expired"),
        };
        t.row([
            a.machine.clone(),
            state.to_string(),
            ago(since(a.last_seen.as_ref()), now),
            cert,
        ]);
    }
    t
}

/// `history`: generation, when it was applied, how its rollout ended, the nodes it changed,
/// who applied it (and `(secrets forgotten)` for one that can no longer be rolled back to).
pub fn history(generations: &[GenerationInfo], now: SystemTime) -> Table {
    let mut t = Table::new(&["GEN", "APPLIED", "OUTCOME", "CHANGED", "AUTHOR"]);
    for g in generations {
        let outcome = g
            .rollout
            .as_ref()
            .map_or_else(|| "no rollout".to_string(), |r| state_name(r.state()));
        let changed = if g.changed_nodes.is_empty() {
            "-".to_string()
        } else {
            g.changed_nodes.join(",")
        };
        // A destroy stores an empty plan: there is nothing to restore, nor anything forgotten.
        let destroyed = g
            .rollout
            .as_ref()
            .is_some_and(|r| r.state() == apim_proto::v1::RolloutState::Destroyed);
        let author = if g.restorable || destroyed {
            g.author.clone()
        } else {
            format!("{}  (secrets forgotten)", g.author)
        };
        t.row([
            g.generation.to_string(),
            ago(since(g.created_at.as_ref()), now),
            outcome,
            changed,
            author,
        ]);
    }
    t
}
