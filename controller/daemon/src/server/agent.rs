//! The `AgentService`: each agent's one long-lived `Connect` stream.
//!
//! The agent says `Hello`; the controller sends the machine's desired spec when it is newer
//! than what the agent holds (and again whenever it changes), and records status reports. The
//! stream's task also watches the revocation list, the certificate's expiry and the server's
//! shutdown, and ends the stream with PERMISSION_DENIED, UNAUTHENTICATED or UNAVAILABLE the
//! moment one of them fires.

use std::collections::BTreeMap;
use std::time::Duration;

use apim_certs::PeerCert;
use apim_proto::text::printable;
use apim_proto::v1::agent_message::Kind;
use apim_proto::v1::agent_service_server::AgentService;
use apim_proto::v1::controller_message;
use apim_proto::v1::{
    AgentMessage, ArtifactPush, ArtifactUpdate, Command, ControllerMessage, DesiredSpec, Hello,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Ctx;
use super::auth::caller;
use super::error::ServerError;

/// Outbound messages buffered per stream before the session task waits for the agent.
const OUTBOUND_BUFFER: usize = 16;

/// The `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentSvc {
    ctx: Ctx,
}

impl AgentSvc {
    /// Serves agent streams over `ctx.state`.
    pub(crate) fn new(ctx: Ctx) -> Self {
        AgentSvc { ctx }
    }
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type ConnectStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let caller = caller(&req)?;
        let machine = caller.machine()?.to_owned();
        let Some(peer) = caller.peer else {
            return Err(ServerError::NoClientCert { rpc: caller.rpc }.into());
        };
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let session = Session {
            ctx: self.ctx.clone(),
            machine,
            peer,
            tx,
        };
        tokio::spawn(session.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Resolves once the server's shutdown flag is set (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Resolves once `current` names a session other than `id` (a newer stream took over).
async fn replaced(current: &mut watch::Receiver<u64>, id: u64) {
    let _ = current.wait_for(|now| *now != id).await;
}

/// One open `Connect` stream.
struct Session {
    ctx: Ctx,
    machine: String,
    peer: PeerCert,
    tx: mpsc::Sender<Result<ControllerMessage, Status>>,
}

impl Session {
    async fn run(self, mut inbound: Streaming<AgentMessage>) {
        let hello = match self.await_hello(&mut inbound).await {
            Ok(Some(hello)) => hello,
            Ok(None) => return,
            Err(e) => {
                let _ = self.tx.send(Err(e.to_status())).await;
                return;
            }
        };
        let state = &self.ctx.state;
        let (id, current) = state.open_session(&self.machine, hello.facts, hello.held_generation);
        tracing::info!(machine = %self.machine, session = id, held = hello.held_generation, version = %hello.agent_version, "agent connected");
        let commands = state.attach_commands(&self.machine, id);
        let result = self
            .drive(id, current, hello.held_generation, commands, &mut inbound)
            .await;
        state.detach_commands(&self.machine, id);
        state.close_session(&self.machine, id);
        match result {
            Ok(()) => tracing::info!(machine = %self.machine, session = id, "agent stream closed"),
            Err(e) => {
                tracing::warn!(machine = %self.machine, session = id, error = %e, "agent stream ended by the controller");
                let _ = self.tx.send(Err(e.to_status())).await;
            }
        }
    }

    /// The first message must be `Hello`, within the configured time. `Ok(None)`: the agent
    /// hung up first.
    async fn await_hello(
        &self,
        inbound: &mut Streaming<AgentMessage>,
    ) -> Result<Option<Hello>, ServerError> {
        let first = tokio::time::timeout(self.ctx.config.hello_timeout, inbound.message()).await;
        match first {
            Err(_) => Err(ServerError::Protocol {
                reason: format!("no Hello within {:?}", self.ctx.config.hello_timeout),
            }),
            Ok(Ok(Some(AgentMessage {
                kind: Some(Kind::Hello(hello)),
            }))) => Ok(Some(hello)),
            Ok(Ok(Some(_))) => Err(ServerError::Protocol {
                reason: "the first message on a stream must be Hello".into(),
            }),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(status)) => {
                tracing::debug!(machine = %self.machine, %status, "agent stream broke before Hello");
                Ok(None)
            }
        }
    }

    async fn drive(
        &self,
        id: u64,
        mut current: watch::Receiver<u64>,
        held_generation: u64,
        mut commands: mpsc::Receiver<Command>,
        inbound: &mut Streaming<AgentMessage>,
    ) -> Result<(), ServerError> {
        let state = &self.ctx.state;
        let mut specs = state.watch_spec(&self.machine);
        specs.mark_changed();
        let mut revocations = state.revocations();
        let mut stop = self.ctx.stop.clone();
        let mut last_sent = held_generation;
        let mut folders = state.folders();
        // Shared-folder groups the agent joined, and the revision sent of each.
        let mut joined: BTreeMap<String, u64> = BTreeMap::new();
        let left = self.peer.not_after - OffsetDateTime::now_utc();
        let expiry = tokio::time::sleep(Duration::try_from(left).unwrap_or(Duration::ZERO));
        tokio::pin!(expiry);
        loop {
            if state.is_revoked(&self.peer) {
                return Err(ServerError::Revoked {
                    identity: self.peer.identity.uri(),
                });
            }
            tokio::select! {
                biased;
                () = stopped(&mut stop) => return Err(ServerError::ShuttingDown),
                () = replaced(&mut current, id) => {
                    tracing::info!(machine = %self.machine, session = id, "replaced by a newer stream");
                    return Ok(());
                }
                changed = revocations.changed() => {
                    if changed.is_err() {
                        return Err(ServerError::ShuttingDown);
                    }
                }
                () = &mut expiry => return Err(ServerError::SessionCertExpired),
                () = self.tx.closed() => return Ok(()),
                changed = specs.changed() => {
                    if changed.is_err() {
                        return Err(ServerError::ShuttingDown);
                    }
                    let spec = Option::clone(&specs.borrow_and_update());
                    if let Some(spec) = spec
                        && spec.generation > last_sent
                    {
                        last_sent = spec.generation;
                        let msg = ControllerMessage {
                            kind: Some(controller_message::Kind::DesiredSpec(DesiredSpec {
                                spec: Some((*spec).clone()),
                            })),
                        };
                        tracing::info!(machine = %self.machine, generation = last_sent, "desired spec sent");
                        if self.tx.send(Ok(msg)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                changed = folders.changed() => {
                    if changed.is_err() {
                        return Err(ServerError::ShuttingDown);
                    }
                    if !self.send_folder_changes(&mut joined, None).await? {
                        return Ok(());
                    }
                }
                Some(command) = commands.recv() => {
                    let msg = ControllerMessage {
                        kind: Some(controller_message::Kind::Command(command)),
                    };
                    if self.tx.send(Ok(msg)).await.is_err() {
                        return Ok(());
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(AgentMessage { kind: Some(Kind::ArtifactPush(push)) })) => {
                        if !self.artifact_push(push, &mut joined).await? {
                            return Ok(());
                        }
                    }
                    Ok(Some(msg)) => self.handle(msg)?,
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        tracing::debug!(machine = %self.machine, %status, "agent stream broke");
                        return Ok(());
                    }
                },
            }
        }
    }

    /// Records a shared-folder push and answers with everything the group gained since the
    /// agent's base revision; from then on the group's changes follow as they happen.
    /// `Ok(false)`: the agent is gone.
    async fn artifact_push(
        &self,
        push: ArtifactPush,
        joined: &mut BTreeMap<String, u64>,
    ) -> Result<bool, ServerError> {
        let state = &self.ctx.state;
        let Some(done) = state.push_folder_files(&self.machine, &push)? else {
            return Ok(true);
        };
        tracing::info!(
            machine = %self.machine,
            group = %printable(&push.group),
            base = push.base_revision,
            written = done.written,
            unchanged = done.same,
            group_kept = done.kept,
            "shared folder push"
        );
        let sent = joined
            .entry(push.group.clone())
            .or_insert(push.base_revision);
        *sent = (*sent).min(push.base_revision);
        self.send_folder_changes(joined, Some(&push.group)).await
    }

    /// Sends each joined group's changes newer than what was sent. `Ok(false)`: the agent is
    /// gone.
    async fn send_folder_changes(
        &self,
        joined: &mut BTreeMap<String, u64>,
        answering: Option<&str>,
    ) -> Result<bool, ServerError> {
        let state = &self.ctx.state;
        let groups = state.folder_groups(&self.machine);
        // A group the machine left (its spec changed) is followed no more.
        joined.retain(|g, _| groups.contains_key(g));
        for (group, sent) in joined.iter_mut() {
            let mut updates = state.folder_changes(group, *sent)?;
            if updates.is_empty() && answering == Some(group.as_str()) {
                // A push is always answered, so a joining node knows it holds the group.
                updates.push(ArtifactUpdate {
                    group: group.clone(),
                    revision: *sent,
                    files: Vec::new(),
                    caught_up: true,
                });
            }
            for update in updates {
                *sent = update.revision;
                tracing::debug!(machine = %self.machine, group = %group, revision = update.revision, files = update.files.len(), "shared folder update sent");
                let msg = ControllerMessage {
                    kind: Some(controller_message::Kind::ArtifactUpdate(update)),
                };
                if self.tx.send(Ok(msg)).await.is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn handle(&self, msg: AgentMessage) -> Result<(), ServerError> {
        let state = &self.ctx.state;
        match msg.kind {
            Some(Kind::Status(report)) => {
                state.check_report(&self.machine, &report)?;
                tracing::debug!(machine = %self.machine, generation = report.generation, nodes = report.nodes.len(), "status report");
                state.record_status(&self.machine, report);
                Ok(())
            }
            Some(Kind::LogData(data)) => {
                state.relay_log(&self.machine, data);
                Ok(())
            }
            Some(Kind::CommandResult(result)) => {
                if state.command_answered(&self.machine, &result.command_id) {
                    state.relay_end(&self.machine, &result);
                    state.answer_waiter(&self.machine, &result);
                    // Agent text reaches the log escaped: it cannot forge a line.
                    tracing::info!(
                        machine = %self.machine,
                        command = %printable(&result.command_id),
                        ok = result.ok,
                        message = %printable(&result.message),
                        "command result"
                    );
                }
                Ok(())
            }
            // Taken by the stream loop, which answers it.
            Some(Kind::ArtifactPush(_)) => Ok(()),
            Some(Kind::Hello(_)) => Err(ServerError::Protocol {
                reason: "Hello may only be sent once per stream".into(),
            }),
            None => Err(ServerError::Protocol {
                reason: "empty agent message".into(),
            }),
        }
    }
}
