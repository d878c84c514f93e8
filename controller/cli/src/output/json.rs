//! Every `-o json` shape. A command prints exactly one JSON document on stdout, its result or
//! its error ([`crate::error::ErrorReport::json`]); `status --watch -o json` alone prints one
//! document per change (JSON Lines). Times are RFC 3339 (UTC).

use apim_proto::v1::{AgentInfo, ClusterStatus, GenerationInfo, PlanResponse};
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
                "running": n.running, "pid": n.pid, "restarts": n.restarts,
                "config_digest": n.config_digest,
                "since": since(n.phase_since.as_ref()).map(rfc3339),
                "drift": super::drift::json(&n.drift),
                "shared": n.shared,
            })).collect::<Vec<_>>(),
            "services": m.services.iter().map(|s| json!({
                "name": s.name, "running": s.running, "pid": s.pid,
                "last_error": s.last_error, "digest": s.digest,
                // When the probe round below began (the controller's clock).
                "probed_at": s.probed_at_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map(|ms| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))),
                "probes": s.probes.iter().map(|p| json!({
                    "name": p.name, "served": p.ok, "detail": p.detail,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `apply` (or `rollback`) of a plan that changes nothing.
pub fn apply_unchanged(generation: u64) -> Value {
    json!({"generation": generation, "rollout": null, "state": "unchanged"})
}

/// `apply --no-wait` (or `rollback --no-wait`): the generation stored and its rollout started.
pub fn apply_started(generation: u64, rollout_id: &str) -> Value {
    json!({"generation": generation, "rollout": {"id": rollout_id}, "state": "started"})
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

/// `agents`: every enrolled agent.
pub fn agents(agents: &[AgentInfo]) -> Value {
    let agents: Vec<_> = agents
        .iter()
        .map(|a| {
            json!({
                "machine": a.machine, "connected": a.connected, "revoked": a.revoked,
                "last_seen": since(a.last_seen.as_ref()).map(rfc3339),
                "cert_not_after": since(a.cert_not_after.as_ref()).map(rfc3339),
            })
        })
        .collect();
    json!({ "agents": agents })
}

/// `history`: the generations, newest first, with their rollout's outcome.
pub fn history(generations: &[GenerationInfo]) -> Value {
    let rows: Vec<_> = generations
        .iter()
        .map(|g| {
            json!({
                "generation": g.generation, "author": g.author,
                "created_at": since(g.created_at.as_ref()).map(rfc3339),
                "plan_path": g.plan_path, "changed_nodes": g.changed_nodes,
                "restorable": g.restorable,
                "rollout": g.rollout.as_ref().map(|r| json!({
                    "id": r.id, "state": state_name(r.state()), "message": r.message,
                })),
            })
        })
        .collect();
    json!({ "generations": rows })
}
