//! `OperatorService.Destroy`: records the destroy and pushes the destroy specs
//! ([`rollout::destroy`]), then streams every machine's progress until all of them reported it
//! carried out. Hanging up changes nothing: machines not reached yet are destroyed when they
//! reconnect.

use std::collections::BTreeMap;
use std::pin::Pin;

use apim_proto::text::printable;
use apim_proto::v1::{DestroyProgress, DestroyRequest, MachineDestroy};
use futures::Stream;
use tonic::{Request, Status};

use super::auth::caller;
use super::error::ServerError;
use super::operator::OperatorSvc;
use crate::rollout;
use crate::state::ControllerState;

/// The response stream of `Destroy`.
pub type DestroyStream = Pin<Box<dyn Stream<Item = Result<DestroyProgress, Status>> + Send>>;

/// Each machine's progress: done once its agent reported the destroy spec's generation (or a
/// later one) with no error, which it does only after carrying it out.
pub fn progress(
    state: &ControllerState,
    generation: u64,
    machines: &BTreeMap<String, u64>,
) -> DestroyProgress {
    let machines = machines
        .iter()
        .map(|(machine, spec_generation)| {
            let agent = state.agent(machine);
            let report = agent.as_ref().and_then(|a| a.last_status.as_ref());
            let error = report.map_or("", |r| r.destroy_error.as_str());
            MachineDestroy {
                machine: machine.clone(),
                done: report.is_some_and(|r| r.generation >= *spec_generation) && error.is_empty(),
                reachable: agent.as_ref().is_some_and(|a| a.connected),
                error: printable(error).into_owned(),
            }
        })
        .collect();
    DestroyProgress {
        generation,
        machines,
    }
}

impl OperatorSvc {
    pub(super) fn destroy_inner(
        &self,
        req: Request<DestroyRequest>,
    ) -> Result<DestroyStream, ServerError> {
        let who = caller(&req)?.who();
        let asked = &req.get_ref().author;
        let who = if asked.is_empty() || *asked == who {
            who
        } else {
            format!("{who} ({asked})")
        };
        let state = std::sync::Arc::clone(&self.ctx().state);
        let destroyed = rollout::destroy(&state, &format!("{who} (destroy)"))?;
        let mut stop = self.ctx().stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut changes = state.changes();
            let mut last: Option<DestroyProgress> = None;
            loop {
                let now = progress(&state, destroyed.generation, &destroyed.machines);
                let all_done = now.machines.iter().all(|m| m.done);
                if last.as_ref() != Some(&now) {
                    last = Some(now.clone());
                    if tx.send(Ok(now)).await.is_err() {
                        return;
                    }
                }
                if all_done {
                    return;
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(ServerError::ShuttingDown.into())).await;
                        return;
                    }
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
