//! Every `-o json` shape: one JSON value per line on stdout.

use apim_proto::v1::{AgentInfo, ClusterStatus, PlanResponse};
use serde_json::{Value, json};

use super::{kind_name, phase_name, rfc3339, since, state_name};

/// `status` (each change with `--watch`) and the end of `apply`: the generation, the rollout,
/// and every machine with its nodes.
pub fn status(status: &ClusterStatus) -> Value {
    json!({
        "generation": status.generation,
        "rollout": status.rollout.as_ref().map(|r| json!({
            "id": r.id, "state": state_name(r.state()), "tier": r.tier,
            "message": r.message, "generation": r.generation,
        })),
        "machines": status.machines.iter().map(|m| json!({
            "machine": m.machine,
            "reachable": m.reachable,
            "revoked": m.revoked,
            "unreachable_since": since(m.unreachable_since.as_ref()).map(rfc3339),
            "nodes": m.nodes.iter().map(|n| json!({
                "node": n.node, "phase": phase_name(n.phase()), "step": n.step,
                "generation": n.plan_generation, "spec_generation": n.generation,
                "last_error": n.last_error,
                "running": n.running, "config_digest": n.config_digest,
                "since": since(n.phase_since.as_ref()).map(rfc3339),
                "drift": super::drift::json(&n.drift),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `apply` of a plan that changes nothing.
pub fn apply_unchanged(generation: u64) -> Value {
    json!({"generation": generation, "rollout": null, "state": "unchanged"})
}

/// `plan`: the cluster revision and every node's change.
pub fn plan(resp: &PlanResponse) -> Value {
    let changes: Vec<_> = resp
        .changes
        .iter()
        .map(|c| {
            json!({
                "machine": c.machine, "node": c.node,
                "kind": kind_name(c.kind()),
                "deployment_toml_diff": c.deployment_toml_diff, "hosts_diff": c.hosts_diff,
                "certificate_changes": c.certificate_changes, "restart": c.restart,
                "converge": c.converge,
            })
        })
        .collect();
    json!({"cluster_revision": resp.cluster_revision, "changes": changes})
}

/// `agents`: one agent (one line each).
pub fn agent(a: &AgentInfo) -> Value {
    json!({
        "machine": a.machine, "connected": a.connected, "revoked": a.revoked,
        "last_seen": since(a.last_seen.as_ref()).map(rfc3339).unwrap_or_default(),
        "cert_not_after": since(a.cert_not_after.as_ref()).map(rfc3339).unwrap_or_default(),
    })
}
