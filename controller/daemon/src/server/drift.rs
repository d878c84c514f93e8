//! `OperatorService.CheckDrift`: every connected agent holding the requested nodes checks them
//! for drift now (the `CheckDrift` command); the answer is the cluster's state once they replied
//! or [`CHECK_WAIT`] passed, with one [`MachineCheck`] per machine saying whether it did.

use std::collections::BTreeSet;
use std::time::Duration;

use apim_proto::v1::command::Action;
use apim_proto::v1::{CheckDrift, CheckDriftRequest, CheckDriftResponse, MachineCheck};
use tonic::Request;

use super::auth::caller;
use super::error::ServerError;
use super::operator::{OperatorSvc, cluster_status};

/// How long the controller waits for agents' answers (an agent waits up to 20 s for nodes busy
/// converging, then answers).
pub const CHECK_WAIT: Duration = Duration::from_secs(30);

impl OperatorSvc {
    pub(super) async fn check_drift_inner(
        &self,
        req: Request<CheckDriftRequest>,
    ) -> Result<CheckDriftResponse, ServerError> {
        let who = caller(&req)?.who();
        let wanted: BTreeSet<String> = req.into_inner().nodes.into_iter().collect();
        let state = &self.ctx().state;
        let before = cluster_status(state)?;
        for node in &wanted {
            let known = before
                .machines
                .iter()
                .any(|m| m.nodes.iter().any(|n| &n.node == node));
            if !known {
                return Err(ServerError::UnknownNode { node: node.clone() });
            }
        }
        let asked = before
            .machines
            .iter()
            .filter(|m| wanted.is_empty() || m.nodes.iter().any(|n| wanted.contains(&n.node)));
        let mut machines = Vec::new();
        let mut waiting = Vec::new();
        for m in asked {
            match state.request(&m.machine, Action::CheckDrift(CheckDrift {})) {
                Some(rx) => waiting.push((m.machine.clone(), rx)),
                None => machines.push(MachineCheck {
                    machine: m.machine.clone(),
                    checked: false,
                    message: if m.reachable {
                        "too many commands queued for its agent; try again".into()
                    } else {
                        "its agent is not connected: its last reported drift is shown".into()
                    },
                }),
            }
        }
        tracing::info!(operator = %who, machines = waiting.len(), "drift check");
        let deadline = tokio::time::Instant::now() + CHECK_WAIT;
        let answers = futures::future::join_all(waiting.into_iter().map(|(machine, rx)| async {
            let answer = tokio::time::timeout_at(deadline, rx).await;
            let (checked, message) = match answer {
                Ok(Ok(r)) => (r.ok, r.message),
                Ok(Err(_)) => (false, "its agent's stream closed before it answered".into()),
                Err(_) => (
                    false,
                    format!("no answer within {} s", CHECK_WAIT.as_secs()),
                ),
            };
            MachineCheck {
                machine,
                checked,
                message,
            }
        }))
        .await;
        machines.extend(answers);
        machines.sort_by(|a, b| a.machine.cmp(&b.machine));
        Ok(CheckDriftResponse {
            status: Some(cluster_status(state)?),
            machines,
        })
    }
}
