//! The harness's processes: running commands, killing children and whatever a simulated
//! machine left running.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::{ClusterError, Result, io};

pub(super) fn command_error(command: &str, out: &Output) -> ClusterError {
    ClusterError::Command {
        command: command.to_string(),
        status: out.status.code(),
        stderr: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

pub(super) fn run_ok(mut cmd: Command) -> Result<Output> {
    let line = format!("{:?}", cmd);
    let out = cmd
        .output()
        .map_err(io("run", Path::new(cmd.get_program())))?;
    if !out.status.success() {
        return Err(command_error(&line, &out));
    }
    Ok(out)
}

pub(super) fn kill_child(mut c: Child) {
    if let Ok(pid) = i32::try_from(c.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub(super) fn is_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // A zombie still answers kill(0); look at its state too.
    if kill(Pid::from_raw(p), None).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Every file called `name` under `dir` (recursively, not following symlinks).
pub fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name() == name {
                out.push(e.path());
            }
        }
    }
    out
}

/// SIGKILLs every process whose command line mentions `root` (agents, controller, and the
/// simulated servers, whose `java` lives in the machines' fake JDKs under `root`) or that runs
/// in a folder under `root` (a balancer's NGINX). Only
/// processes started for this cluster carry its unique root path.
pub fn kill_processes_under(root: &Path) {
    let needle = root.to_string_lossy().into_owned();
    if needle.len() < 8 {
        return;
    }
    let me = std::process::id();
    for _ in 0..3 {
        let mut found = false;
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            // A daemon started in a folder of the cluster (a load balancer's NGINX, whose
            // command line names relative paths only) is the cluster's too.
            let cwd_inside =
                std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(root));
            if (cmdline.contains(&needle) || cwd_inside) && is_alive(pid) {
                found = true;
                if let Ok(p) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
        }
        if !found {
            return;
        }
        // Give the kernel a moment to reap before looking again.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a cluster left running in `root` (the quickstart's `--down`): the processes whose
/// pids are in `<root>/pids/`, then anything else whose command line mentions `root`.
pub fn stop_detached(root: &Path) -> Result<usize> {
    let root = root.canonicalize().map_err(io("resolve", root))?;
    let mut stopped = 0;
    if let Ok(rd) = std::fs::read_dir(root.join("pids")) {
        for e in rd.flatten() {
            let pid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid
                && is_alive(pid.unsigned_abs())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*root.to_string_lossy()))
            {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
                stopped += 1;
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    kill_processes_under(&root);
    Ok(stopped)
}

impl super::Cluster {
    fn log_file(&self, name: &str) -> Result<std::fs::File> {
        let p = self.root().join("logs").join(format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io("open", &p))
    }

    pub(super) fn spawn(&self, name: &str, mut cmd: Command) -> Result<Child> {
        let log = self.log_file(name)?;
        let err = log
            .try_clone()
            .map_err(io("open", &self.root().join("logs")))?;
        cmd.stdout(log);
        self.spawn_logged(name, cmd, err)
    }

    /// [`Cluster::spawn`] with its stdout piped to the caller (stderr to its log).
    pub(super) fn spawn_reporting(&self, name: &str, mut cmd: Command) -> Result<Child> {
        let log = self.log_file(name)?;
        cmd.stdout(Stdio::piped());
        self.spawn_logged(name, cmd, log)
    }

    fn spawn_logged(&self, name: &str, mut cmd: Command, err: std::fs::File) -> Result<Child> {
        cmd.stdin(Stdio::null())
            .stderr(err)
            .process_group(0)
            .env("RUST_LOG", "info");
        let child = cmd.spawn().map_err(io("spawn", Path::new(name)))?;
        let pids = self.root().join("pids");
        std::fs::create_dir_all(&pids).map_err(io("create", &pids))?;
        let pid_file = pids.join(format!("{name}.pid"));
        std::fs::write(&pid_file, format!("{}\n", child.id())).map_err(io("write", &pid_file))?;
        Ok(child)
    }
}
