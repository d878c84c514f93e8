//! `OperatorService.History` and `.Rollback`: the stored generations, and a new generation equal
//! to an earlier one, rolled out like any apply.

use apim_plan::secrets::is_provided_key;
use apim_proto::prost_types::Timestamp;
use apim_proto::v1::{
    ApplyResponse, DiffRequest, DiffResponse, GenerationInfo, HistoryRequest, HistoryResponse,
    RollbackRequest, Rollout,
};
use tonic::Request;

use super::auth::caller;
use super::error::ServerError;
use super::operator::{OperatorSvc, RollOut};
use crate::rollout::{Phase, diff};

impl OperatorSvc {
    pub(super) fn history_inner(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<HistoryResponse, ServerError> {
        caller(&req)?;
        let limit = req.get_ref().limit as usize;
        let state = &self.ctx().state;
        let generations = state.store().read(|tx| {
            let rollouts = tx.rollouts_by_generation()?;
            let latest = tx.latest_generation()?;
            let mut out = Vec::new();
            for g in (1..=latest).rev() {
                if limit != 0 && out.len() == limit {
                    break;
                }
                let Some(p) = tx.plan(g)? else { continue };
                let r = rollouts.get(&g);
                out.push(GenerationInfo {
                    generation: g,
                    author: p.author,
                    created_at: Some(Timestamp {
                        seconds: p.created_at,
                        nanos: 0,
                    }),
                    plan_path: p.plan_path,
                    rollout: r.map(|r| Rollout {
                        id: r.id.clone(),
                        state: r.state.wire().into(),
                        tier: r.tier,
                        message: r.message.clone(),
                        generation: r.generation,
                    }),
                    changed_nodes: r
                        .map(|r| {
                            r.nodes
                                .iter()
                                .filter(|(_, n)| n.changed)
                                .map(|(name, _)| name.clone())
                                .collect()
                        })
                        .unwrap_or_default(),
                    restorable: !p.secrets.is_empty(),
                });
            }
            Ok(out)
        })?;
        Ok(HistoryResponse { generations })
    }

    pub(super) async fn rollback_inner(
        &self,
        req: Request<RollbackRequest>,
    ) -> Result<ApplyResponse, ServerError> {
        let who = caller(&req)?.who();
        let state = &self.ctx().state;
        let wanted = req.get_ref().to_generation;
        let plan = state.store().read(|tx| {
            let to = if wanted != 0 {
                wanted
            } else {
                // The newest generation before the latest whose rollout succeeded.
                let latest = tx.latest_generation()?;
                let rollouts = tx.rollouts_by_generation()?;
                rollouts
                    .values()
                    .filter(|r| r.generation < latest && r.state == Phase::Succeeded)
                    .map(|r| r.generation)
                    .max()
                    .unwrap_or(0)
            };
            let destroyed = tx
                .rollouts_by_generation()?
                .get(&to)
                .is_some_and(|r| r.state == Phase::Destroyed);
            Ok((tx.plan(to)?, destroyed))
        })?;
        let (plan, destroyed) = plan;
        if destroyed {
            return Err(ServerError::InvalidArgument {
                field: "to_generation",
                reason: format!(
                    "generation {wanted} records a destroy, not a plan: roll back to the one \
                     before it, or apply a plan"
                ),
            });
        }
        let Some(plan) = plan else {
            return Err(ServerError::InvalidArgument {
                field: "to_generation",
                reason: if wanted == 0 {
                    "no earlier generation rolled out successfully".into()
                } else {
                    format!("there is no generation {wanted}")
                },
            });
        };
        if plan.secrets.is_empty() {
            return Err(ServerError::InvalidArgument {
                field: "to_generation",
                reason: format!(
                    "generation {}'s secrets were forgotten (secrets_retention): apply its plan \
                     file instead",
                    plan.generation
                ),
            });
        }
        let author = format!("{who} (rollback to generation {})", plan.generation);
        let resp = self.roll_out(RollOut::stored(&plan, &author, None)).await?;
        tracing::warn!(to = plan.generation, generation = resp.generation,
            rollout = %resp.rollout_id, operator = %who, "rollback");
        Ok(resp)
    }

    pub(super) fn diff_inner(
        &self,
        req: Request<DiffRequest>,
    ) -> Result<DiffResponse, ServerError> {
        caller(&req)?;
        let DiffRequest {
            from_generation,
            to_generation,
        } = *req.get_ref();
        let state = &self.ctx().state;
        let found = state.store().read(|tx| {
            let to = match to_generation {
                0 => tx.latest_generation()?,
                g => g,
            };
            let rollouts = tx.rollouts_by_generation()?;
            let mut out = Vec::new();
            for g in [from_generation, to] {
                let Some(plan) = tx.plan(g)? else {
                    return Ok(Err(g));
                };
                let targets = match rollouts.get(&g) {
                    Some(r) => Some(tx.targets(&r.id)?).filter(|t| !t.is_empty()),
                    None => None,
                };
                out.push((plan, targets));
            }
            Ok(Ok(out))
        })?;
        let mut found = found.map_err(|g| ServerError::InvalidArgument {
            field: if g == from_generation {
                "from_generation"
            } else {
                "to_generation"
            },
            reason: if g == 0 {
                "nothing was applied yet".into()
            } else {
                format!("there is no generation {g}")
            },
        })?;
        let (new, new_targets) = found
            .pop()
            .unwrap_or_else(|| unreachable!("two generations"));
        let (old, old_targets) = found
            .pop()
            .unwrap_or_else(|| unreachable!("two generations"));
        // Every secret either generation resolved is masked wherever it shows.
        let secrets: Vec<&str> = old
            .secrets
            .iter()
            .chain(new.secrets.iter())
            .filter(|(k, _)| !is_provided_key(k))
            .map(|(_, v)| v.as_str())
            .collect();
        let plan_diff = diff::masked_diff(&old.plan_toml, &new.plan_toml, 3, &secrets);
        let (changes, note) = match (&old_targets, &new_targets) {
            (Some(a), Some(b)) => (diff::changes(a, b, &secrets), String::new()),
            _ => {
                let missing: Vec<String> = [
                    (&old_targets, old.generation),
                    (&new_targets, new.generation),
                ]
                .iter()
                .filter(|(t, _)| t.is_none())
                .map(|(_, g)| g.to_string())
                .collect();
                (
                    Vec::new(),
                    format!(
                        "no rollout targets are kept for generation {}: nothing rolled out, or they \
                         were forgotten with its secrets (secrets_retention)",
                        missing.join(" and ")
                    ),
                )
            }
        };
        Ok(DiffResponse {
            from_generation: old.generation,
            to_generation: new.generation,
            plan_diff,
            changes,
            note,
        })
    }
}
