//! Start, stop and liveness of one WSO2 node through its own script.
//!
//! The contract of a WSO2 start script (`api-manager.sh`, `wso2server.sh`, `api-cp.sh`,
//! `gateway.sh`, `traffic-manager.sh`, …): `<script> [-Dk=v …] start` nohups the server with its
//! output discarded and returns at once; the JVM writes **its own** pid to
//! `$CARBON_HOME/wso2carbon.pid` at the very start of `main`; nothing ever deletes that file,
//! so stale files are normal. `<script> stop` sends TERM to that pid and returns without
//! waiting. The agent builds on that contract and adds what it lacks:
//!
//! * [`pid_file_state`] tells `None | Alive | Stale | Garbage` — a pid that is dead, a zombie,
//!   or alive but not this node's server (`/proc/<pid>/cmdline` must name this CARBON_HOME as a
//!   path, or be a Carbon `Bootstrap` without any `-Dcarbon.home`) is stale.
//! * [`start`] never starts a node that is alive (no double start), removes a stale pid file
//!   first (the script's own `ps -p` check would be fooled by a reused pid), runs the script
//!   with an argv array (never a shell string) and a cleared environment (a minimal safe set +
//!   `JAVA_HOME` + `CARBON_HOME` + the spec's env), as the `run_as` user when the agent is root,
//!   captures its output, and returns only once a *new* live pid is in the pid file — so a
//!   second `start` right after the first sees `Alive`. A per-node `flock` serialises starts
//!   and stops of one node across tasks and processes.
//! * [`stop`] runs the script's stop, waits (bounded) for the pid to go, then sends SIGTERM,
//!   waits again, then SIGKILL, and reports which step worked.
//!
//! The script runs through a [`ProcessRunner`] so tests can observe the command the agent
//! builds; [`TokioRunner`] is the real one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, User};

use crate::exec::error::{ExecError, Result};

/// The pid file WSO2 writes in CARBON_HOME.
pub const PID_FILE: &str = "wso2carbon.pid";
/// The JVM main class of every Carbon server.
pub const BOOTSTRAP_CLASS: &str = "org.wso2.carbon.bootstrap.Bootstrap";
/// The per-node lock file the agent keeps in CARBON_HOME while starting or stopping it.
pub const LOCK_FILE: &str = ".apimctl-node.lock";
/// `PATH` given to node scripts (after `$JAVA_HOME/bin`).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of a script's combined output is kept.
pub const OUTPUT_TAIL: u64 = 64 * 1024;

/// The identity a command runs as after dropping root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id (supplementary groups are dropped).
    pub gid: u32,
}

/// A fully resolved command for a [`ProcessRunner`]. Its `Debug` shows environment *keys*
/// only: values may be secrets.
#[derive(Clone)]
pub struct CommandSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// Working directory (the node's CARBON_HOME).
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// Switch to this user before exec (only set when the agent is root).
    pub credentials: Option<Credentials>,
    /// Kill the command (and its process group) after this long.
    pub timeout: Duration,
}

impl fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal ended it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "signal {s}"),
            (None, None) => f.write_str("unknown status"),
        }
    }
}

/// What a script printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutput {
    /// Exit status.
    pub status: ExitInfo,
    /// The last [`OUTPUT_TAIL`] bytes of stdout and stderr, interleaved as written.
    pub output: String,
}

/// Runs a command to completion. The seam between the agent's logic and the OS.
pub trait ProcessRunner: Send + Sync {
    /// Run `cmd`, wait for it (at most `cmd.timeout`), and return its status and output.
    fn run(&self, cmd: &CommandSpec) -> impl Future<Output = Result<ScriptOutput>> + Send;
}

/// The real runner: `tokio::process`, a new process group, output captured in an unlinked
/// temp file (not a pipe: the server the script nohups may keep inherited descriptors open,
/// and a pipe would then never reach EOF).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioRunner;

impl ProcessRunner for TokioRunner {
    async fn run(&self, cmd: &CommandSpec) -> Result<ScriptOutput> {
        let mut capture = tempfile::tempfile()
            .map_err(|e| ExecError::io("create output capture for", &cmd.program, e))?;
        let out = capture
            .try_clone()
            .map_err(|e| ExecError::io("duplicate output capture for", &cmd.program, e))?;
        let err = capture
            .try_clone()
            .map_err(|e| ExecError::io("duplicate output capture for", &cmd.program, e))?;
        let mut c = tokio::process::Command::new(&cmd.program);
        c.args(&cmd.args)
            .current_dir(&cmd.cwd)
            .env_clear()
            .envs(&cmd.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cr) = &cmd.credentials {
            // std drops supplementary groups when root sets a uid.
            c.uid(cr.uid).gid(cr.gid);
        }
        let mut child = c.spawn().map_err(|source| ExecError::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        tracing::debug!(cmd = ?cmd, pid = ?pgid, "spawned");
        let status = match tokio::time::timeout(cmd.timeout, child.wait()).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => return Err(ExecError::io("wait for", &cmd.program, e)),
            Err(_) => {
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
                let _ = child.kill().await;
                return Err(ExecError::ScriptTimeout {
                    program: cmd.program.clone(),
                    args: cmd.args.clone(),
                    timeout: cmd.timeout,
                    output: read_tail(&mut capture),
                });
            }
        };
        use std::os::unix::process::ExitStatusExt;
        Ok(ScriptOutput {
            status: ExitInfo {
                code: status.code(),
                signal: status.signal(),
            },
            output: read_tail(&mut capture),
        })
    }
}

fn read_tail(f: &mut File) -> String {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(OUTPUT_TAIL);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

// ---------------------------------------------------------------------------------------------
// liveness

/// What `wso2carbon.pid` says about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidFileState {
    /// No pid file: the node never started (or the file was cleaned).
    None,
    /// The pid is alive and is this node's server.
    Alive(i32),
    /// The pid is dead, a zombie, or alive but some other program.
    Stale(i32),
    /// The file does not hold a positive pid (e.g. caught half-written).
    Garbage,
}

/// The pid file of the node at `carbon_home`.
pub fn pid_file_path(carbon_home: &Path) -> PathBuf {
    carbon_home.join(PID_FILE)
}

/// Read the node's pid file and check the pid (see the module docs for "ours").
pub fn pid_file_state(carbon_home: &Path) -> Result<PidFileState> {
    let path = pid_file_path(carbon_home);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PidFileState::None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(PidFileState::Garbage),
        Err(e) => return Err(ExecError::io("read pid file", &path, e)),
    };
    Ok(match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => {
            if is_our_server(pid, carbon_home) {
                PidFileState::Alive(pid)
            } else {
                PidFileState::Stale(pid)
            }
        }
        _ => PidFileState::Garbage,
    })
}

/// Whether `pid` exists and is not a zombie. A pid owned by another user counts as alive.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => !is_zombie(pid),
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S …": comm may hold spaces and parens, so look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X")
}

/// Whether `pid` is alive and is the server of the node at `carbon_home`.
///
/// Its command line must name `carbon_home` as a path (an argument equal to it, or holding it
/// after `=`/`:` and followed by `/`, `:` or the end — so `/opt/n1` never matches
/// `/opt/n10`), or be a Carbon `Bootstrap` with no `-Dcarbon.home` at all. If the command line
/// cannot be read (hidepid), the process is assumed to be ours: a false "alive" only delays a
/// start, a false "stale" would start a second server.
pub fn is_our_server(pid: i32, carbon_home: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return true;
    };
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    let mut homes = vec![carbon_home.as_os_str().as_encoded_bytes().to_vec()];
    if let Ok(c) = carbon_home.canonicalize() {
        homes.push(c.as_os_str().as_encoded_bytes().to_vec());
    }
    let names_home = args.iter().any(|a| {
        homes
            .iter()
            .any(|h| contains_path_token(a, h.strip_suffix(b"/").unwrap_or(h)))
    });
    if names_home {
        return true;
    }
    let bootstrap = args.iter().any(|a| *a == BOOTSTRAP_CLASS.as_bytes());
    let has_home_prop = args.iter().any(|a| a.starts_with(b"-Dcarbon.home="));
    bootstrap && !has_home_prop
}

fn contains_path_token(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return false;
    }
    (0..=hay.len() - needle.len()).any(|i| {
        hay[i..].starts_with(needle)
            && (i == 0 || matches!(hay[i - 1], b'=' | b':'))
            && hay
                .get(i + needle.len())
                .is_none_or(|c| matches!(c, b'/' | b':'))
    })
}

// ---------------------------------------------------------------------------------------------
// start / stop

/// What to start and how.
#[derive(Clone)]
pub struct StartSpec {
    /// The node's CARBON_HOME (the script's cwd).
    pub carbon_home: PathBuf,
    /// The script and its arguments, e.g. `["bin/api-manager.sh", "-Dprofile=gateway-worker",
    /// "start"]`; a relative program is resolved against `carbon_home`.
    pub argv: Vec<String>,
    /// Extra environment from the spec (e.g. `JAVA_OPTS`); may hold secrets, never logged.
    pub env: BTreeMap<String, String>,
    /// The JDK to run the server with.
    pub java_home: PathBuf,
    /// Run the script as this user (the agent must be root, or already that user).
    pub run_as: Option<String>,
    /// How long the start script itself may take (it normally returns at once).
    pub script_timeout: Duration,
    /// How long to wait for a live pid in `wso2carbon.pid` after the script returned.
    pub pid_timeout: Duration,
}

impl fmt::Debug for StartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartSpec")
            .field("carbon_home", &self.carbon_home)
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
    pub fn new(
        carbon_home: impl Into<PathBuf>,
        argv: Vec<String>,
        java_home: impl Into<PathBuf>,
    ) -> Self {
        StartSpec {
            carbon_home: carbon_home.into(),
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
        /// The server's pid (from `wso2carbon.pid`).
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
    /// The node's CARBON_HOME.
    pub carbon_home: PathBuf,
    /// The script's stop command, e.g. `["bin/api-manager.sh", "stop"]`; empty: signals only.
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
            .field("carbon_home", &self.carbon_home)
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
        carbon_home: impl Into<PathBuf>,
        stop_argv: Vec<String>,
        java_home: impl Into<PathBuf>,
        grace: Duration,
    ) -> Self {
        StopSpec {
            carbon_home: carbon_home.into(),
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
    let (program, args) = split_argv(&spec.carbon_home, &spec.argv)?;
    let _lock = NodeLock::acquire(&spec.carbon_home)?;
    let pid_file = pid_file_path(&spec.carbon_home);
    match pid_file_state(&spec.carbon_home)? {
        PidFileState::Alive(pid) => {
            tracing::info!(carbon_home = %spec.carbon_home.display(), pid, "already running; not starting");
            return Ok(StartOutcome::AlreadyRunning { pid });
        }
        PidFileState::Stale(_) | PidFileState::Garbage => remove_pid_file(&pid_file)?,
        PidFileState::None => {}
    }
    let run_as = resolve_run_as(spec.run_as.as_deref())?;
    let cmd = CommandSpec {
        program,
        args,
        cwd: spec.carbon_home.clone(),
        env: build_env(&spec.carbon_home, &spec.java_home, &run_as, &spec.env),
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
        match pid_file_state(&spec.carbon_home)? {
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
    let _lock = NodeLock::acquire(&spec.carbon_home)?;
    let pid_file = pid_file_path(&spec.carbon_home);
    let pid = match pid_file_state(&spec.carbon_home)? {
        PidFileState::Alive(pid) => pid,
        PidFileState::Stale(_) | PidFileState::Garbage => {
            remove_pid_file(&pid_file)?;
            return Ok(StopOutcome::NotRunning);
        }
        PidFileState::None => return Ok(StopOutcome::NotRunning),
    };
    let home = spec.carbon_home.as_path();
    if !spec.stop_argv.is_empty() {
        let (program, args) = split_argv(home, &spec.stop_argv)?;
        let run_as = resolve_run_as(spec.run_as.as_deref())?;
        let cmd = CommandSpec {
            program,
            args,
            cwd: spec.carbon_home.clone(),
            env: build_env(home, &spec.java_home, &run_as, &spec.env),
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
        if wait_gone(pid, home, spec.grace).await {
            return Ok(StopOutcome::Stopped {
                pid,
                via: StopVia::Script,
            });
        }
    }
    signal_ours(pid, home, Signal::SIGTERM)?;
    if wait_gone(pid, home, spec.term_grace).await {
        return Ok(StopOutcome::Stopped {
            pid,
            via: StopVia::Sigterm,
        });
    }
    tracing::warn!(pid, "server ignored SIGTERM; sending SIGKILL");
    signal_ours(pid, home, Signal::SIGKILL)?;
    if wait_gone(pid, home, spec.kill_wait).await {
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
fn signal_ours(pid: i32, carbon_home: &Path, sig: Signal) -> Result<()> {
    if !is_our_server(pid, carbon_home) {
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
fn gone(pid: i32, carbon_home: &Path) -> bool {
    if !pid_alive(pid) {
        return true;
    }
    let exiting = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty());
    !exiting && !is_our_server(pid, carbon_home)
}

/// Poll until `pid` is [`gone`], at most `limit`. True when gone.
async fn wait_gone(pid: i32, carbon_home: &Path, limit: Duration) -> bool {
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        if gone(pid, carbon_home) {
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

fn split_argv(carbon_home: &Path, argv: &[String]) -> Result<(PathBuf, Vec<String>)> {
    let invalid = |reason: &str| ExecError::InvalidCommand {
        carbon_home: carbon_home.to_path_buf(),
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
        carbon_home.join(program)
    };
    Ok((program, rest.to_vec()))
}

/// Who the command runs as: a switch (root → user) and the identity for `HOME`/`USER`.
struct RunAs {
    switch_to: Option<Credentials>,
    user: Option<String>,
    home: Option<PathBuf>,
}

fn resolve_run_as(run_as: Option<&str>) -> Result<RunAs> {
    let euid = nix::unistd::geteuid();
    let Some(name) = run_as else {
        let me = User::from_uid(euid).ok().flatten();
        return Ok(RunAs {
            switch_to: None,
            user: me.as_ref().map(|u| u.name.clone()),
            home: me.map(|u| u.dir),
        });
    };
    let u = User::from_name(name)
        .map_err(|source| ExecError::UserLookup {
            user: name.to_string(),
            source,
        })?
        .ok_or_else(|| ExecError::UnknownUser {
            user: name.to_string(),
        })?;
    let switch_to = if euid.is_root() {
        Some(Credentials {
            user: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    } else if u.uid == euid {
        None
    } else {
        return Err(ExecError::CannotSwitchUser {
            user: name.to_string(),
            euid: euid.as_raw(),
        });
    };
    Ok(RunAs {
        switch_to,
        user: Some(name.to_string()),
        home: Some(u.dir),
    })
}

fn build_env(
    carbon_home: &Path,
    java_home: &Path,
    run_as: &RunAs,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        format!("{}:{SAFE_PATH}", java_home.join("bin").display()),
    );
    env.insert("LANG".to_string(), "C.UTF-8".to_string());
    env.insert("JAVA_HOME".to_string(), java_home.display().to_string());
    env.insert("CARBON_HOME".to_string(), carbon_home.display().to_string());
    env.insert(
        "HOME".to_string(),
        run_as
            .home
            .as_deref()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string(),
    );
    if let Some(u) = &run_as.user {
        env.insert("USER".to_string(), u.clone());
        env.insert("LOGNAME".to_string(), u.clone());
    }
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// An exclusive `flock` on `<carbon_home>/.apimctl-node.lock`, released on drop.
struct NodeLock {
    _lock: nix::fcntl::Flock<File>,
}

impl NodeLock {
    fn acquire(carbon_home: &Path) -> Result<Self> {
        let path = carbon_home.join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| ExecError::io("open node lock", &path, e))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(NodeLock { _lock: l }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(ExecError::NodeBusy {
                carbon_home: carbon_home.to_path_buf(),
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
    fn path_tokens_do_not_match_prefixes() {
        let h = b"/opt/wso2/n1";
        assert!(contains_path_token(b"/opt/wso2/n1", h));
        assert!(contains_path_token(b"-Dcarbon.home=/opt/wso2/n1", h));
        assert!(contains_path_token(b"/opt/wso2/n1/bin/x.sh", h));
        assert!(contains_path_token(b"a.jar:/opt/wso2/n1/lib/b.jar", h));
        assert!(!contains_path_token(b"/opt/wso2/n10/bin/x.sh", h));
        assert!(!contains_path_token(b"-Dcarbon.home=/opt/wso2/n10", h));
        assert!(!contains_path_token(b"x/opt/wso2/n1", h));
    }

    #[test]
    fn relative_program_resolves_against_carbon_home() {
        let (p, a) = split_argv(
            Path::new("/opt/n1"),
            &["bin/api-manager.sh".into(), "start".into()],
        )
        .unwrap();
        assert_eq!(p, PathBuf::from("/opt/n1/bin/api-manager.sh"));
        assert_eq!(a, vec!["start".to_string()]);
        assert!(split_argv(Path::new("/x"), &[]).is_err());
        assert!(split_argv(Path::new("/x"), &["a\0b".into()]).is_err());
    }

    #[test]
    fn env_is_minimal_and_spec_wins() {
        let run_as = RunAs {
            switch_to: None,
            user: Some("wso2".into()),
            home: Some("/home/wso2".into()),
        };
        let extra = BTreeMap::from([("JAVA_OPTS".to_string(), "-Xmx2g".to_string())]);
        let env = build_env(Path::new("/opt/n1"), Path::new("/jdk"), &run_as, &extra);
        let keys: Vec<_> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "CARBON_HOME",
                "HOME",
                "JAVA_HOME",
                "JAVA_OPTS",
                "LANG",
                "LOGNAME",
                "PATH",
                "USER"
            ]
        );
        assert_eq!(env["PATH"], format!("/jdk/bin:{SAFE_PATH}"));
        assert_eq!(env["HOME"], "/home/wso2");
    }

    #[test]
    fn pid_one_is_not_a_node() {
        // Alive (init), but it is not a Carbon server of this home.
        assert!(pid_alive(1));
        assert!(!is_our_server(1, Path::new("/nonexistent/carbon")));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-5));
    }
}
