//! The spec checks of converge that need no process: a node that must run without a process
//! identity, the log check switched off by an empty line.

use std::sync::Arc;

use apim_certs::tls::ControllerEndpoint;
use apim_proto::v1::{
    ArtifactRef, DesiredRun, EnvVar, MachineSpec, NodeSpec, Readiness, ServerProcess,
};

use super::{ExecContext, MachineMemory, NodeExecutor, NodeRecord, NodeTarget};
use crate::daemon::config::AgentConfig;
use crate::daemon::error::DaemonError;
use crate::daemon::fetch::Fetcher;
use crate::daemon::report::StatusBoard;
use crate::exec::unpack::UnpackLimits;

fn executor(dir: &std::path::Path) -> NodeExecutor {
    let endpoint = ControllerEndpoint::parse("127.0.0.1:1").expect("endpoint");
    let mut config = AgentConfig::new(endpoint, "vm-1");
    config.state_dir = dir.join("state");
    config.install_root = dir.join("root");
    let ctx = Arc::new(ExecContext {
        fetcher: Arc::new(Fetcher::new(config.cache_dir(), None, 1)),
        config,
        board: Arc::new(StatusBoard::new()),
        limits: UnpackLimits::default(),
    });
    NodeExecutor::load("n1", ctx).expect("executor")
}

fn spec(desired: DesiredRun) -> NodeSpec {
    NodeSpec {
        name: "n1".into(),
        pack: Some(ArtifactRef {
            sha256: "ab".repeat(32),
            size: 1,
            file_name: "product-1.0.zip".into(),
            top_dir: "product-1.0".into(),
        }),
        install_dir: "/opt/app/n1".into(),
        desired: desired as i32,
        process: Some(ServerProcess {
            pid_file: "server.pid".into(),
            main_class: "app.Main".into(),
            home_arg_prefix: "-Dapp.home=".into(),
            home_env: "APP_HOME".into(),
        }),
        ..NodeSpec::default()
    }
}

#[tokio::test]
async fn a_node_that_must_run_needs_to_know_its_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut exec = executor(dir.path());
    for process in [
        None,
        Some(ServerProcess {
            pid_file: String::new(),
            ..ServerProcess::default()
        }),
    ] {
        let target = NodeTarget {
            generation: 1,
            spec: NodeSpec {
                process,
                ..spec(DesiredRun::Running)
            },
            machine_memory: Default::default(),
            hosts: Vec::new(),
        };
        let err = exec
            .converge(&target, std::future::pending())
            .await
            .expect_err("no process identity");
        assert!(
            matches!(&err, DaemonError::BadSpec { reason, .. } if reason.contains("process.pid_file")),
            "{err}"
        );
    }
    // A pid file outside the home is refused too.
    let mut outside = spec(DesiredRun::Running);
    outside.process.as_mut().unwrap().pid_file = "../server.pid".into();
    let target = NodeTarget {
        generation: 1,
        spec: outside,
        machine_memory: Default::default(),
        hosts: Vec::new(),
    };
    let err = exec
        .converge(&target, std::future::pending())
        .await
        .expect_err("a pid file outside the home");
    assert!(matches!(err, DaemonError::BadSpec { .. }), "{err}");
    // A node that is only stopped needs nothing of the kind.
    let target = NodeTarget {
        generation: 1,
        spec: NodeSpec {
            process: None,
            ..spec(DesiredRun::Stopped)
        },
        machine_memory: Default::default(),
        hosts: Vec::new(),
    };
    let stopped = exec.converge(&target, std::future::pending()).await;
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[test]
fn an_empty_log_line_or_file_disables_the_log_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = executor(dir.path());
    let home = dir.path().join("home");
    let with = |log_file: &str, log_line: &str| NodeSpec {
        readiness: Some(Readiness {
            log_file: log_file.into(),
            log_line: log_line.into(),
            ..Readiness::default()
        }),
        ..spec(DesiredRun::Running)
    };
    let log = |s: &NodeSpec| exec.readiness_log(s, &home).expect("valid");
    assert_eq!(
        log(&with("logs/server.log", "Server started")),
        Some(home.join("logs/server.log"))
    );
    assert_eq!(log(&with("logs/server.log", "")), None);
    assert_eq!(log(&with("", "Server started")), None);
    assert_eq!(log(&spec(DesiredRun::Running)), None);
    assert!(
        exec.readiness_log(&with("/var/log/x", "started"), &home)
            .is_err()
    );
}

#[test]
fn the_home_variable_names_the_home_the_agent_installed() {
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: value.into(),
        secret: false,
    };
    let mut spec = NodeSpec {
        env: vec![var("JAVA_OPTS", "-Xmx1g")],
        ..spec(DesiredRun::Running)
    };
    let home = std::path::Path::new("/srv/root/opt/app/n1/product-1.0");
    if let Some(p) = spec.process.as_mut() {
        p.home_env = "APP_HOME".into();
    }
    let env = NodeExecutor::env(&spec, home);
    assert_eq!(env["APP_HOME"], home.display().to_string());
    assert_eq!(env["JAVA_OPTS"], "-Xmx1g");
    spec.process = None;
    assert!(!NodeExecutor::env(&spec, home).contains_key("APP_HOME"));
}

#[test]
fn the_machine_memory_need_adds_up_the_nodes_that_must_run() {
    const MIB: u64 = 1 << 20;
    let node = |name: &str, desired: DesiredRun, mib: u64| NodeSpec {
        name: name.into(),
        memory_bytes: mib * MIB,
        ..spec(desired)
    };
    let m = MachineMemory::of(&MachineSpec {
        nodes: vec![
            node("cp-1", DesiredRun::Running, 1639),
            node("tm-1", DesiredRun::Staged, 2765),
            node("old-1", DesiredRun::Stopped, 5018),
            node("unknown", DesiredRun::Running, 0),
        ],
        ..MachineSpec::default()
    });
    assert_eq!(
        m.needed,
        (1639 + 2765) * MIB,
        "a STOPPED node needs nothing"
    );
    assert_eq!(m.breakdown(), "cp-1 1639 MiB + tm-1 2765 MiB");
    assert_eq!(MachineMemory::of(&MachineSpec::default()).needed, 0);
}

#[tokio::test]
async fn a_machine_short_of_memory_fails_every_node_that_must_run_before_anything_is_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut exec = executor(dir.path());
    let total = crate::exec::facts::memory_total().unwrap();
    // Each of the two nodes would fit alone; together they do not.
    let half = total / 2 + 1;
    let machine_memory = MachineMemory {
        needed: 2 * half,
        nodes: vec![("n1".into(), half), ("n2".into(), half)],
    };
    for desired in [DesiredRun::Running, DesiredRun::Staged] {
        let target = NodeTarget {
            generation: 1,
            spec: spec(desired),
            machine_memory: machine_memory.clone(),
            hosts: Vec::new(),
        };
        let err = exec
            .converge(&target, std::future::pending())
            .await
            .expect_err("short of memory");
        let text = err.to_string();
        assert!(
            matches!(err, DaemonError::Preflight { .. })
                && text.contains("its nodes need")
                && text.contains(&format!("n1 {} MiB + n2", half.div_ceil(1 << 20))),
            "{text}"
        );
        assert!(
            !dir.path().join("root/opt").exists(),
            "nothing fetched or installed"
        );
    }
    // A node asked to stop is stopped whatever the machine's memory.
    let target = NodeTarget {
        generation: 1,
        spec: spec(DesiredRun::Stopped),
        machine_memory,
        hosts: Vec::new(),
    };
    assert!(exec.converge(&target, std::future::pending()).await.is_ok());
}

#[tokio::test]
async fn the_pack_cache_keeps_what_records_and_the_held_spec_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = executor(dir.path());
    let ctx = Arc::clone(&exec.ctx);
    let sha = |c: char| c.to_string().repeat(64);
    let cache = ctx.config.cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    for c in ['a', 'b', 'c', 'd', 'e', 'f'] {
        std::fs::write(cache.join(format!("{}.zip", sha(c))), b"zip").unwrap();
        std::fs::write(cache.join(format!("{}.boot", sha(c))), b"boot").unwrap();
    }
    std::fs::write(cache.join(format!("{}.partial", sha('f'))), b"part").unwrap();
    std::fs::write(cache.join("not-a-pack.txt"), b"x").unwrap();
    // n1 runs `a` and keeps `b` as its previous install; n2 (an old record) runs `c`.
    let nodes = ctx.config.nodes_dir();
    std::fs::create_dir_all(&nodes).unwrap();
    let n1 = NodeRecord {
        pack_sha256: sha('a'),
        home: "/opt/app/n1/p-2".into(),
        previous: Some(super::InstallRecord {
            pack_sha256: sha('b').to_uppercase(),
            home: "/opt/app/n1/p-1".into(),
            ..Default::default()
        }),
        ..NodeRecord::default()
    };
    std::fs::write(nodes.join("n1.json"), serde_json::to_vec(&n1).unwrap()).unwrap();
    std::fs::write(
        nodes.join("n2.json"),
        format!(r#"{{"pack_sha256":"{}","carbon_home":"/opt/x","applied_digest":null,"keystores_digest":null}}"#, sha('c')),
    )
    .unwrap();
    // The held spec names `d` (being staged); `e` is being fetched right now.
    ctx.fetcher.pin([sha('d')]);
    let busy = ctx.fetcher.hold_for_test(&sha('e')).await;
    super::prune_pack_cache(&ctx);
    let left = names(&cache);
    let mut want: Vec<String> = ['a', 'b', 'c', 'd', 'e']
        .iter()
        .flat_map(|c| [format!("{}.boot", sha(*c)), format!("{}.zip", sha(*c))])
        .collect();
    want.push("not-a-pack.txt".into());
    want.sort();
    assert_eq!(left, want, "`f` (zip, stamp and partial download) pruned");
    drop(busy);
    super::prune_pack_cache(&ctx);
    assert!(
        !cache.join(format!("{}.zip", sha('e'))).exists(),
        "pruned once idle"
    );
    // An unreadable record may name a pack in use: nothing is pruned then.
    std::fs::write(cache.join(format!("{}.zip", sha('f'))), b"zip").unwrap();
    std::fs::write(nodes.join("n3.json"), b"{not json").unwrap();
    super::prune_pack_cache(&ctx);
    assert!(cache.join(format!("{}.zip", sha('f'))).exists());
}

fn names(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
