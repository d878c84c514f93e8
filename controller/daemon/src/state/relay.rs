//! Commands to connected agents, and the log streams relayed from an agent to an operator
//! (`apimctl logs`).
//!
//! Each open agent stream registers a bounded command queue ([`ControllerState::attach_commands`]).
//! [`ControllerState::open_tail`] sends the machine's agent a `TailLog` with a fresh command id
//! and returns a [`TailStream`]; the agent's `LogData` for that id is passed on by
//! [`ControllerState::relay_log`] and its `CommandResult` ends it
//! ([`ControllerState::relay_end`]). The controller takes pieces only from the machine it sent the
//! command to: a piece for an id it never sent, or sent to another machine, is dropped and
//! counted.
//!
//! Memory stays bounded: at most [`MAX_TAILS`] streams at once ([`MAX_TAILS_PER_AGENT`] per
//! machine), each holding at most [`RELAY_BUFFER`] pieces of at most 64 KiB. A piece is never
//! waited for: when an operator reads so slowly that its buffer is full, its stream is dropped
//! with a clear error and the agent is told to stop. Dropping a [`TailStream`] (the operator
//! hung up) tells the agent to stop too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use apim_proto::v1::command::Action;
use apim_proto::v1::{CancelCommand, Command, CommandResult, LogChunk, LogData, TailLog};
use tokio::sync::mpsc;

use super::{ControllerState, Refused, StateError};

/// Most log streams relayed at once by one controller.
pub const MAX_TAILS: usize = 32;
/// Most log streams relayed at once from one machine.
pub const MAX_TAILS_PER_AGENT: usize = 4;
/// Pieces buffered per stream before an operator that does not read them is dropped.
pub const RELAY_BUFFER: usize = 32;
/// Largest piece of log an agent may send (the contract's limit); a larger one ends the stream.
pub const MAX_PIECE: usize = 64 << 10;
/// Largest notice an agent may send with a piece.
const MAX_NOTICE: usize = 1024;
/// Commands queued per agent stream.
const COMMAND_QUEUE: usize = 16;

/// What a [`TailStream`] yields.
#[derive(Debug)]
enum RelayEvent {
    Chunk(LogChunk),
    End { ok: bool, message: String },
}

#[derive(Debug)]
struct Relay {
    machine: String,
    tx: mpsc::Sender<RelayEvent>,
    /// How the stream ended, when that could not be queued (read when the receiver finds the
    /// channel closed).
    outcome: Outcome,
}

/// The command queues of connected agents and the relayed log streams.
#[derive(Debug, Default)]
pub(super) struct Relays {
    inner: Mutex<RelaysInner>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct RelaysInner {
    /// Per machine: its current stream's session id and command queue.
    agents: BTreeMap<String, (u64, mpsc::Sender<Command>)>,
    /// Per command id: the open log stream.
    streams: BTreeMap<String, Relay>,
}

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, RelaysInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a stream ended, set when the receiver cannot be told through the channel.
type Outcome = Arc<Mutex<Option<Result<(), TailEnd>>>>;

fn set_outcome(outcome: &Outcome, end: Result<(), TailEnd>) {
    *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
}

/// The controller dropped the stream.
fn set_reason(outcome: &Outcome, why: String) {
    set_outcome(
        outcome,
        Err(TailEnd {
            by_agent: false,
            message: why,
        }),
    );
}

/// How a log stream ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailEnd {
    /// The agent refused or failed (its words, untrusted); otherwise the controller dropped the
    /// stream (the agent disconnected, or the operator read too slowly).
    pub by_agent: bool,
    /// Why.
    pub message: String,
}

/// One log stream from an agent; dropping it before its end tells the agent to stop.
#[derive(Debug)]
pub struct TailStream {
    state: Arc<ControllerState>,
    id: String,
    machine: String,
    rx: mpsc::Receiver<RelayEvent>,
    outcome: Outcome,
    ended: bool,
}

impl TailStream {
    /// The command id the agent was sent.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next piece; `None` once the agent ended the stream well; `Some(Err(why))` once when
    /// it ended badly (the agent's refusal, its disconnection, or an operator too slow).
    pub async fn next(&mut self) -> Option<Result<LogChunk, TailEnd>> {
        if self.ended {
            return None;
        }
        let event = self.rx.recv().await;
        match event {
            Some(RelayEvent::Chunk(c)) => Some(Ok(c)),
            Some(RelayEvent::End { ok: true, .. }) => {
                self.ended = true;
                None
            }
            Some(RelayEvent::End { ok: false, message }) => {
                self.ended = true;
                Some(Err(TailEnd {
                    by_agent: true,
                    message,
                }))
            }
            None => {
                self.ended = true;
                let outcome = self
                    .outcome
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                match outcome {
                    Some(Ok(())) => None,
                    Some(Err(end)) => Some(Err(end)),
                    None => Some(Err(TailEnd {
                        by_agent: false,
                        message: format!("the log stream from {} ended", self.machine),
                    })),
                }
            }
        }
    }
}

impl Drop for TailStream {
    fn drop(&mut self) {
        self.state.cancel_tail(&self.id);
    }
}

impl ControllerState {
    /// Registers the command queue of `machine`'s stream `session`; a newer stream replaces an
    /// older one, whose log streams end (their agent side is gone with it).
    pub fn attach_commands(&self, machine: &str, session: u64) -> mpsc::Receiver<Command> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let replaced = self
            .relays
            .lock()
            .agents
            .insert(machine.to_owned(), (session, tx))
            .is_some();
        if replaced {
            self.end_relays(machine);
        }
        rx
    }

    /// Unregisters `machine`'s stream `session` (only if still current) and ends its log streams:
    /// the agent that served them is gone.
    pub fn detach_commands(&self, machine: &str, session: u64) {
        {
            let mut r = self.relays.lock();
            if r.agents.get(machine).is_none_or(|(s, _)| *s != session) {
                return;
            }
            r.agents.remove(machine);
        }
        self.end_relays(machine);
    }

    /// Ends every log stream from `machine` (its agent's stream ended).
    fn end_relays(&self, machine: &str) {
        let ended: Vec<String> = {
            let mut r = self.relays.lock();
            let ids: Vec<String> = r
                .streams
                .iter()
                .filter(|(_, s)| s.machine == machine)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                if let Some(s) = r.streams.remove(id) {
                    set_reason(
                        &s.outcome,
                        format!("the agent of {machine} disconnected; run the command again"),
                    );
                }
            }
            ids
        };
        // Their results will never come.
        let mut inner = self.lock();
        if let Some(issued) = inner.issued_commands.get_mut(machine) {
            for id in &ended {
                issued.remove(id);
            }
        }
    }

    /// A fresh command id for `action`.
    pub(super) fn command_id(&self, action: &Action) -> String {
        let n = self.relays.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", action_name(action))
    }

    /// Queues `action` as command `id` for `machine`'s connected agent, noted as issued.
    pub(super) fn send_command(
        &self,
        machine: &str,
        id: &str,
        action: Action,
    ) -> Result<(), StateError> {
        let queue = self
            .relays
            .lock()
            .agents
            .get(machine)
            .map(|(_, q)| q.clone());
        let queue = queue.ok_or_else(|| StateError::AgentNotConnected {
            machine: machine.to_owned(),
            elsewhere: self.connected_elsewhere(machine),
        })?;
        self.command_issued(machine, id);
        let command = Command {
            command_id: id.to_owned(),
            action: Some(action),
        };
        if queue.try_send(command).is_err() {
            self.command_answered(machine, id);
            return Err(StateError::AgentNotConnected {
                machine: machine.to_owned(),
                elsewhere: None,
            });
        }
        Ok(())
    }

    /// Asks `machine`'s agent for a node's log; the pieces come through the returned stream.
    pub fn open_tail(
        self: &Arc<Self>,
        machine: &str,
        tail: TailLog,
    ) -> Result<TailStream, StateError> {
        let (tx, rx) = mpsc::channel(RELAY_BUFFER);
        let outcome: Outcome = Arc::new(Mutex::new(None));
        let action = Action::TailLog(tail);
        let id = self.command_id(&action);
        {
            let mut r = self.relays.lock();
            if r.streams.len() >= MAX_TAILS {
                return Err(StateError::TooManyLogStreams {
                    scope: "this controller".into(),
                    limit: MAX_TAILS,
                });
            }
            let here = r.streams.values().filter(|s| s.machine == machine).count();
            if here >= MAX_TAILS_PER_AGENT {
                return Err(StateError::TooManyLogStreams {
                    scope: format!("machine {machine}"),
                    limit: MAX_TAILS_PER_AGENT,
                });
            }
            // Registered before the command leaves, so no piece can arrive first.
            r.streams.insert(
                id.clone(),
                Relay {
                    machine: machine.to_owned(),
                    tx,
                    outcome: Arc::clone(&outcome),
                },
            );
        }
        if let Err(e) = self.send_command(machine, &id, action) {
            self.relays.lock().streams.remove(&id);
            return Err(e);
        }
        Ok(TailStream {
            state: Arc::clone(self),
            id,
            machine: machine.to_owned(),
            rx,
            outcome,
            ended: false,
        })
    }

    /// Passes a piece of log on; `false` (and counted) when `machine` was not sent that command
    /// or its stream is gone. An operator too slow to take it loses its stream.
    pub fn relay_log(&self, machine: &str, data: LogData) -> bool {
        let mut r = self.relays.lock();
        let Some(relay) = r
            .streams
            .get(&data.command_id)
            .filter(|s| s.machine == machine)
        else {
            drop(r);
            let issued_here = self
                .lock()
                .issued_commands
                .get(machine)
                .is_some_and(|s| s.contains(&data.command_id));
            if issued_here {
                // A stream this controller stopped relaying: the agent missed the cancel.
                self.cancel_on_agent(machine, &data.command_id);
            } else {
                self.refusals.count(
                    machine,
                    Refused {
                        unissued_log_data: 1,
                        ..Refused::default()
                    },
                );
            }
            return false;
        };
        if data.data.len() > MAX_PIECE || data.notice.len() > MAX_NOTICE {
            // Bigger than the contract allows: the buffer bound would not hold. End it.
            if let Some(s) = r.streams.remove(&data.command_id) {
                set_reason(
                    &s.outcome,
                    format!(
                        "the agent of {machine} sent a piece of log larger than {MAX_PIECE} bytes; \
                         the stream was ended"
                    ),
                );
            }
            drop(r);
            tracing::warn!(%machine, command = %data.command_id, bytes = data.data.len(), "oversized log piece: stream ended");
            self.cancel_on_agent(machine, &data.command_id);
            return false;
        }
        let chunk = LogChunk {
            data: data.data,
            notice: data.notice,
        };
        match relay.tx.try_send(RelayEvent::Chunk(chunk)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                r.streams.remove(&data.command_id);
                drop(r);
                self.cancel_on_agent(machine, &data.command_id);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(s) = r.streams.remove(&data.command_id) {
                    set_reason(
                        &s.outcome,
                        format!(
                            "the log stream was dropped: this client read it too slowly (more \
                             than {RELAY_BUFFER} pieces waited)"
                        ),
                    );
                }
                drop(r);
                tracing::warn!(%machine, command = %data.command_id, "log stream dropped: the operator reads too slowly");
                self.cancel_on_agent(machine, &data.command_id);
                true
            }
        }
    }

    /// Ends the log stream `result` answers, if `machine` was sent it and it is still relayed.
    pub fn relay_end(&self, machine: &str, result: &CommandResult) {
        let mut r = self.relays.lock();
        let ours = r
            .streams
            .get(&result.command_id)
            .is_some_and(|s| s.machine == machine);
        if !ours {
            return;
        }
        if let Some(s) = r.streams.remove(&result.command_id) {
            let end = RelayEvent::End {
                ok: result.ok,
                message: result.message.clone(),
            };
            if s.tx.try_send(end).is_err() {
                // The buffer is full: the receiver finds the channel closed, then this.
                let end = if result.ok {
                    Ok(())
                } else {
                    Err(TailEnd {
                        by_agent: true,
                        message: result.message.clone(),
                    })
                };
                set_outcome(&s.outcome, end);
            }
        }
    }

    /// The operator's side of a log stream is gone: stop relaying, and tell the agent.
    fn cancel_tail(&self, id: &str) {
        let removed = self.relays.lock().streams.remove(id);
        if let Some(s) = removed {
            self.cancel_on_agent(&s.machine, id);
        }
    }

    fn cancel_on_agent(&self, machine: &str, id: &str) {
        let cancel = Action::CancelCommand(CancelCommand {
            command_id: id.to_owned(),
        });
        let cancel_id = self.command_id(&cancel);
        if let Err(e) = self.send_command(machine, &cancel_id, cancel) {
            tracing::debug!(%machine, command = %id, error = %e, "could not cancel a log stream on its agent");
        }
    }

    /// How many log streams are relayed now (tests and metrics).
    pub fn log_streams(&self) -> usize {
        self.relays.lock().streams.len()
    }
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::TailLog(_) => "logs",
        Action::CancelCommand(_) => "cancel",
        Action::ReportNow(_) => "report",
        Action::CheckDrift(_) => "drift",
    }
}

#[cfg(test)]
mod tests {
    use apim_certs::ControlPlaneCa;

    use super::*;

    fn state() -> (tempfile::TempDir, Arc<ControllerState>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = ControlPlaneCa::load_or_create(&dir.path().join("ca")).unwrap();
        let state = ControllerState::new(ca, &dir.path().join("artifacts")).unwrap();
        (dir, Arc::new(state))
    }

    fn tail(node: &str) -> TailLog {
        TailLog {
            node: node.into(),
            file: String::new(),
            lines: 10,
            follow: true,
        }
    }

    fn data(id: &str, text: &str) -> LogData {
        LogData {
            command_id: id.into(),
            data: text.as_bytes().to_vec(),
            notice: String::new(),
        }
    }

    /// The next command queued for an agent, which must be there already.
    fn queued(rx: &mut mpsc::Receiver<Command>) -> Command {
        rx.try_recv().expect("a command was queued")
    }

    #[tokio::test]
    async fn pieces_are_taken_only_from_the_machine_the_command_went_to() {
        let (_dir, state) = state();
        let mut a = state.attach_commands("vm-a", 1);
        let _b = state.attach_commands("vm-b", 2);
        let mut stream = state.open_tail("vm-a", tail("gw-1")).unwrap();
        let sent = queued(&mut a);
        assert_eq!(sent.command_id, stream.id());
        assert!(matches!(sent.action, Some(Action::TailLog(ref t)) if t.node == "gw-1"));
        // Another machine answering for it, and an id never sent: dropped.
        assert!(!state.relay_log("vm-b", data(stream.id(), "forged by vm-b")));
        assert!(!state.relay_log("vm-a", data("logs-999", "never asked for")));
        state.relay_end(
            "vm-b",
            &CommandResult {
                command_id: stream.id().into(),
                ok: false,
                message: "forged end".into(),
            },
        );
        assert!(state.relay_log("vm-a", data(stream.id(), "genuine")));
        let id = stream.id().to_owned();
        assert!(state.command_answered("vm-a", &id));
        state.relay_end(
            "vm-a",
            &CommandResult {
                command_id: id,
                ok: true,
                message: "done".into(),
            },
        );
        let first = stream.next().await.expect("a piece").expect("ok");
        assert_eq!(first.data, b"genuine");
        assert!(stream.next().await.is_none(), "ended well, nothing else");
        drop(stream);
        assert!(a.try_recv().is_err(), "an ended stream is not cancelled");
    }

    #[tokio::test]
    async fn a_slow_reader_is_dropped_with_an_error_and_the_agent_told_to_stop() {
        let (_dir, state) = state();
        let mut a = state.attach_commands("vm-a", 1);
        let mut stream = state.open_tail("vm-a", tail("gw-1")).unwrap();
        let id = queued(&mut a).command_id;
        for i in 0..RELAY_BUFFER {
            assert!(state.relay_log("vm-a", data(&id, &format!("piece {i}\n"))));
        }
        assert_eq!(state.log_streams(), 1, "a full buffer is still kept");
        // One more than the buffer holds: the stream goes, the agent is told.
        state.relay_log("vm-a", data(&id, "overflow\n"));
        assert_eq!(state.log_streams(), 0);
        let cancel = queued(&mut a);
        assert!(
            matches!(cancel.action, Some(Action::CancelCommand(ref c)) if c.command_id == id),
            "{cancel:?}"
        );
        // What was buffered is still read, then the error.
        for i in 0..RELAY_BUFFER {
            let piece = stream.next().await.expect("piece").expect("ok");
            assert_eq!(piece.data, format!("piece {i}\n").as_bytes());
        }
        let end = stream.next().await.expect("the end").unwrap_err();
        assert!(!end.by_agent);
        assert!(end.message.contains("too slowly"), "{}", end.message);
    }

    #[tokio::test]
    async fn a_piece_larger_than_the_contract_ends_the_stream() {
        let (_dir, state) = state();
        let mut a = state.attach_commands("vm-a", 1);
        let mut stream = state.open_tail("vm-a", tail("gw-1")).unwrap();
        let id = queued(&mut a).command_id;
        let big = LogData {
            command_id: id.clone(),
            data: vec![b'x'; MAX_PIECE + 1],
            notice: String::new(),
        };
        assert!(!state.relay_log("vm-a", big));
        let end = stream.next().await.expect("the end").unwrap_err();
        assert!(end.message.contains("larger than"), "{}", end.message);
        assert!(matches!(
            queued(&mut a).action,
            Some(Action::CancelCommand(_))
        ));
    }

    #[tokio::test]
    async fn hanging_up_cancels_on_the_agent_and_limits_hold() {
        let (_dir, state) = state();
        let mut a = state.attach_commands("vm-a", 1);
        let streams: Vec<TailStream> = (0..MAX_TAILS_PER_AGENT)
            .map(|_| state.open_tail("vm-a", tail("gw-1")).unwrap())
            .collect();
        let e = state.open_tail("vm-a", tail("gw-1")).unwrap_err();
        assert!(
            matches!(e, StateError::TooManyLogStreams { limit, .. } if limit == MAX_TAILS_PER_AGENT)
        );
        let ids: Vec<String> = streams.iter().map(|s| s.id().to_owned()).collect();
        for _ in &ids {
            queued(&mut a);
        }
        drop(streams);
        for id in &ids {
            let c = queued(&mut a);
            assert!(
                matches!(c.action, Some(Action::CancelCommand(ref x)) if x.command_id == *id),
                "{c:?}"
            );
        }
        assert_eq!(state.log_streams(), 0);
        // Not connected: refused at once.
        let e = state.open_tail("vm-z", tail("x")).unwrap_err();
        assert!(matches!(e, StateError::AgentNotConnected { .. }), "{e}");
        // The agent's stream ending ends its log streams, with why.
        let mut s = state.open_tail("vm-a", tail("gw-1")).unwrap();
        state.detach_commands("vm-a", 1);
        let end = s.next().await.expect("end").unwrap_err();
        assert!(end.message.contains("disconnected"), "{}", end.message);
    }
}
