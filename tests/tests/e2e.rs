//! End-to-end: real `apimctl controller run`, real `apim-agent`s (one per simulated machine,
//! each on its own 127.x address with its own install root and hosts file), simulated packs and
//! servers, driven through the `apimctl` CLI. See `apim_e2e::cluster`.
//!
//! Waits poll a condition with a generous timeout as a failure guard; nothing sleeps to
//! synchronise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use apim_e2e::cluster::{
    Cluster, ClusterOptions, PlanParams, STARTED_LINE, STARTING_LINE, Topology, all_healthy,
    find_files, log_times, node_phase, rollout_state, status_nodes, unreachable_peers,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn started(
    topology: Topology,
    name: &str,
    delay_ms: u64,
) -> Result<Cluster, Box<dyn std::error::Error>> {
    Ok(apim_e2e::cluster::started(topology, name, delay_ms)?)
}

fn text(out: &std::process::Output) -> String {
    apim_e2e::cluster::output_text(out)
}

/// Applies `plan` and asserts the rollout succeeded with every node healthy.
fn apply_ok(c: &Cluster, plan: &Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let out = c.apply(plan)?;
    assert!(out.status.success(), "apply failed: {}", text(&out));
    let s = c.status()?;
    assert!(all_healthy(&s, &c.node_names()), "not all healthy: {s}");
    Ok(s)
}

/// Transitive dependencies of every node.
fn transitive(deps: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for n in deps.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = deps[n].clone();
        while let Some(d) = stack.pop() {
            if seen.insert(d.clone()) {
                stack.extend(deps.get(&d).cloned().unwrap_or_default());
            }
        }
        out.insert(n.clone(), seen);
    }
    out
}

/// Checks, from the simulated servers' own logs, that every node was started only after each
/// node it depends on had logged "WSO2 Carbon started", and that it never failed to reach one
/// of those earlier-tier peers.
fn assert_graph_order(c: &Cluster, plan: &Path) -> TestResult {
    let deps = c.dependencies(plan)?;
    assert_eq!(
        deps.keys().cloned().collect::<BTreeSet<_>>(),
        c.node_names().into_iter().collect::<BTreeSet<_>>(),
        "render lists every node"
    );
    assert!(
        deps.values().any(|d| !d.is_empty()),
        "the plan has dependencies to check: {deps:?}"
    );
    // hostname (node or LB) -> the nodes behind it
    let mut behind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in c.topology.nodes() {
        behind
            .entry(n.hostname.clone())
            .or_default()
            .push(n.name.clone());
    }
    for (role, lb) in c.topology.load_balancers() {
        let names = c.topology.nodes().into_iter().filter(|n| n.role == role);
        behind
            .entry(lb.to_string())
            .or_default()
            .extend(names.map(|n| n.name));
    }
    for (node, ds) in &deps {
        let log = c.node_log(node)?;
        let started = log_times(&log, STARTING_LINE);
        assert_eq!(started.len(), 1, "{node} started once: {started:?}");
        for d in ds {
            let ready = log_times(&c.node_log(d)?, STARTED_LINE);
            let first_ready = ready.first().ok_or(format!("{d} never became ready"))?;
            assert!(
                started[0] >= *first_ready,
                "{node} started at {} before its dependency {d} was ready at {first_ready}",
                started[0]
            );
        }
        for host in unreachable_peers(&log) {
            let of_dep = behind
                .get(&host)
                .is_some_and(|ns| ns.iter().any(|n| ds.contains(n)));
            assert!(
                !of_dep,
                "{node} could not reach {host}, a peer of an earlier tier:\n{log}"
            );
        }
    }
    Ok(())
}

#[test]
fn v3_five_node_rolls_out_in_order_reapply_restarts_nothing_override_restarts_one_gateway()
-> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_v3_rollout", 200)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let s = apply_ok(&c, &plan)?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert_graph_order(&c, &plan)?;

    // Re-applying the same plan restarts nothing.
    let pids: BTreeMap<String, Vec<u32>> = c
        .node_names()
        .into_iter()
        .map(|n| Ok((n.clone(), c.server_pids(&n)?)))
        .collect::<Result<_, apim_e2e::cluster::ClusterError>>()?;
    assert!(
        pids.values().all(|p| p.len() == 1),
        "one server per node: {pids:?}"
    );
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "{}", text(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(again["state"], "unchanged", "{}", text(&out));
    for n in c.node_names() {
        assert_eq!(c.server_pids(&n)?, pids[&n], "{n} kept its server");
        assert_eq!(c.start_count(&n)?, 1, "{n} started once");
    }

    // Changing one gateway's override restarts that gateway only.
    let params = PlanParams {
        overrides: vec![(
            "node:gw-1".into(),
            "[apimsim]\nstartup_delay_ms = 150".into(),
        )],
        ..PlanParams::default()
    };
    let plan2 = c.write_plan("plan2.toml", &params)?;
    let out = c.apimctl(&["plan", plan2.to_str().ok_or("path")?])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "plan shows a change: {}",
        text(&out)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("gw-1") && shown.contains("restarts"),
        "{shown}"
    );
    apply_ok(&c, &plan2)?;
    for n in c.node_names() {
        if n == "gw-1" {
            assert_eq!(c.start_count(&n)?, 2, "gw-1 restarted once");
            assert_ne!(c.server_pids(&n)?, pids[&n], "gw-1 has a new server");
        } else {
            assert_eq!(c.start_count(&n)?, 1, "{n} not restarted");
            assert_eq!(c.server_pids(&n)?, pids[&n], "{n} kept its server");
        }
    }
    Ok(())
}

#[test]
fn v45_split_ha_rolls_out_in_dependency_order() -> TestResult {
    let c = started(Topology::V45Ha, "e2e_v45_rollout", 200)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let s = apply_ok(&c, &plan)?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert_graph_order(&c, &plan)
}

#[test]
fn never_healthy_node_with_halt_leaves_its_dependents_unstarted() -> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_halt", 100)?;
    let params = PlanParams {
        health_timeout: "12s".into(),
        overrides: vec![("node:km-1".into(), "[apimsim]\nnever_ready = true".into())],
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    let dependents: Vec<String> = transitive(&c.dependencies(&plan)?)
        .into_iter()
        .filter(|(_, ds)| ds.contains("km-1"))
        .map(|(n, _)| n)
        .collect();
    assert!(!dependents.is_empty(), "km-1 has dependents");
    let out = c.apply(&plan)?;
    assert_eq!(out.status.code(), Some(1), "apply fails: {}", text(&out));
    let s = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&s), Some("failed"), "{s}");
    let message = s["rollout"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("km-1"), "the rollout says which node: {s}");
    let km = status_nodes(&s)
        .into_iter()
        .find(|(_, n)| n["node"] == "km-1")
        .ok_or("km-1 in status")?
        .1;
    assert_ne!(km["phase"], "healthy", "{s}");
    assert!(
        message.contains("not healthy")
            || !km["last_error"].as_str().unwrap_or_default().is_empty(),
        "status says why km-1 failed: {s}"
    );
    let shown = String::from_utf8_lossy(&c.apimctl(&["status"])?.stdout).into_owned();
    assert!(
        shown.contains("km-1") && shown.contains("failed"),
        "{shown}"
    );
    for d in &dependents {
        assert_eq!(c.start_count(d)?, 0, "{d} was never started");
        assert!(c.server_pids(d)?.is_empty(), "{d} has no server");
        assert_ne!(node_phase(&s, d), Some("healthy"), "{d}: {s}");
    }
    Ok(())
}

#[test]
fn controller_killed_mid_rollout_resumes_without_starting_a_node_twice() -> TestResult {
    let mut c = started(Topology::V3FiveNode, "e2e_ctl_restart", 1500)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply_no_wait(&plan)?;
    assert!(out.status.success(), "{}", text(&out));
    let nodes = c.node_names();
    let mid = c.wait_status("a rollout half way", |s| {
        let healthy = nodes
            .iter()
            .filter(|n| node_phase(s, n) == Some("healthy"))
            .count();
        healthy >= 1 && healthy < nodes.len()
    })?;
    c.kill_controller();
    c.start_controller()?;
    let s = c.wait_rollout_done()?;
    assert_eq!(
        rollout_state(&s),
        Some("succeeded"),
        "before: {mid}\nafter: {s}"
    );
    assert!(all_healthy(&s, &nodes), "{s}");
    for n in &nodes {
        assert_eq!(c.start_count(n)?, 1, "{n} started exactly once");
        assert_eq!(c.server_pids(n)?.len(), 1, "{n} runs one server");
    }
    Ok(())
}

#[test]
fn agent_killed_mid_step_resumes() -> TestResult {
    let mut c = started(Topology::V3FiveNode, "e2e_agent_restart", 1500)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply_no_wait(&plan)?;
    assert!(out.status.success(), "{}", text(&out));
    // km-1 is in the first tier: catch its agent while it waits for the server to be ready.
    c.wait_status("km-1 starting", |s| {
        node_phase(s, "km-1") == Some("starting")
    })?;
    c.kill_agent("vm-km-1");
    c.start_agent("vm-km-1")?;
    let s = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_eq!(
        c.start_count("km-1")?,
        1,
        "the new agent adopted km-1's server"
    );
    assert_eq!(c.server_pids("km-1")?.len(), 1);
    Ok(())
}

#[test]
fn cut_off_agent_is_shown_unreachable_and_converges_when_it_returns() -> TestResult {
    let mut c = started(Topology::V3FiveNode, "e2e_unreachable", 100)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    apply_ok(&c, &plan)?;
    c.kill_agent("vm-tm-1");
    let s = c.wait_status("vm-tm-1 unreachable", |s| {
        s["machines"].as_array().into_iter().flatten().any(|m| {
            m["machine"] == "vm-tm-1"
                && m["reachable"] == false
                && m["unreachable_since"].is_string()
        })
    })?;
    let out = c.apimctl(&["status"])?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("tm-1") && l.contains("unreachable for ")),
        "text status says so: {shown}\n{s}"
    );
    // A change for the cut-off machine waits for it, and lands once it is back.
    let params = PlanParams {
        overrides: vec![(
            "node:tm-1".into(),
            "[apimsim]\nstartup_delay_ms = 130".into(),
        )],
        ..PlanParams::default()
    };
    let plan2 = c.write_plan("plan2.toml", &params)?;
    let out = c.apply_no_wait(&plan2)?;
    assert!(out.status.success(), "{}", text(&out));
    c.start_agent("vm-tm-1")?;
    let s = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_eq!(
        c.start_count("tm-1")?,
        2,
        "tm-1 restarted with its new config"
    );
    Ok(())
}

/// What an operator could see change on the machines: hosts files, every file under the
/// install roots except logs and pid files, and the servers' pids.
fn machine_snapshot(c: &Cluster) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
    let mut snap = BTreeMap::new();
    for m in &c.machines {
        snap.insert(
            format!("{}:hosts", m.name),
            std::fs::read_to_string(&m.hosts_file)?,
        );
        for name in ["deployment.toml", "wso2carbon.jks", "client-truststore.jks"] {
            for f in find_files(&m.install_root, name) {
                let bytes = std::fs::read(&f)?;
                snap.insert(f.display().to_string(), hex::encode(Sha256::digest(&bytes)));
            }
        }
        for n in &m.nodes {
            snap.insert(format!("{n}:pids"), format!("{:?}", c.server_pids(n)?));
        }
    }
    Ok(snap)
}

#[test]
fn malformed_or_rejected_plans_change_nothing() -> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_rejected", 100)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let s0 = apply_ok(&c, &plan)?;
    let before = machine_snapshot(&c)?;

    // Malformed: not TOML.
    let bad = c.root().join("malformed.toml");
    std::fs::write(
        &bad,
        c.plan_text(&PlanParams::default()) + "\n[[nodes]\nname = \n",
    )?;
    // Text output: errors as diagnostics on stderr (`-o json` prints them as one document).
    let apply_text = |plan: &Path| c.apimctl(&["apply", plan.to_str().unwrap_or_default()]);
    let out = apply_text(&bad)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("malformed.toml:"),
        "the error names the file: {}",
        text(&out)
    );

    // Invalid: a node on a machine that does not exist.
    let invalid = c.root().join("invalid.toml");
    std::fs::write(
        &invalid,
        c.plan_text(&PlanParams::default())
            + "\n[[nodes]]\nname = \"gw-9\"\nmachine = \"vm-nowhere\"\nrole = \"gateway\"\nhostname = \"gw9.wso2.com\"\n",
    )?;
    let out = c.apply(&invalid)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Rejected by the controller: pinned to a cluster revision that is not the current one.
    let changed = c.write_plan(
        "changed.toml",
        &PlanParams {
            overrides: vec![("all".into(), "[apimsim]\nstartup_delay_ms = 90".into())],
            ..PlanParams::default()
        },
    )?;
    let mut cmd = c.apimctl_cmd();
    cmd.arg("apply")
        .arg(&changed)
        .args(["--plan-revision", "not-the-current-revision"]);
    let out = cmd.output()?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A pack that is not the plan's, new to this apimctl (its digest cache never saw it): one
    // a byte longer (the controller lacks a pack of that size: it is hashed on its way up and
    // refused), and one of the same size with a byte changed (the controller has the plan's
    // digest: it is hashed here). Either way the error points at the plan's sha256.
    let (_, good) = &c.packs[0];
    let original = std::fs::read(&good.path)?;
    let file_name = good
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for (name, bytes) in [
        ("longer.zip", [original.as_slice(), b"!"].concat()),
        ("altered.zip", {
            let mut b = original.clone();
            b[10] ^= 0xff;
            b
        }),
    ] {
        std::fs::write(c.root().join("dist").join(name), &bytes)?;
        let wrong = c.root().join(format!("wrong-{name}.toml"));
        let plan_text = c
            .plan_text(&PlanParams::default())
            .replace(&format!("dist/{file_name}"), &format!("dist/{name}"));
        std::fs::write(&wrong, &plan_text)?;
        let out = apply_text(&wrong)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let line = plan_text
            .lines()
            .position(|l| l.contains(&format!("dist/{name}")))
            .expect("the distribution line")
            + 1;
        assert!(
            err.contains(&format!("wrong-{name}.toml:{line}:"))
                && err.contains("not the one in the plan"),
            "{name}: the error points at the plan's sha256: {err}"
        );
        assert!(!err.contains("uploaded"), "{name}: {err}");
    }

    let s1 = c.status()?;
    assert_eq!(
        s1["generation"], s0["generation"],
        "no new generation: {s1}"
    );
    assert_eq!(
        s1["rollout"]["id"], s0["rollout"]["id"],
        "no new rollout: {s1}"
    );
    assert_eq!(
        machine_snapshot(&c)?,
        before,
        "nothing changed on any machine"
    );
    Ok(())
}

/// When the agent certificate in `state_dir` expires.
fn agent_cert_not_after(
    state_dir: &Path,
) -> Result<time::OffsetDateTime, Box<dyn std::error::Error>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(state_dir.join("agent-identity.pem"))?;
    let der = CertificateDer::from_pem_slice(&pem)?;
    Ok(apim_certs::PeerCert::from_der(&der)?.not_after)
}

#[test]
fn an_agent_outliving_its_certificate_in_a_controller_outage_keeps_its_nodes_and_rejoins()
-> TestResult {
    let mut opts = ClusterOptions::new(Topology::V3FiveNode, "e2e_cert_outage");
    opts.startup_delay_ms = 100;
    opts.controller_settings = vec!["agent_cert_ttl = \"15s\"".into()];
    let mut c = Cluster::create(&opts)?;
    c.start()?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    apply_ok(&c, &plan)?;
    let nodes = c.node_names();
    let pids: BTreeMap<String, Vec<u32>> = nodes
        .iter()
        .map(|n| Ok((n.clone(), c.server_pids(n)?)))
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;

    // The controller goes away for longer than an agent certificate lives.
    c.kill_controller();
    let km = c.machine("vm-km-1")?.clone();
    let deadline = std::time::Instant::now() + apim_e2e::cluster::PATIENCE;
    loop {
        let not_after = agent_cert_not_after(&km.state_dir)?;
        if time::OffsetDateTime::now_utc() > not_after + time::Duration::seconds(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the certificate never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Meanwhile the machine restarts its agent, with only an expired certificate: it loads its
    // ledger and keeps its node (the same server answers).
    c.kill_agent("vm-km-1");
    c.start_agent("vm-km-1")?;
    let version = std::net::SocketAddr::from((km.address, 9763));
    let answered = apim_e2e::probe::wait_until(
        apim_e2e::cluster::PATIENCE,
        std::time::Duration::from_millis(100),
        || apim_e2e::probe::http_get(version, "/services/Version").is_ok_and(|r| r.status == 200),
    );
    assert!(answered, "km-1 serves while the controller is away");
    assert_eq!(
        c.server_pids("km-1")?,
        pids["km-1"],
        "km-1 was not restarted"
    );

    // The controller returns: every agent recovers a certificate on its own and reports.
    c.start_controller()?;
    c.wait_agents_connected()?;
    let s = c.wait_status("every node healthy again", |s| all_healthy(s, &nodes))?;
    for n in &nodes {
        assert_eq!(c.server_pids(n)?, pids[n], "{n} kept its server: {s}");
        assert_eq!(c.start_count(n)?, 1, "{n} started once");
    }
    let renewed = agent_cert_not_after(&km.state_dir)?;
    assert!(
        renewed > time::OffsetDateTime::now_utc(),
        "vm-km-1 holds a valid certificate"
    );
    let log = std::fs::read_to_string(c.root().join("logs/controller.log"))?;
    assert!(
        log.contains("agent certificate recovered after it expired"),
        "the controller logged the recovery"
    );
    Ok(())
}

#[test]
fn a_revoked_machine_is_shown_revoked_and_rejoins_with_a_new_token_alone() -> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_readmit", 100)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    apply_ok(&c, &plan)?;
    let pids = c.server_pids("tm-1")?;
    let out = c.apimctl(&["revoke", "vm-tm-1", "--yes"])?;
    assert!(out.status.success(), "{}", text(&out));
    let revoked = |s: &serde_json::Value, yes: bool| {
        s["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["machine"] == "vm-tm-1" && m["revoked"] == yes)
    };
    c.wait_status("vm-tm-1 shown revoked", |s| revoked(s, true))?;
    let shown = c.apimctl(&["status"])?;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown
            .lines()
            .any(|l| l.contains("tm-1") && l.contains(" revoked ")),
        "{shown}"
    );
    assert_eq!(
        c.server_pids("tm-1")?,
        pids,
        "a revoked machine keeps its node running"
    );

    // Re-admission: one command on the controller side, the token file on the machine.
    let token = c.apimctl(&["token", "create", "--machine", "vm-tm-1"])?;
    assert!(token.status.success(), "{}", text(&token));
    apim_e2e::cluster::write_private(&c.root().join("tokens/vm-tm-1"), &token.stdout)?;
    let s = c.wait_status("vm-tm-1 back", |s| {
        revoked(s, false)
            && s["machines"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["machine"] == "vm-tm-1" && m["reachable"] == true)
    })?;
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_eq!(c.server_pids("tm-1")?, pids, "tm-1 was not restarted");
    Ok(())
}

/// Every regular file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files_under(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

#[test]
fn v3_five_node_with_the_secure_vault_is_healthy_and_no_machine_file_holds_a_plan_secret()
-> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_v3_vault", 200)?;
    let params = PlanParams {
        secure_vault: true,
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    let s = apply_ok(&c, &plan)?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");

    // Each node's configuration references its secrets and holds them encrypted, last.
    for n in c.node_names() {
        let m = c.machine_of(&n)?;
        let toml_path = find_files(&m.install_root, "deployment.toml")
            .into_iter()
            .find(|p| p.to_string_lossy().contains(&format!("/{n}/")))
            .ok_or("deployment.toml")?;
        let text = std::fs::read_to_string(&toml_path)?;
        assert!(
            text.contains("password = \"$secret{admin_password}\""),
            "{n}: {text}"
        );
        let secrets_at = text.find("\n[secrets]\n").ok_or("[secrets]")?;
        assert!(
            !text[secrets_at + 1..].contains("\n["),
            "{n}: [secrets] is the last table"
        );
        let home = toml_path
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .ok_or("home")?;
        assert!(
            home.join("repository/conf/security/secret-conf.properties")
                .exists(),
            "{n}: the secret manager is configured"
        );
        assert!(
            !home.join("password-tmp").exists(),
            "{n}: the password file is gone once the server started"
        );
    }

    // The admin logs in with the plan's password: the vault decrypted it.
    let km = c.machine_of("km-1")?;
    let offset = Topology::V3FiveNode
        .nodes()
        .into_iter()
        .find(|n| n.name == "km-1")
        .ok_or("km-1")?
        .offset;
    let addr = std::net::SocketAddr::from((km.address, 9443 + offset));
    let me = "/api/identity/user/v1.0/me";
    let (_, admin_password) = apim_e2e::cluster::PLAN_SECRETS[0];
    assert_eq!(
        apim_e2e::probe::https_get_basic(addr, "km-1.wso2.com", me, "admin", admin_password)?,
        200
    );
    assert_eq!(
        apim_e2e::probe::https_get_basic(addr, "km-1.wso2.com", me, "admin", "admin")?,
        401
    );

    // No file on any machine holds a plan secret in clear.
    let mut files = Vec::new();
    let mut machines = BTreeSet::new();
    for n in c.node_names() {
        let m = c.machine_of(&n)?;
        if machines.insert(m.name.clone()) {
            let dir = m.install_root.parent().ok_or("machine dir")?;
            files_under(dir, &mut files);
        }
    }
    assert!(files.len() > 100, "only {} files searched", files.len());
    for f in &files {
        let bytes = std::fs::read(f)?;
        for (name, secret) in apim_e2e::cluster::PLAN_SECRETS {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the plan's {name} in clear",
                f.display()
            );
        }
    }

    // Re-applying renders the same ciphertexts: nothing restarts.
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "{}", text(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(again["state"], "unchanged", "{}", text(&out));
    Ok(())
}

/// Converge to intent: after a rollout halted on a node that never became healthy, applying the
/// previous plan again is not "nothing to change": `plan` names the node and why, and `apply`
/// rolls it back to the plan through the gated path until every node is healthy.
#[test]
fn a_halted_rollout_is_undone_by_reapplying_the_previous_plan() -> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_converge", 100)?;
    let good = c.write_plan("good.toml", &PlanParams::default())?;
    let s = apply_ok(&c, &good)?;
    let km_digest = |s: &serde_json::Value| {
        status_nodes(s)
            .into_iter()
            .find(|(_, n)| n["node"] == "km-1")
            .map(|(_, n)| n["config_digest"].as_str().unwrap_or_default().to_string())
    };
    let healthy_digest = km_digest(&s).ok_or("km-1")?;
    let bad = c.write_plan(
        "bad.toml",
        &PlanParams {
            health_timeout: "10s".into(),
            overrides: vec![("node:km-1".into(), "[apimsim]\nnever_ready = true".into())],
            ..PlanParams::default()
        },
    )?;
    let out = c.apply(&bad)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&s), Some("failed"), "{s}");

    // `plan` of the good plan: km-1 is touched although its configuration is the plan's.
    let out = c.apimctl(&["plan", good.to_str().ok_or("path")?])?;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "changes: {}", text(&out));
    assert!(shown.contains("~ km-1 (vm-km-1): update"), "{shown}");
    assert!(shown.contains("converges: "), "{shown}");
    assert!(!shown.contains("nothing to change"), "{shown}");

    // `apply` of it: a new generation, rolled out, every node healthy, km-1 on the good config.
    let out = c.apply(&good)?;
    assert!(out.status.success(), "{}", text(&out));
    let s = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_eq!(km_digest(&s).as_deref(), Some(healthy_digest.as_str()));
    // And now it is nothing to change.
    let out = c.apimctl(&["plan", good.to_str().ok_or("path")?])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    Ok(())
}
