//! `OperatorService.OperateNodes`: `apimctl restart | stop | start`. A node operation is a new
//! generation equal to the latest plan (its text and secrets as stored) with the nodes' run state
//! changed ([`RunState`]), rolled out like any apply: staged, released tier by tier, gated on
//! health, HA peers one at a time, and listed in the history with what was done.

use std::collections::BTreeSet;

use apim_proto::v1::{ApplyResponse, NodeOperation, OperateNodesRequest, OperateNodesResponse};
use tonic::Request;

use super::auth::caller;
use super::error::ServerError;
use super::operator::{OperatorSvc, RollOut, latest_run_state};
use crate::store::RunState;

impl OperatorSvc {
    pub(super) async fn operate_nodes_inner(
        &self,
        req: Request<OperateNodesRequest>,
    ) -> Result<OperateNodesResponse, ServerError> {
        let who = caller(&req)?.who();
        let r = req.get_ref();
        let op = NodeOperation::try_from(r.operation)
            .ok()
            .filter(|o| *o != NodeOperation::Unspecified)
            .ok_or(ServerError::InvalidArgument {
                field: "operation",
                reason: "restart, stop or start".into(),
            })?;
        let nodes = self.select(&r.nodes, &r.roles, &r.machines)?;
        let resp = self.operate(op, &nodes, &who).await?;
        // In plan order, as the operator will see them in `status`.
        let ordered = self
            .plan_nodes()
            .into_iter()
            .map(|(n, _, _)| n)
            .filter(|n| nodes.contains(n))
            .collect();
        Ok(OperateNodesResponse {
            generation: resp.generation,
            rollout_id: resp.rollout_id,
            nodes: ordered,
        })
    }

    /// Restarts `nodes` through the gated path (what `apimctl restart` does), as `author`: for
    /// the controller's own repairs (drift).
    pub(crate) async fn restart_nodes(
        &self,
        nodes: &BTreeSet<String>,
        author: &str,
    ) -> Result<ApplyResponse, ServerError> {
        self.operate(NodeOperation::Restart, nodes, author).await
    }

    /// A new generation equal to the latest with `op` done to `nodes`, rolled out.
    async fn operate(
        &self,
        op: NodeOperation,
        nodes: &BTreeSet<String>,
        who: &str,
    ) -> Result<ApplyResponse, ServerError> {
        let state = &self.ctx().state;
        let plan = state
            .store()
            .read(|tx| tx.plan(tx.latest_generation()?))?
            .ok_or(ServerError::NothingApplied {
                what: "a node operation",
            })?;
        let run = next_run_state(latest_run_state(state)?, op, nodes);
        let verb = match op {
            NodeOperation::Stop => "stop",
            NodeOperation::Start => "start",
            _ => "restart",
        };
        let list: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let author = format!("{who} ({verb} {})", list.join(", "));
        let resp = self
            .roll_out(RollOut::stored(&plan, &author, Some(run)))
            .await?;
        tracing::warn!(operation = verb, nodes = ?list, generation = resp.generation,
            rollout = %resp.rollout_id, operator = %who, "node operation");
        Ok(resp)
    }

    /// Every node the machines are meant to run now: (node, role, machine), in spec order.
    fn plan_nodes(&self) -> Vec<(String, String, String)> {
        self.ctx()
            .state
            .desired_specs()
            .into_values()
            .flat_map(|s| {
                let machine = s.machine.clone();
                s.nodes
                    .iter()
                    .map(move |n| (n.name.clone(), n.role.clone(), machine.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The union of the named nodes and every node of the named roles and machines; an unknown
    /// name is refused with what is known.
    fn select(
        &self,
        nodes: &[String],
        roles: &[String],
        machines: &[String],
    ) -> Result<BTreeSet<String>, ServerError> {
        let known = self.plan_nodes();
        if known.is_empty() {
            return Err(ServerError::NothingApplied {
                what: "a node operation",
            });
        }
        let mut out = BTreeSet::new();
        for (field, wanted, pick) in [
            ("nodes", nodes, 0usize),
            ("roles", roles, 1),
            ("machines", machines, 2),
        ] {
            for w in wanted {
                let hits: Vec<&String> = known
                    .iter()
                    .filter(|k| [&k.0, &k.1, &k.2][pick] == w)
                    .map(|k| &k.0)
                    .collect();
                if hits.is_empty() {
                    let mut names: Vec<&String> =
                        known.iter().map(|k| [&k.0, &k.1, &k.2][pick]).collect();
                    names.sort();
                    names.dedup();
                    let names: Vec<String> = names
                        .iter()
                        .map(|n| apim_proto::text::printable(n).into_owned())
                        .collect();
                    return Err(ServerError::InvalidArgument {
                        field,
                        reason: format!(
                            "no {} `{}` in the cluster (it has: {})",
                            &field[..field.len() - 1],
                            apim_proto::text::printable(w),
                            names.join(", ")
                        ),
                    });
                }
                out.extend(hits.into_iter().cloned());
            }
        }
        if out.is_empty() {
            return Err(ServerError::InvalidArgument {
                field: "nodes",
                reason: "name at least one node, role or machine".into(),
            });
        }
        Ok(out)
    }
}

/// `run` after `op` on `nodes`: a restart bumps each counter (and starts a stopped node), a stop
/// adds to the stopped, a start takes out of them.
pub(crate) fn next_run_state(
    mut run: RunState,
    op: NodeOperation,
    nodes: &BTreeSet<String>,
) -> RunState {
    for n in nodes {
        match op {
            NodeOperation::Stop => {
                run.stopped.insert(n.clone());
            }
            NodeOperation::Start => {
                run.stopped.remove(n);
            }
            NodeOperation::Restart | NodeOperation::Unspecified => {
                run.stopped.remove(n);
                *run.restarts.entry(n.clone()).or_default() += 1;
            }
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_state_follows_the_operations() {
        let run = next_run_state(RunState::default(), NodeOperation::Stop, &set(&["a", "b"]));
        assert_eq!(run.stopped, set(&["a", "b"]));
        let run = next_run_state(run, NodeOperation::Start, &set(&["a"]));
        assert_eq!(run.stopped, set(&["b"]));
        let run = next_run_state(run, NodeOperation::Restart, &set(&["a", "b"]));
        let run = next_run_state(run, NodeOperation::Restart, &set(&["a"]));
        assert!(run.stopped.is_empty(), "a restart starts a stopped node");
        assert_eq!(run.restarts.get("a"), Some(&2));
        assert_eq!(run.restarts.get("b"), Some(&1));
    }
}
