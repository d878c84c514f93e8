//! `TailLog` and `CancelCommand`: a node's log, sent to the controller on the agent's stream.
//!
//! A `TailLog` runs in its own task: it finds the node in the spec the agent holds (never a node
//! of another machine), opens the file through [`logfile::open_in`] (only regular files inside
//! the node's log folder, which the spec names), sends the last lines ([`logfile::tail`]: at most
//! [`logfile::MAX_LINES`] lines and [`logfile::MAX_TAIL_BYTES`] bytes) as `LogData` pieces of at
//! most [`logfile::MAX_CHUNK`] bytes, and with `follow` polls for what is appended, at most
//! [`FOLLOW_BYTES_PER_S`] (a log growing faster is skipped ahead, with a notice). It ends with
//! its `CommandResult`, when done, when cancelled (`CancelCommand`) or on error. At most
//! [`MAX_TAILS`] run at once; the stream's end cancels them all. The outbound queue to the
//! controller is bounded, so a slow controller slows the tail instead of growing memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use apim_proto::v1::agent_message::Kind as AgentKind;
use apim_proto::v1::command::Action;
use apim_proto::v1::{AgentMessage, Command, CommandResult, LogData, TailLog};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::daemon::config::AgentConfig;
use crate::daemon::converge::rel_path;
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::machine::Machine;
use crate::exec::logfile::{self, Event, Follower};

/// Most log streams one agent serves at once.
pub const MAX_TAILS: usize = 4;
/// Most bytes per second a follow sends (what was appended beyond it waits, then is skipped).
pub const FOLLOW_BYTES_PER_S: usize = 128 << 10;
/// How often a follow looks for appended bytes.
const POLL: Duration = Duration::from_millis(250);
/// A follow further behind than this skips to the end of the file.
const MAX_BACKLOG: u64 = 8 << 20;

/// What [`Tails::take`] did with a command.
#[derive(Debug)]
pub enum Taken {
    /// Not a log command: the caller handles it.
    NotMine,
    /// Answer it with this result now.
    Answer(CommandResult),
    /// A task serves it and sends its result when it ends.
    Running,
}

struct Running {
    cancel: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The log streams of one connection to the controller; dropping it ends them.
pub struct Tails {
    machine: Arc<Mutex<Machine>>,
    config: AgentConfig,
    running: StdMutex<HashMap<String, Running>>,
}

impl Drop for Tails {
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, r) in running.drain() {
            r.task.abort();
        }
    }
}

fn result(command_id: &str, ok: bool, message: impl Into<String>) -> CommandResult {
    CommandResult {
        command_id: command_id.to_owned(),
        ok,
        message: message.into(),
    }
}

impl Tails {
    /// Log streams over the machine's held spec.
    pub fn new(machine: Arc<Mutex<Machine>>, config: AgentConfig) -> Self {
        Tails {
            machine,
            config,
            running: StdMutex::new(HashMap::new()),
        }
    }

    /// Takes `TailLog` and `CancelCommand`; answers go out on `tx`.
    pub fn take(&self, c: &Command, tx: &mpsc::Sender<AgentMessage>) -> Taken {
        match &c.action {
            Some(Action::TailLog(t)) => self.start(&c.command_id, t.clone(), tx.clone()),
            Some(Action::CancelCommand(x)) => {
                Taken::Answer(self.cancel(&c.command_id, &x.command_id))
            }
            _ => Taken::NotMine,
        }
    }

    fn start(&self, id: &str, t: TailLog, tx: mpsc::Sender<AgentMessage>) -> Taken {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|_, r| !r.task.is_finished());
        if running.contains_key(id) {
            return Taken::Answer(result(id, false, "a command with this id is running"));
        }
        if running.len() >= MAX_TAILS {
            return Taken::Answer(result(
                id,
                false,
                format!("too many log streams on this machine (at most {MAX_TAILS} at once)"),
            ));
        }
        let (cancel, cancelled) = oneshot::channel();
        let task = tokio::spawn(serve(
            Arc::clone(&self.machine),
            self.config.clone(),
            id.to_owned(),
            t,
            tx,
            cancelled,
        ));
        running.insert(
            id.to_owned(),
            Running {
                cancel: Some(cancel),
                task,
            },
        );
        Taken::Running
    }

    fn cancel(&self, own_id: &str, target: &str) -> CommandResult {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.get_mut(target).and_then(|r| r.cancel.take()) {
            Some(cancel) => {
                let _ = cancel.send(());
                result(own_id, true, format!("cancelled {target}"))
            }
            None => result(own_id, false, format!("no command {target} is running")),
        }
    }
}

/// Runs one `TailLog` and sends its result.
async fn serve(
    machine: Arc<Mutex<Machine>>,
    config: AgentConfig,
    id: String,
    t: TailLog,
    tx: mpsc::Sender<AgentMessage>,
    cancelled: oneshot::Receiver<()>,
) {
    let outcome = stream(&machine, &config, &id, &t, &tx, cancelled).await;
    let (ok, message) = match outcome {
        Ok(m) => (true, m),
        Err(e) => {
            tracing::info!(node = %t.node, file = %t.file, error = %e, "log stream refused or failed");
            (false, e.to_string())
        }
    };
    let _ = tx
        .send(AgentMessage {
            kind: Some(AgentKind::CommandResult(result(&id, ok, message))),
        })
        .await;
}

/// The node's log folder and default file (its readiness log's name, when that log is in the
/// folder), from the held spec.
async fn source(
    machine: &Mutex<Machine>,
    config: &AgentConfig,
    node: &str,
) -> DaemonResult<(PathBuf, Option<String>)> {
    let spec = machine
        .lock()
        .await
        .node_spec(node)
        .ok_or_else(|| DaemonError::BadSpec {
            node: node.to_owned(),
            reason: "not a node of the spec this machine holds".into(),
        })?;
    if spec.log_dir.is_empty() {
        return Err(DaemonError::BadSpec {
            node: node.to_owned(),
            reason: "its spec names no log folder".into(),
        });
    }
    let pack = spec.pack.as_ref().ok_or_else(|| DaemonError::BadSpec {
        node: node.to_owned(),
        reason: "no pack".into(),
    })?;
    let home = config.rooted(node, &spec.install_dir)?.join(rel_path(
        node,
        "pack.top_dir",
        &pack.top_dir,
    )?);
    let log_dir = rel_path(node, "log_dir", &spec.log_dir)?;
    let default = spec
        .readiness
        .as_ref()
        .map(|r| Path::new(&r.log_file))
        .filter(|f| f.parent() == Some(log_dir.as_path()))
        .and_then(|f| f.file_name())
        .map(|f| f.to_string_lossy().into_owned());
    Ok((home.join(log_dir), default))
}

fn closed() -> DaemonError {
    DaemonError::Stream {
        reason: "the outbound stream closed".into(),
    }
}

async fn send(tx: &mpsc::Sender<AgentMessage>, data: LogData) -> DaemonResult<()> {
    tx.send(AgentMessage {
        kind: Some(AgentKind::LogData(data)),
    })
    .await
    .map_err(|_| closed())
}

async fn send_bytes(tx: &mpsc::Sender<AgentMessage>, id: &str, bytes: &[u8]) -> DaemonResult<()> {
    for piece in bytes.chunks(logfile::MAX_CHUNK) {
        let data = LogData {
            command_id: id.to_owned(),
            data: piece.to_vec(),
            notice: String::new(),
        };
        send(tx, data).await?;
    }
    Ok(())
}

async fn stream(
    machine: &Mutex<Machine>,
    config: &AgentConfig,
    id: &str,
    t: &TailLog,
    tx: &mpsc::Sender<AgentMessage>,
    cancelled: oneshot::Receiver<()>,
) -> DaemonResult<String> {
    let (dir, default) = source(machine, config, &t.node).await?;
    let name = if t.file.is_empty() {
        default.ok_or_else(|| DaemonError::BadSpec {
            node: t.node.clone(),
            reason: "no server log in its log folder to default to: name a file".into(),
        })?
    } else {
        t.file.clone()
    };
    let (lines, open_dir, open_name) = (t.lines, dir.clone(), name.clone());
    let (log, data, end) = tokio::task::spawn_blocking(move || {
        let mut log = logfile::open_in(&open_dir, &open_name)?;
        let (data, end) = logfile::tail(&mut log, lines, logfile::MAX_TAIL_BYTES)?;
        Ok::<_, crate::exec::ExecError>((log, data, end))
    })
    .await
    .map_err(|source| DaemonError::Join { op: "tail", source })?
    .on(&t.node)?;
    send_bytes(tx, id, &data).await?;
    if !t.follow {
        return Ok(format!("{} bytes of {name}", data.len()));
    }
    let mut follower = Follower::new(&dir, &name, log, end);
    let budget = FOLLOW_BYTES_PER_S * POLL.as_millis() as usize / 1000;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cancelled = std::pin::pin!(cancelled);
    loop {
        tokio::select! {
            _ = &mut cancelled => return Ok(format!("stopped following {name}")),
            () = tx.closed() => return Err(closed()),
            _ = tick.tick() => {
                for event in follower.poll(budget, MAX_BACKLOG).on(&t.node)? {
                    match event {
                        Event::Data(bytes) => send_bytes(tx, id, &bytes).await?,
                        Event::Notice(notice) => {
                            let data = LogData {
                                command_id: id.to_owned(),
                                data: Vec::new(),
                                notice,
                            };
                            send(tx, data).await?;
                        }
                    }
                }
            }
        }
    }
}
