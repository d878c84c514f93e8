//! Processes: start once, stop with escalation, pid-file truth, the cleared environment, run-as.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Mutex;
use std::time::Duration;

use apim_agent::exec::ExecError;
use apim_agent::exec::process::{
    self, CommandSpec, PidFileState, ProcessRunner, ScriptOutput, StartOutcome, StopOutcome,
    StopVia, TokioRunner,
};

use apim_testkit::fake_node::FakeNode;

#[tokio::test]
async fn start_runs_once_and_a_second_start_sees_it_alive() {
    let node = FakeNode::new();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::None
    );
    let out = process::start(&TokioRunner, &node.start_spec("normal"))
        .await
        .unwrap();
    let StartOutcome::Started { pid, output } = out else {
        panic!("{out:?}")
    };
    assert!(output.status.success());
    assert!(
        output.output.contains("Starting fake WSO2"),
        "script output captured: {output:?}"
    );
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Alive(pid)
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains(&*node.home.to_string_lossy()));

    let again = process::start(&TokioRunner, &node.start_spec("normal"))
        .await
        .unwrap();
    assert_eq!(again, StartOutcome::AlreadyRunning { pid });
    assert_eq!(node.starts(), 1, "the script ran once");

    let stopped = process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
    assert_eq!(
        stopped,
        StopOutcome::Stopped {
            pid,
            via: StopVia::Script
        }
    );
    assert!(!process::pid_alive(pid));
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Stale(pid)
    );
    assert!(
        std::fs::read_to_string(node.log())
            .unwrap()
            .contains("Halting fake server")
    );
    // Stopping again: nothing runs, the stale file goes.
    assert_eq!(
        process::stop(&TokioRunner, &node.stop_spec("normal"))
            .await
            .unwrap(),
        StopOutcome::NotRunning
    );
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::None
    );
}

#[tokio::test]
async fn concurrent_starts_of_one_node_start_it_once() {
    let node = FakeNode::new();
    let spec = node.start_spec("normal");
    let (a, b) = tokio::join!(
        process::start(&TokioRunner, &spec),
        process::start(&TokioRunner, &spec)
    );
    let started = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Ok(StartOutcome::Started { .. })))
        .count();
    let busy = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(ExecError::NodeBusy { .. })))
        .count();
    assert_eq!((started, busy), (1, 1), "{a:?} / {b:?}");
    assert_eq!(node.starts(), 1);
    process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
}

#[tokio::test]
async fn script_gets_a_cleared_env_and_literal_argv() {
    let node = FakeNode::new();
    let mut spec = node.start_spec("normal");
    let evil = "-Dx=$(touch pwned); echo `id` > pwned2".to_string();
    spec.argv = vec![
        "bin/fake.sh".into(),
        "-Dprofile=gateway-worker".into(),
        evil.clone(),
        "start".into(),
    ];
    // A JAVA_OPTS with spaces (as the controller renders heap and options) arrives as one
    // variable, and nothing in it is evaluated on the way.
    let java_opts = "-Xms64m -Xmx64m -XX:+UseG1GC -Dx=$(touch pwned3)";
    spec.env.insert("JAVA_OPTS".into(), java_opts.into());
    process::start(&TokioRunner, &spec).await.unwrap();
    let args = std::fs::read_to_string(node.home.join("args.txt")).unwrap();
    assert_eq!(args, format!("-Dprofile=gateway-worker\n{evil}\nstart\n"));
    assert!(!node.home.join("pwned").exists() && !node.home.join("pwned2").exists());

    let env = std::fs::read_to_string(node.home.join("start-env.txt")).unwrap();
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    let mut keys: Vec<&str> = vars
        .keys()
        .copied()
        .filter(|k| !shell_own.contains(k))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "CARBON_HOME",
            "FAKE_MODE",
            "HOME",
            "JAVA_HOME",
            "JAVA_OPTS",
            "LANG",
            "LOGNAME",
            "PATH",
            "STARTED_LINE",
            "USER"
        ],
        "nothing of the agent's own environment leaks"
    );
    assert_eq!(vars["JAVA_OPTS"], java_opts);
    assert!(!node.home.join("pwned3").exists());
    assert_eq!(vars["JAVA_HOME"], "/usr/lib/jvm/fake-jdk");
    assert_eq!(vars["CARBON_HOME"], node.home.to_str().unwrap());
    assert!(vars["PATH"].starts_with("/usr/lib/jvm/fake-jdk/bin:"));
    process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_escalates_to_sigterm_and_sigkill() {
    // No stop script: the agent's SIGTERM does it.
    let node = FakeNode::new();
    let StartOutcome::Started { pid, .. } =
        process::start(&TokioRunner, &node.start_spec("normal"))
            .await
            .unwrap()
    else {
        panic!()
    };
    let mut spec = node.stop_spec("normal");
    spec.stop_argv.clear();
    assert_eq!(
        process::stop(&TokioRunner, &spec).await.unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Sigterm
        }
    );

    // TERM ignored: the script's stop and the agent's TERM fail, SIGKILL works.
    let node = FakeNode::new();
    let StartOutcome::Started { pid, .. } =
        process::start(&TokioRunner, &node.start_spec("ignore-term"))
            .await
            .unwrap()
    else {
        panic!()
    };
    let mut spec = node.stop_spec("ignore-term");
    spec.grace = Duration::from_millis(300);
    spec.term_grace = Duration::from_millis(300);
    assert_eq!(
        process::stop(&TokioRunner, &spec).await.unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Sigkill
        }
    );
    assert!(!process::pid_alive(pid));
    assert_eq!(
        std::fs::read_to_string(node.home.join("stops.txt")).unwrap(),
        "stop\n"
    );
}

#[tokio::test]
async fn stale_and_foreign_pid_files_do_not_block_a_start() {
    let node = FakeNode::new();
    let pid_file = node.home.join("wso2carbon.pid");
    // A pid that is alive but not this node (pid 1).
    std::fs::write(&pid_file, "1\n").unwrap();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Stale(1)
    );
    // A dead pid.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id() as i32;
    child.wait().unwrap();
    std::fs::write(&pid_file, format!("{dead}")).unwrap();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Stale(dead)
    );
    std::fs::write(&pid_file, "not a pid").unwrap();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Garbage
    );

    let out = process::start(&TokioRunner, &node.start_spec("normal"))
        .await
        .unwrap();
    assert!(matches!(out, StartOutcome::Started { .. }), "{out:?}");
    process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
}

#[tokio::test]
async fn start_failures_are_reported_with_the_script_output() {
    let node = FakeNode::new();
    let err = process::start(&TokioRunner, &node.start_spec("fail"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::ScriptFailed { output, status, .. } if output.contains("boom: cannot start") && status == "exit code 3"),
        "{err}"
    );

    let mut spec = node.start_spec("no-start");
    spec.pid_timeout = Duration::from_millis(300);
    let err = process::start(&TokioRunner, &spec).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::NoPidAfterStart { output, .. } if output.contains("Starting fake WSO2")),
        "{err}"
    );

    let err = process::start(&TokioRunner, &node.start_spec("die"))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::DiedAfterStart { .. }), "{err}");

    let mut spec = node.start_spec("hang");
    spec.script_timeout = Duration::from_secs(2);
    let err = process::start(&TokioRunner, &spec).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::ScriptTimeout { output, .. } if output.contains("Starting fake WSO2")),
        "{err}"
    );

    let mut spec = node.start_spec("normal");
    spec.argv = vec!["bin/missing.sh".into(), "start".into()];
    assert!(matches!(
        process::start(&TokioRunner, &spec).await,
        Err(ExecError::Spawn { .. })
    ));
}

/// Records the command and fails it, so the test sees what the agent would run.
#[derive(Default)]
struct RecordingRunner(Mutex<Vec<CommandSpec>>);

impl ProcessRunner for RecordingRunner {
    async fn run(&self, cmd: &CommandSpec) -> apim_agent::exec::Result<ScriptOutput> {
        self.0.lock().unwrap().push(cmd.clone());
        Ok(ScriptOutput {
            status: process::ExitInfo {
                code: Some(1),
                signal: None,
            },
            output: "recorded".into(),
        })
    }
}

#[tokio::test]
async fn run_as_switches_user_only_when_root() {
    let node = FakeNode::new();
    let mut spec = node.start_spec("normal");
    spec.run_as = Some("nobody".into());
    let rec = RecordingRunner::default();
    let res = process::start(&rec, &spec).await;
    if nix::unistd::geteuid().is_root() {
        assert!(
            matches!(res, Err(ExecError::ScriptFailed { .. })),
            "{res:?}"
        );
        let cmd = rec.0.lock().unwrap()[0].clone();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let cr = cmd.credentials.clone().expect("credentials");
        assert_eq!((cr.uid, cr.gid), (nobody.uid.as_raw(), nobody.gid.as_raw()));
        assert_eq!(cmd.env["USER"], "nobody");
        assert_eq!(cmd.env["HOME"], nobody.dir.to_string_lossy());
        assert!(
            !format!("{cmd:?}").contains("1 sec"),
            "Debug shows env keys, not values"
        );
    } else {
        assert!(
            matches!(res, Err(ExecError::CannotSwitchUser { .. })),
            "{res:?}"
        );
        assert!(rec.0.lock().unwrap().is_empty());
    }
    spec.run_as = Some("no-such-user-apimctl".into());
    assert!(matches!(
        process::start(&rec, &spec).await,
        Err(ExecError::UnknownUser { .. })
    ));
}

#[tokio::test]
async fn run_as_really_runs_the_server_as_that_user() {
    let node = FakeNode::new();
    if !nix::unistd::geteuid().is_root() {
        let mut spec = node.start_spec("normal");
        spec.run_as = Some("nobody".into());
        let res = process::start(&TokioRunner, &spec).await;
        assert!(
            matches!(res, Err(ExecError::CannotSwitchUser { .. })),
            "{res:?}"
        );
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // nobody must reach and own its CARBON_HOME, as after StagedTree::chown_blocking.
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in [
        node.home.clone(),
        node.home.join("bin"),
        node.home.join("repository"),
        node.log().parent().unwrap().to_path_buf(),
    ] {
        nix::unistd::chown(&p, Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
    let mut spec = node.start_spec("normal");
    spec.run_as = Some("nobody".into());
    let StartOutcome::Started { pid, .. } = process::start(&TokioRunner, &spec).await.unwrap()
    else {
        panic!()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(uids.iter().all(|u| *u == nobody.uid.as_raw()), "{uid_line}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim(), "Groups:", "supplementary groups dropped");
    // The agent's lock in the home belongs to the home's owner, like the rest of the tree.
    let lock = std::fs::metadata(node.home.join(process::LOCK_FILE)).unwrap();
    assert_eq!(
        (lock.uid(), lock.gid()),
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    );
    let mut stop = node.stop_spec("normal");
    stop.run_as = Some("nobody".into());
    assert_eq!(
        process::stop(&TokioRunner, &stop).await.unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Script
        }
    );
}
