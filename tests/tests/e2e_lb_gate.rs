//! End-to-end readiness through the load balancer (issue 18, item 6): the 4.5 HA plan behind a
//! real NGINX on a machine of its own. A rolling restart of the gateways releases the second
//! gateway only after the balancer reported the role served again with a probe newer than the
//! first one's restart (the controller's log says in which order), while a client asking
//! through the balancer is answered throughout. Then the balancer is broken (its gateway pool
//! pointed at a port nothing listens on, reloaded): the next rolling restart restarts one
//! gateway, shows that it waits for the balancer, and halts after the health timeout with a
//! message naming the balancer machine, the role and the probe's answer; the other gateway
//! keeps running untouched.
//!
//! Waits poll a condition with a generous timeout as a failure guard; nothing sleeps to
//! synchronise.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apim_e2e::cluster::{
    Cluster, ClusterOptions, PlanParams, Topology, all_healthy, node_phase, output_text,
    rollout_state,
};
use apim_e2e::probe::http_get;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The balancer's machine.
const LB: &str = "vm-lb";
/// The health timeout of the plan: how long a rollout waits for the balancer.
const HEALTH_TIMEOUT_S: u64 = 20;

/// The balancer's service in `status -o json`.
fn lb_service(s: &serde_json::Value) -> Option<&serde_json::Value> {
    s["machines"]
        .as_array()?
        .iter()
        .find(|m| m["machine"] == LB)?["services"]
        .as_array()?
        .iter()
        .find(|svc| svc["name"] == "load-balancer")
}

/// The balancer's probe for `role` in `status -o json`: (served, detail).
fn lb_probe(s: &serde_json::Value, role: &str) -> Option<(bool, String)> {
    let p = lb_service(s)?["probes"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == role)?;
    Some((
        p["served"].as_bool()?,
        p["detail"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Whether the balancer serves both roles it fronts.
fn lb_serves_all(s: &serde_json::Value) -> bool {
    ["control-plane", "gateway"]
        .iter()
        .all(|r| lb_probe(s, r).is_some_and(|(ok, _)| ok))
}

/// The controller's log lines, without terminal colours.
fn controller_log(c: &Cluster) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(c.root().join("logs").join("controller.log"))?;
    Ok(text.lines().map(strip_ansi).collect())
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
            continue;
        }
        out.push(ch);
    }
    out
}

/// The index of the first log line of rollout `id` with `message` about `node`.
fn event(log: &[String], id: &str, message: &str, node: &str) -> Option<usize> {
    let rollout = format!("rollout={id} ");
    let node = format!("node={node}");
    log.iter().position(|l| {
        l.contains(message) && l.contains(&rollout) && l.split(' ').any(|w| w == node)
    })
}

/// Points every gateway upstream server of the balancer's `nginx.conf` at port 9 of its node
/// (nothing listens there) and has NGINX reload it (SIGHUP to its master): the balancer runs
/// but cannot serve the gateways. Returns how many servers were repointed.
fn break_gateway_pool(lb_root: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let conf = lb_root.join("conf/nginx.conf");
    let text = std::fs::read_to_string(&conf)?;
    let mut repointed = 0;
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server ") && line.contains("max_fails=0; # gw-") {
            let (addr, rest) = trimmed["server ".len()..]
                .split_once(' ')
                .ok_or("a server line")?;
            let (host, _) = addr.rsplit_once(':').ok_or("a server address")?;
            out.push_str(&format!("        server {host}:9 {rest}\n"));
            repointed += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&conf, out)?;
    let pid: i32 = std::fs::read_to_string(lb_root.join("run/nginx.pid"))?
        .trim()
        .parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    Ok(repointed)
}

/// Runs `apimctl restart --role gateway` while a client asks through the balancer every 20 ms;
/// returns the command's output and the requests (asked, unanswered, failures).
fn restart_gateways_with_a_client(
    c: &Cluster,
    http: SocketAddr,
) -> Result<(std::process::Output, usize, Vec<String>), Box<dyn std::error::Error>> {
    let done = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = {
        let (done, rounds, failures) = (done.clone(), rounds.clone(), failures.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let r = http_get(http, "/pizzashack/1.0.0/menu");
                rounds.fetch_add(1, Ordering::SeqCst);
                let answered = r
                    .as_ref()
                    .is_ok_and(|r| r.status == 404 && r.body.contains("am:fault"));
                if !answered && let Ok(mut f) = failures.lock() {
                    f.push(format!("{r:?}"));
                }
                // The client's pace, not a synchronisation.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = c.apimctl(&["restart", "--role", "gateway"]);
    done.store(true, Ordering::SeqCst);
    client.join().map_err(|_| "client thread panicked")?;
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    Ok((out?, rounds.load(Ordering::SeqCst), failures))
}

#[test]
fn rolling_restarts_wait_for_the_balancer_and_a_balancer_that_cannot_serve_halts_them() -> TestResult
{
    let mut opts = ClusterOptions::new(Topology::V45Ha, "e2e_lb_gate");
    opts.startup_delay_ms = 100;
    let mut c = Cluster::create(&opts)?;
    let lb_ip = c.add_bare_machine(LB)?;
    c.start()?;
    let params = PlanParams {
        balancers: vec![
            ("control-plane".into(), LB.into()),
            ("gateway".into(), LB.into()),
        ],
        health_timeout: format!("{HEALTH_TIMEOUT_S}s"),
        on_failure: "halt".into(),
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    // The first rollout ended only once the balancer it installed served every role.
    let s = c.status()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(lb_serves_all(&s), "served when the rollout succeeded: {s}");

    // 1. A rolling restart of the gateways: each next gateway is released only after the
    // balancer served the role again since the previous one's restart; every request through
    // the balancer is answered.
    let http = SocketAddr::from((lb_ip, 80));
    let before: Vec<Vec<u32>> = ["gw-1", "gw-2"]
        .iter()
        .map(|g| c.server_pids(g))
        .collect::<Result<_, _>>()?;
    let (out, rounds, failures) = restart_gateways_with_a_client(&c, http)?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(rounds >= 5, "the client asked throughout ({rounds} rounds)");
    assert!(
        failures.is_empty(),
        "{} of {rounds} requests through the balancer went unanswered: {failures:?}",
        failures.len()
    );
    for (g, was) in ["gw-1", "gw-2"].iter().zip(before) {
        assert_ne!(c.server_pids(g)?, was, "{g} restarted");
    }
    let s = c.status()?;
    let id = s["rollout"]["id"]
        .as_str()
        .ok_or("a rollout id")?
        .to_string();
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    let log = controller_log(&c)?;
    let at = |message: &str, node: &str| {
        event(&log, &id, message, node)
            .ok_or_else(|| format!("no `{message}` for {node} in {id} in the controller's log"))
    };
    let mut order: Vec<(usize, &str)> = Vec::new();
    for g in ["gw-1", "gw-2"] {
        order.push((at("node released", g)?, g));
    }
    order.sort();
    let (first, second) = (order[0].1, order[1].1);
    let healthy = at("node healthy", first)?;
    let served_again = at("the balancer serves the role again", first)?;
    let next = at("node released", second)?;
    assert!(
        order[0].0 < healthy && healthy < served_again && served_again < next,
        "{first} released (line {}), healthy ({healthy}), served again ({served_again}), then \
         {second} released ({next})",
        order[0].0
    );
    at("the balancer serves the role again", second)?;

    // 2. The balancer can no longer serve the gateways: its pool points at a closed port.
    let lb_root = c.machine(LB)?.install_root.join("opt/wso2/load-balancer");
    let repointed = break_gateway_pool(&lb_root)?;
    assert!(
        repointed >= 2,
        "both gateways repointed ({repointed} servers)"
    );
    c.wait_status("the balancer reports the gateways NOT served", |s| {
        lb_probe(s, "gateway").is_some_and(|(ok, detail)| !ok && detail == "HTTP 502")
    })?;
    let before: Vec<Vec<u32>> = ["gw-1", "gw-2"]
        .iter()
        .map(|g| c.server_pids(g))
        .collect::<Result<_, _>>()?;
    let mut restart = c.apimctl_cmd();
    restart
        .args(["restart", "--role", "gateway"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = restart.spawn()?;
    // `status` shows what the rollout waits for.
    let s = c.wait_status("the rollout waiting for the balancer", |s| {
        s["rollout"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("waiting for vm-lb to serve gateway (probe: HTTP 502)"))
    })?;
    let text = output_text(&c.apimctl(&["status"])?);
    assert!(
        text.contains("is healthy; waiting for vm-lb to serve gateway (probe: HTTP 502)"),
        "{text}"
    );
    assert_eq!(rollout_state(&s), Some("starting"), "{s}");
    let out = child.wait_with_output()?;
    assert!(
        !out.status.success(),
        "the restart failed: {}",
        output_text(&out)
    );
    let s = c.status()?;
    assert_eq!(rollout_state(&s), Some("failed"), "halted: {s}");
    let message = s["rollout"]["message"].as_str().unwrap_or_default();
    let expected = format!(
        "load balancer on vm-lb did not serve gateway within {HEALTH_TIMEOUT_S}s after gw-"
    );
    assert!(
        message.starts_with(&expected) && message.ends_with("became healthy: probe: HTTP 502"),
        "{message}"
    );
    assert!(
        output_text(&out).contains(&expected),
        "the command says why: {}",
        output_text(&out)
    );
    // Its progress showed the wait.
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("is healthy; waiting for vm-lb to serve gateway (probe: HTTP 502)"),
        "{}",
        output_text(&out)
    );
    // One gateway was restarted; the other was never released and runs as it did.
    let after: Vec<Vec<u32>> = ["gw-1", "gw-2"]
        .iter()
        .map(|g| c.server_pids(g))
        .collect::<Result<_, _>>()?;
    let restarted: Vec<&str> = ["gw-1", "gw-2"]
        .into_iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(g, _)| g)
        .collect();
    assert_eq!(
        restarted.len(),
        1,
        "exactly one gateway restarted: {before:?} -> {after:?}"
    );
    let (done, kept) = if restarted[0] == "gw-1" {
        ("gw-1", "gw-2")
    } else {
        ("gw-2", "gw-1")
    };
    assert!(
        message.contains(&format!("after {done} became healthy")),
        "{message}"
    );
    // Halted: the restarted one is healthy, the other stays staged and keeps serving on the
    // configuration it ran.
    let others: Vec<String> = c.node_names().into_iter().filter(|n| n != kept).collect();
    assert!(all_healthy(&s, &others), "every other node healthy: {s}");
    assert_eq!(node_phase(&s, kept), Some("staged"), "{s}");
    assert!(
        apim_e2e::cluster::status_nodes(&s)
            .iter()
            .any(|(_, n)| n["node"] == kept && n["running"] == true),
        "{kept} still runs: {s}"
    );
    Ok(())
}
