//! `apim-scale`: one controller with N light agents (issue 17, "Scale, measured"). A benchmark,
//! not a test: figures printed side by side with their targets, a verdict per target.
//!
//! The controller is the real `apimctl controller run` process (on the embedded SQLite store,
//! the only backend so far), so its RSS (`/proc/<pid>/status` VmRSS) and CPU
//! (`/proc/<pid>/stat` utime + stime) are its own. The N agents live in this process as tokio
//! tasks ([`agents`]), each enrolled with its own join token and key through the real RPCs, each
//! holding one `AgentService.Connect` stream over mTLS with its own certificate.
//!
//! The plan: N machines with one WSO2 API Manager 3.2.0 node each: a key manager, a traffic
//! manager, a publisher and a devportal on the first four, gateways behind a load balancer on
//! the rest (N >= 5). Every node gets its product certificate from the controller's PKI, so the
//! first apply is timed and printed but is not a target.
//!
//! Measured, after the first rollout (every node healthy), in this order:
//! 1. controller RSS, and its CPU over an idle window (`--idle-s`, default 10 s) with all N
//!    connected (each agent reports every 10 s, as the real one does);
//! 4. a no-op `apimctl apply` of the N-machine plan, end to end (the real CLI process,
//!    following to its end): the median of 5;
//! 2. `Status` latency p50/p99 while a rollout to all N runs (a second apply that changes
//!    every node's configuration through `[overrides] all`): the operator's view, i.e. the
//!    `Status` RPC on a fresh mTLS connection each time (dial, handshake, call), sampled back to
//!    back from the apply until every agent holds the new spec and `--window-s` (default 60 s)
//!    passed, or the rollout ended; the CLI's own process start is not counted. A configuration
//!    change restarts HA peers (here the gateways) one at a time, so the whole rollout over N
//!    gateways is long: its progress at the window's end is printed;
//! 3. time from that apply (the real `apimctl apply --no-wait` started) until every agent
//!    holds the new plan generation's spec.
//!
//! Targets: RSS < 256 MiB, status p99 < 50 ms, no-op apply < 1 s.
//!
//! Usage: `apim-scale [--agents N] [--idle-s S] [--window-s S] [--store-url URL]` (N defaults
//! to 1000). Each agent costs one file descriptor here and one in the controller: the open-file
//! limit (`ulimit -n`) must exceed N plus a margin; the bench checks and says so. The store is
//! the controller's embedded SQLite unless `--store-url` is given (e.g. `postgres://…`): it goes
//! to the controller's configuration as `[store] url = "…"` ([`controller_settings`]), and a
//! controller that refuses it (a build without that backend, a database it cannot reach) stops
//! the bench at once with the controller's own words.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apim_certs::tls::ControllerEndpoint;
use apim_e2e::cluster::{Cluster, ClusterOptions, Topology};
use apim_proto::v1::{RolloutState, StatusRequest, operator_service_client::OperatorServiceClient};

#[path = "apim-scale/agents.rs"]
mod agents;

use agents::{Creds, Tracker};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long any single phase may take before the bench gives up (a guard, not a wait).
const PATIENCE: Duration = Duration::from_secs(1800);

struct Args {
    agents: usize,
    idle_s: u64,
    window_s: u64,
    /// The controller's `[store] url`; `None`: its embedded SQLite.
    store_url: Option<String>,
}

fn parse_args() -> BenchResult<Args> {
    let mut a = Args {
        agents: 1000,
        idle_s: 10,
        window_s: 60,
        store_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => a.agents = val()?.parse()?,
            "--idle-s" => a.idle_s = val()?.parse()?,
            "--window-s" => a.window_s = val()?.parse()?,
            "--store-url" => a.store_url = Some(val()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if a.agents < 5 {
        return Err("--agents must be at least 5 (one machine per 3.2.0 profile)".into());
    }
    Ok(a)
}

/// Lines for the controller's config file: none for SQLite (the default store), else
/// `[store] url = "…"` (a TOML string, quoted and escaped).
fn controller_settings(store_url: Option<&str>) -> Vec<String> {
    match store_url {
        None => Vec::new(),
        Some(url) => vec![
            "[store]".to_owned(),
            format!("url = {}", toml::Value::String(url.to_owned())),
        ],
    }
}

/// What the bench calls the store in its output (a URL's password is never printed).
fn store_name(store_url: Option<&str>) -> String {
    match store_url {
        None => "SQLite (embedded)".to_owned(),
        Some(url) => {
            let scheme = url.split_once("://").map_or(url, |(s, _)| s);
            let host = url
                .split_once("://")
                .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, h)| h))
                .unwrap_or_default();
            format!("{scheme} ({host})")
        }
    }
}

/// The controller's process state from `/proc` (`None`: gone).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Starts the controller. With `--store-url`, a controller that exits while the harness waits
/// for it to listen (it refused the store setting, or could not open the store) ends the bench
/// at once with its log, instead of after the harness's patience.
fn start_controller(c: &mut Cluster, store_url: Option<&str>) -> BenchResult<()> {
    if store_url.is_none() {
        c.start_controller()?;
        return Ok(());
    }
    let root = c.root().to_path_buf();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let pid = std::fs::read_to_string(root.join("pids").join("controller.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok());
                if let Some(pid) = pid
                    && process_state(pid).is_none_or(|st| st == 'Z')
                {
                    let log = std::fs::read_to_string(root.join("logs").join("controller.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!(
                        "apim-scale: the controller refused --store-url (or could not open that store) and exited; its log ends:"
                    );
                    for l in tail.iter().rev() {
                        eprintln!("  {l}");
                    }
                    std::process::exit(2);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = c.start_controller();
        done.store(true, Ordering::SeqCst);
        r
    })?;
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0..=1) of sorted `v`, nearest rank.
fn quantile(v: &[Duration], q: f64) -> Duration {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The open-file soft limit, raised to the hard limit when it is lower than `need`.
fn ensure_nofile(need: u64) -> BenchResult<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        return Err(format!(
            "the open-file limit is {hard}; {need} are needed (raise it: `ulimit -Hn {need}` as root)"
        )
        .into());
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// (VmRSS, VmHWM) of `pid`, in KiB.
fn rss_kib(pid: u32) -> BenchResult<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> BenchResult<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or(format!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or("malformed status line")?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> BenchResult<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = text.rsplit_once(')').ok_or("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    Ok(f.get(11).ok_or("no utime")?.parse::<u64>()?
        + f.get(12).ok_or("no stime")?.parse::<u64>()?)
}

fn ticks_per_second() -> BenchResult<u64> {
    let v = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.ok_or("no CLK_TCK")?;
    Ok(u64::try_from(v)?)
}

/// The plan: one node per machine (see the module docs); `marker` changes every node's
/// configuration through `[overrides] all` when given.
fn plan_text(c: &Cluster, n: usize, marker: Option<u32>) -> String {
    let (key, pack) = &c.packs[0];
    let file = pack
        .path
        .file_name()
        .map_or(String::new(), |f| f.to_string_lossy().into_owned());
    let mut s = format!(
        r#"# apim-scale: {n} machines, one WSO2 API Manager 3.2.0 node each.
[cluster]
name = "apim-scale"
product = "wso2am-3.2.0"
install_dir = "/opt/wso2"
java_home = "/usr/lib/jvm/java-11-openjdk-amd64"

[distributions]
{key} = {{ path = "dist/{file}", sha256 = "{sha}" }}

[admin]
username = "admin"
password = {{ file = "secrets/admin-password" }}

[databases.apim_db]
type = "h2"
username = "wso2carbon"
password = {{ file = "secrets/h2-password" }}

[databases.shared_db]
type = "h2"
username = "wso2carbon"
password = {{ file = "secrets/h2-password" }}

[tls]
issuer = "cluster-ca"
keystore_type = "JKS"
keystore_file = "wso2carbon.jks"
keystore_password = {{ file = "secrets/keystore-password" }}

[load_balancers]
gateway = {{ hostname = "gw.wso2.com", address = "10.0.0.1" }}

[[gateway_environments]]
name = "Production and Sandbox"
type = "hybrid"

[rollout]
max_parallel = 1000
health_timeout = "5m"
on_failure = "halt"
"#,
        sha = pack.sha256
    );
    if let Some(m) = marker {
        s.push_str(&format!(
            "\n[overrides]\n\"all\" = '''\n[apimsim]\nstartup_delay_ms = {m}\n'''\n"
        ));
    }
    const FIRST: [(&str, &str); 4] = [
        ("km", "key-manager"),
        ("tm", "traffic-manager"),
        ("pub", "publisher"),
        ("dp", "devportal"),
    ];
    for i in 1..=n {
        let (short, role) = FIRST.get(i - 1).copied().unwrap_or(("gw", "gateway"));
        // 10.<hi>.<lo>.1: a distinct address per machine; nothing dials it.
        let addr = format!("10.{}.{}.1", (i >> 8) & 0xff, i & 0xff);
        s.push_str(&format!(
            "\n[[machines]]\nname = \"vm-{i}\"\naddress = \"{addr}\"\n\n[[nodes]]\nname = \"{short}-{i}\"\nmachine = \"vm-{i}\"\nrole = \"{role}\"\nhostname = \"{short}-{i}.wso2.com\"\n"
        ));
    }
    s
}

fn write_plan(
    c: &Cluster,
    file: &str,
    n: usize,
    marker: Option<u32>,
) -> BenchResult<std::path::PathBuf> {
    let p = c.root().join(file);
    std::fs::write(&p, plan_text(c, n, marker))?;
    Ok(p)
}

fn check(out: &std::process::Output, what: &str) -> BenchResult<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{what} failed: {}", apim_e2e::cluster::output_text(out)).into())
}

/// Connection details the bench's RPC clients use.
struct Conn {
    endpoint: ControllerEndpoint,
    ca_pem: String,
    operator: Creds,
}

impl Conn {
    fn read(root: &Path, c: &Cluster) -> BenchResult<Conn> {
        let op = root.join("operator");
        Ok(Conn {
            endpoint: ControllerEndpoint::parse(&c.controller_addr.to_string())?,
            ca_pem: std::fs::read_to_string(op.join("ca.pem"))?,
            operator: Creds {
                cert_pem: std::fs::read_to_string(op.join("operator.pem"))?,
                key_pem: std::fs::read_to_string(op.join("operator-key.pem"))?,
            },
        })
    }

    /// One operator `Status` on a fresh mTLS connection, as `apimctl status` makes it.
    async fn status(&self) -> BenchResult<apim_proto::v1::ClusterStatus> {
        let ch = agents::dial(&self.endpoint, &self.ca_pem, Some(&self.operator)).await?;
        Ok(OperatorServiceClient::new(ch)
            .status(StatusRequest {})
            .await?
            .into_inner())
    }
}

/// Nodes reported healthy on plan generation `generation`'s configuration.
fn new_healthy(s: &apim_proto::v1::ClusterStatus, generation: u64) -> usize {
    s.machines
        .iter()
        .flat_map(|m| &m.nodes)
        .filter(|n| {
            n.phase() == apim_proto::v1::NodePhase::Healthy && n.plan_generation == generation
        })
        .count()
}

/// Nodes reported healthy.
fn healthy_nodes(s: &apim_proto::v1::ClusterStatus) -> usize {
    s.machines
        .iter()
        .flat_map(|m| &m.nodes)
        .filter(|n| n.phase() == apim_proto::v1::NodePhase::Healthy)
        .count()
}

async fn wait_until<F, Fut>(what: &str, mut cond: F) -> BenchResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<bool>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if cond().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run(args: Args) -> BenchResult<bool> {
    let n = args.agents;
    ensure_nofile(n as u64 * 2 + 512)?;
    let mut opts = ClusterOptions::new(Topology::V3FiveNode, "scale");
    opts.controller_settings = controller_settings(args.store_url.as_deref());
    // The harness's cluster gives the real controller process, its config, the operator
    // certificate and the 3.2.0 pack; its five real agents are never started.
    let mut c = Cluster::create(&opts)?;
    start_controller(&mut c, args.store_url.as_deref())?;
    c.ensure_operator_cert()?;
    c.wait_key_pool_full()?;
    // The harness's plan writes the secret files (admin, keystore, H2) this plan names too.
    c.write_plan("harness-plan.toml", &Default::default())?;
    let pid = c
        .running_pid("controller")
        .ok_or("the controller is not running")?;
    let conn = Conn::read(c.root(), &c)?;
    println!(
        "apim-scale: {n} agents, controller pid {pid}, store: {}, root {}",
        store_name(args.store_url.as_deref()),
        c.root().display()
    );

    // Enrol and connect.
    let machines: Vec<String> = (1..=n).map(|i| format!("vm-{i}")).collect();
    let t0 = Instant::now();
    let creds =
        agents::enrol_all(&conn.endpoint, &conn.ca_pem, &conn.operator, &machines, 16).await?;
    let enrol_time = t0.elapsed();
    let tracker = Arc::new(Tracker::default());
    let t0 = Instant::now();
    for (m, cr) in machines.iter().zip(creds) {
        agents::spawn(
            conn.endpoint.clone(),
            conn.ca_pem.clone(),
            m.clone(),
            cr,
            Arc::clone(&tracker),
        );
    }
    wait_until("every agent to connect", || {
        let t = Arc::clone(&tracker);
        async move { Ok(t.connected.load(Ordering::SeqCst) == n) }
    })
    .await?;
    // The controller's view (`apimctl agents`): every agent connected.
    wait_until("the controller to see every agent", || async {
        let a = c.agents()?;
        Ok(a.values().filter(|up| **up).count() == n)
    })
    .await?;
    let connect_time = t0.elapsed();
    println!(
        "   enrolled {n} agents in {:.1} s (token + Enroll each); all connected in {:.1} s",
        enrol_time.as_secs_f64(),
        connect_time.as_secs_f64()
    );

    // First rollout (certificates for every node): timed, not a target.
    let plan1 = write_plan(&c, "plan.toml", n, None)?;
    let t0 = Instant::now();
    let out = c.apply(&plan1)?;
    let first = t0.elapsed();
    check(&out, "the first apply")?;
    let s = conn.status().await?;
    let healthy = healthy_nodes(&s);
    if healthy != n {
        return Err(format!("after the first apply {healthy} of {n} nodes are healthy").into());
    }
    println!(
        "   first apply ({n} nodes, product certificates included): {:.1} s (not a target)",
        first.as_secs_f64()
    );

    // 1. RSS and idle CPU with all connected.
    tokio::time::sleep(Duration::from_secs(2)).await; // let the apply's connections close
    let tck = ticks_per_second()?;
    let (c0, w0) = (cpu_ticks(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let (c1, w1) = (cpu_ticks(pid)?, w0.elapsed());
    let idle_cpu = (c1 - c0) as f64 / tck as f64 / w1.as_secs_f64() * 100.0;
    let (rss, hwm) = rss_kib(pid)?;
    let connected = tracker.connected.load(Ordering::SeqCst);
    let rss_mib = rss as f64 / 1024.0;
    let rss_ok = rss_mib < 256.0;
    println!(
        "1. controller RSS {rss_mib:.1} MiB (peak so far {:.1} MiB) with {connected} of {n} agents connected (target < 256 MiB) {}",
        hwm as f64 / 1024.0,
        verdict(rss_ok)
    );
    println!(
        "   controller idle CPU {idle_cpu:.2} % of one core over {:.1} s, all connected (no target)",
        w1.as_secs_f64()
    );

    // For comparison: Status at rest (no rollout), 50 samples.
    let mut rest = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        conn.status().await?;
        rest.push(t.elapsed());
    }
    rest.sort();
    println!(
        "   status at rest (no rollout): p50 {:.1} ms, p99 {:.1} ms over {} samples",
        ms(quantile(&rest, 0.5)),
        ms(quantile(&rest, 0.99)),
        rest.len()
    );

    // 4 (measured before the change, on the plan the controller holds): no-op apply, 5 times.
    let mut noops = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = c.apply(&plan1)?;
        noops.push(t.elapsed());
        check(&out, "the no-op apply")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if v["state"] != "unchanged" {
            return Err(format!("the re-apply was not a no-op: {v}").into());
        }
    }
    noops.sort();
    let noop = noops[noops.len() / 2];
    let noop_ok = noop < Duration::from_secs(1);
    println!(
        "4. no-op apply, {n} machines: median {:.0} ms of 5 (min {:.0}, max {:.0}) (target < 1 s) {}",
        ms(noop),
        ms(noops[0]),
        ms(noops[noops.len() - 1]),
        verdict(noop_ok)
    );

    // 2 + 3. A rollout that changes every node, with Status sampled back to back from the
    // apply until every agent holds the new spec and `--window-s` passed, or the rollout ended.
    // A configuration change restarts HA peers one at a time, so over N gateways the rollout
    // is long; its progress at the window's end is printed.
    let plan2 = write_plan(&c, "plan-changed.toml", n, Some(7))?;
    let new_gen = s.generation + 1;
    let t0 = Instant::now();
    let out = {
        let mut cmd = c.apimctl_cmd();
        cmd.arg("apply").arg(&plan2).arg("--no-wait");
        tokio::task::spawn_blocking(move || cmd.output()).await??
    };
    check(&out, "the changing apply")?;
    let window = Duration::from_secs(args.window_s);
    let mut lat = Vec::new();
    let mut ended = None;
    let last = loop {
        let s0 = Instant::now();
        let s = conn.status().await?;
        lat.push(s0.elapsed());
        let r = s.rollout.as_ref().filter(|r| r.generation == new_gen);
        if let Some(r) = r
            && !matches!(
                r.state(),
                RolloutState::Pending
                    | RolloutState::Staging
                    | RolloutState::Starting
                    | RolloutState::RollingBack
            )
        {
            ended = Some((t0.elapsed(), r.state()));
        }
        let all_hold = tracker.reached(new_gen).await.is_some_and(|(k, _)| k == n);
        let done = ended.is_some() || (all_hold && t0.elapsed() >= window);
        if done {
            break s;
        }
        if t0.elapsed() > PATIENCE {
            return Err("the changed spec never reached every agent".into());
        }
    };
    let restarted = new_healthy(&last, new_gen);
    let (holders, got) = tracker.reached(new_gen).await.unwrap_or((0, t0));
    lat.sort();
    let (p50, p99) = (quantile(&lat, 0.50), quantile(&lat, 0.99));
    let status_ok = p99 < Duration::from_millis(50);
    let sampled = t0.elapsed();
    println!(
        "2. status p50 {:.1} ms, p99 {:.1} ms over {} samples in the rollout's first {:.1} s (Status RPC, fresh mTLS connection each) (target p99 < 50 ms) {}",
        ms(p50),
        ms(p99),
        lat.len(),
        sampled.as_secs_f64(),
        verdict(status_ok)
    );
    println!(
        "3. changed spec held by {holders} of {n} agents {:.2} s after `apimctl apply --no-wait` started (no target)",
        got.duration_since(t0).as_secs_f64()
    );
    match ended {
        Some((at, state)) => println!(
            "   rollout ended {state:?} at {:.1} s, {restarted} of {n} nodes healthy on the new spec",
            at.as_secs_f64()
        ),
        None => println!(
            "   rollout still running at {:.1} s: {restarted} of {n} nodes healthy on the new spec (HA peers restart one at a time)",
            sampled.as_secs_f64()
        ),
    }
    let (_, hwm_end) = rss_kib(pid)?;
    println!(
        "   controller peak RSS over the whole run {:.1} MiB; agent streams that ended during the run: {}",
        hwm_end as f64 / 1024.0,
        tracker.dropped.load(Ordering::SeqCst)
    );
    tracker.stopping.store(true, Ordering::SeqCst);
    c.shutdown();
    Ok(rss_ok && status_ok && noop_ok)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("apim-scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apim-scale: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("apim-scale: {e}");
            ExitCode::FAILURE
        }
    }
}
