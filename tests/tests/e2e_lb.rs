//! End-to-end load balancer (issue 18, items 4 and 6): the 4.5 HA plan with the control plane
//! and gateway balancers placed on a machine of their own, where the agent runs a real NGINX
//! (`/usr/sbin/nginx`, from the Debian package `.ci/run` installs) rendered from the plan, with
//! its pid file, logs and temp files in the machine's install root inside the test's folder.
//! Requests go through the balancer; one control plane at a time is killed; the gateways are
//! restarted one at a time while a client asks through the balancer every 20 ms.
//!
//! Waits poll a condition with a generous timeout as a failure guard; nothing sleeps to
//! synchronise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apim_e2e::cluster::{
    Cluster, ClusterOptions, PlanParams, Topology, all_healthy, find_files, output_text,
};
use apim_e2e::probe::{http_get, https_get_verified, wait_until};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The balancer's machine.
const LB: &str = "vm-lb";
/// The LB hostnames of the 4.5 HA topology.
const CP_LB: &str = "api.am.wso2.com";
const GW_LB: &str = "gw.wso2.com";

/// The cluster CA certificate the controller made (read from its data folder).
fn cluster_ca(c: &Cluster) -> Result<String, Box<dyn std::error::Error>> {
    let found = find_files(&c.root().join("controller-data"), "cluster-ca-cert.pem");
    let path = found
        .first()
        .ok_or("no cluster CA in the controller's data")?;
    Ok(std::fs::read_to_string(path)?)
}

/// The pids of the processes whose working directory is `dir` or below (NGINX runs in its
/// folder), with their command lines.
fn processes_in(dir: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let inside = std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir));
        if inside && let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

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

/// Whether the balancer runs and serves every role it fronts, per its agent's probes.
fn lb_serves_all(s: &serde_json::Value) -> bool {
    lb_service(s).is_some_and(|svc| {
        svc["running"] == true
            && svc["last_error"] == ""
            && svc["probes"]
                .as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["served"] == true))
    })
}

/// `GET https://api.am.wso2.com/services/Version` through the balancer (certificate verified).
fn cp_version(lb: SocketAddr, ca: &str) -> std::io::Result<u16> {
    https_get_verified(lb, CP_LB, "/services/Version", ca).map(|r| r.status)
}

/// Kills `node`'s server and asserts the control plane is still served through the balancer,
/// request after request, until the agent has it healthy again.
fn kill_and_stay_served(c: &Cluster, node: &str, lb: SocketAddr, ca: &str) -> TestResult {
    let restarts = |s: &serde_json::Value| {
        apim_e2e::cluster::status_nodes(s)
            .into_iter()
            .find(|(_, v)| v["node"] == node)
            .and_then(|(_, v)| v["restarts"].as_u64())
            .unwrap_or(0)
    };
    let before = restarts(&c.status()?);
    let pids = c.server_pids(node)?;
    assert_eq!(pids.len(), 1, "{node} runs one server");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pids[0])?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // The server is gone: its own port refuses.
    let own = SocketAddr::from((c.machine_of(node)?.address, 9443));
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            !apim_e2e::probe::tcp_open(own)
        }),
        "{node} still listens after SIGKILL"
    );
    for i in 0..20 {
        let status = cp_version(lb, ca)?;
        assert_eq!(status, 200, "request {i} after {node} was killed");
    }
    // The agent restarts it (its restart count says so); the balancer serves every role again.
    c.wait_status(
        &format!("{node} restarted, healthy again, and the LB serving"),
        |s| restarts(s) > before && all_healthy(s, &c.node_names()) && lb_serves_all(s),
    )?;
    Ok(())
}

#[test]
fn the_ha_plan_is_served_through_nginx_through_a_kill_and_a_rolling_restart() -> TestResult {
    let mut opts = ClusterOptions::new(Topology::V45Ha, "e2e_lb");
    opts.startup_delay_ms = 100;
    let mut c = Cluster::create(&opts)?;
    let lb_ip = c.add_bare_machine(LB)?;
    c.start()?;
    let params = PlanParams {
        balancers: vec![
            ("control-plane".into(), LB.into()),
            ("gateway".into(), LB.into()),
        ],
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    let plan_arg = plan.to_str().ok_or("path")?;

    // `render` shows the balancer's nginx.conf with both roles' pools.
    let out = c.apimctl(&["render", plan_arg])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("# ==== load balancer (nginx) on machine vm-lb ===="),
        "{shown}"
    );
    for n in ["cp-1", "cp-2", "gw-1", "gw-2"] {
        let m = c.machine_of(n)?.address;
        assert!(shown.contains(&format!("server {m}:")), "{n} in the pools");
    }

    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    // Served only when the balancer answers for each role (its agent probes through it).
    let s = c.wait_status("every node healthy and the LB serving both roles", |s| {
        all_healthy(s, &c.node_names()) && lb_serves_all(s)
    })?;
    // The balancer's spec is stable (its certificate re-used): nothing left to change.
    let out = c.apimctl(&["plan", plan_arg])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing to change: {}",
        output_text(&out)
    );
    let svc = lb_service(&s).ok_or("no balancer in status")?;
    assert!(svc["pid"].as_u64().is_some(), "{svc}");
    let text = output_text(&c.apimctl(&["status"])?);
    assert!(text.contains("vm-lb load-balancer: running"), "{text}");
    assert!(text.contains("control-plane served (HTTP 200)"), "{text}");
    assert!(text.contains("gateway served (HTTP 404)"), "{text}");

    // Every machine's hosts block maps the placed LB names to the balancer machine.
    for m in &c.machines {
        let hosts = std::fs::read_to_string(&m.hosts_file)?;
        let line = hosts
            .lines()
            .find(|l| l.starts_with(&format!("{lb_ip} ")))
            .ok_or_else(|| format!("{}: no line for {lb_ip}:\n{hosts}", m.name))?;
        assert!(
            line.contains(CP_LB) && line.contains(GW_LB),
            "{}: {line}",
            m.name
        );
    }

    // NGINX runs from the machine's install root, inside the test's folder; nothing else.
    let lb_root: PathBuf = c.machine(LB)?.install_root.join("opt/wso2/load-balancer");
    let procs = processes_in(&lb_root);
    assert!(
        procs
            .iter()
            .any(|(_, cmd)| cmd.starts_with("nginx: master process /usr/sbin/nginx -p ./")),
        "an NGINX master in {}: {procs:?}",
        lb_root.display()
    );
    assert!(lb_root.join("run/nginx.pid").is_file());
    let key = lb_root.join("conf/tls/lb-key.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the balancer's key is private");

    // Requests through the balancer: the control plane over HTTPS with the LB name's
    // certificate from the cluster CA, the gateway's API traffic over HTTP and HTTPS (no API is
    // deployed: the gateway's own 404 fault, not NGINX's).
    let ca = cluster_ca(&c)?;
    let https = SocketAddr::from((lb_ip, 443));
    let r = https_get_verified(https, CP_LB, "/services/Version", &ca)?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("getVersionResponse"), "{r:?}");
    let r = http_get(SocketAddr::from((lb_ip, 80)), "/pizzashack/1.0.0/menu")?;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        r.body.contains("<am:code>404</am:code>"),
        "from a gateway: {r:?}"
    );
    let r = https_get_verified(https, GW_LB, "/pizzashack/1.0.0/menu", &ca)?;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("am:fault"), "{r:?}");

    // Each control plane killed in turn (whichever one `ip_hash` sends this client to): the
    // other answers every request through the balancer.
    kill_and_stay_served(&c, "cp-1", https, &ca)?;
    kill_and_stay_served(&c, "cp-2", https, &ca)?;

    // A rolling restart of the gateways with a request through the balancer every 20 ms:
    // every one is answered by a gateway.
    let done = Arc::new(AtomicBool::new(false));
    let (rounds, missed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = {
        let (done, rounds, missed, failures) = (
            done.clone(),
            rounds.clone(),
            missed.clone(),
            failures.clone(),
        );
        let http = SocketAddr::from((lb_ip, 80));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let r = http_get(http, "/pizzashack/1.0.0/menu");
                rounds.fetch_add(1, Ordering::SeqCst);
                let answered = r
                    .as_ref()
                    .is_ok_and(|r| r.status == 404 && r.body.contains("am:fault"));
                if !answered {
                    missed.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("{r:?}"));
                    }
                }
                // The client's pace, not a synchronisation.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let before: Vec<Vec<u32>> = ["gw-1", "gw-2"]
        .iter()
        .map(|g| c.server_pids(g))
        .collect::<Result<_, _>>()?;
    let out = c.apimctl(&["restart", "--role", "gateway"]);
    done.store(true, Ordering::SeqCst);
    client.join().map_err(|_| "client thread panicked")?;
    let out = out?;
    assert!(out.status.success(), "{}", output_text(&out));
    let (rounds, missed) = (rounds.load(Ordering::SeqCst), missed.load(Ordering::SeqCst));
    assert!(rounds >= 5, "the client asked throughout ({rounds} rounds)");
    assert_eq!(
        missed,
        0,
        "{missed} of {rounds} requests through the balancer went unanswered: {:?}",
        failures.lock().map(|f| f.clone()).unwrap_or_default()
    );
    for (g, was) in ["gw-1", "gw-2"].iter().zip(before) {
        assert_ne!(c.server_pids(g)?, was, "{g} restarted");
    }
    c.wait_status(
        "every node healthy and the LB serving after the restart",
        |s| all_healthy(s, &c.node_names()) && lb_serves_all(s),
    )?;
    Ok(())
}
