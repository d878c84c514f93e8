//! Running one command to completion: the [`ProcessRunner`] seam and the real runner.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::exec::error::{ExecError, Result};

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
    /// Working directory (the node's home).
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
