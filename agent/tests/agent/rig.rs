//! The test rig of the daemon tests: one simulated machine (temp dirs, a fake JDK, a simulated
//! pack), its fake controller and the agent, and helpers to read its reports.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use apim_agent::daemon;
use apim_agent::daemon::config::{AgentConfig, Timings};
use apim_agent::daemon::error::DaemonResult;
use apim_agent::exec::keystores::keystores_digest;
use apim_certs::tls::ControllerEndpoint;
use apim_e2e::fakejdk::{FakeJdk, JdkSettings, MachineSettings, make_fake_jdk};
use apim_e2e::probe::loopback_for;
use apim_e2e::simpack::{PackInfo, PackKind, PackOptions, build_pack};
use apim_proto::v1::{
    ArtifactRef, CommandSpec, DesiredRun, HostsEntry, HttpProbe, MachineSpec, NodePhase, NodeSpec,
    NodeStatus, Readiness, StatusReport,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use apim_testkit::fake_controller::FakeController;
use apim_testkit::sim::simjava;

/// Failure guard for polling; generous for a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(180);
pub const MACHINE: &str = "vm-1";
pub const VERSION: &str = "4.2.0";

/// One simulated machine, its fake controller and (when running) its agent.
pub struct Rig {
    pub tmp: TempDir,
    pub ip: Ipv4Addr,
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

    pub fn toml(&self, node: &str, profile: &str, offset: u16, extra: &str) -> String {
        format!(
            "[server]\nhostname = \"{node}.test\"\noffset = {offset}\nserver_role = \"{profile}\"\n\n\
             [super_admin]\nusername = \"admin\"\npassword = \"admin\"\ncreate_admin_account = true\n\n\
             [keystore.tls]\nfile_name = \"wso2carbon.jks\"\ntype = \"JKS\"\npassword = \"wso2carbon\"\n\
             alias = \"wso2carbon\"\nkey_password = \"wso2carbon\"\n\n\
             [apimsim]\nstartup_delay_ms = 100\n{extra}"
        )
    }

    /// A 4.2.0 node: `profile` is gateway-worker or traffic-manager.
    pub fn node(&self, name: &str, profile: &str, offset: u16, desired: DesiredRun) -> NodeSpec {
        let ports: &[u16] = if profile == "gateway-worker" {
            &[9443, 9763, 8280, 8243, 9099, 8099]
        } else {
            &[9443, 9763, 5672, 9611, 9711]
        };
        let mut http = vec![HttpProbe {
            url: format!("http://{}:{}/services/Version", self.ip, 9763 + offset),
            expect_status: 200,
            tls_insecure: false,
            expect_body: None,
        }];
        if profile == "gateway-worker" {
            http.push(HttpProbe {
                url: format!(
                    "https://{}:{}/api/am/gateway/v2/server-startup-healthcheck",
                    self.ip,
                    9443 + offset
                ),
                expect_status: 200,
                tls_insecure: true,
                expect_body: None,
            });
        }
        let mut spec = NodeSpec {
            name: name.to_owned(),
            role: profile.to_owned(),
            product: format!("wso2am-{VERSION}"),
            pack: Some(ArtifactRef {
                sha256: self.pack.sha256.clone(),
                size: self.pack.size,
                file_name: format!("{}.zip", self.pack.top_dir),
                top_dir: self.pack.top_dir.clone(),
            }),
            install_dir: format!("/opt/wso2/{name}"),
            java_home: self.jdk.home.display().to_string(),
            run_as_user: String::new(),
            deployment_toml: self.toml(name, profile, offset, ""),
            deployment_toml_path: "repository/conf/deployment.toml".into(),
            optimizer: Some(CommandSpec {
                argv: vec!["bin/profileSetup.sh".into(), format!("-Dprofile={profile}")],
                success_marker: Some("Finished the optimizations".into()),
                failure_markers: vec!["Profile is not specified properly".into()],
                timeout_s: 120,
            }),
            start: Some(CommandSpec {
                argv: vec![
                    "bin/api-manager.sh".into(),
                    format!("-Dprofile={profile}"),
                    "start".into(),
                ],
                ..CommandSpec::default()
            }),
            stop: Some(CommandSpec {
                argv: vec!["bin/api-manager.sh".into(), "stop".into()],
                ..CommandSpec::default()
            }),
            env: Vec::new(),
            readiness: Some(Readiness {
                log_file: "repository/logs/wso2carbon.log".into(),
                log_line: "WSO2 Carbon started in".into(),
                tcp_ports: ports.iter().map(|p| u32::from(p + offset)).collect(),
                http_urls: http,
                timeout_s: 120,
                address: self.ip.to_string(),
            }),
            keystores: None,
            config_digest: String::new(),
            desired: desired as i32,
            // What the controller's product catalogue says for 4.2.
            java_min: 11,
            java_max: 17,
            process: Some(apim_proto::v1::ServerProcess {
                pid_file: "wso2carbon.pid".into(),
                main_class: "org.wso2.carbon.bootstrap.Bootstrap".into(),
                home_arg_prefix: "-Dcarbon.home=".into(),
                home_env: "CARBON_HOME".into(),
            }),
        };
        digest(&mut spec);
        spec
    }

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
        }
    }
}

impl Drop for Rig {
    /// Never leave a simulated server behind, also when a test fails.
    fn drop(&mut self) {
        let base = self.root().join("opt/wso2");
        for ent in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let pid_file = ent.path().join(&self.pack.top_dir).join("wso2carbon.pid");
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// What the controller does: a digest of what needs a restart when it changes.
pub fn digest(spec: &mut NodeSpec) {
    let mut h = Sha256::new();
    h.update(spec.deployment_toml.as_bytes());
    if let Some(k) = &spec.keystores {
        h.update(keystores_digest(k).as_bytes());
    }
    spec.config_digest = hex::encode(h.finalize());
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
