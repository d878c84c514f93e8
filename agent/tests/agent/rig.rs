//! The test rig of the daemon tests: one simulated machine (temp dirs, a fake JDK, a simulated
//! pack), its fake controller and the agent, the NodeSpecs the controller would send it
//! (rendered from a plan), and helpers to read its reports.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use apim_agent::daemon;
use apim_agent::daemon::config::{AgentConfig, Timings};
use apim_agent::daemon::error::DaemonResult;
use apim_certs::tls::ControllerEndpoint;
use apim_e2e::fakejdk::{FakeJdk, JdkSettings, MachineSettings, make_fake_jdk};
use apim_e2e::probe::loopback_for;
use apim_e2e::simpack::{PackInfo, PackKind, PackOptions, build_pack};
use apim_proto::v1::{
    DesiredRun, HostsEntry, MachineSpec, NodePhase, NodeSpec, NodeStatus, StatusReport,
};
use apim_testkit::fake_controller::FakeController;
use apim_testkit::sim::simjava;
use apim_testkit::specs::PlanBuilder;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// Failure guard for polling; generous for a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(180);
pub const MACHINE: &str = "vm-1";
pub const VERSION: &str = "4.2.0";

/// One simulated machine, its fake controller and (when running) its agent.
pub struct Rig {
    pub tmp: TempDir,
    pub ip: Ipv4Addr,
    /// The address of the machine the plan puts the node's peers on (never started).
    pub peers: Ipv4Addr,
    pub ctl: FakeController,
    pub jdk: FakeJdk,
    pub pack: PackInfo,
    pub agent: Option<(
        tokio::sync::oneshot::Sender<()>,
        JoinHandle<DaemonResult<()>>,
    )>,
}

impl Rig {
    pub async fn new(test: &str) -> Rig {
        let tmp = tempfile::tempdir().expect("tmp");
        let ip = loopback_for(test, 1);
        let ctl = FakeController::start(IpAddr::V4(ip)).await;
        let hosts = tmp.path().join("etc-hosts");
        std::fs::write(
            &hosts,
            "127.0.0.1 localhost\n# a comment the agent must keep\n",
        )
        .expect("hosts");
        let mut machine = MachineSettings::new(IpAddr::V4(ip), &hosts);
        machine.startup_delay_ms = 100;
        let jdk = make_fake_jdk(
            &tmp.path().join("jdk"),
            &JdkSettings::new(machine, simjava()),
        )
        .expect("fake jdk");
        let pack = build_pack(
            PackKind::AllInOne,
            VERSION,
            &tmp.path().join("packs"),
            &PackOptions::default(),
        )
        .expect("pack");
        ctl.add_artifact(&pack.sha256, &pack.path);
        ctl.provision_agent(&tmp.path().join("state"), MACHINE);
        Rig {
            tmp,
            ip,
            peers: loopback_for(test, 2),
            ctl,
            jdk,
            pack,
            agent: None,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn hosts(&self) -> PathBuf {
        self.tmp.path().join("etc-hosts")
    }

    pub fn home(&self, node: &str) -> PathBuf {
        self.root()
            .join("opt/wso2")
            .join(node)
            .join(&self.pack.top_dir)
    }

    pub fn config(&self) -> AgentConfig {
        let mut c = AgentConfig::new(
            ControllerEndpoint::parse(&self.ctl.addr.to_string()).expect("endpoint"),
            MACHINE,
        );
        c.state_dir = self.state();
        c.install_root = self.root();
        c.hosts_file = self.hosts();
        c.timings = Timings {
            report_interval: Duration::from_secs(2),
            facts_interval: Duration::from_secs(30),
            supervise_interval: Duration::from_millis(200),
            restart_backoff: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(500),
            retry_backoff_max: Duration::from_secs(5),
            reconnect_base: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(30),
            fetch_attempts: 5,
            tree_sync_delay: Duration::ZERO,
            folder_scan_interval: Duration::from_millis(200),
            // Tests ask for drift checks (CheckDrift); one periodic check shows the timer works.
            drift_interval: Duration::from_secs(3),
        };
        c
    }

    /// Waits until `node`'s record no longer names an unsynced boot: the agent syncs a fresh
    /// tree after its healthy report (`tree_sync_delay` is zero here), so the converge is only
    /// over once that is written.
    pub async fn wait_synced(&self, node: &str) {
        let record_path = self.state().join(format!("nodes/{node}.json"));
        let give_up = std::time::Instant::now() + TIMEOUT;
        loop {
            let record: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
            if record.get("unsynced_since_boot").is_none() {
                return;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "{node} never synced: {record}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn start_agent(&mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = self.config();
        let task = tokio::spawn(daemon::run(cfg, async {
            let _ = rx.await;
        }));
        self.agent = Some((tx, task));
    }

    pub async fn stop_agent(&mut self) {
        if let Some((tx, task)) = self.agent.take() {
            let _ = tx.send(());
            task.await.expect("agent task").expect("agent run");
        }
    }

    /// A 4.2.0 plan with node `name` on this machine (`profile`: gateway-worker or
    /// traffic-manager, or their roles), the roles it is wired to on a peer machine, the pack's
    /// own keystores, a short simulated start (`[apimsim]`) and `extra` as the node's override.
    pub fn plan(&self, name: &str, profile: &str, offset: u16, extra: &str) -> PlanBuilder {
        let plan = PlanBuilder::new(VERSION)
            .issuer("pack-default")
            .java_home(&self.jdk.home)
            .sim_pack(&self.pack)
            .machine(MACHINE, self.ip)
            .node(name, MACHINE, profile, offset)
            .with_peers("vm-peers", self.peers)
            .overrides("all", "[apimsim]\nstartup_delay_ms = 100\n");
        if extra.is_empty() {
            plan
        } else {
            plan.overrides(&format!("node:{name}"), extra)
        }
    }

    /// The `deployment.toml` the controller renders for the node, with `extra` merged last.
    pub fn toml(&self, node: &str, profile: &str, offset: u16, extra: &str) -> String {
        self.plan(node, profile, offset, extra)
            .render()
            .node(node)
            .deployment_toml
    }

    /// The node's spec as the controller sends it, to be `desired`.
    pub fn node(&self, name: &str, profile: &str, offset: u16, desired: DesiredRun) -> NodeSpec {
        let mut spec = self.plan(name, profile, offset, "").render().node(name);
        spec.desired = desired as i32;
        spec
    }

    /// This machine's spec at `generation` with `nodes`, their hostnames (`<node>.test`, as in
    /// [`Rig::plan`]) on its address.
    pub fn machine(&self, generation: u64, nodes: Vec<NodeSpec>) -> MachineSpec {
        MachineSpec {
            machine: MACHINE.into(),
            generation,
            hosts_block: vec![HostsEntry {
                address: self.ip.to_string(),
                names: nodes.iter().map(|n| format!("{}.test", n.name)).collect(),
            }],
            nodes,
            plan_generation: generation,
            destroy: false,
            services: Vec::new(),
        }
    }
}

impl Drop for Rig {
    /// Never leave a simulated server behind, also when a test fails (every tree of every
    /// node: an upgrade test installs several).
    fn drop(&mut self) {
        let base = self.root().join("opt/wso2");
        for node in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            for tree in std::fs::read_dir(node.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Some(pid) = std::fs::read_to_string(tree.path().join("wso2carbon.pid"))
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

pub fn status<'a>(r: &'a StatusReport, node: &str) -> Option<&'a NodeStatus> {
    r.nodes.iter().find(|n| n.node == node)
}

pub fn all_in(r: &StatusReport, generation: u64, nodes: &[&str], phase: NodePhase) -> bool {
    r.generation == generation
        && nodes.iter().all(|n| {
            status(r, n).is_some_and(|s| s.phase == phase as i32 && s.generation == generation)
        })
}

pub fn pid_of(r: &StatusReport, node: &str) -> i32 {
    status(r, node)
        .and_then(|s| s.pid)
        .map(|p| p as i32)
        .unwrap_or_else(|| panic!("{node} has no pid in {r:#?}"))
}

pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(false)
}

pub fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
