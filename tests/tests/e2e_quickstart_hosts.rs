//! `deploy/quickstart.sh --hosts` end to end, through its engine (`apim-e2e-quickstart up DIR
//! --hosts`, then `down DIR`): the 3.x five-node cluster with every simulated machine a host
//! (its own network namespace on a private bridge and its own mount namespace, where its agent
//! edits the real `/etc/hosts` path; see `tests/src/netns.rs`), left running when the
//! quickstart exits, reused by a re-run, and taken down without a trace by `down`.
//!
//! Needs root: without it the quickstart refuses `--hosts` saying why, and the test fails with
//! that output (the refusal itself is checked by its own test, which runs as root or not).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use apim_e2e::cluster::{
    Binaries, Topology, all_healthy, kept_network_prefix, output_text, rollout_state,
};
use apim_e2e::netns::{listening, mount_points_under};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const QUICKSTART: &str = env!("CARGO_BIN_EXE_apim-e2e-quickstart");

/// Runs the quickstart's engine with `args`; the binaries it starts are built first (once).
fn quickstart(args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
    Binaries::locate().map_err(|e| e.to_string())?;
    Ok(Command::new(QUICKSTART)
        .args(args)
        .env("APIM_E2E_NO_BUILD", "1")
        .output()?)
}

/// Runs `down` on drop unless the test did (a failed test leaves nothing running).
struct DownOnDrop(PathBuf, bool);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            let _ = Command::new(QUICKSTART)
                .arg("down")
                .arg(&self.0)
                .env("APIM_E2E_NO_BUILD", "1")
                .output();
        }
    }
}

/// The network interfaces of the test's own namespace.
fn our_links() -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
    Ok(std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// The named network namespaces of the quickstart in `dir` (`/run/netns/<prefix>-*`).
fn netns_of(dir: &Path) -> BTreeSet<String> {
    let prefix = format!("{}-", kept_network_prefix(dir));
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// A namespace file's identity (device, inode).
fn ns_id(path: impl AsRef<Path>) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A live process's start time (`/proc/<pid>/stat` field 22): with the pid, who it is. `None`
/// for a process that is gone or dead (a zombie its new parent has not reaped yet).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if fields
        .next()
        .is_some_and(|state| matches!(state, "Z" | "X"))
    {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// (pid, start time) of every process in one of the network namespaces `ids` or whose
/// command line names `dir`.
fn processes_of(dir: &Path, ids: &BTreeSet<(u64, u64)>) -> BTreeSet<(i32, u64)> {
    let needle = dir.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .filter(|pid| {
            ns_id(format!("/proc/{pid}/ns/net")).is_some_and(|id| ids.contains(&id))
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect()
}

/// The quickstart's pids (`DIR/pids/*.pid`), by file name.
fn pid_files(dir: &Path) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir.join("pids"))? {
        let e = e?;
        v.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path())?.trim().to_owned(),
        ));
    }
    v.sort();
    Ok(v)
}

/// `DIR/apimctl status -o json` (apimctl in the controller's network namespace).
fn status(dir: &Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let out = Command::new(dir.join("apimctl"))
        .args(["status", "-o", "json"])
        .output()?;
    assert!(
        out.status.success(),
        "DIR/apimctl status: {}",
        output_text(&out)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Every machine's agent sees at `/etc/hosts` its machine's private file, holding the cluster's
/// block (every node's name at a bridge address).
fn assert_agents_edit_their_own_etc_hosts(dir: &Path) -> TestResult {
    let ours = ns_id("/proc/self/ns/mnt").ok_or("our mount namespace")?;
    let topology = Topology::V3FiveNode;
    let machines: BTreeSet<String> = topology.nodes().into_iter().map(|n| n.machine).collect();
    for m in &machines {
        let pid = std::fs::read_to_string(dir.join("pids").join(format!("agent-{m}.pid")))?;
        let pid = pid.trim();
        assert_ne!(
            ns_id(format!("/proc/{pid}/ns/mnt")),
            Some(ours),
            "{m}: its agent has its own mount namespace"
        );
        let seen = std::fs::read_to_string(format!("/proc/{pid}/root/etc/hosts"))?;
        let own = std::fs::read_to_string(dir.join("machines").join(m).join("hosts"))?;
        assert_eq!(seen, own, "{m}: its /etc/hosts is its private file");
        let block = seen
            .split_once("# BEGIN apimctl")
            .and_then(|(_, r)| r.split_once("# END apimctl"))
            .ok_or_else(|| format!("{m}: no managed block in its /etc/hosts:\n{seen}"))?
            .0;
        for n in topology.nodes() {
            assert!(
                block.lines().any(|l| {
                    let mut f = l.split_whitespace();
                    f.next().is_some_and(|ip| ip.starts_with("10.250."))
                        && f.any(|h| h == n.hostname)
                }),
                "{m}: {} at a bridge address in its block:\n{seen}",
                n.hostname
            );
        }
    }
    Ok(())
}

#[test]
fn quickstart_hosts_runs_every_machine_as_a_host_is_reused_and_down_leaves_nothing() -> TestResult {
    let etc_hosts = std::fs::read("/etc/hosts")?;
    let links = our_links()?;
    let tmp = tempfile::Builder::new()
        .prefix("apim-qs-hosts-")
        .tempdir()?;
    let dir = tmp.path().canonicalize()?.join("qs");
    let d = dir.to_string_lossy().into_owned();
    let mut guard = DownOnDrop(dir.clone(), false);

    let out = quickstart(&["up", &d, "--hosts"])?;
    assert!(out.status.success(), "up --hosts: {}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{d}/apimctl status")),
        "it says how to reach the cluster: {text}"
    );

    // Seven namespaces: the hub (bridge), five machines, the controller; none of their links
    // in ours.
    let names = netns_of(&dir);
    assert_eq!(names.len(), 7, "{names:?}");
    assert_eq!(
        our_links()?,
        links,
        "no link added to the caller's namespace"
    );
    let ids: BTreeSet<(u64, u64)> = names
        .iter()
        .filter_map(|n| ns_id(Path::new("/run/netns").join(n)))
        .collect();

    // The quickstart has exited; the cluster runs on, every node healthy.
    let s = status(&dir)?;
    let nodes: Vec<String> = Topology::V3FiveNode
        .nodes()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &nodes), "{s}");

    assert_agents_edit_their_own_etc_hosts(&dir)?;
    assert_eq!(
        std::fs::read("/etc/hosts")?,
        etc_hosts,
        "the host's /etc/hosts is untouched"
    );
    assert!(
        !String::from_utf8_lossy(&etc_hosts).contains("BEGIN apimctl"),
        "no cluster block in the host's /etc/hosts"
    );

    // The controller listens in its namespace, not in the caller's.
    let config: toml::Table = std::fs::read_to_string(dir.join("controller.toml"))?.parse()?;
    let listen: std::net::SocketAddr = config["listen"].as_str().ok_or("listen")?.parse()?;
    let ctl: u32 = std::fs::read_to_string(dir.join("pids").join("controller.pid"))?
        .trim()
        .parse()?;
    assert!(listening(ctl, listen.port()), "in its namespace");
    assert!(
        !listening(std::process::id(), listen.port()),
        "nothing of the cluster listens in the caller's namespace"
    );

    // A re-run while it runs reuses it: the same namespaces and processes, every node healthy.
    let pids = pid_files(&dir)?;
    let out = quickstart(&["up", &d, "--hosts"])?;
    assert!(
        out.status.success(),
        "up --hosts again: {}",
        output_text(&out)
    );
    assert_eq!(pid_files(&dir)?, pids, "the same daemons");
    let again: BTreeSet<(u64, u64)> = netns_of(&dir)
        .iter()
        .filter_map(|n| ns_id(Path::new("/run/netns").join(n)))
        .collect();
    assert_eq!(again, ids, "the same namespaces");
    assert!(all_healthy(&status(&dir)?, &nodes));

    // Down: no process, namespace, mount or link of it is left.
    let running = processes_of(&dir, &ids);
    assert!(
        running.len() >= 11,
        "controller, five agents, five servers: {running:?}"
    );
    guard.1 = true;
    let out = quickstart(&["down", &d])?;
    assert!(out.status.success(), "down: {}", output_text(&out));
    assert!(netns_of(&dir).is_empty(), "{:?}", netns_of(&dir));
    let mounts = mount_points_under(tmp.path());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let left: Vec<_> = running
        .iter()
        .filter(|(pid, start)| start_time(*pid) == Some(*start))
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    let strays = processes_of(&dir, &ids);
    assert!(strays.is_empty(), "processes of it: {strays:?}");
    assert_eq!(our_links()?, links, "links");
    assert_eq!(std::fs::read("/etc/hosts")?, etc_hosts, "/etc/hosts");
    Ok(())
}

#[test]
fn quickstart_hosts_refuses_without_root_saying_why_and_that_the_plain_quickstart_works()
-> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("qs");
    let d = dir.to_string_lossy().into_owned();
    // As root, the same binary run as `nobody`.
    let out = if nix::unistd::geteuid().is_root() {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([QUICKSTART, "up", &d, "--hosts"])
            .output()?
    } else {
        Command::new(QUICKSTART)
            .args(["up", &d, "--hosts"])
            .output()?
    };
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--hosts needs root"), "{err}");
    assert!(
        err.contains("deploy/quickstart.sh`, which works without root"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing laid out");
    Ok(())
}

#[test]
fn quickstart_hosts_says_so_when_the_kernel_refuses_the_namespaces() -> TestResult {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it drops CAP_SYS_ADMIN and CAP_NET_ADMIN from a root process so \
         that the kernel refuses the namespaces"
    );
    Binaries::locate().map_err(|e| e.to_string())?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().canonicalize()?.join("qs");
    let d = dir.to_string_lossy().into_owned();
    let out = Command::new("setpriv")
        .args(["--bounding-set=-sys_admin,-net_admin", "--"])
        .args([QUICKSTART, "up", &d, "--hosts"])
        .env("APIM_E2E_NO_BUILD", "1")
        .output()?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the kernel refused the machines' namespaces"),
        "{err}"
    );
    assert!(err.contains("ip netns add"), "names the command: {err}");
    assert!(err.contains("works without them"), "{err}");
    assert!(netns_of(&dir).is_empty(), "no namespace left");
    assert!(
        !dir.join("quickstart-mode").exists(),
        "the folder is not claimed for --hosts: plain quickstart may use it"
    );
    assert!(mount_points_under(tmp.path()).is_empty(), "no mount left");
    Ok(())
}

/// `--hosts --db postgres`: the machines' loopback is their own, so the quickstart forwards the
/// host's database server into the controller's namespace (`forward-db`, run here as the
/// quickstart runs it) and the plan's `db.wso2.com` is the controller host. Checked on a harness
/// cluster as hosts with its own test databases (the quickstart's are fixed names another
/// quickstart on this machine may use): the agents create the schemas and every simulated
/// server checks its databases before it reports ready, all through the forwarder.
#[test]
fn as_hosts_the_machines_reach_the_hosts_database_server_through_the_forwarder() -> TestResult {
    use apim_e2e::cluster::{Cluster, ClusterOptions, PlanParams, ServerDb};
    use apim_e2e::db::{Engine, TestDb};
    let apim = TestDb::create(Engine::Postgres);
    let shared = TestDb::create(Engine::Postgres);
    let mut opts = ClusterOptions::new(Topology::V3FiveNode, "e2e_qs_hosts_db");
    opts.namespaces = true;
    // Shown with its Display: which command the kernel refused, why, and what this needs.
    let mut c = Cluster::create(&opts).map_err(|e| e.to_string())?;
    c.start().map_err(|e| e.to_string())?;
    let mut fwd = Command::new(QUICKSTART);
    fwd.arg("forward-db").arg(c.root());
    let pid = c.forward_database(fwd, apim.port)?;
    assert_eq!(c.running_pid("db-forward"), Some(pid));
    let db_addr = c.database_address();
    let ctl = c
        .network()
        .ok_or("namespaces")?
        .host(apim_e2e::cluster::CONTROLLER_HOST)?
        .address;
    assert_eq!(db_addr, ctl, "db.wso2.com is the controller host");

    let creds = |d: &TestDb| (d.name.clone(), d.user.clone(), d.password.clone());
    let params = PlanParams {
        database: Some(ServerDb {
            db_type: "postgres",
            port: apim.port,
            apim: creds(&apim),
            shared: creds(&shared),
            init: true,
            driver: Some((
                "postgresql-42.7.4.jar".into(),
                apim_e2e::simpack::driver_jar("org.postgresql.Driver"),
            )),
        }),
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    assert!(
        std::fs::read_to_string(&plan)?.contains(&format!("\"db.wso2.com\" = \"{db_addr}\"")),
        "the plan resolves db.wso2.com to the controller host"
    );
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    let s = c.status()?;
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert!(!apim.tables().is_empty(), "the apim schema was created");
    assert!(!shared.tables().is_empty(), "the shared schema was created");
    // Every machine reached it through the forwarder (its log names each connection's peer).
    let log = std::fs::read_to_string(c.root().join("logs").join("db-forward.log"))?;
    for m in &c.machines {
        assert!(
            log.contains(&format!("connection from {}:", m.address)),
            "{}: no connection through the forwarder:\n{log}",
            m.name
        );
    }
    drop(c);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || start_time(i32::try_from(pid)?).is_none(),
        "the forwarder stops with the cluster"
    );
    Ok(())
}
