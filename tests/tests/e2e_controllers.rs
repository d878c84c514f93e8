//! End-to-end: several controllers on one PostgreSQL store (issue 17), on real processes and a
//! real PostgreSQL server of the test's own (`pg_createcluster`, so stopping it touches no
//! other test). Waits poll a condition with a generous timeout as a failure guard.

use std::path::Path;
use std::time::{Duration, Instant};

use apim_e2e::cluster::{
    Cluster, ClusterOptions, PlanParams, Topology, all_healthy, node_phase, output_text,
    rollout_state, status_nodes,
};
use apim_e2e::pgcluster::PrivatePostgres;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The lease's time to live (`apim_controller::state::LEASE_TTL`) plus its renewal period:
/// the longest a standby may take to lead after the leader died.
const TAKEOVER_BOUND: Duration = Duration::from_secs(10 + 2);

/// Cluster options whose controllers keep their store in `pg` (the password by file).
fn options(topology: Topology, name: &str, pg: &PrivatePostgres, dir: &Path) -> ClusterOptions {
    let pw = dir.join("store-password");
    apim_e2e::cluster::write_private(&pw, pg.password.as_bytes()).expect("password file");
    let mut opts = ClusterOptions::new(topology, name);
    opts.controller_settings = vec![
        "id = \"a\"".into(),
        "[store]".into(),
        format!("url = {:?}", pg.url()),
        format!("password = \"file:{}\"", pw.display()),
    ];
    opts
}

fn json(c: &Cluster, args: &[&str]) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let out = c.apimctl(args)?;
    assert!(
        out.status.success(),
        "apimctl {args:?}: {}",
        output_text(&out)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn leader(c: &Cluster) -> Option<String> {
    let out = c.apimctl(&["controllers", "-o", "json"]).ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    doc["leader"].as_str().map(str::to_owned)
}

/// The 4.5 HA plan rolls out; the leading controller is SIGKILLed in the middle; the standby
/// leads within the lease time and finishes the rollout from the stored record: every node
/// started exactly once (its server's own log), `status` answered by the survivor all along,
/// agents back on their own.
#[test]
fn the_standby_finishes_a_rollout_when_the_leader_is_killed() -> TestResult {
    let pg = PrivatePostgres::start("ha");
    let dir = tempfile::tempdir()?;
    let mut opts = options(Topology::V45Ha, "ctl-ha-kill", &pg, dir.path());
    // Slow enough servers that the kill lands mid-rollout.
    opts.startup_delay_ms = 1500;
    let mut c = Cluster::create(&opts)?;
    c.start_controller()?;
    c.ensure_operator_cert()?;
    c.add_controller("b")?;
    c.use_every_controller();
    let machines: Vec<String> = c.machines.iter().map(|m| m.name.clone()).collect();
    for m in &machines {
        c.start_agent(m)?;
    }
    c.wait_agents_connected()?;
    let members = json(&c, &["controllers", "-o", "json"])?;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(2),
        "{members}"
    );
    assert_eq!(
        members["leader"], "a",
        "the first controller leads: {members}"
    );

    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply_no_wait(&plan)?;
    assert!(out.status.success(), "{}", output_text(&out));
    let nodes = c.node_names();
    // Mid-rollout: some node healthy, not all.
    c.wait_status("a node healthy while others are not", |s| {
        let healthy = nodes
            .iter()
            .filter(|n| node_phase(s, n) == Some("healthy"))
            .count();
        rollout_state(s) == Some("starting") && healthy >= 1 && healthy < nodes.len()
    })?;
    c.kill_controller();
    let killed = Instant::now();

    // The survivor answers `status` every time, and leads within the bound.
    let mut took_over = None;
    let mut answers = 0;
    let done = loop {
        let out = c.apimctl(&["status", "-o", "json"])?;
        assert!(
            out.status.success(),
            "status after the kill: {}",
            output_text(&out)
        );
        answers += 1;
        if took_over.is_none() && leader(&c).as_deref() == Some("b") {
            took_over = Some(killed.elapsed());
        }
        let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if took_over.is_some()
            && !matches!(rollout_state(&s), Some("pending" | "staging" | "starting"))
        {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(240),
            "rollout never ended: {s}"
        );
    };
    let took_over = took_over.expect("b leads");
    assert!(
        took_over <= TAKEOVER_BOUND + Duration::from_secs(5),
        "the standby took {took_over:?} to lead (lease bound {TAKEOVER_BOUND:?})"
    );
    assert!(answers >= 2);
    assert_eq!(rollout_state(&done), Some("succeeded"), "{done}");
    assert!(all_healthy(&done, &nodes), "{done}");
    for n in &nodes {
        assert_eq!(c.start_count(n)?, 1, "{n} started exactly once");
    }
    // Agents reconnected (to b) by themselves.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let agents = c.agents()?;
        if agents.len() == machines.len() && agents.values().all(|up| *up) {
            break;
        }
        assert!(Instant::now() < deadline, "agents not all back: {agents:?}");
    }
    let members = json(&c, &["controllers", "-o", "json"])?;
    assert_eq!(members["leader"], "b", "{members}");
    eprintln!("standby led {took_over:?} after the kill; status answered {answers} times");
    c.shutdown();
    Ok(())
}

/// The store's database restarts under a running controller: calls made while it is down fail
/// with a clear error (the controller stays up), and work again once it is back, without any
/// restart of the controller; an apply after it rolls out.
#[test]
fn a_database_restart_fails_calls_clearly_and_they_recover_by_themselves() -> TestResult {
    let pg = PrivatePostgres::start("rs");
    let dir = tempfile::tempdir()?;
    let opts = options(Topology::V4 { minor: 4 }, "ctl-db-restart", &pg, dir.path());
    let mut c = Cluster::create(&opts)?;
    c.start()?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "{}", output_text(&out));
    let before = c.status()?;
    assert_eq!(rollout_state(&before), Some("succeeded"));

    pg.stop();
    let out = c.apimctl(&["status"])?;
    assert!(
        !out.status.success(),
        "status with the database down must fail"
    );
    let text = output_text(&out);
    assert!(
        text.contains("PostgreSQL") && text.contains("database is unreachable"),
        "a clear error: {text}"
    );
    assert!(
        c.running_pid("controller").is_some(),
        "the controller stays up"
    );

    pg.restart();
    // Back by itself: the next calls succeed (the first may still meet the old connection).
    let after = c.wait_status("status to answer again", |s| rollout_state(s).is_some())?;
    assert_eq!(rollout_state(&after), Some("succeeded"));
    assert_eq!(
        status_nodes(&after).len(),
        status_nodes(&before).len(),
        "the same cluster"
    );
    let params = PlanParams {
        overrides: vec![("all".into(), "[apimsim]\nstartup_delay_ms = 150".into())],
        ..PlanParams::default()
    };
    let plan2 = c.write_plan("plan2.toml", &params)?;
    let out = c.apply(&plan2)?;
    assert!(
        out.status.success(),
        "apply after the restart: {}",
        output_text(&out)
    );
    let last = c.status()?;
    assert_eq!(last["rollout"]["generation"], 2, "{last}");
    assert_eq!(rollout_state(&last), Some("succeeded"));

    // A graceful stop (SIGTERM, as systemd does) ends cleanly: the lease is handed over and the
    // database connection closed without a panic.
    let pid = c.running_pid("controller").ok_or("controller pid")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.running_pid("controller").is_some() {
        assert!(
            Instant::now() < deadline,
            "the controller did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(c.root().join("logs").join("controller.log"))?;
    assert!(!log.contains("panicked"), "{log}");
    Ok(())
}
