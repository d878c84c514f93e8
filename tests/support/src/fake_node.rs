//! A fake WSO2 node for the agent's process and health tests: a home with a start script that
//! keeps the real contract, recognised by the process identity the controller sends for WSO2
//! (the catalogue's).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use apim_agent::exec::process::{self, PidFileState, Server, StartSpec, StopSpec};
use apim_plan::catalogue::layout::{READY_LINE, SERVER_PROCESS};
use tempfile::TempDir;

/// The line Carbon logs when startup has finished.
pub const CARBON_STARTED: &str = READY_LINE;
/// The pid file WSO2 writes in its home.
pub const PID_FILE: &str = SERVER_PROCESS.pid_file;
/// The JVM main class of every Carbon server.
pub const BOOTSTRAP_CLASS: &str = SERVER_PROCESS.main_class;
/// The argument that names a Carbon server's home.
pub const HOME_ARG_PREFIX: &str = SERVER_PROCESS.home_arg_prefix;

/// A fake WSO2 start script with the real contract: `start` nohups `run` and returns at once,
/// `run` writes its own pid to wso2carbon.pid, logs the started line and runs until TERM;
/// `stop` sends TERM to the pid. `FAKE_MODE` selects misbehaviours.
const FAKE_SCRIPT: &str = r#"#!/bin/sh
CARBON_HOME=$(cd "$(dirname "$0")/.." && pwd)
PID_FILE="$CARBON_HOME/wso2carbon.pid"
LOG="$CARBON_HOME/repository/logs/wso2carbon.log"
cmd=""
for a in "$@"; do case "$a" in start|stop|run) cmd="$a";; esac; done
case "$cmd" in
start)
  echo start >> "$CARBON_HOME/starts.txt"
  env > "$CARBON_HOME/start-env.txt"
  for a in "$@"; do printf '%s\n' "$a"; done > "$CARBON_HOME/args.txt"
  echo "Starting fake WSO2"
  case "$FAKE_MODE" in
    fail) echo "boom: cannot start" >&2; exit 3 ;;
    hang) sleep 30; exit 0 ;;
    no-start) exit 0 ;;
    die) sh -c 'exit 0' & p=$!; wait $p; echo $p > "$PID_FILE"; exit 0 ;;
  esac
  nohup sh "$CARBON_HOME/bin/fake.sh" run >/dev/null 2>&1 &
  exit 0 ;;
stop)
  echo stop >> "$CARBON_HOME/stops.txt"
  kill -TERM "$(cat "$PID_FILE")"
  exit 0 ;;
run)
  mkdir -p "$CARBON_HOME/repository/logs"
  if [ "$FAKE_MODE" = ignore-term ]; then
    trap '' TERM
  else
    trap 'echo "INFO - Halting fake server" >> "$LOG"; exit 0' TERM
  fi
  echo $$ > "$PID_FILE"
  echo "TID: [-1234] [] [2024-01-01 00:00:00,000]  INFO {StartupFinalizerServiceComponent} - $STARTED_LINE" >> "$LOG"
  while :; do sleep 1; done ;;
esac
"#;

/// A node home with the fake script; kills a server left running when dropped.
pub struct FakeNode {
    /// The temp dir holding the home.
    pub dir: TempDir,
    /// The node's carbon home (`bin/fake.sh`, `repository/logs/`).
    pub home: PathBuf,
}

impl Default for FakeNode {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNode {
    /// A fresh home with the fake script.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("carbon");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::create_dir_all(home.join("repository/logs")).unwrap();
        let script = home.join("bin/fake.sh");
        std::fs::write(&script, FAKE_SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeNode { dir, home }
    }

    /// How the agent recognises this node's server: what the controller sends for WSO2.
    pub fn server(&self) -> Server {
        Server::new(&self.home, PID_FILE, BOOTSTRAP_CLASS, HOME_ARG_PREFIX)
    }

    /// How the agent starts it; `mode` is the script's `FAKE_MODE` (empty: behave).
    pub fn start_spec(&self, mode: &str) -> StartSpec {
        let mut s = StartSpec::new(
            self.server(),
            vec!["bin/fake.sh".into(), "start".into()],
            "/usr/lib/jvm/fake-jdk",
        );
        // What the controller sends in the node's environment.
        s.env.insert(
            SERVER_PROCESS.home_env.into(),
            self.home.display().to_string(),
        );
        s.env.insert("FAKE_MODE".into(), mode.into());
        s.env
            .insert("STARTED_LINE".into(), format!("{CARBON_STARTED} 1 sec"));
        s.pid_timeout = Duration::from_secs(30);
        s
    }

    /// How the agent stops it.
    pub fn stop_spec(&self, mode: &str) -> StopSpec {
        let mut s = StopSpec::new(
            self.server(),
            vec!["bin/fake.sh".into(), "stop".into()],
            "/usr/lib/jvm/fake-jdk",
            Duration::from_secs(30),
        );
        s.env.insert(
            SERVER_PROCESS.home_env.into(),
            self.home.display().to_string(),
        );
        s.env.insert("FAKE_MODE".into(), mode.into());
        s
    }

    /// The carbon log.
    pub fn log(&self) -> PathBuf {
        self.home.join("repository/logs/wso2carbon.log")
    }

    /// How many times the script was asked to start.
    pub fn starts(&self) -> usize {
        std::fs::read_to_string(self.home.join("starts.txt"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        if let Ok(PidFileState::Alive(pid)) = process::pid_file_state(&self.server()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = &self.dir;
    }
}
