//! `OperatorService.ListArtifacts` and `.PruneArtifacts`: the artifact store seen through the
//! plan history, and removing what no retained generation needs.
//!
//! A generation is *retained* while it can still be returned to or is in use: its secrets are
//! kept (it is restorable, see `History`), it is the current (latest) one, the cluster's
//! baseline was rendered from it, or its rollout is in flight. An artifact is needed when a
//! retained generation's plan names it (`[distributions]`, `[drivers]`) or a machine's spec
//! names it (an agent may be fetching it); a prune removes only the others, under the
//! artifact gate, so an apply that has just checked its packs never loses them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use apim_proto::v1::{
    ArtifactInfo, ListArtifactsRequest, ListArtifactsResponse, PruneArtifactsRequest,
    PruneArtifactsResponse,
};
use tonic::Request;

use super::auth::caller;
use super::error::ServerError;
use super::operator::OperatorSvc;
use crate::artifacts::validate_sha256;
use crate::state::ControllerState;

/// What a stored plan names: (sha256, kind, path in the plan).
fn named_by(plan_path: &str, text: &str, stored: &BTreeSet<&str>) -> Vec<(String, String, String)> {
    let path = if plan_path.is_empty() {
        "plan.toml"
    } else {
        plan_path
    };
    match apim_plan::plan::parse(Path::new(path), text).0 {
        Some(plan) => plan
            .distributions
            .values()
            .map(|d| ("pack", &d.sha256.value, &d.path.value))
            .chain(
                plan.drivers
                    .values()
                    .map(|d| ("driver", &d.sha256.value, &d.path.value)),
            )
            .map(|(kind, sha, path)| (sha.to_ascii_lowercase(), kind.to_owned(), path.clone()))
            .collect(),
        // A stored plan this controller cannot read: every stored digest it mentions counts
        // (never prune what it might need).
        None => stored
            .iter()
            .filter(|s| text.contains(**s))
            .map(|s| ((*s).to_owned(), String::new(), String::new()))
            .collect(),
    }
}

/// Every stored artifact with what uses it, and the current generation.
fn survey(state: &ControllerState) -> Result<(Vec<ArtifactInfo>, u64), ServerError> {
    let stored = state.artifacts().list()?;
    let digests: BTreeSet<&str> = stored.iter().map(|(s, _)| s.as_str()).collect();
    let in_spec = state.fetchable_artifacts()?;
    let mut infos: BTreeMap<String, ArtifactInfo> = stored
        .iter()
        .map(|(sha, size)| {
            let info = ArtifactInfo {
                sha256: sha.clone(),
                size: *size,
                in_spec: in_spec.contains(sha),
                ..ArtifactInfo::default()
            };
            (sha.clone(), info)
        })
        .collect();
    let latest = state.store().read(|tx| {
        for row in tx.artifacts()? {
            if let Some(i) = infos.get_mut(&row.sha256) {
                i.name = row.name;
            }
        }
        let latest = tx.latest_generation()?;
        let baseline: BTreeSet<u64> = tx.baseline()?.values().map(|s| s.plan_generation).collect();
        let in_flight = tx
            .latest_rollout()?
            .filter(|r| r.state.active())
            .map(|r| r.generation);
        for g in 1..=latest {
            let Some(p) = tx.plan(g)? else { continue };
            let retained = !p.secrets.is_empty()
                || g == latest
                || baseline.contains(&g)
                || in_flight == Some(g);
            for (sha, kind, path) in named_by(&p.plan_path, &p.plan_toml, &digests) {
                let Some(i) = infos.get_mut(&sha) else {
                    continue;
                };
                if !i.generations.contains(&g) {
                    i.generations.push(g);
                }
                if retained && !i.retained_by.contains(&g) {
                    i.retained_by.push(g);
                }
                i.current |= g == latest;
                if i.kind.is_empty() {
                    i.kind = kind;
                }
                if i.name.is_empty() {
                    i.name = Path::new(&path)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                }
            }
        }
        Ok(latest)
    })?;
    Ok((infos.into_values().collect(), latest))
}

/// Why a prune must keep `info`, or `None` when nothing needs it.
fn needed(info: &ArtifactInfo) -> Option<String> {
    let mut why = Vec::new();
    if !info.retained_by.is_empty() {
        let list: Vec<String> = info.retained_by.iter().map(u64::to_string).collect();
        why.push(format!(
            "generation{} {} of the retained history",
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        ));
    }
    if info.in_spec {
        why.push("a machine's spec names it".into());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

impl OperatorSvc {
    pub(super) fn list_artifacts_inner(
        &self,
        req: Request<ListArtifactsRequest>,
    ) -> Result<ListArtifactsResponse, ServerError> {
        caller(&req)?;
        let (artifacts, current_generation) = survey(&self.ctx().state)?;
        Ok(ListArtifactsResponse {
            artifacts,
            current_generation,
        })
    }

    pub(super) async fn prune_artifacts_inner(
        &self,
        req: Request<PruneArtifactsRequest>,
    ) -> Result<PruneArtifactsResponse, ServerError> {
        let who = caller(&req)?.who();
        let PruneArtifactsRequest { sha256, dry_run } = req.into_inner();
        let state = &self.ctx().state;
        let _gate = state.artifact_gate().write().await;
        let (all, _) = survey(state)?;
        let chosen: Vec<ArtifactInfo> = if sha256.is_empty() {
            all.into_iter().filter(|a| needed(a).is_none()).collect()
        } else {
            let mut by_sha: BTreeMap<String, ArtifactInfo> =
                all.into_iter().map(|a| (a.sha256.clone(), a)).collect();
            let mut chosen = Vec::new();
            for s in sha256.iter().collect::<BTreeSet<_>>() {
                validate_sha256(s)?;
                let info = by_sha
                    .remove(s.as_str())
                    .ok_or_else(|| ServerError::ArtifactNotFound { sha256: s.clone() })?;
                if let Some(why) = needed(&info) {
                    return Err(ServerError::ArtifactRetained {
                        sha256: s.clone(),
                        why,
                    });
                }
                chosen.push(info);
            }
            chosen
        };
        if !dry_run {
            for a in &chosen {
                state.artifacts().remove(&a.sha256)?;
                state.store().write(|tx| tx.forget_artifact(&a.sha256))?;
                tracing::warn!(sha256 = %a.sha256, size = a.size, name = %a.name,
                    operator = %who, "artifact pruned");
            }
        }
        Ok(PruneArtifactsResponse {
            freed_bytes: chosen.iter().map(|a| a.size).sum(),
            removed: chosen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (The packs and drivers a readable plan names are covered by the rollout tests.)
    #[test]
    fn an_unreadable_stored_plan_keeps_every_stored_digest_it_mentions() {
        let a = "a".repeat(64);
        let c = "c".repeat(64);
        let stored: BTreeSet<&str> = [a.as_str(), c.as_str()].into();
        let broken = format!("[cluster\n# {c}\n");
        assert_eq!(
            named_by("plan.toml", &broken, &stored),
            [(c, String::new(), String::new())]
        );
    }

    #[test]
    fn an_artifact_is_needed_by_retained_generations_or_a_spec() {
        let mut info = ArtifactInfo::default();
        assert_eq!(needed(&info), None);
        info.generations = vec![1, 2];
        assert_eq!(needed(&info), None, "only retained generations count");
        info.retained_by = vec![2, 5];
        info.in_spec = true;
        assert_eq!(
            needed(&info).as_deref(),
            Some("generations 2, 5 of the retained history; a machine's spec names it")
        );
    }
}
