//! Agent benchmark (not a test): prints figures against the issue's targets.
//!
//! ```text
//! cargo bench -p apim-agent --bench agent_bench
//! ```
//!
//! 1. **Staging** a simulated pack of >= 200 MB (zip) and >= 10,000 files with
//!    `unpack::stage_zip` vs `unzip -q` of the same zip into the same directory tree, side by
//!    side, alternating, best of `ROUNDS` each (target: <= 1.0x).
//! 2. **No-op re-apply**: `NodeExecutor::converge` of two RUNNING, healthy nodes to the spec
//!    they already run (target: <= 20 ms per node).
//! 3. **Idle agent**: the release `apim-agent` binary connected to a fake controller, holding
//!    two healthy nodes: RSS and CPU over a few seconds (target: < 15 MB, ~0 CPU).
//!
//! Work happens under `CARGO_TARGET_TMPDIR` (the target dir's disk). Set
//! `APIM_BENCH_FILLER_MB` to change the filler size (default 460 MiB uncompressed, which
//! deflates to a little over 200 MB).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apim_agent::daemon::config::AgentConfig;
use apim_agent::daemon::converge::{ExecContext, NodeExecutor, NodeTarget, Outcome};
use apim_agent::daemon::fetch::Fetcher;
use apim_agent::daemon::report::StatusBoard;
use apim_agent::exec::unpack::{self, UnpackLimits};
use apim_certs::tls::ControllerEndpoint;
use apim_e2e::fakejdk::{JdkSettings, MachineSettings, make_fake_jdk};
use apim_e2e::probe::loopback_for;
use apim_e2e::simpack::{Filler, PackInfo, PackKind, PackOptions, build_pack};
use apim_proto::v1::NodePhase;
use apim_testkit::fake_controller::FakeController;
use apim_testkit::sim::simjava;
use apim_testkit::specs::PlanBuilder;

const ROUNDS: usize = 3;
const NOOP_ITERATIONS: usize = 50;
const MACHINE: &str = "vm-bench";

type BoxError = Box<dyn std::error::Error>;

fn dir_size_files(p: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let md = e.metadata().expect("metadata");
            if md.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += md.len();
            }
        }
    }
    (files, bytes)
}

async fn bench_staging(work: &Path) -> Result<(f64, f64, PackInfo), BoxError> {
    let mb: u64 = std::env::var("APIM_BENCH_FILLER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(460);
    let t = Instant::now();
    let pack = build_pack(
        PackKind::AllInOne,
        "4.2.0",
        &work.join("big"),
        &PackOptions {
            filler: Some(Filler {
                files: 10_000,
                bytes: mb << 20,
            }),
            ..PackOptions::default()
        },
    )?;
    println!(
        "built {} ({:.1} MB zip) in {:.1} s",
        pack.path.display(),
        pack.size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let limits = UnpackLimits::default();
    let mut best_unzip = f64::MAX;
    let mut best_stage = f64::MAX;
    let mut counted = (0, 0);
    for round in 0..ROUNDS {
        let dest = work.join(format!("unzip-{round}"));
        std::fs::create_dir_all(&dest)?;
        // Start each timed run with no dirty pages from the previous one (writeback noise).
        std::process::Command::new("sync").status()?;
        let t = Instant::now();
        let st = std::process::Command::new("unzip")
            .arg("-q")
            .arg(&pack.path)
            .arg("-d")
            .arg(&dest)
            .status()?;
        let unzip_s = t.elapsed().as_secs_f64();
        if !st.success() {
            return Err(format!("unzip failed: {st}").into());
        }
        counted = dir_size_files(&dest);
        std::fs::remove_dir_all(&dest)?;

        let root = work.join(format!("stage-{round}"));
        std::fs::create_dir_all(&root)?;
        std::process::Command::new("sync").status()?;
        let t = Instant::now();
        let staged = unpack::stage_zip(&pack.path, &root, &pack.top_dir, &limits).await?;
        let stage_s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: unzip -q {unzip_s:.2} s | stage_zip {stage_s:.2} s ({} files, {} MiB)",
            staged.files,
            staged.bytes >> 20
        );
        staged.discard()?;
        std::fs::remove_dir_all(&root)?;
        best_unzip = best_unzip.min(unzip_s);
        best_stage = best_stage.min(stage_s);
    }
    println!("unzip tree: {} files, {} MiB", counted.0, counted.1 >> 20);
    Ok((best_stage, best_unzip, pack))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rfind(')').map(|i| &s[i + 2..]).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 14 and 15 (utime, stime) are at 11 and 12 after the state field
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    let work = tmp.path();

    // 1. staging
    let (stage_s, unzip_s, big) = bench_staging(work).await?;
    std::fs::remove_file(&big.path)?;

    // 2. no-op re-apply with two running nodes
    let ip = loopback_for("agent_bench", 1);
    let hosts = work.join("etc-hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n")?;
    let mut machine = MachineSettings::new(IpAddr::V4(ip), &hosts);
    machine.startup_delay_ms = 100;
    let jdk = make_fake_jdk(&work.join("jdk"), &JdkSettings::new(machine, simjava()))?;
    let pack = build_pack(
        PackKind::AllInOne,
        "4.2.0",
        &work.join("packs"),
        &PackOptions::default(),
    )?;
    let ctl = FakeController::start(IpAddr::V4(ip)).await;
    ctl.add_artifact(&pack.sha256, &pack.path);
    let state = work.join("state");
    ctl.provision_agent(&state, MACHINE);
    let mut config = AgentConfig::new(ControllerEndpoint::parse(&ctl.addr.to_string())?, MACHINE);
    config.state_dir = state.clone();
    config.install_root = work.join("root");
    config.hosts_file = hosts.clone();
    std::fs::create_dir_all(config.cache_dir())?;
    std::fs::copy(
        &pack.path,
        config.cache_dir().join(format!("{}.zip", pack.sha256)),
    )?;
    let ctx = Arc::new(ExecContext {
        config: config.clone(),
        fetcher: Arc::new(Fetcher::new(config.cache_dir(), None, 1)),
        board: Arc::new(StatusBoard::new()),
        limits: UnpackLimits::default(),
    });
    // The spec the controller would send: both nodes on this machine, their peers elsewhere.
    let spec = PlanBuilder::new("4.2.0")
        .issuer("pack-default")
        .java_home(&jdk.home)
        .sim_pack(&pack)
        .machine(MACHINE, ip)
        .node("gw-1", MACHINE, "gateway-worker", 1)
        .node("tm-1", MACHINE, "traffic-manager", 2)
        .with_peers("vm-peers", loopback_for("agent_bench", 2))
        .overrides("all", "[apimsim]\nstartup_delay_ms = 100\n")
        .render()
        .machine(MACHINE, 1);
    let nodes = spec.nodes.clone();
    let mut noop = Vec::new();
    let mut homes = Vec::new();
    for spec in &nodes {
        let mut exec = NodeExecutor::load(&spec.name, Arc::clone(&ctx))?;
        let target = NodeTarget {
            generation: 1,
            spec: spec.clone(),
            machine_memory: Default::default(),
            hosts: Vec::new(),
        };
        let t = Instant::now();
        let first = exec.converge(&target, std::future::pending()).await?;
        println!(
            "{}: first converge {:?} in {:.2} s",
            spec.name,
            first,
            t.elapsed().as_secs_f64()
        );
        assert!(matches!(first, Outcome::Healthy { .. }));
        homes.push(exec.home(spec)?);
        let mut worst = Duration::ZERO;
        let t = Instant::now();
        for _ in 0..NOOP_ITERATIONS {
            let one = Instant::now();
            let again = exec.converge(&target, std::future::pending()).await?;
            assert_eq!(again, first, "a no-op re-apply changed the outcome");
            worst = worst.max(one.elapsed());
        }
        let mean = t.elapsed() / NOOP_ITERATIONS as u32;
        println!(
            "{}: no-op re-apply mean {:.3} ms, worst {:.3} ms over {NOOP_ITERATIONS}",
            spec.name,
            mean.as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3
        );
        noop.push((mean, worst));
    }

    // 3. idle agent (the release binary) holding those two nodes
    let config_file = work.join("agent.toml");
    std::fs::write(
        &config_file,
        format!(
            "controller = \"{}\"\nmachine = \"{MACHINE}\"\nstate_dir = \"{}\"\ninstall_root = \"{}\"\nhosts_file = \"{}\"\n",
            ctl.addr,
            state.display(),
            config.install_root.display(),
            hosts.display()
        ),
    )?;
    ctl.push(spec).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_apim-agent"))
        .arg("--config")
        .arg(&config_file)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    ctl.wait_report(0, Duration::from_secs(120), "both nodes HEALTHY", |r| {
        r.generation == 1
            && r.nodes.len() == 2
            && r.nodes.iter().all(|n| n.phase == NodePhase::Healthy as i32)
    })
    .await;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let window = Duration::from_secs(5);
    let c0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut max_rss = 0;
    while t0.elapsed() < window {
        max_rss = max_rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_s = (cpu_ticks(pid) - c0) as f64 / hz;
    let cpu_pct = cpu_s / t0.elapsed().as_secs_f64() * 100.0;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();

    // stop the nodes
    for home in &homes {
        if let Ok(t) = std::fs::read_to_string(home.join("wso2carbon.pid"))
            && let Ok(p) = t.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    let ratio = stage_s / unzip_s;
    println!();
    println!("== apim-agent benchmark ==");
    println!(
        "staging {:.1} MB zip, >= 10,000 files: stage_zip {stage_s:.2} s vs unzip -q {unzip_s:.2} s = {ratio:.2}x (target <= 1.0x) {}",
        big.size as f64 / 1e6,
        verdict(ratio <= 1.0)
    );
    for (spec, (mean, worst)) in nodes.iter().zip(&noop) {
        println!(
            "no-op re-apply {}: mean {:.3} ms, worst {:.3} ms (target <= 20 ms) {}",
            spec.name,
            mean.as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3,
            verdict(*worst <= Duration::from_millis(20))
        );
    }
    println!(
        "idle agent: max RSS {:.1} MB, CPU {cpu_s:.3} s over {:.1} s = {cpu_pct:.2}% (target < 15 MB, ~0) {}",
        max_rss as f64 / 1024.0,
        window.as_secs_f64(),
        verdict(max_rss < 15 * 1024 && cpu_pct < 1.0)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "OK" } else { "MISSED" }
}
