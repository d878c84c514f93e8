//! How drift looks, in `status` and `check`: per node, each drifted file with its problem and
//! the TOML keys (or host names) added, removed or changed. Everything here is agent text: it
//! goes through [`printable`] in text and as plain strings in JSON. No value is ever in it (the
//! agent sends none).

use apim_proto::text::printable;
use apim_proto::v1::{ClusterStatus, Drift, NodeStatus};
use serde_json::{Value, json};

/// The nodes of `status` with drift, as `(machine, node)`, in status order.
pub fn drifted(status: &ClusterStatus) -> Vec<(&str, &NodeStatus)> {
    status
        .machines
        .iter()
        .flat_map(|m| m.nodes.iter().map(move |n| (m.machine.as_str(), n)))
        .filter(|(_, n)| !n.drift.is_empty())
        .collect()
}

/// The lines of one drifted file, indented by `indent`: `FILE: PROBLEM`, then one line per kind
/// of key difference.
pub fn file_lines(d: &Drift, indent: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "{indent}{}: {}",
        printable(&d.file),
        printable(&d.problem)
    )];
    for (what, keys) in [
        ("changed", &d.changed_keys),
        ("added", &d.added_keys),
        ("removed", &d.removed_keys),
    ] {
        if !keys.is_empty() {
            let keys: Vec<String> = keys.iter().map(|k| printable(k).into_owned()).collect();
            lines.push(format!("{indent}    {what}: {}", keys.join(", ")));
        }
    }
    if d.omitted_keys > 0 {
        lines.push(format!("{indent}    and {} more key(s)", d.omitted_keys));
    }
    lines
}

/// The drift section of `status` and `check`: `NODE (MACHINE): drifted`, then its files.
pub fn section(status: &ClusterStatus) -> Vec<String> {
    let mut lines = Vec::new();
    for (machine, n) in drifted(status) {
        lines.push(format!(
            "{} ({}): drifted",
            printable(&n.node),
            printable(machine)
        ));
        for d in &n.drift {
            lines.extend(file_lines(d, "    "));
        }
    }
    lines
}

/// One node's drift in JSON.
pub fn json(drift: &[Drift]) -> Value {
    Value::Array(
        drift
            .iter()
            .map(|d| {
                json!({
                    "file": d.file, "problem": d.problem,
                    "added_keys": d.added_keys, "removed_keys": d.removed_keys,
                    "changed_keys": d.changed_keys, "omitted_keys": d.omitted_keys,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use apim_proto::v1::MachineStatus;

    use super::*;

    #[test]
    fn a_drifted_node_lists_files_and_keys_escaped() {
        let status = ClusterStatus {
            machines: vec![MachineStatus {
                machine: "vm-1".into(),
                nodes: vec![
                    NodeStatus {
                        node: "gw-1".into(),
                        drift: vec![
                            Drift {
                                file: "repository/conf/deployment.toml".into(),
                                problem: "changed".into(),
                                changed_keys: vec!["server.offset".into()],
                                added_keys: vec!["evil\u{1b}[2J".into()],
                                omitted_keys: 3,
                                ..Drift::default()
                            },
                            Drift {
                                file: "hosts block".into(),
                                problem: "missing".into(),
                                ..Drift::default()
                            },
                        ],
                        ..NodeStatus::default()
                    },
                    NodeStatus {
                        node: "km-1".into(),
                        ..NodeStatus::default()
                    },
                ],
                ..MachineStatus::default()
            }],
            ..ClusterStatus::default()
        };
        let lines = section(&status);
        assert_eq!(lines[0], "gw-1 (vm-1): drifted");
        assert_eq!(lines[1], "    repository/conf/deployment.toml: changed");
        assert_eq!(lines[2], "        changed: server.offset");
        assert!(lines[3].starts_with("        added: evil"), "{lines:?}");
        assert!(!lines[3].contains('\u{1b}'), "escaped: {lines:?}");
        assert_eq!(lines[4], "        and 3 more key(s)");
        assert_eq!(lines[5], "    hosts block: missing");
        assert_eq!(lines.len(), 6);
        assert_eq!(drifted(&status).len(), 1);
    }
}
