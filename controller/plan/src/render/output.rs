//! What a render produces: the cluster's machines with their hosts blocks and nodes, and per
//! node its `deployment.toml` (with secrets and masked), commands, readiness checks, start
//! dependencies and certificate.

use std::net::IpAddr;

use super::MASK;
use crate::catalogue::{PackKind, Product, Role};
use crate::graph::Tiers;
use crate::plan::{Issuer, StoreType};

/// The whole cluster, rendered.
#[derive(Clone, Debug)]
pub struct ClusterRender {
    /// Cluster name.
    pub cluster: String,
    /// The release.
    pub product: Product,
    /// Per machine, in plan order.
    pub machines: Vec<MachineRender>,
    /// Start tiers (node names).
    pub tiers: Tiers,
}

impl ClusterRender {
    /// Every node, in plan order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRender> {
        self.machines.iter().flat_map(|m| m.nodes.iter())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeRender> {
        self.nodes().find(|n| n.name == name)
    }
}

/// One line of a hosts block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostsEntry {
    /// Address.
    pub address: IpAddr,
    /// Names mapped to it.
    pub names: Vec<String>,
}

/// One machine's share of the cluster.
#[derive(Clone, Debug)]
pub struct MachineRender {
    /// Machine name.
    pub name: String,
    /// Its address.
    pub address: IpAddr,
    /// The managed block of its hosts file.
    pub hosts: Vec<HostsEntry>,
    /// Its nodes, in plan order.
    pub nodes: Vec<NodeRender>,
    /// The load balancer the plan places on it, if any.
    pub balancer: Option<super::balancer::BalancerRender>,
}

impl MachineRender {
    /// What the machine's nodes need of its memory together (the sum of their
    /// [`NodeJvm::memory_bytes`]).
    pub fn memory_need(&self) -> u64 {
        self.nodes
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(n.jvm.memory_bytes))
    }

    /// The hosts block as text (without the agent's markers).
    pub fn hosts_text(&self) -> String {
        self.hosts
            .iter()
            .map(|e| format!("{} {}\n", e.address, e.names.join(" ")))
            .collect()
    }
}

/// A command run in the node's carbon home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    /// argv; the first element is relative to the carbon home.
    pub argv: Vec<String>,
    /// Output that means success (for tools that exit 0 on failure).
    pub success_marker: Option<String>,
    /// Output that means failure.
    pub failure_markers: Vec<String>,
}

impl CommandSpec {
    pub(super) fn plain(argv: Vec<String>) -> Self {
        CommandSpec {
            argv,
            success_marker: None,
            failure_markers: Vec::new(),
        }
    }

    /// The argv as one display line (for humans; never executed through a shell).
    pub fn display(&self) -> String {
        self.argv.join(" ")
    }
}

/// An HTTP readiness probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// URL probed.
    pub url: String,
    /// Expected status.
    pub expect_status: u16,
    /// Text the body must contain, if any.
    pub expect_body: Option<String>,
    /// Skip certificate verification (local health endpoints only).
    pub tls_insecure: bool,
}

/// When a node counts as ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Log file, relative to the carbon home.
    pub log_file: String,
    /// The line that means the server started.
    pub log_line: String,
    /// Address the ports are probed on.
    pub address: IpAddr,
    /// Ports that must accept connections (offset applied).
    pub tcp_ports: Vec<u16>,
    /// HTTP probes.
    pub http: Vec<HttpCheck>,
    /// How long the node may take.
    pub timeout_secs: u64,
}

/// The certificate a node needs (issued by the cluster CA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTls {
    /// Who issues.
    pub issuer: Issuer,
    /// Keystore type.
    pub store_type: StoreType,
    /// TLS keystore file name.
    pub keystore_file: String,
    /// Alias of the node key.
    pub alias: String,
    /// Certificate CN.
    pub common_name: String,
    /// Certificate SANs (the hostname first, then the role's LB hostname).
    pub sans: Vec<String>,
    /// Shared primary keystore file, if separate from the TLS keystore.
    pub primary_keystore_file: Option<String>,
    /// Alias of the primary key.
    pub primary_alias: String,
    /// Truststore file name.
    pub truststore_file: String,
    /// Store (= key) password of the keystores apimctl writes.
    pub keystore_password: Sensitive,
    /// Password of the truststore the cluster CA is imported into.
    pub truststore_password: Sensitive,
}

/// A jar fetched by digest and placed in a node's carbon home (a JDBC driver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLib {
    /// The jar's file name.
    pub file_name: String,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// The folder it goes into, relative to the carbon home.
    pub dir: String,
}

/// A database a node's server connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDatabase {
    /// `apim_db` or `shared_db`.
    pub id: String,
    /// Its server's host.
    pub host: String,
    /// Its server's port.
    pub port: u16,
    /// Set on the one node of the cluster that creates its schema.
    pub init: Option<NodeDbInit>,
}

/// Creating a database's schema from the node's pack's scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDbInit {
    /// The engine.
    pub db_type: crate::catalogue::DbType,
    /// The database name.
    pub database: String,
    /// The user the scripts run as.
    pub username: String,
    /// Its password.
    pub password: Sensitive,
    /// The scripts, relative to the carbon home, in order.
    pub scripts: Vec<String>,
}

/// Folders of a node's carbon home kept the same on every node of a group (3.x gateways in HA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFolders {
    /// The group, the same on every node of it: `gateway/` and the node's environments.
    pub group: String,
    /// How.
    pub how: SharedHow,
}

/// How a group's folders are shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedHow {
    /// The agents synchronise these folders (relative to the carbon home) through the
    /// controller.
    Sync {
        /// The folders.
        dirs: Vec<String>,
    },
    /// The operator's shared file system, mounted over `dir` (relative to the carbon home).
    Mount {
        /// The folder.
        dir: String,
        /// What to mount.
        source: String,
        /// `mount -t`.
        fstype: String,
        /// `mount -o` (empty: none).
        options: String,
    },
}

/// A file apimctl writes into a node's carbon home besides `deployment.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFile {
    /// Path relative to the carbon home.
    pub path: String,
    /// Its content (shown only when not `secret`).
    pub content: Sensitive,
    /// Holds a secret: mode 0600, never shown.
    pub secret: bool,
    /// Written before every start (the server consumes it), not with the configuration.
    pub before_each_start: bool,
}

/// A secret value that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(pub String);

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

/// How a node's JVM is sized and what it needs of its machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeJvm {
    /// The words of `JAVA_OPTS`: `-Xms`/`-Xmx` where the plan sets them, then its options
    /// (cluster, role, node). Empty: the start scripts' defaults, and no `JAVA_OPTS`.
    pub java_opts: Vec<String>,
    /// The maximum heap the node runs with, bytes (the plan's, else the scripts' default).
    pub heap_max: u64,
    /// What the node needs of its machine's memory, bytes
    /// ([`crate::catalogue::jvm::memory_need`] of `heap_max`).
    pub memory_bytes: u64,
}

impl NodeJvm {
    /// The value of `JAVA_OPTS` (the words joined by spaces, as the scripts split them), or
    /// `None` when the plan sets nothing.
    pub fn java_opts_value(&self) -> Option<String> {
        (!self.java_opts.is_empty()).then(|| self.java_opts.join(" "))
    }
}

/// One node, fully rendered.
#[derive(Clone, Debug)]
pub struct NodeRender {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Machine name.
    pub machine: String,
    /// The node's own host name.
    pub hostname: String,
    /// Port offset.
    pub offset: u16,
    /// Which pack.
    pub pack: PackKind,
    /// The pack's file name and top directory.
    pub pack_top_dir: String,
    /// Expected sha256 of the pack.
    pub pack_sha256: String,
    /// Folder the node is unpacked into.
    pub install_dir: String,
    /// `install_dir/<top dir>`.
    pub carbon_home: String,
    /// JAVA_HOME.
    pub java_home: String,
    /// Unix user to run as.
    pub run_as: Option<String>,
    /// The pack file (under its top directory) `deployment_toml` is merged onto; `None` when
    /// the render had no pack to read, so the product's own defaults are not in the text.
    pub base_file: Option<String>,
    /// The full `deployment.toml`, secrets included.
    pub deployment_toml: String,
    /// The same with secrets masked, for printing.
    pub deployment_toml_masked: String,
    /// Other files of the node's configuration (the secure vault's).
    pub files: Vec<NodeFile>,
    /// Jars placed in the carbon home (its databases' JDBC drivers).
    pub libs: Vec<NodeLib>,
    /// The databases the node uses.
    pub databases: Vec<NodeDatabase>,
    /// sha256 of `deployment_toml` (and of `files` written with it, when there are any): a
    /// change means a restart.
    pub config_digest: String,
    /// Profile optimizer, run once per fresh unpack.
    pub optimizer: Option<CommandSpec>,
    /// Start command.
    pub start: CommandSpec,
    /// Stop command.
    pub stop: CommandSpec,
    /// Readiness checks.
    pub readiness: Readiness,
    /// Nodes that must be ready before this one starts.
    pub depends_on: Vec<String>,
    /// Certificates and keystores.
    pub tls: NodeTls,
    /// Heap, JVM options and memory need.
    pub jvm: NodeJvm,
    /// Folders shared with the other nodes of its group.
    pub shared: Option<SharedFolders>,
}
