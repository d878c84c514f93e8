//! Start, stop and liveness of a node's server through its own scripts.
//!
//! The contract of a product start script, as the spec describes it: `<script> [args…] start`
//! starts the server in the background and returns at once; the server writes **its own** pid
//! to its pid file (the spec's `ServerProcess.pid_file`) early; nothing ever deletes that file,
//! so stale files are normal. `<script> stop` asks the server to exit and returns without
//! waiting. The agent builds on that contract and adds what it lacks:
//!
//! * [`pid_file_state`] tells `None | Alive | Stale | Garbage` — a pid that is dead, a zombie,
//!   or alive but not this node's server ([`is_our_server`]: the command line names the home,
//!   or has the server's main class and no home argument) is stale.
//! * [`start`] never starts a node that is alive (no double start), removes a stale pid file
//!   first (a script's own liveness check would be fooled by a reused pid), runs the script
//!   with an argv array (never a shell string) and the one node environment ([`node_env`]:
//!   nothing inherited), as the `run_as` user when the agent is root, captures its output, and
//!   returns only once a *new* live pid is in the pid file — so a second `start` right after
//!   the first sees `Alive`. A per-node `flock` serialises starts and stops of one node across
//!   tasks and processes.
//! * [`stop`] runs the script's stop, waits (bounded) for the pid to go, then sends SIGTERM,
//!   waits again, then SIGKILL, and reports which step worked.
//!
//! Commands run through a [`ProcessRunner`] so tests can observe what the agent builds;
//! [`TokioRunner`] is the real one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::exec::error::{ExecError, Result};

mod env;
mod runner;
mod server;

pub use env::{RunAs, SAFE_PATH, node_env, resolve_run_as};
pub use runner::{
    CommandSpec, Credentials, ExitInfo, OUTPUT_TAIL, ProcessRunner, ScriptOutput, TokioRunner,
};
pub use server::{PidFileState, Server, is_our_server, pid_alive, pid_file_state};

/// The per-node lock file the agent keeps in the node's home while starting or stopping it.
pub const LOCK_FILE: &str = ".apimctl-node.lock";

/// What to start and how.
#[derive(Clone)]
pub struct StartSpec {
    /// The node's server: its home (the script's cwd) and how its process is recognised.
    pub server: Server,
    /// The script and its arguments, e.g. `["bin/server.sh", "-Dprofile=worker", "start"]`; a
    /// relative program is resolved against the home.
    pub argv: Vec<String>,
    /// The spec's environment (e.g. `JAVA_OPTS`); may hold secrets, never logged.
    pub env: BTreeMap<String, String>,
    /// The JDK to run the server with.
    pub java_home: PathBuf,
    /// Run the script as this user (the agent must be root, or already that user).
    pub run_as: Option<String>,
    /// How long the start script itself may take (it normally returns at once).
    pub script_timeout: Duration,
    /// How long to wait for a live pid in the pid file after the script returned.
    pub pid_timeout: Duration,
}

impl fmt::Debug for StartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartSpec")
            .field("server", &self.server)
            .field("argv", &self.argv)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("java_home", &self.java_home)
            .field("run_as", &self.run_as)
            .field("script_timeout", &self.script_timeout)
            .field("pid_timeout", &self.pid_timeout)
            .finish()
    }
}

impl StartSpec {
    /// A start with no extra env, as the agent's user, 60 s for the script and 120 s for the pid.
    pub fn new(server: Server, argv: Vec<String>, java_home: impl Into<PathBuf>) -> Self {
        StartSpec {
            server,
            argv,
            env: BTreeMap::new(),
            java_home: java_home.into(),
            run_as: None,
            script_timeout: Duration::from_secs(60),
            pid_timeout: Duration::from_secs(120),
        }
    }
}

/// What [`start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// The script ran and this new pid is alive.
    Started {
        /// The server's pid (from its pid file).
        pid: i32,
        /// The start script's output.
        output: ScriptOutput,
    },
    /// The node was already running; nothing was run.
    AlreadyRunning {
        /// Its pid.
        pid: i32,
    },
}

/// What to stop and how patiently.
#[derive(Clone)]
pub struct StopSpec {
    /// The node's server.
    pub server: Server,
    /// The script's stop command, e.g. `["bin/server.sh", "stop"]`; empty: signals only.
    pub stop_argv: Vec<String>,
    /// Environment for the stop script (the real one needs `JAVA_HOME` even to stop).
    pub env: BTreeMap<String, String>,
    /// The JDK (the scripts check it before anything else).
    pub java_home: PathBuf,
    /// Run the stop script as this user.
    pub run_as: Option<String>,
    /// How long the server gets to exit after the stop script.
    pub grace: Duration,
    /// How long it gets after the agent's own SIGTERM, before SIGKILL.
    pub term_grace: Duration,
    /// How long to wait for the pid to vanish after SIGKILL.
    pub kill_wait: Duration,
    /// How long the stop script may take.
    pub script_timeout: Duration,
}

impl fmt::Debug for StopSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopSpec")
            .field("server", &self.server)
            .field("stop_argv", &self.stop_argv)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("run_as", &self.run_as)
            .field("grace", &self.grace)
            .field("term_grace", &self.term_grace)
            .field("kill_wait", &self.kill_wait)
            .finish_non_exhaustive()
    }
}

impl StopSpec {
    /// Stop with `stop_argv`, `grace` for a clean exit, then 30 s after SIGTERM, 10 s after
    /// SIGKILL.
    pub fn new(
        server: Server,
        stop_argv: Vec<String>,
        java_home: impl Into<PathBuf>,
        grace: Duration,
    ) -> Self {
        StopSpec {
            server,
            stop_argv,
            env: BTreeMap::new(),
            java_home: java_home.into(),
            run_as: None,
            grace,
            term_grace: Duration::from_secs(30),
            kill_wait: Duration::from_secs(10),
            script_timeout: Duration::from_secs(60),
        }
    }
}

/// How the node went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopVia {
    /// The stop script (or a signal it sent) was enough.
    Script,
    /// The agent's SIGTERM after the grace period.
    Sigterm,
    /// SIGKILL.
    Sigkill,
}

/// What [`stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing of this node was running (a stale pid file was removed).
    NotRunning,
    /// The server with this pid is gone.
    Stopped {
        /// Its pid.
        pid: i32,
        /// What made it go.
        via: StopVia,
    },
}

/// Start the node unless it is alive. See the module docs for the guarantees.
pub async fn start<R: ProcessRunner>(runner: &R, spec: &StartSpec) -> Result<StartOutcome> {
    let server = &spec.server;
    let (program, args) = split_argv(&server.home, &spec.argv)?;
    let _lock = NodeLock::acquire(&server.home)?;
    let pid_file = server.pid_file_path();
    match pid_file_state(server)? {
        PidFileState::Alive(pid) => {
            tracing::info!(home = %server.home.display(), pid, "already running; not starting");
            return Ok(StartOutcome::AlreadyRunning { pid });
        }
        PidFileState::Stale(_) | PidFileState::Garbage => remove_pid_file(&pid_file)?,
        PidFileState::None => {}
    }
    let run_as = resolve_run_as(spec.run_as.as_deref())?;
    let cmd = CommandSpec {
        program,
        args,
        cwd: server.home.clone(),
        env: node_env(&spec.java_home, &run_as, &spec.env),
        credentials: run_as.switch_to,
        timeout: spec.script_timeout,
    };
    tracing::info!(cmd = ?cmd, "starting node");
    let output = runner.run(&cmd).await?;
    if !output.status.success() {
        return Err(ExecError::ScriptFailed {
            program: cmd.program,
            args: cmd.args,
            status: output.status.to_string(),
            output: output.output,
        });
    }
    // The pid file was absent or removed above, so any file now is the new server's.
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        match pid_file_state(server)? {
            PidFileState::Alive(pid) => {
                tracing::info!(pid, "node started");
                return Ok(StartOutcome::Started { pid, output });
            }
            PidFileState::Stale(pid) => {
                return Err(ExecError::DiedAfterStart {
                    pid_file,
                    pid,
                    output: output.output,
                });
            }
            PidFileState::None | PidFileState::Garbage => {}
        }
        let waited = started.elapsed();
        if waited >= spec.pid_timeout {
            return Err(ExecError::NoPidAfterStart {
                pid_file,
                waited,
                output: output.output,
            });
        }
        tokio::time::sleep(delay.min(spec.pid_timeout - waited)).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Stop the node: stop script, grace, SIGTERM, grace, SIGKILL. See the module docs.
pub async fn stop<R: ProcessRunner>(runner: &R, spec: &StopSpec) -> Result<StopOutcome> {
    let server = &spec.server;
    let _lock = NodeLock::acquire(&server.home)?;
    let pid_file = server.pid_file_path();
    let pid = match pid_file_state(server)? {
        PidFileState::Alive(pid) => pid,
        PidFileState::Stale(_) | PidFileState::Garbage => {
            remove_pid_file(&pid_file)?;
            return Ok(StopOutcome::NotRunning);
        }
        PidFileState::None => return Ok(StopOutcome::NotRunning),
    };
    if !spec.stop_argv.is_empty() {
        let (program, args) = split_argv(&server.home, &spec.stop_argv)?;
        let run_as = resolve_run_as(spec.run_as.as_deref())?;
        let cmd = CommandSpec {
            program,
            args,
            cwd: server.home.clone(),
            env: node_env(&spec.java_home, &run_as, &spec.env),
            credentials: run_as.switch_to,
            timeout: spec.script_timeout,
        };
        tracing::info!(cmd = ?cmd, pid, "stopping node");
        match runner.run(&cmd).await {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                tracing::warn!(status = %out.status, output = %out.output, "stop script failed; will signal")
            }
            Err(e) => tracing::warn!(error = %e, "stop script failed; will signal"),
        }
        if wait_gone(pid, server, spec.grace).await {
            return Ok(StopOutcome::Stopped {
                pid,
                via: StopVia::Script,
            });
        }
    }
    signal_ours(pid, server, Signal::SIGTERM)?;
    if wait_gone(pid, server, spec.term_grace).await {
        return Ok(StopOutcome::Stopped {
            pid,
            via: StopVia::Sigterm,
        });
    }
    tracing::warn!(pid, "server ignored SIGTERM; sending SIGKILL");
    signal_ours(pid, server, Signal::SIGKILL)?;
    if wait_gone(pid, server, spec.kill_wait).await {
        return Ok(StopOutcome::Stopped {
            pid,
            via: StopVia::Sigkill,
        });
    }
    Err(ExecError::StillAlive {
        pid,
        waited: spec.kill_wait,
    })
}

/// Signal `pid` only while it is still this node's server (never a reused pid).
fn signal_ours(pid: i32, server: &Server, sig: Signal) -> Result<()> {
    if !is_our_server(pid, server) {
        return Ok(());
    }
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(source) => Err(ExecError::Signal {
            pid,
            signal: sig.as_str(),
            source,
        }),
    }
}

/// Whether `pid`, once the node's server, has gone: exited and reaped or a zombie, or reused
/// by another program. A process that is exiting has already dropped its command line (so it
/// no longer looks like the server) but may still hold its files and listening sockets.
fn gone(pid: i32, server: &Server) -> bool {
    if !pid_alive(pid) {
        return true;
    }
    let exiting = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty());
    !exiting && !is_our_server(pid, server)
}

/// Poll until `pid` is [`gone`], at most `limit`. True when gone.
async fn wait_gone(pid: i32, server: &Server, limit: Duration) -> bool {
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        if gone(pid, server) {
            return true;
        }
        let waited = started.elapsed();
        if waited >= limit {
            return false;
        }
        tokio::time::sleep(delay.min(limit - waited)).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

fn remove_pid_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed stale pid file");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ExecError::io("remove stale pid file", path, e)),
    }
}

fn split_argv(home: &Path, argv: &[String]) -> Result<(PathBuf, Vec<String>)> {
    let invalid = |reason: &str| ExecError::InvalidCommand {
        home: home.to_path_buf(),
        reason: reason.to_string(),
    };
    let (first, rest) = argv.split_first().ok_or_else(|| invalid("empty argv"))?;
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("NUL byte in argv"));
    }
    if first.is_empty() {
        return Err(invalid("empty program"));
    }
    let program = Path::new(first);
    let program = if program.is_absolute() {
        program.to_path_buf()
    } else {
        home.join(program)
    };
    Ok((program, rest.to_vec()))
}

/// Gives `file` (in `home`) to the owner of `home` when they differ and the agent is root:
/// the node's tree belongs to its `run_as` user, the agent's files in it too.
fn give_to_home_owner(file: &File, home: &Path, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let owner = std::fs::metadata(home).map_err(|e| ExecError::io("stat", home, e))?;
    let mine = file
        .metadata()
        .map_err(|e| ExecError::io("stat", path, e))?;
    if (mine.uid(), mine.gid()) != (owner.uid(), owner.gid()) {
        nix::unistd::fchown(
            file,
            Some(nix::unistd::Uid::from_raw(owner.uid())),
            Some(nix::unistd::Gid::from_raw(owner.gid())),
        )
        .map_err(|e| ExecError::io("chown", path, e.into()))?;
    }
    Ok(())
}

/// An exclusive `flock` on `<home>/.apimctl-node.lock` (owned like the home), released on drop.
struct NodeLock {
    _lock: nix::fcntl::Flock<File>,
}

impl NodeLock {
    fn acquire(home: &Path) -> Result<Self> {
        let path = home.join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| ExecError::io("open node lock", &path, e))?;
        give_to_home_owner(&f, home, &path)?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(NodeLock { _lock: l }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(ExecError::NodeBusy {
                home: home.to_path_buf(),
                lock: path,
            }),
            Err((_, e)) => Err(ExecError::io("lock", &path, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_program_resolves_against_the_home() {
        let (p, a) = split_argv(
            Path::new("/opt/n1"),
            &["bin/server.sh".into(), "start".into()],
        )
        .unwrap();
        assert_eq!(p, PathBuf::from("/opt/n1/bin/server.sh"));
        assert_eq!(a, vec!["start".to_string()]);
        assert!(split_argv(Path::new("/x"), &[]).is_err());
        assert!(split_argv(Path::new("/x"), &["a\0b".into()]).is_err());
    }
}
