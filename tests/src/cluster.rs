//! A whole apimctl cluster on loopback, as real processes: one `apimctl controller run`, one
//! `apim-agent` per simulated machine, simulated packs and a fake JDK per machine.
//!
//! Every simulated machine gets its own 127.x address ([`crate::probe::loopback_for`]), its
//! own install root, state dir, hosts file and fake JDK (whose `apimsim.toml` makes the
//! simulated servers bind to that address and resolve names through that hosts file). The plan
//! points each machine's `java_home` at its fake JDK and keeps the install dir absolute
//! (`/opt/wso2`), which each agent prefixes with its install root.
//!
//! The binaries are found in the cargo target dir the running executable lives in (or where
//! `APIMCTL_BIN`, `APIM_AGENT_BIN`, `APIM_SIMJAVA` say); unless
//! `APIM_E2E_NO_BUILD` is set, [`Binaries::locate`] first runs
//! `cargo build --bins -p apimctl -p apim-agent -p apim-e2e` (once per process) so a test
//! never runs stale binaries. Every process runs in its own process group with its output in
//! `<root>/logs/`; dropping a [`Cluster`] kills them all, and the simulated servers the agents
//! started, unless [`Cluster::keep_running`] was called (the quickstart).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::fakejdk::{JdkSettings, MachineSettings, make_fake_jdk};
use crate::probe::loopback_for;
use crate::simpack::{self, Filler, PackInfo, PackKind, PackOptions};

/// Upper bound of any wait in the harness: a failure guard, never a synchronisation device.
pub const PATIENCE: Duration = Duration::from_secs(240);

/// The log line the simulated server writes when its process starts.
pub const STARTING_LINE: &str = "Starting WSO2 Carbon...";
/// The log line the simulated server writes when it is ready.
pub const STARTED_LINE: &str = "WSO2 Carbon started in";

/// Errors of the harness; each says what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file-system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Building a simulated pack failed.
    #[error("building a simulated pack: {0}")]
    Pack(#[from] simpack::SimPackError),
    /// Laying out a fake JDK failed.
    #[error("laying out a fake JDK: {0}")]
    Jdk(#[from] crate::fakejdk::FakeJdkError),
    /// `cargo build` of the binaries failed or a binary is missing.
    #[error("binaries: {0}")]
    Build(String),
    /// A command ran and failed.
    #[error("`{command}` exited with {status:?}: {stderr}")]
    Command {
        /// The command line (never holds a secret).
        command: String,
        /// Its exit code.
        status: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command printed something that is not the JSON expected.
    #[error("`{command}` printed invalid JSON ({source}): {text}")]
    Json {
        /// The command line.
        command: String,
        /// The parser's complaint.
        source: serde_json::Error,
        /// What it printed.
        text: String,
    },
    /// A condition did not hold within [`PATIENCE`].
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A name the cluster does not have.
    #[error("unknown {kind} `{name}`")]
    Unknown {
        /// machine or node.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
}

/// The harness's result type.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError {
    let path = path.to_path_buf();
    move |source| ClusterError::Io { what, path, source }
}

/// The three binaries a cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `apimctl` CLI (and controller daemon).
    pub apimctl: PathBuf,
    /// The `apim-agent` daemon.
    pub agent: PathBuf,
    /// `apim-simjava`, the simulated JVM behind each fake JDK.
    pub simjava: PathBuf,
}

/// The profile dir (`target/debug`) the running executable was built into.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| ClusterError::Build(e.to_string()))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| ClusterError::Build("executable has no parent dir".into()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The workspace root (this crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo_build(profile: &Path) -> Result<()> {
    let target = profile
        .parent()
        .ok_or_else(|| ClusterError::Build("profile dir has no parent".into()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bins", "-p", "apimctl", "-p", "apim-agent"])
        .args(["-p", "apim-e2e"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(workspace_root());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| ClusterError::Build(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(ClusterError::Build(format!(
            "cargo build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

impl Binaries {
    /// Finds the binaries next to the running executable, building them first (once per
    /// process) unless `APIM_E2E_NO_BUILD` is set.
    pub fn locate() -> Result<Binaries> {
        static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
        let profile = profile_dir()?;
        if std::env::var_os("APIM_E2E_NO_BUILD").is_none() {
            BUILT
                .get_or_init(|| cargo_build(&profile).map_err(|e| e.to_string()))
                .clone()
                .map_err(ClusterError::Build)?;
        }
        let pick = |env: &str, name: &str| {
            std::env::var_os(env).map_or_else(|| profile.join(name), PathBuf::from)
        };
        let bins = Binaries {
            apimctl: pick("APIMCTL_BIN", "apimctl"),
            agent: pick("APIM_AGENT_BIN", "apim-agent"),
            simjava: pick("APIM_SIMJAVA", "apim-simjava"),
        };
        for b in [&bins.apimctl, &bins.agent, &bins.simjava] {
            if !b.is_file() {
                return Err(ClusterError::Build(format!(
                    "{} is missing (run `cargo build --bins`)",
                    b.display()
                )));
            }
        }
        Ok(bins)
    }
}

/// The seed topologies a cluster can be laid out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// WSO2 API Manager 3.2.0, five profiles, one machine each.
    V3FiveNode,
    /// WSO2 API Manager 4.5.0 split packs in HA: two control planes, two traffic managers,
    /// two gateways, one machine each.
    V45Ha,
    /// WSO2 API Manager 3.2.0 at scale: this many machines, each running all five profiles
    /// (offsets 0-4), every role behind a load balancer (benchmarks: 10 machines = 50 nodes).
    V3Wide(u8),
}

/// One node of a topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDef {
    /// Node name.
    pub name: String,
    /// Its machine's name.
    pub machine: String,
    /// Portable role.
    pub role: String,
    /// Its hostname.
    pub hostname: String,
    /// `gateway_id` (4.5 gateways).
    pub gateway_id: Option<String>,
    /// Port offset.
    pub offset: u16,
}

impl Topology {
    /// The product string of the plan.
    pub fn product(self) -> &'static str {
        match self {
            Topology::V3FiveNode | Topology::V3Wide(_) => "wso2am-3.2.0",
            Topology::V45Ha => "wso2am-4.5.0",
        }
    }

    /// A JDK version the product supports (3.2 runs on 8 or 11, 4.5 on 17 or 21).
    pub fn java_version(self) -> &'static str {
        match self {
            Topology::V3FiveNode | Topology::V3Wide(_) => "11.0.21",
            Topology::V45Ha => "17.0.9",
        }
    }

    /// The packs' keystore format (`[tls] keystore_type`).
    pub fn keystore_type(self) -> &'static str {
        match self {
            Topology::V3FiveNode | Topology::V3Wide(_) => "JKS",
            Topology::V45Ha => "PKCS12",
        }
    }

    /// `[load_balancers]`: (role, LB hostname) for every role with several nodes.
    pub fn load_balancers(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Topology::V3FiveNode => Vec::new(),
            Topology::V45Ha => vec![
                ("control-plane", "api.am.wso2.com"),
                ("traffic-manager", "tm.am.wso2.com"),
                ("gateway", "gw.wso2.com"),
            ],
            Topology::V3Wide(_) => vec![
                ("key-manager", "km.wso2.com"),
                ("traffic-manager", "tm.wso2.com"),
                ("publisher", "pub.wso2.com"),
                ("devportal", "dp.wso2.com"),
                ("gateway", "gw.wso2.com"),
            ],
        }
    }

    /// (distribution key, pack kind, version) of every pack the plan needs.
    pub fn packs(self) -> Vec<(&'static str, PackKind, &'static str)> {
        match self {
            Topology::V3FiveNode | Topology::V3Wide(_) => {
                vec![("default", PackKind::AllInOne, "3.2.0")]
            }
            Topology::V45Ha => vec![
                ("control-plane", PackKind::ApiControlPlane, "4.5.0"),
                ("gateway", PackKind::UniversalGateway, "4.5.0"),
                ("traffic-manager", PackKind::TrafficManager, "4.5.0"),
            ],
        }
    }

    /// Every node: one machine each (`vm-<node>`), or five per machine for [`Topology::V3Wide`].
    pub fn nodes(self) -> Vec<NodeDef> {
        const V3: [(&str, &str); 5] = [
            ("km", "key-manager"),
            ("tm", "traffic-manager"),
            ("pub", "publisher"),
            ("dp", "devportal"),
            ("gw", "gateway"),
        ];
        if let Topology::V3Wide(machines) = self {
            let mut v = Vec::new();
            for m in 1..=machines {
                for (offset, (short, role)) in (0u16..).zip(V3) {
                    v.push(NodeDef {
                        name: format!("{short}-{m}"),
                        machine: format!("vm-{m}"),
                        role: role.to_string(),
                        hostname: format!("{short}-{m}.wso2.com"),
                        gateway_id: None,
                        offset,
                    });
                }
            }
            return v;
        }
        let list: &[(&str, &str, &str, Option<&str>)] = match self {
            Topology::V3FiveNode => &[
                ("km-1", "key-manager", "km.wso2.com", None),
                ("tm-1", "traffic-manager", "tm.wso2.com", None),
                ("pub-1", "publisher", "pub.wso2.com", None),
                ("dp-1", "devportal", "dp.wso2.com", None),
                ("gw-1", "gateway", "gw.wso2.com", None),
            ],
            Topology::V45Ha => &[
                ("cp-1", "control-plane", "apim-cp-1", None),
                ("cp-2", "control-plane", "apim-cp-2", None),
                ("tm-1", "traffic-manager", "traffic-manager-1", None),
                ("tm-2", "traffic-manager", "traffic-manager-2", None),
                ("gw-1", "gateway", "gateway-1", Some("gateway_00")),
                ("gw-2", "gateway", "gateway-2", Some("gateway_01")),
            ],
            Topology::V3Wide(_) => &[],
        };
        list.iter()
            .map(|(n, r, h, g)| NodeDef {
                name: (*n).to_string(),
                machine: format!("vm-{n}"),
                role: (*r).to_string(),
                hostname: (*h).to_string(),
                gateway_id: g.map(str::to_string),
                offset: 0,
            })
            .collect()
    }
}

/// How to lay a cluster out.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The topology.
    pub topology: Topology,
    /// A name unique among concurrently running clusters: it picks the 127.x addresses.
    pub name: String,
    /// The simulated servers' delay between start and ready.
    pub startup_delay_ms: u64,
    /// Padding for realistically sized packs (benchmarks).
    pub filler: Option<Filler>,
}

impl ClusterOptions {
    /// Options for `topology` with a short simulated start delay.
    pub fn new(topology: Topology, name: impl Into<String>) -> ClusterOptions {
        ClusterOptions {
            topology,
            name: name.into(),
            startup_delay_ms: 200,
            filler: None,
        }
    }
}

/// What varies between the plans a test applies to one cluster.
#[derive(Debug, Clone)]
pub struct PlanParams {
    /// `[rollout] on_failure`: `halt` or `rollback`.
    pub on_failure: String,
    /// `[rollout] health_timeout`.
    pub health_timeout: String,
    /// `[rollout] max_parallel`.
    pub max_parallel: u32,
    /// `[overrides]` entries: (scope, deployment.toml fragment).
    pub overrides: Vec<(String, String)>,
}

impl Default for PlanParams {
    fn default() -> Self {
        PlanParams {
            on_failure: "halt".into(),
            health_timeout: "2m".into(),
            max_parallel: 2,
            overrides: Vec::new(),
        }
    }
}

/// One simulated machine and where its things live.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    /// Its name in the plan.
    pub name: String,
    /// Its loopback address.
    pub address: Ipv4Addr,
    /// The agent's install root.
    pub install_root: PathBuf,
    /// The agent's state dir.
    pub state_dir: PathBuf,
    /// The machine's hosts file.
    pub hosts_file: PathBuf,
    /// The fake JDK home (the machine's `java_home`).
    pub jdk: PathBuf,
    /// The nodes it hosts.
    pub nodes: Vec<String>,
}

enum Root {
    Temp(tempfile::TempDir),
    Fixed(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(t) => t.path(),
            Root::Fixed(p) => p,
        }
    }
}

/// A running (or startable) cluster; see the module docs.
pub struct Cluster {
    root: Root,
    /// The binaries it runs.
    pub bins: Binaries,
    /// Its topology.
    pub topology: Topology,
    /// Its machines, in plan order.
    pub machines: Vec<MachineInfo>,
    /// The packs built for it: (distribution key, pack).
    pub packs: Vec<(String, PackInfo)>,
    /// The controller's address.
    pub controller_addr: SocketAddr,
    controller: Option<Child>,
    agents: BTreeMap<String, Child>,
    keep: bool,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind", Path::new("127.0.0.1:0")))?;
    let port = l
        .local_addr()
        .map_err(io("bind", Path::new("127.0.0.1:0")))?
        .port();
    Ok(port)
}

/// Writes `contents` to `path` with mode 0600 (secrets, tokens).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io("create", p))?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(contents).map_err(io("write", path))
}

fn polls<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    let mut interval = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout(what.to_string()));
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

const SECRETS: [(&str, &str); 3] = [
    ("admin-password", "e2e-admin-secret"),
    ("db-password", "e2e-db-secret"),
    ("keystore-password", "e2e-keystore-secret"),
];

impl Cluster {
    /// Lays a cluster out in a fresh temp dir (packs, fake JDKs, secrets, controller config);
    /// no process is started yet.
    pub fn create(opts: &ClusterOptions) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("apim-e2e-")
            .tempdir()
            .map_err(io("create temp dir", &std::env::temp_dir()))?;
        // APIM_E2E_KEEP_ROOT=1 leaves the directory (logs, state) behind for a post-mortem.
        if std::env::var_os("APIM_E2E_KEEP_ROOT").is_some_and(|v| v == "1") {
            let kept = dir.keep();
            eprintln!("apim-e2e: keeping {}", kept.display());
            return Self::layout(Root::Fixed(kept), opts);
        }
        Self::layout(Root::Temp(dir), opts)
    }

    /// Lays a cluster out in `root` (kept on drop; used by the quickstart). Existing packs,
    /// JDKs, the controller's port and enrolled agents are reused, so this is idempotent.
    pub fn create_in(root: &Path, opts: &ClusterOptions) -> Result<Cluster> {
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        let root = root.canonicalize().map_err(io("resolve", root))?;
        let mut c = Self::layout(Root::Fixed(root), opts)?;
        c.keep = true;
        Ok(c)
    }

    fn layout(root: Root, opts: &ClusterOptions) -> Result<Cluster> {
        let bins = Binaries::locate()?;
        let r = root.path().to_path_buf();
        for d in ["logs", "dist", "machines"] {
            std::fs::create_dir_all(r.join(d)).map_err(io("create", &r.join(d)))?;
        }
        // Packs: built once per root (the quickstart reuses them).
        let mut packs = Vec::new();
        for (key, kind, version) in opts.topology.packs() {
            let po = PackOptions {
                filler: opts.filler,
                ..PackOptions::default()
            };
            let zip = r
                .join("dist")
                .join(format!("{}-{version}.zip", kind.prefix()));
            let sha_file = zip.with_extension("zip.sha256");
            let info = match (std::fs::read_to_string(&sha_file), zip.metadata()) {
                (Ok(sha), Ok(meta)) => PackInfo {
                    path: zip.clone(),
                    sha256: sha.trim().to_string(),
                    size: meta.len(),
                    top_dir: format!("{}-{version}", kind.prefix()),
                },
                _ => {
                    let info = simpack::build_pack(kind, version, &r.join("dist"), &po)?;
                    std::fs::write(&sha_file, &info.sha256).map_err(io("write", &sha_file))?;
                    info
                }
            };
            packs.push((key.to_string(), info));
        }
        let mut machines: Vec<MachineInfo> = Vec::new();
        for n in opts.topology.nodes() {
            if let Some(m) = machines.iter_mut().find(|m| m.name == n.machine) {
                m.nodes.push(n.name.clone());
                continue;
            }
            let idx = u8::try_from(machines.len() + 1).unwrap_or(u8::MAX);
            let address = loopback_for(&opts.name, idx);
            let md = r.join("machines").join(&n.machine);
            let hosts_file = md.join("hosts");
            if !hosts_file.exists() {
                std::fs::create_dir_all(&md).map_err(io("create", &md))?;
                std::fs::write(&hosts_file, "127.0.0.1 localhost\n")
                    .map_err(io("write", &hosts_file))?;
            }
            let mut ms = MachineSettings::new(address.into(), &hosts_file);
            ms.startup_delay_ms = opts.startup_delay_ms;
            let jdk = md.join("jdk");
            let mut js = JdkSettings::new(ms, &bins.simjava);
            js.java_version = opts.topology.java_version().to_string();
            make_fake_jdk(&jdk, &js)?;
            let install_root = md.join("root");
            std::fs::create_dir_all(&install_root).map_err(io("create", &install_root))?;
            machines.push(MachineInfo {
                name: n.machine.clone(),
                address,
                install_root,
                state_dir: md.join("state"),
                hosts_file,
                jdk,
                nodes: vec![n.name.clone()],
            });
        }
        for (file, value) in SECRETS {
            let p = r.join("secrets").join(file);
            if !p.exists() {
                write_private(&p, value.as_bytes())?;
            }
        }
        // The controller's config: the port is chosen once and kept (restarts, quickstart).
        let config = r.join("controller.toml");
        let port = match std::fs::read_to_string(&config)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("listen")?.as_str()?.parse::<SocketAddr>().ok())
        {
            Some(a) => a.port(),
            None => {
                let port = free_port()?;
                let text = format!(
                    "listen = \"127.0.0.1:{port}\"\nserver_names = [\"127.0.0.1\", \"localhost\"]\ndata_dir = {:?}\n",
                    r.join("controller-data").display().to_string()
                );
                std::fs::write(&config, text).map_err(io("write", &config))?;
                port
            }
        };
        Ok(Cluster {
            root,
            bins,
            topology: opts.topology,
            machines,
            packs,
            controller_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            controller: None,
            agents: BTreeMap::new(),
            keep: false,
        })
    }

    /// The cluster's root directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Leaves every process running when this value is dropped (the quickstart).
    pub fn keep_running(&mut self) {
        self.keep = true;
    }

    /// The machine hosting `node`.
    pub fn machine_of(&self, node: &str) -> Result<&MachineInfo> {
        self.machines
            .iter()
            .find(|m| m.nodes.iter().any(|n| n == node))
            .ok_or_else(|| ClusterError::Unknown {
                kind: "node",
                name: node.to_string(),
            })
    }

    /// The machine called `name`.
    pub fn machine(&self, name: &str) -> Result<&MachineInfo> {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ClusterError::Unknown {
                kind: "machine",
                name: name.to_string(),
            })
    }

    /// Every node name, in plan order.
    pub fn node_names(&self) -> Vec<String> {
        self.machines.iter().flat_map(|m| m.nodes.clone()).collect()
    }

    /// The plan text for `params`.
    pub fn plan_text(&self, params: &PlanParams) -> String {
        let mut s = format!(
            r#"# Generated by the apim-e2e harness: {topology:?} on loopback.
[cluster]
name = "apim-e2e"
product = "{product}"
install_dir = "/opt/wso2"
java_home = "/usr/lib/jvm/java-17-openjdk-amd64"

[distributions]
"#,
            topology = self.topology,
            product = self.topology.product()
        );
        for (key, p) in &self.packs {
            s.push_str(&format!(
                "{key} = {{ path = \"dist/{}\", sha256 = \"{}\" }}\n",
                p.path
                    .file_name()
                    .map_or(String::new(), |f| f.to_string_lossy().into_owned()),
                p.sha256
            ));
        }
        s.push_str(
            r#"
[admin]
username = "admin"
password = { file = "secrets/admin-password" }

[databases.apim_db]
type = "mysql"
host = "db.wso2.com"
port = 3306
name = "apim_db"
username = "apimadmin"
password = { file = "secrets/db-password" }

[databases.shared_db]
type = "mysql"
host = "db.wso2.com"
port = 3306
name = "shared_db"
username = "sharedadmin"
password = { file = "secrets/db-password" }

[hosts]
"db.wso2.com" = "127.0.0.1"
"#,
        );
        // The packs keep the `.jks` names; from 4.4 on their content is PKCS12.
        s.push_str(&format!(
            "\n[tls]\nissuer = \"cluster-ca\"\nkeystore_type = \"{}\"\nkeystore_file = \"wso2carbon.jks\"\nkeystore_password = {{ file = \"secrets/keystore-password\" }}\n",
            self.topology.keystore_type()
        ));
        // No real load balancer: each LB name resolves to the role's first node's machine.
        let lbs = self.topology.load_balancers();
        if !lbs.is_empty() {
            s.push_str("\n[load_balancers]\n");
        }
        for (role, hostname) in lbs {
            let n = self.topology.nodes().into_iter().find(|n| n.role == role);
            let addr = n
                .and_then(|n| self.machine_of(&n.name).ok().map(|m| m.address))
                .unwrap_or(Ipv4Addr::LOCALHOST);
            s.push_str(&format!(
                "{role} = {{ hostname = \"{hostname}\", address = \"{addr}\" }}\n"
            ));
        }
        for m in &self.machines {
            s.push_str(&format!(
                "\n[[machines]]\nname = \"{}\"\naddress = \"{}\"\njava_home = {:?}\n",
                m.name,
                m.address,
                m.jdk.display().to_string()
            ));
        }
        for n in self.topology.nodes() {
            s.push_str(&format!(
                "\n[[nodes]]\nname = \"{}\"\nmachine = \"{}\"\nrole = \"{}\"\nhostname = \"{}\"\noffset = {}\n",
                n.name, n.machine, n.role, n.hostname, n.offset
            ));
            if let Some(g) = &n.gateway_id {
                s.push_str(&format!("gateway_id = \"{g}\"\n"));
            }
        }
        let env = if self.topology == Topology::V45Ha {
            "\n[[gateway_environments]]\nname = \"Default\"\ntype = \"hybrid\"\nlabel = \"Default\"\n"
        } else {
            "\n[[gateway_environments]]\nname = \"Production and Sandbox\"\ntype = \"hybrid\"\n"
        };
        s.push_str(env);
        s.push_str(&format!(
            "\n[rollout]\nmax_parallel = {}\nhealth_timeout = \"{}\"\non_failure = \"{}\"\n",
            params.max_parallel, params.health_timeout, params.on_failure
        ));
        if !params.overrides.is_empty() {
            s.push_str("\n[overrides]\n");
            for (scope, text) in &params.overrides {
                s.push_str(&format!("\"{scope}\" = '''\n{}\n'''\n", text.trim_end()));
            }
        }
        s
    }

    /// Writes the plan for `params` as `<root>/<file>` and returns its path.
    pub fn write_plan(&self, file: &str, params: &PlanParams) -> Result<PathBuf> {
        let p = self.root().join(file);
        std::fs::write(&p, self.plan_text(params)).map_err(io("write", &p))?;
        Ok(p)
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File> {
        let p = self.root().join("logs").join(format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io("open", &p))
    }

    fn spawn(&self, name: &str, mut cmd: Command) -> Result<Child> {
        let log = self.log_file(name)?;
        let err = log
            .try_clone()
            .map_err(io("open", &self.root().join("logs")))?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .env("RUST_LOG", "info");
        let child = cmd.spawn().map_err(io("spawn", Path::new(name)))?;
        let pids = self.root().join("pids");
        std::fs::create_dir_all(&pids).map_err(io("create", &pids))?;
        let pid_file = pids.join(format!("{name}.pid"));
        std::fs::write(&pid_file, format!("{}\n", child.id())).map_err(io("write", &pid_file))?;
        Ok(child)
    }

    /// Starts the controller and waits until it accepts connections.
    pub fn start_controller(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bins.apimctl);
        cmd.args(["controller", "run", "--config"])
            .arg(self.root().join("controller.toml"));
        let child = self.spawn("controller", cmd)?;
        self.controller = Some(child);
        self.wait_controller()
    }

    /// Waits until the controller accepts connections.
    pub fn wait_controller(&self) -> Result<()> {
        let addr = self.controller_addr;
        polls("the controller to listen", || {
            crate::probe::tcp_open(addr).then_some(())
        })
    }

    /// Waits until the controller's RSA key pool is full (its log says so), as it is on a
    /// controller that has been up for a while: the first rollout then does not wait on prime
    /// search. Benchmarks call this so a cold rollout is measured on a warm controller.
    pub fn wait_key_pool_full(&self) -> Result<()> {
        let log = self.root().join("logs").join("controller.log");
        polls("the controller's RSA key pool to fill", || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("RSA key pool full")
                .then_some(())
        })
    }

    /// The pid in `<root>/pids/<name>.pid` when that process is alive and one of this
    /// cluster's (a re-run of the quickstart finds what is still running).
    pub fn running_pid(&self, name: &str) -> Option<u32> {
        let f = self.root().join("pids").join(format!("{name}.pid"));
        let pid: u32 = std::fs::read_to_string(f).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (is_alive(pid)
            && String::from_utf8_lossy(&cmdline).contains(&*self.root().to_string_lossy()))
        .then_some(pid)
    }

    /// Writes `<root>/env.sh`, which puts `apimctl` on PATH and points it at this cluster.
    pub fn write_client_env(&self) -> Result<PathBuf> {
        let op = self.root().join("operator");
        let bin = self.bins.apimctl.parent().unwrap_or(Path::new("."));
        let text = format!(
            "# Source me: points apimctl at the quickstart controller.\nexport PATH={bin:?}:\"$PATH\"\nexport APIMCTL_CONTROLLER={addr:?}\nexport APIMCTL_CA={ca:?}\nexport APIMCTL_CERT={cert:?}\nexport APIMCTL_KEY={key:?}\n",
            bin = bin.display().to_string(),
            addr = self.controller_addr.to_string(),
            ca = op.join("ca.pem").display().to_string(),
            cert = op.join("operator.pem").display().to_string(),
            key = op.join("operator-key.pem").display().to_string(),
        );
        let p = self.root().join("env.sh");
        std::fs::write(&p, text).map_err(io("write", &p))?;
        Ok(p)
    }

    /// SIGKILLs the controller (its process group).
    pub fn kill_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            kill_child(c);
        }
    }

    /// Issues the operator certificate once (`apimctl controller operator-cert`).
    pub fn ensure_operator_cert(&self) -> Result<()> {
        let out = self.root().join("operator");
        if out.join("operator.pem").exists() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.bins.apimctl);
        cmd.args(["controller", "operator-cert", "--name", "e2e", "--out"])
            .arg(&out)
            .arg("--data-dir")
            .arg(self.root().join("controller-data"));
        run_ok(cmd).map(|_| ())
    }

    /// An `apimctl` command with the operator's connection settings in its environment.
    pub fn apimctl_cmd(&self) -> Command {
        let op = self.root().join("operator");
        let mut cmd = Command::new(&self.bins.apimctl);
        cmd.env("APIMCTL_CONTROLLER", self.controller_addr.to_string())
            .env("APIMCTL_CA", op.join("ca.pem"))
            .env("APIMCTL_CERT", op.join("operator.pem"))
            .env("APIMCTL_KEY", op.join("operator-key.pem"))
            .env("APIMCTL_CONFIG", self.root().join("no-client-config.toml"))
            // The pack digest cache stays inside the cluster's root, never in $HOME.
            .env("APIMCTL_CACHE_DIR", self.root().join("apimctl-cache"))
            .current_dir(self.root());
        cmd
    }

    /// Runs `apimctl <args>` and returns its output whatever the exit code.
    pub fn apimctl(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.apimctl_cmd();
        cmd.args(args);
        cmd.output().map_err(io("run", &self.bins.apimctl))
    }

    /// Whether `machine`'s agent has enrolled already (its identity is in its state dir).
    pub fn enrolled(&self, machine: &str) -> Result<bool> {
        Ok(self
            .machine(machine)?
            .state_dir
            .join("agent-identity.pem")
            .exists())
    }

    /// Starts `machine`'s agent; creates a join token first unless it has enrolled already.
    pub fn start_agent(&mut self, machine: &str) -> Result<()> {
        let m = self.machine(machine)?.clone();
        let token_file = self.root().join("tokens").join(&m.name);
        let mut cmd = Command::new(&self.bins.agent);
        cmd.arg("--controller")
            .arg(self.controller_addr.to_string())
            .args(["--server-name", "127.0.0.1", "--machine", &m.name])
            .arg("--state-dir")
            .arg(&m.state_dir)
            .arg("--install-root")
            .arg(&m.install_root)
            .arg("--hosts-file")
            .arg(&m.hosts_file);
        if !self.enrolled(machine)? {
            let out = self.apimctl(&["token", "create", "--machine", &m.name])?;
            if !out.status.success() {
                return Err(command_error("apimctl token create", &out));
            }
            write_private(&token_file, &out.stdout)?;
            cmd.arg("--token-file").arg(&token_file);
        }
        let child = self.spawn(&format!("agent-{}", m.name), cmd)?;
        self.agents.insert(m.name.clone(), child);
        Ok(())
    }

    /// SIGKILLs `machine`'s agent (its process group; the nodes it started keep running).
    pub fn kill_agent(&mut self, machine: &str) {
        if let Some(c) = self.agents.remove(machine) {
            kill_child(c);
        }
    }

    /// Starts the controller, issues the operator certificate, starts every agent and waits
    /// until every agent is connected.
    pub fn start(&mut self) -> Result<()> {
        self.start_controller()?;
        self.ensure_operator_cert()?;
        let names: Vec<String> = self.machines.iter().map(|m| m.name.clone()).collect();
        for m in &names {
            self.start_agent(m)?;
        }
        self.wait_agents_connected()
    }

    /// `apimctl agents -o json`: (machine, connected) per enrolled agent.
    pub fn agents(&self) -> Result<BTreeMap<String, bool>> {
        let out = self.apimctl(&["agents", "-o", "json"])?;
        if !out.status.success() {
            return Err(command_error("apimctl agents", &out));
        }
        let mut map = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|source| ClusterError::Json {
                    command: "apimctl agents -o json".into(),
                    source,
                    text: line.to_string(),
                })?;
            map.insert(
                v["machine"].as_str().unwrap_or_default().to_string(),
                v["connected"].as_bool().unwrap_or(false),
            );
        }
        Ok(map)
    }

    /// Waits until every machine's agent is connected.
    pub fn wait_agents_connected(&self) -> Result<()> {
        polls("every agent to connect", || {
            let a = self.agents().ok()?;
            self.machines
                .iter()
                .all(|m| a.get(&m.name).copied().unwrap_or(false))
                .then_some(())
        })
    }

    /// `apimctl apply <plan> -o json` (follows the rollout to its end).
    pub fn apply(&self, plan: &Path) -> Result<Output> {
        let mut cmd = self.apimctl_cmd();
        cmd.arg("apply").arg(plan).args(["-o", "json"]);
        cmd.output().map_err(io("run", &self.bins.apimctl))
    }

    /// `apimctl apply <plan> --no-wait`: stores the plan and returns.
    pub fn apply_no_wait(&self, plan: &Path) -> Result<Output> {
        let mut cmd = self.apimctl_cmd();
        cmd.arg("apply").arg(plan).arg("--no-wait");
        cmd.output().map_err(io("run", &self.bins.apimctl))
    }

    /// `apimctl status -o json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.apimctl(&["status", "-o", "json"])?;
        if !out.status.success() {
            return Err(command_error("apimctl status", &out));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(&text).map_err(|source| ClusterError::Json {
            command: "apimctl status -o json".into(),
            source,
            text,
        })
    }

    /// Polls `apimctl status -o json` until `cond` holds on it; returns that status.
    pub fn wait_status(
        &self,
        what: &str,
        mut cond: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let mut last = None;
        let r = polls(what, || {
            let s = self.status().ok()?;
            let ok = cond(&s);
            last = Some(s.clone());
            ok.then_some(s)
        });
        r.map_err(|e| match last {
            Some(s) => ClusterError::Timeout(format!("{what}; last status: {s}")),
            None => e,
        })
    }

    /// Waits until the latest rollout has ended (any state but pending, staging, starting,
    /// rolling-back); returns the status.
    pub fn wait_rollout_done(&self) -> Result<serde_json::Value> {
        self.wait_status("the rollout to end", |s| {
            rollout_state(s).is_some_and(|st| {
                !matches!(st, "pending" | "staging" | "starting" | "rolling-back")
            })
        })
    }

    /// Every `wso2carbon.log` under `node`'s machine's install root, concatenated (oldest
    /// install first), i.e. everything every server of that node ever logged.
    pub fn node_log(&self, node: &str) -> Result<String> {
        let mut files = self.node_files(node, "wso2carbon.log")?;
        files.sort();
        let mut s = String::new();
        for f in files {
            s.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
        Ok(s)
    }

    /// Every file called `name` in `node`'s install dirs (`<install_root>/<install_dir>/<node>/…`).
    pub fn node_files(&self, node: &str, name: &str) -> Result<Vec<PathBuf>> {
        let m = self.machine_of(node)?;
        let mut files: Vec<PathBuf> = find_files(&m.install_root, name)
            .into_iter()
            .filter(|f| {
                f.strip_prefix(&m.install_root)
                    .is_ok_and(|rel| rel.components().any(|c| c.as_os_str() == node))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// How many times a server of `node` was started (its "Starting WSO2 Carbon" lines).
    pub fn start_count(&self, node: &str) -> Result<usize> {
        Ok(self.node_log(node)?.matches(STARTING_LINE).count())
    }

    /// The pids of `node`'s live simulated servers (from their `wso2carbon.pid` files).
    pub fn server_pids(&self, node: &str) -> Result<Vec<u32>> {
        let mut pids: Vec<u32> = self
            .node_files(node, "wso2carbon.pid")?
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
            .filter(|p| is_alive(*p))
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// `node -> the nodes it waits for`, from `apimctl render` of `plan`.
    pub fn dependencies(&self, plan: &Path) -> Result<BTreeMap<String, Vec<String>>> {
        let mut cmd = self.apimctl_cmd();
        cmd.arg("render").arg(plan);
        let out = run_ok(cmd)?;
        let mut deps = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix("# ==== node ") {
                current = rest.split_whitespace().next().map(str::to_string);
            } else if let (Some(n), Some(w)) = (&current, line.split_once("waits for "))
                && line.starts_with("# tier")
            {
                let list = if w.1.trim() == "nothing" {
                    Vec::new()
                } else {
                    w.1.split(',').map(|s| s.trim().to_string()).collect()
                };
                deps.insert(n.clone(), list);
            }
        }
        Ok(deps)
    }

    /// Kills everything this cluster started: agents, controller, simulated servers.
    pub fn shutdown(&mut self) {
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for m in names {
            self.kill_agent(&m);
        }
        self.kill_controller();
        kill_processes_under(self.root());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.keep {
            self.shutdown();
        }
    }
}

/// The log4j timestamps (`2024-05-02 10:11:12,123`, fixed width, so they sort as text) of
/// every line of a simulated server's log that contains `needle`.
pub fn log_times(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            // TID: [-1234] [] [<ts>] LEVEL {logger} - message
            let rest = l.split_once("] [] [")?.1;
            Some(rest.split_once(']')?.0.to_string())
        })
        .collect()
}

/// The hosts a simulated server's log says it could not reach ("Peer host:port unreachable").
pub fn unreachable_peers(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split_once(". Peer ")?.1;
            rest.contains(" unreachable")
                .then(|| rest.split_once(':').map(|(h, _)| h.to_string()))?
        })
        .collect()
}

/// The latest rollout's state in a status JSON.
pub fn rollout_state(status: &serde_json::Value) -> Option<&str> {
    status["rollout"]["state"].as_str()
}

/// Every node object of a status JSON: (machine, node JSON).
pub fn status_nodes(status: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut v = Vec::new();
    for m in status["machines"].as_array().into_iter().flatten() {
        let machine = m["machine"].as_str().unwrap_or_default().to_string();
        for n in m["nodes"].as_array().into_iter().flatten() {
            v.push((machine.clone(), n.clone()));
        }
    }
    v
}

/// The phase of `node` in a status JSON.
pub fn node_phase<'a>(status: &'a serde_json::Value, node: &str) -> Option<&'a str> {
    status["machines"]
        .as_array()?
        .iter()
        .flat_map(|m| m["nodes"].as_array().into_iter().flatten())
        .find(|n| n["node"] == node)?["phase"]
        .as_str()
}

/// Whether every node named in `nodes` is healthy in a status JSON.
pub fn all_healthy(status: &serde_json::Value, nodes: &[String]) -> bool {
    nodes
        .iter()
        .all(|n| node_phase(status, n) == Some("healthy"))
}

fn command_error(command: &str, out: &Output) -> ClusterError {
    ClusterError::Command {
        command: command.to_string(),
        status: out.status.code(),
        stderr: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

fn run_ok(mut cmd: Command) -> Result<Output> {
    let line = format!("{:?}", cmd);
    let out = cmd
        .output()
        .map_err(io("run", Path::new(cmd.get_program())))?;
    if !out.status.success() {
        return Err(command_error(&line, &out));
    }
    Ok(out)
}

fn kill_child(mut c: Child) {
    if let Ok(pid) = i32::try_from(c.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn is_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // A zombie still answers kill(0); look at its state too.
    if kill(Pid::from_raw(p), None).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Every file called `name` under `dir` (recursively, not following symlinks).
pub fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name() == name {
                out.push(e.path());
            }
        }
    }
    out
}

/// SIGKILLs every process whose command line mentions `root` (agents, controller, and the
/// simulated servers, whose `java` lives in the machines' fake JDKs under `root`). Only
/// processes started for this cluster carry its unique root path.
pub fn kill_processes_under(root: &Path) {
    let needle = root.to_string_lossy().into_owned();
    if needle.len() < 8 {
        return;
    }
    let me = std::process::id();
    for _ in 0..3 {
        let mut found = false;
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(&needle) && is_alive(pid) {
                found = true;
                if let Ok(p) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
        }
        if !found {
            return;
        }
        // Give the kernel a moment to reap before looking again.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a cluster left running in `root` (the quickstart's `--down`): the processes whose
/// pids are in `<root>/pids/`, then anything else whose command line mentions `root`.
pub fn stop_detached(root: &Path) -> Result<usize> {
    let root = root.canonicalize().map_err(io("resolve", root))?;
    let mut stopped = 0;
    if let Ok(rd) = std::fs::read_dir(root.join("pids")) {
        for e in rd.flatten() {
            let pid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid
                && is_alive(pid.unsigned_abs())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*root.to_string_lossy()))
            {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
                stopped += 1;
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    kill_processes_under(&root);
    Ok(stopped)
}
