//! A whole apimctl cluster on loopback, as real processes: one `apimctl controller run`, one
//! `apim-agent` per simulated machine, simulated packs and a fake JDK per machine.
//!
//! Every simulated machine gets its own 127.x address ([`crate::probe::loopback_for`]), its
//! own install root, state dir, hosts file and fake JDK (whose `apimsim.toml` makes the
//! simulated servers bind to that address and resolve names through that hosts file). The plan
//! points each machine's `java_home` at its fake JDK and keeps the install dir absolute
//! (`/opt/wso2`), which each agent prefixes with its install root. With
//! [`ClusterOptions::namespaces`] each machine is a host instead: its own network and mount
//! namespace, a bridge address and the real `/etc/hosts` path (see `namespaces.rs`).
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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::fakejdk::{JdkSettings, MachineSettings, make_fake_jdk};
use crate::probe::loopback_for;
use crate::simpack::{self, PackInfo, PackOptions};

mod balancer;
mod binaries;
mod controllers;
mod namespaces;
mod process;
mod status;
mod topology;

pub use binaries::{Binaries, workspace_root};
pub use controllers::ExtraController;
pub use namespaces::{CONTROLLER_HOST, kept_network_prefix, remove_kept_network};
use process::{command_error, is_alive, kill_child, run_ok};
pub use process::{find_files, kill_processes_under, stop_detached};
pub use status::{
    all_healthy, log_times, node_phase, rollout_state, status_nodes, unreachable_peers,
};
pub use topology::{ClusterOptions, NodeDef, PlanParams, ServerDb, Topology};

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
    /// Setting up or changing the machines' namespaces failed.
    #[error(transparent)]
    Namespaces(#[from] crate::netns::NetnsError),
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

/// One simulated machine and where its things live.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    /// Its name in the plan.
    pub name: String,
    /// Its address: on loopback, or on the bridge in namespaces mode.
    pub address: Ipv4Addr,
    /// The agent's install root.
    pub install_root: PathBuf,
    /// The agent's state dir.
    pub state_dir: PathBuf,
    /// The machine's hosts file (in namespaces mode, the file mounted over its `/etc/hosts`).
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
    /// Controllers beside the first ([`Cluster::add_controller`]).
    extra_controllers: Vec<controllers::ExtraController>,
    /// The address list agents and `apimctl` dial, when several controllers run.
    controller_list: Option<String>,
    agents: BTreeMap<String, Child>,
    keep: bool,
    /// The machines' namespaces ([`ClusterOptions::namespaces`]); torn down on drop.
    network: Option<crate::netns::Network>,
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

/// The packs `topology`'s plan names, built into `<root>/dist` once (the quickstart and a
/// second release of an upgrade reuse them): (distribution key, pack).
fn build_packs(
    root: &Path,
    topology: Topology,
    filler: Option<simpack::Filler>,
) -> Result<Vec<(String, PackInfo)>> {
    let mut packs = Vec::new();
    for (key, kind, version) in topology.packs() {
        let po = PackOptions {
            filler,
            ..PackOptions::default()
        };
        let zip = root
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
                let info = simpack::build_pack(kind, version, &root.join("dist"), &po)?;
                std::fs::write(&sha_file, &info.sha256).map_err(io("write", &sha_file))?;
                info
            }
        };
        packs.push((key.to_string(), info));
    }
    Ok(packs)
}

/// A started cluster of `topology` (controller and agents connected), no plan applied yet;
/// its simulated servers take `delay_ms` from start to ready.
pub fn started(topology: Topology, name: &str, delay_ms: u64) -> Result<Cluster> {
    let mut opts = ClusterOptions::new(topology, name);
    opts.startup_delay_ms = delay_ms;
    let mut c = Cluster::create(&opts)?;
    c.start()?;
    Ok(c)
}

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The plan's secret files and their values.
pub const PLAN_SECRETS: [(&str, &str); 3] = [
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
            return Self::layout(Root::Fixed(kept), opts, false);
        }
        Self::layout(Root::Temp(dir), opts, false)
    }

    /// Lays a cluster out in `root` (kept on drop; used by the quickstart). Existing packs,
    /// JDKs, the controller's port and enrolled agents are reused, so this is idempotent. With
    /// [`ClusterOptions::namespaces`] the network outlives this value too: a later call adopts
    /// it, [`remove_kept_network`] takes it down.
    pub fn create_in(root: &Path, opts: &ClusterOptions) -> Result<Cluster> {
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        let root = root.canonicalize().map_err(io("resolve", root))?;
        let mut c = Self::layout(Root::Fixed(root), opts, true)?;
        c.keep = true;
        Ok(c)
    }

    fn layout(root: Root, opts: &ClusterOptions, kept: bool) -> Result<Cluster> {
        let bins = Binaries::locate()?;
        let r = root.path().to_path_buf();
        for d in ["logs", "dist", "machines"] {
            std::fs::create_dir_all(r.join(d)).map_err(io("create", &r.join(d)))?;
        }
        let packs = build_packs(&r, opts.topology, opts.filler)?;
        let mut machines: Vec<MachineInfo> = Vec::new();
        for n in opts.topology.nodes() {
            if let Some(m) = machines.iter_mut().find(|m| m.name == n.machine) {
                m.nodes.push(n.name.clone());
                continue;
            }
            let idx = u8::try_from(machines.len() + 1).unwrap_or(u8::MAX);
            let address = if opts.namespaces {
                namespaces::machine_address(&opts.name, idx)
            } else {
                loopback_for(&opts.name, idx)
            };
            let md = r.join("machines").join(&n.machine);
            let hosts_file = md.join("hosts");
            if !hosts_file.exists() {
                std::fs::create_dir_all(&md).map_err(io("create", &md))?;
                if opts.namespaces {
                    namespaces::seed_hosts_file(&hosts_file)?;
                } else {
                    std::fs::write(&hosts_file, "127.0.0.1 localhost\n")
                        .map_err(io("write", &hosts_file))?;
                }
            }
            // As hosts, servers resolve names through the real path, as on a VM.
            let resolve_with = if opts.namespaces {
                PathBuf::from(crate::netns::ETC_HOSTS)
            } else {
                hosts_file.clone()
            };
            let mut ms = MachineSettings::new(address.into(), &resolve_with);
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
        for (file, value) in PLAN_SECRETS {
            let p = r.join("secrets").join(file);
            if !p.exists() {
                write_private(&p, value.as_bytes())?;
            }
        }
        let network = if opts.namespaces {
            Some(namespaces::create_network(&r, &opts.name, &machines, kept)?)
        } else {
            None
        };
        let controller_ip = network
            .as_ref()
            .and_then(|n| n.host(namespaces::CONTROLLER_HOST).ok())
            .map_or(Ipv4Addr::LOCALHOST, |h| h.address);
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
                let names = if controller_ip.is_loopback() {
                    String::new()
                } else {
                    format!(", \"{controller_ip}\"")
                };
                let mut text = format!(
                    "listen = \"{controller_ip}:{port}\"\nserver_names = [\"127.0.0.1\", \"localhost\"{names}]\ndata_dir = {:?}\n",
                    r.join("controller-data").display().to_string()
                );
                for line in &opts.controller_settings {
                    text.push_str(line);
                    text.push('\n');
                }
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
            controller_addr: SocketAddr::from((controller_ip, port)),
            controller: None,
            extra_controllers: Vec::new(),
            controller_list: None,
            agents: BTreeMap::new(),
            keep: false,
            network,
        })
    }

    /// Makes the plans this cluster writes ([`Cluster::write_plan`]) those of `topology`: the
    /// same nodes on the same machines at another release (an upgrade, or the way back), its
    /// packs built into `dist/` when missing. Machines keep their JDK, so both releases must
    /// run on it.
    pub fn use_topology(&mut self, topology: Topology) -> Result<()> {
        let same = |t: Topology| {
            t.nodes()
                .into_iter()
                .map(|n| (n.name, n.machine, n.role))
                .collect::<Vec<_>>()
        };
        if same(topology) != same(self.topology)
            || topology.java_version() != self.topology.java_version()
        {
            return Err(ClusterError::Unknown {
                kind: "upgrade of the cluster's layout to",
                name: format!("{topology:?}"),
            });
        }
        self.packs = build_packs(self.root.path(), topology, None)?;
        self.topology = topology;
        Ok(())
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

    /// Starts the controller and waits until it accepts connections.
    pub fn start_controller(&mut self) -> Result<()> {
        let mut cmd = self.command_on(CONTROLLER_HOST, &self.bins.apimctl);
        cmd.args(["controller", "run", "--config"])
            .arg(self.root().join("controller.toml"));
        let child = self.spawn("controller", cmd)?;
        self.controller = Some(child);
        self.wait_controller()
    }

    /// Waits until the controller accepts connections.
    pub fn wait_controller(&self) -> Result<()> {
        let addr = self.controller_addr;
        if self.network.is_some() {
            // Its namespace is not this one's: look at its sockets instead of dialling.
            // (A re-run of the quickstart finds it running: its pid file.)
            let pid = self
                .controller
                .as_ref()
                .map(Child::id)
                .or_else(|| self.running_pid("controller"));
            return polls("the controller to listen in its namespace", || {
                pid.filter(|p| crate::netns::listening(*p, addr.port()))
                    .map(|_| ())
            });
        }
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
        // As hosts, that address exists only in the controller's network namespace.
        let text = if self.network.is_some() {
            format!(
                "{text}# Machines as hosts: the controller is reachable only in its network namespace;\n# run {} (which sources this) instead of apimctl.\n",
                self.root().join("apimctl").display()
            )
        } else {
            text
        };
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
        let mut cmd = self.command_on(CONTROLLER_HOST, &self.bins.apimctl);
        cmd.env("APIMCTL_CONTROLLER", self.controller_list())
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
        let mut cmd = self.command_on(&m.name, &self.bins.agent);
        cmd.arg("--controller")
            .arg(self.controller_list())
            .args(["--server-name", "127.0.0.1", "--machine", &m.name])
            .arg("--state-dir")
            .arg(&m.state_dir)
            .arg("--install-root")
            .arg(&m.install_root);
        // As a host, the agent edits the real /etc/hosts (its default) of its mount namespace.
        if self.network.is_none() {
            cmd.arg("--hosts-file").arg(&m.hosts_file);
        }
        if !self.enrolled(machine)? {
            let out = self.apimctl(&["token", "create", "--machine", &m.name])?;
            if !out.status.success() {
                return Err(command_error("apimctl token create", &out));
            }
            write_private(&token_file, &out.stdout)?;
        }
        // Always given, as an installed agent's config does: a new token there re-admits a
        // revoked machine.
        cmd.arg("--token-file").arg(&token_file);
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

    /// `apimctl agents -o json` (one document, `{"agents": [...]}`): (machine, connected) per
    /// enrolled agent.
    pub fn agents(&self) -> Result<BTreeMap<String, bool>> {
        let out = self.apimctl(&["agents", "-o", "json"])?;
        if !out.status.success() {
            return Err(command_error("apimctl agents", &out));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ClusterError::Json {
                command: "apimctl agents -o json".into(),
                source,
                text: text.clone(),
            })?;
        let mut map = BTreeMap::new();
        for v in doc["agents"].as_array().into_iter().flatten() {
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

    /// Kills everything this cluster started: agents, controller, simulated servers.
    pub fn shutdown(&mut self) {
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for m in names {
            self.kill_agent(&m);
        }
        self.kill_controller();
        let extra: Vec<String> = self
            .extra_controllers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        for name in extra {
            self.kill_added_controller(&name);
        }
        kill_processes_under(self.root());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.keep {
            self.shutdown();
        }
        // Before the root goes: the mount namespaces are bound to files in it.
        drop(self.network.take());
    }
}
