//! The `OperatorService`: `Apply` and `Plan` (through [`crate::rollout`]), `Status` and
//! `Watch` (the cluster as agents report it), join tokens, the agent list and revocation.

use std::pin::Pin;
use std::time::Duration;

use apim_plan::secrets::{insert_provided, is_provided_key};
use apim_proto::prost_types::Timestamp;
use apim_proto::v1::operator_service_server::OperatorService;
use apim_proto::v1::{
    AbortRolloutRequest, AgentInfo, ApplyRequest, ApplyResponse, ChangeKind, CheckDriftRequest,
    CheckDriftResponse, ClusterStatus, CreateTokenRequest, CreateTokenResponse, DestroyRequest,
    DiffRequest, DiffResponse, ErrorDetail, HistoryRequest, HistoryResponse, ListAgentsRequest,
    ListAgentsResponse, ListArtifactsRequest, ListArtifactsResponse, ListControllersRequest,
    ListControllersResponse, LogsRequest, MachineStatus, NodePhase, NodeStatus,
    OperateNodesRequest, OperateNodesResponse, PlanRequest, PlanResponse, PruneArtifactsRequest,
    PruneArtifactsResponse, RevokeRequest, RevokeResponse, RollbackRequest, Rollout,
    ShowNodeRequest, ShowNodeResponse, StatusRequest, WatchRequest,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::Ctx;
use super::auth::caller;
use super::enrollment::timestamp;
use super::error::ServerError;
use crate::rollout;
use crate::state::ControllerState;
use crate::store::RunState;

/// What [`OperatorSvc::roll_out`] stores and rolls out.
pub(super) struct RollOut<'a> {
    /// The plan's path on the operator's side (messages only).
    pub plan_path: &'a str,
    /// The plan text.
    pub plan_toml: &'a str,
    /// Its resolved secrets (and provided files). SECRET.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Render warnings are errors.
    pub strict: bool,
    /// Who, for the history.
    pub author: &'a str,
    /// The cluster revision the operator reviewed, if any.
    pub expected_revision: Option<String>,
    /// The nodes' run state; `None`: the latest generation's, carried on.
    pub run: Option<RunState>,
}

impl<'a> RollOut<'a> {
    /// A stored generation rolled out again as it is (its text and secrets), by `author`.
    pub(super) fn stored(
        plan: &'a crate::store::StoredPlan,
        author: &'a str,
        run: Option<RunState>,
    ) -> Self {
        RollOut {
            plan_path: &plan.plan_path,
            plan_toml: &plan.plan_toml,
            secrets: plan.secrets.clone(),
            strict: false,
            author,
            expected_revision: None,
            run,
        }
    }
}

/// The run state of the latest generation (what later generations carry on).
pub(super) fn latest_run_state(state: &ControllerState) -> Result<RunState, ServerError> {
    Ok(state
        .store()
        .read(|tx| tx.run_state(tx.latest_generation()?))?)
}

/// The `OperatorService` implementation.
#[derive(Debug, Clone)]
pub struct OperatorSvc {
    ctx: Ctx,
}

impl OperatorSvc {
    /// Serves operators over `ctx.state`.
    /// The shared server context.
    pub(super) fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    pub(crate) fn new(ctx: Ctx) -> Self {
        OperatorSvc { ctx }
    }

    fn create_token_inner(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<CreateTokenResponse, ServerError> {
        let who = caller(&req)?.who();
        let CreateTokenRequest { machine, ttl_s } = req.into_inner();
        let config = &self.ctx.config;
        let ttl = match ttl_s {
            0 => config.token_default_ttl,
            s => Duration::from_secs(s),
        };
        if ttl > config.token_max_ttl {
            return Err(ServerError::InvalidArgument {
                field: "ttl_s",
                reason: format!(
                    "{}s is longer than the controller's maximum of {}s",
                    ttl.as_secs(),
                    config.token_max_ttl.as_secs()
                ),
            });
        }
        let (token, record) = self.ctx.state.mint_token(&machine, ttl)?;
        tracing::info!(%machine, token_id = %record.id, expires_at = %record.expires_at, operator = %who, "join token created");
        Ok(CreateTokenResponse {
            token: token.expose().to_owned(),
            expires_at: Some(timestamp(record.expires_at)),
        })
    }

    fn revoke_inner(&self, req: Request<RevokeRequest>) -> Result<RevokeResponse, ServerError> {
        let who = caller(&req)?.who();
        let machine = &req.get_ref().machine;
        apim_certs::validate_name("machine", machine).map_err(|e| {
            ServerError::InvalidArgument {
                field: "machine",
                reason: e.to_string(),
            }
        })?;
        let disconnected = self.ctx.state.revoke_machine(machine)?;
        tracing::warn!(%machine, operator = %who, disconnected, "revoked by operator");
        Ok(RevokeResponse { disconnected })
    }

    fn abort_inner(&self, req: Request<AbortRolloutRequest>) -> Result<Rollout, ServerError> {
        let who = caller(&req)?.who();
        let only = &req.get_ref().rollout_id;
        let r = rollout::abort(&self.ctx.state, only, &who)?;
        tracing::warn!(rollout = %r.id, operator = %who, tier = r.tier + 1, "rollout aborted");
        Ok(Rollout {
            id: r.id,
            state: r.state.wire().into(),
            tier: r.tier,
            message: r.message,
            generation: r.generation,
        })
    }

    async fn apply_inner(&self, req: Request<ApplyRequest>) -> Result<ApplyResponse, ServerError> {
        let who = caller(&req)?.who();
        let ApplyRequest {
            plan_toml,
            plan_path,
            expected_cluster_revision,
            author,
            resolved_secrets,
            strict,
            provided_files,
        } = req.into_inner();
        // The certificate's identity is the author; the request's field only adds detail.
        let author = if author.is_empty() || author == who {
            who
        } else {
            format!("{who} ({author})")
        };
        self.roll_out(RollOut {
            plan_path: &plan_path,
            plan_toml: &plan_toml,
            secrets: with_files(resolved_secrets, provided_files),
            strict,
            author: &author,
            expected_revision: expected_cluster_revision,
            run: None,
        })
        .await
    }

    /// Prepares a plan for apply (validated, rendered, certificates issued), checks memory and
    /// the reviewed revision, stores it as a new generation and starts its rollout: what
    /// `Apply`, `Rollback` and `OperateNodes` all do.
    pub(super) async fn roll_out(&self, r: RollOut<'_>) -> Result<ApplyResponse, ServerError> {
        let state = &self.ctx.state;
        // From the check of its artifacts until the plan that needs them is stored.
        let _gate = state.artifact_gate().read().await;
        let applied_as_is = r.run.is_none();
        let run = match r.run {
            Some(run) => run,
            None => latest_run_state(state)?,
        };
        // Several controllers: the product PKIs the others made or renewed, before ours.
        state.pull_shared_pki()?;
        let prepared = rollout::prepare(
            state,
            state.pki_dir(),
            r.plan_path,
            r.plan_toml,
            r.secrets,
            rollout::Mode::Apply,
            r.strict,
            &run,
        )
        .await?;
        rollout::check_memory(state, &prepared, r.plan_path, r.plan_toml)?;
        state.push_shared_pki()?;
        if let Some(expected) = r.expected_revision {
            let actual = rollout::cluster_revision(state)?;
            if expected != actual {
                return Err(ServerError::ClusterChanged { expected, actual });
            }
        }
        let (generation, rollout_id) =
            rollout::start(state, &prepared, r.author, r.plan_path, r.plan_toml)?;
        // A plan applied as it is (apply, rollback; not a node operation, which re-rolls the
        // latest stored plan) sets `[rollout] drift` from now on, also when it changed no node.
        if applied_as_is {
            let repair = prepared.plan.rollout.drift.value == apim_plan::plan::DriftMode::Repair;
            let was = state.store().read(|tx| tx.drift_repair())?;
            if was != repair {
                state.store().write(|tx| tx.set_drift_repair(repair))?;
                // The repair task looks again at once.
                state.notify_change();
            }
        }
        Ok(ApplyResponse {
            generation,
            rollout_id,
            warnings: prepared.warnings,
        })
    }

    async fn plan_inner(&self, req: Request<PlanRequest>) -> Result<PlanResponse, ServerError> {
        caller(&req)?;
        let PlanRequest {
            plan_toml,
            plan_path,
            resolved_secrets,
            strict,
            provided_files,
        } = req.into_inner();
        let state = &self.ctx.state;
        state.pull_shared_pki()?;
        let prepared = rollout::prepare(
            state,
            state.pki_dir(),
            &plan_path,
            &plan_toml,
            with_files(resolved_secrets, provided_files),
            rollout::Mode::DryRun,
            strict,
            &latest_run_state(state)?,
        )
        .await?;
        rollout::check_memory(state, &prepared, &plan_path, &plan_toml)?;
        // The diff shows old lines too: mask the secrets of the generations the baseline was
        // rendered from as well as the new ones.
        let (baseline, old_secrets) = state.store().read(|tx| {
            let baseline = tx.baseline()?;
            let generations: std::collections::BTreeSet<u64> =
                baseline.values().map(|s| s.plan_generation).collect();
            let mut old = Vec::new();
            for g in generations {
                if let Some(p) = tx.plan(g)? {
                    old.extend(p.secrets);
                }
            }
            Ok((baseline, old))
        })?;
        // Provided files never show in a diff line (their digests do): no need to mask them.
        let secrets: Vec<&str> = prepared
            .secrets
            .0
            .iter()
            .chain(old_secrets.iter().map(|(k, v)| (k, v)))
            .filter(|(k, _)| !is_provided_key(k))
            .map(|(_, v)| v.as_str())
            .collect();
        let mut changes = rollout::diff::changes(&baseline, &prepared.targets, &secrets);
        // A node the plan leaves as it is but that does not run it now is touched too.
        let off = rollout::intent::off_target(state, &prepared.targets);
        for c in &mut changes {
            if let Some(why) = off.get(&c.node) {
                if c.kind() == ChangeKind::Unchanged {
                    c.kind = ChangeKind::Update.into();
                }
                c.converge = why.clone();
            }
        }
        let mut warnings = prepared.warnings;
        if let Some(r) = state.store().read(|tx| tx.latest_rollout())?
            && r.state.active()
        {
            warnings.push(ErrorDetail {
                code: "plan.rollout_in_flight".into(),
                message: format!(
                    "{} (generation {}) is in flight: {}; apply refuses until it ends (or `apimctl rollout abort`)",
                    r.id, r.generation, r.message
                ),
                ..ErrorDetail::default()
            });
        }
        Ok(PlanResponse {
            changes,
            cluster_revision: rollout::cluster_revision(state)?,
            warnings,
        })
    }
}

/// The operator's resolved secrets with the provided files among them (`provided:<path>`,
/// base64): they are kept, sealed and pruned together.
fn with_files(
    secrets: std::collections::HashMap<String, String>,
    files: std::collections::HashMap<String, Vec<u8>>,
) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = secrets
        .into_iter()
        .filter(|(k, _)| !is_provided_key(k))
        .collect();
    for (written, bytes) in files {
        insert_provided(&mut out, &written, &bytes);
    }
    out
}

/// The cluster as the controller sees it now: the latest generation and rollout, and every
/// machine of the current plan with its agent's connection and last reported node states.
pub fn cluster_status(state: &ControllerState) -> Result<ClusterStatus, ServerError> {
    let (generation, latest) = state
        .store()
        .read(|tx| Ok((tx.latest_generation()?, tx.latest_rollout()?)))?;
    // The machines and node names shown: the latest rollout's targets, or the baseline.
    let layout = match &latest {
        Some(r) if r.state != rollout::Phase::RolledBack => {
            state.rollout_layout(&r.id, r.state.active())?
        }
        _ => crate::state::layout_of(state.store().read(|tx| tx.baseline())?.values()),
    };
    let rollout = latest.map(|r| Rollout {
        id: r.id,
        state: r.state.wire().into(),
        tier: r.tier,
        message: r.message,
        generation: r.generation,
    });
    // The pushed specs (shared, not copied): which services each machine runs now.
    let desired = state.desired_specs();
    // Every agent in one look (not one lock per machine).
    let mut agents: std::collections::HashMap<String, crate::state::AgentSnapshot> = state
        .agents()
        .into_iter()
        .map(|a| (a.machine.clone(), a))
        .collect();
    let machines = layout
        .iter()
        .map(|(machine, names)| {
            let agent = agents.remove(machine);
            let connected = agent.as_ref().is_some_and(|a| a.connected);
            let reported = agent.as_ref().and_then(|a| a.last_status.clone());
            // The plan generation of each machine spec generation its nodes report, looked up
            // once (the nodes of one report mostly share it).
            let mut plan_generations = std::collections::BTreeMap::new();
            let nodes = names
                .iter()
                .map(|name| {
                    let mut s = reported
                        .as_ref()
                        .and_then(|r| r.nodes.iter().find(|s| s.node == *name).cloned())
                        .unwrap_or_else(|| NodeStatus {
                            node: name.clone(),
                            phase: NodePhase::Pending.into(),
                            ..NodeStatus::default()
                        });
                    if s.generation > 0 {
                        s.plan_generation = match plan_generations.get(&s.generation) {
                            Some(g) => *g,
                            None => {
                                let g = state
                                    .plan_generation_of(machine, s.generation)?
                                    .unwrap_or(0);
                                plan_generations.insert(s.generation, g);
                                g
                            }
                        };
                    }
                    Ok(s)
                })
                .collect::<Result<Vec<_>, ServerError>>()?;
            Ok(MachineStatus {
                machine: machine.clone(),
                reachable: connected,
                unreachable_since: if connected {
                    None
                } else {
                    agent
                        .as_ref()
                        .and_then(|a| a.last_seen)
                        .map(Timestamp::from)
                },
                revoked: agent.as_ref().is_some_and(|a| a.revoked),
                // Only the services of the machine's current spec.
                services: reported
                    .as_ref()
                    .map(|r| {
                        r.services
                            .iter()
                            .filter(|s| {
                                desired
                                    .get(machine)
                                    .is_some_and(|d| d.services.iter().any(|w| w.name == s.name))
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
                facts: agent.and_then(|a| a.facts),
                nodes,
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    Ok(ClusterStatus {
        generation,
        rollout,
        machines,
    })
}

/// The response stream of `Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<ClusterStatus, Status>> + Send>>;

#[tonic::async_trait]
impl OperatorService for OperatorSvc {
    type WatchStream = WatchStream;
    type LogsStream = super::show::LogsStream;
    type DestroyStream = super::destroy::DestroyStream;

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        Ok(Response::new(self.apply_inner(req).await?))
    }

    async fn plan(&self, req: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        Ok(Response::new(self.plan_inner(req).await?))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        caller(&req)?;
        Ok(Response::new(cluster_status(&self.ctx.state)?))
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        caller(&req)?;
        let state = std::sync::Arc::clone(&self.ctx.state);
        let mut stop = self.ctx.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut changes = state.changes();
            let mut last: Option<ClusterStatus> = None;
            loop {
                let status = cluster_status(&state).map_err(Status::from);
                let same = matches!((&status, &last), (Ok(s), Some(l)) if s == l);
                if !same {
                    if let Ok(s) = &status {
                        last = Some(s.clone());
                    }
                    let failed = status.is_err();
                    if tx.send(status).await.is_err() || failed {
                        return;
                    }
                }
                tokio::select! {
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(ServerError::ShuttingDown.into())).await;
                        return;
                    }
                    () = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        Ok(Response::new(self.create_token_inner(req)?))
    }

    async fn list_agents(
        &self,
        req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        caller(&req)?;
        let agents = self
            .ctx
            .state
            .agents()
            .into_iter()
            .map(|a| AgentInfo {
                machine: a.machine,
                connected: a.connected,
                last_seen: a.last_seen.map(Timestamp::from),
                cert_not_after: a.cert_not_after.map(timestamp),
                revoked: a.revoked,
                facts: a.facts,
            })
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn revoke(
        &self,
        req: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        Ok(Response::new(self.revoke_inner(req)?))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        Ok(Response::new(self.history_inner(req)?))
    }

    async fn rollback(
        &self,
        req: Request<RollbackRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        Ok(Response::new(self.rollback_inner(req).await?))
    }

    async fn abort_rollout(
        &self,
        req: Request<AbortRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        Ok(Response::new(self.abort_inner(req)?))
    }

    async fn operate_nodes(
        &self,
        req: Request<OperateNodesRequest>,
    ) -> Result<Response<OperateNodesResponse>, Status> {
        Ok(Response::new(self.operate_nodes_inner(req).await?))
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Ok(Response::new(self.diff_inner(req)?))
    }

    async fn list_artifacts(
        &self,
        req: Request<ListArtifactsRequest>,
    ) -> Result<Response<ListArtifactsResponse>, Status> {
        Ok(Response::new(self.list_artifacts_inner(req)?))
    }

    async fn prune_artifacts(
        &self,
        req: Request<PruneArtifactsRequest>,
    ) -> Result<Response<PruneArtifactsResponse>, Status> {
        Ok(Response::new(self.prune_artifacts_inner(req).await?))
    }

    async fn show_node(
        &self,
        req: Request<ShowNodeRequest>,
    ) -> Result<Response<ShowNodeResponse>, Status> {
        Ok(Response::new(self.show_node_inner(req)?))
    }

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        Ok(Response::new(self.logs_inner(req)?))
    }

    async fn destroy(
        &self,
        req: Request<DestroyRequest>,
    ) -> Result<Response<Self::DestroyStream>, Status> {
        Ok(Response::new(self.destroy_inner(req)?))
    }

    async fn check_drift(
        &self,
        req: Request<CheckDriftRequest>,
    ) -> Result<Response<CheckDriftResponse>, Status> {
        Ok(Response::new(self.check_drift_inner(req).await?))
    }

    async fn list_controllers(
        &self,
        req: Request<ListControllersRequest>,
    ) -> Result<Response<ListControllersResponse>, Status> {
        Ok(Response::new(self.list_controllers_inner(req)?))
    }
}
