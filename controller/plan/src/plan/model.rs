//! The plan's typed model: what each section of `plan.toml` means once parsed, every value with
//! the span it was written at, and the questions asked of a whole plan (its machines, the nodes
//! of a role, its secret references, its paths).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::At;
use crate::catalogue::{DbType, PackKind, Product, Role, StoreType};

/// Where a secret comes from. Secrets are resolved on the machine running `apimctl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the `apimctl` process.
    Env(String),
    /// A file (relative paths are relative to the plan's folder); one trailing newline is dropped.
    File(PathBuf),
    /// A literal in the plan (accepted, with a warning).
    Literal(String),
    /// A well-known product default (e.g. the shipped truststore's password).
    Default(&'static str),
}

/// A secret reference with the span it was written at.
pub type Secret = At<SecretSource>;

/// `[cluster]`.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Cluster name; names the primary keystore's certificate and the rollout.
    pub name: At<String>,
    /// The release, e.g. `wso2am-3.2.0`.
    pub product: At<Product>,
    /// Where packs are unpacked on each machine (a folder per node below it).
    pub install_dir: At<String>,
    /// JAVA_HOME on each machine (machines may override).
    pub java_home: At<String>,
    /// Unix user the servers run as (machines may override); `None` = the agent's user.
    pub run_as: Option<At<String>>,
}

/// One pack of `[distributions]`.
#[derive(Clone, Debug)]
pub struct Distribution {
    /// Which pack this is.
    pub kind: PackKind,
    /// Path of the zip (relative to the plan's folder).
    pub path: At<String>,
    /// Expected sha256 of the zip, lowercase hex.
    pub sha256: At<String>,
}

/// `[admin]`: the super admin account of every node.
#[derive(Clone, Debug)]
pub struct Admin {
    /// User name.
    pub username: At<String>,
    /// Password.
    pub password: Secret,
}

/// One of `[databases.apim_db]` / `[databases.shared_db]`.
#[derive(Clone, Debug)]
pub struct Database {
    /// `apim_db` or `shared_db`.
    pub id: &'static str,
    /// Engine.
    pub db_type: At<DbType>,
    /// Server host name (not for h2).
    pub host: Option<At<String>>,
    /// Server port.
    pub port: u16,
    /// Database (or Oracle service) name.
    pub name: Option<At<String>>,
    /// Database user.
    pub username: At<String>,
    /// Database password.
    pub password: Secret,
    /// Explicit JDBC URL, replacing host/port/name.
    pub url: Option<At<String>>,
    /// Whether apimctl creates the schema (`init`).
    pub init: At<DbInit>,
    /// Span of the table, for messages.
    pub span: std::ops::Range<usize>,
}

impl Database {
    /// Host, port and database name the servers connect to: the plan's, or read from its
    /// MySQL/PostgreSQL JDBC `url`; `None` for H2 or a URL of another form.
    pub fn endpoint(&self) -> Option<(String, u16, String)> {
        if self.db_type.value == DbType::H2 {
            return None;
        }
        if let Some(url) = &self.url {
            return crate::catalogue::database::jdbc_endpoint(&url.value);
        }
        Some((
            self.host.as_ref()?.value.clone(),
            self.port,
            self.name.as_ref()?.value.clone(),
        ))
    }
}

/// `[databases.*] init`: whether apimctl creates a database's schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DbInit {
    /// The operator creates it (the default).
    #[default]
    Never,
    /// Before the first node that uses it starts, from the pack's scripts, when the database
    /// holds none of the schema's tables.
    IfEmpty,
}

/// One jar of `[drivers]`: the JDBC driver for an engine.
#[derive(Clone, Debug)]
pub struct Driver {
    /// The engine it serves.
    pub db_type: DbType,
    /// Path of the jar (relative to the plan's folder).
    pub path: At<String>,
    /// Expected sha256 of the jar, lowercase hex.
    pub sha256: At<String>,
}

impl Driver {
    /// The jar's file name.
    pub fn file_name(&self) -> String {
        std::path::Path::new(&self.path.value)
            .file_name()
            .map_or_else(
                || self.path.value.clone(),
                |n| n.to_string_lossy().into_owned(),
            )
    }
}

/// Who makes the nodes' TLS keystores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issuer {
    /// apimctl's cluster CA issues a certificate per node (CN = node hostname) and one shared
    /// primary keystore.
    ClusterCa,
    /// The operator's own keystore files are shipped as they are.
    Provided,
    /// The pack's shipped `CN=localhost` keystores are left alone (demos only; warned about).
    PackDefault,
}

/// `[tls]`.
#[derive(Clone, Debug)]
pub struct Tls {
    /// Who makes the keystores.
    pub issuer: At<Issuer>,
    /// Keystore type.
    pub keystore_type: StoreType,
    /// File name of each node's TLS keystore under `repository/resources/security`.
    pub keystore_file: String,
    /// Alias of the node's key in its TLS keystore.
    pub keystore_alias: String,
    /// TLS keystore password (= key password, as WSO2 requires).
    pub keystore_password: Secret,
    /// File name of the shared primary keystore (`None` = the TLS keystore doubles as primary).
    pub primary_keystore_file: Option<String>,
    /// Alias of the primary key.
    pub primary_alias: String,
    /// Truststore file name.
    pub truststore_file: String,
    /// Truststore password.
    pub truststore_password: Secret,
    /// Provided keystore (issuer = provided), relative to the plan.
    pub provided_keystore: Option<At<String>>,
    /// Provided truststore (issuer = provided), relative to the plan.
    pub provided_truststore: Option<At<String>>,
}

/// One `[[machines]]` entry: a VM running one agent.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Machine name (the agent's identity).
    pub name: At<String>,
    /// The machine's address, written into every machine's hosts block.
    pub address: At<IpAddr>,
    /// JAVA_HOME override.
    pub java_home: Option<At<String>>,
    /// install_dir override.
    pub install_dir: Option<At<String>>,
    /// run_as override.
    pub run_as: Option<At<String>>,
    /// Span of the entry.
    pub span: std::ops::Range<usize>,
}

/// One `[[nodes]]` entry: a WSO2 server.
#[derive(Clone, Debug)]
pub struct Node {
    /// Node name.
    pub name: At<String>,
    /// The machine it runs on.
    pub machine: At<String>,
    /// Its role.
    pub role: At<Role>,
    /// Its own host name (certificate CN; what peers use when its role has no load balancer).
    pub hostname: At<String>,
    /// Port offset.
    pub offset: At<u16>,
    /// False when `offset` was written but is not a valid offset (reported where it is
    /// written); its ports are then not compared with other nodes'.
    pub offset_valid: bool,
    /// 4.5+ gateways: the `gateway_id` (defaults to the node name).
    pub gateway_id: Option<At<String>>,
    /// Span of the entry.
    pub span: std::ops::Range<usize>,
}

/// A load balancer fronting the nodes of one role.
#[derive(Clone, Debug)]
pub struct LoadBalancer {
    /// The role it fronts.
    pub role: At<Role>,
    /// The host name peers and clients use.
    pub hostname: At<String>,
    /// Its address, when hosts files should map it (otherwise DNS does).
    pub address: Option<At<IpAddr>>,
    /// The `[[machines]]` entry apimctl installs the balancer (NGINX) on; its hostname then
    /// resolves to that machine's address.
    pub machine: Option<At<String>>,
}

/// One `[[gateway_environments]]` entry. Its gateways subscribe (4.x `gateway_labels`) to its
/// `name`: the control plane deploys an API to an environment by name.
#[derive(Clone, Debug)]
pub struct GatewayEnvironment {
    /// Environment name shown in the portals.
    pub name: At<String>,
    /// `hybrid`, `production` or `sandbox`.
    pub env_type: At<String>,
    /// Description.
    pub description: String,
    /// Show in the API console.
    pub display_in_api_console: bool,
    /// Show as the token endpoint URL.
    pub show_as_token_endpoint_url: bool,
    /// Gateway nodes of this environment (`None` = every gateway).
    pub gateways: Option<Vec<At<String>>>,
    /// Public host name of the environment (default: the gateway LB, or the single gateway).
    pub hostname: Option<At<String>>,
    /// Span of the entry.
    pub span: std::ops::Range<usize>,
}

/// How the gateways of one environment share their deployed APIs (`[gateway_artifacts]`; 3.x
/// gateways in HA, whose `repository/deployment/server` the guide has them share).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactShare {
    /// apimctl keeps the artifact folders in step through the controller (the default).
    Sync,
    /// A shared file system the operator provides, mounted over the folder on every gateway.
    Mount {
        /// What to mount (`server:/export`, or an absolute path with `fstype = "bind"`).
        source: At<String>,
        /// `mount -t` (default `nfs`).
        fstype: At<String>,
        /// `mount -o` (default none).
        options: Option<At<String>>,
    },
}

/// `[gateway_artifacts]`.
#[derive(Clone, Debug)]
pub struct GatewayArtifacts {
    /// `share`.
    pub share: ArtifactShare,
    /// Span of the table.
    pub span: std::ops::Range<usize>,
}

/// `[analytics]`.
#[derive(Clone, Debug, Default)]
pub struct Analytics {
    /// Publish analytics.
    pub enabled: bool,
    /// Where `enabled` is written (the start of the plan when it is not).
    pub enabled_span: std::ops::Range<usize>,
    /// 4.x: the analytics cloud config endpoint.
    pub config_endpoint: Option<At<String>>,
    /// 4.x: the analytics auth token.
    pub auth_token: Option<Secret>,
}

/// `[secure_vault]`.
#[derive(Clone, Debug, Default)]
pub struct SecureVault {
    /// Every secret of each node's `deployment.toml` encrypted in `[secrets]`.
    pub enabled: bool,
    /// Where `enabled` is written (the start of the plan when it is not).
    pub span: std::ops::Range<usize>,
}

/// What to do when a node fails to become healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop: dependents stay unstarted.
    Halt,
    /// Return every touched node to the previous generation.
    Rollback,
}

/// What the controller does when an agent reports a node drifted (its files no longer what the
/// agent wrote for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DriftMode {
    /// Show it (`status`, `check`); change nothing.
    #[default]
    Report,
    /// Also restart the drifted nodes through the gated restart path, which writes their files
    /// again.
    Repair,
}

/// How start tiers are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOrder {
    /// From who points at whom.
    Graph,
    /// The guides' strict order, one role rank per tier.
    Strict,
}

/// `[rollout]`.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// Most nodes started at once.
    pub max_parallel: u32,
    /// How long a node may take to become ready.
    pub health_timeout: Duration,
    /// Halt or roll back.
    pub on_failure: OnFailure,
    /// Graph or strict order.
    pub start_order: StartOrder,
    /// Report or repair drift, and where it is written (the start of the plan when it is not).
    pub drift: At<DriftMode>,
}

/// Who an override applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every node.
    All,
    /// Every node of a role.
    Role(Role),
    /// One node.
    Node(String),
}

impl std::fmt::Display for Scope {
    /// As written in the plan: `all`, `role:NAME`, `node:NAME`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Role(r) => write!(f, "role:{r}"),
            Scope::Node(n) => write!(f, "node:{n}"),
        }
    }
}

impl Scope {
    /// The `[jvm]` table of this scope: `[jvm]`, `[jvm."role:NAME"]`, `[jvm."node:NAME"]`.
    pub fn jvm_table(&self) -> String {
        match self {
            Scope::All => "[jvm]".to_string(),
            other => format!("[jvm.\"{other}\"]"),
        }
    }
}

/// A raw `deployment.toml` fragment merged last.
#[derive(Clone, Debug)]
pub struct Override {
    /// Who it applies to.
    pub scope: At<Scope>,
    /// The TOML fragment.
    pub text: String,
    /// Byte offset in the plan where the fragment's content starts (for error positions).
    pub content_offset: usize,
    /// Parsed fragment.
    pub table: toml::Table,
}

/// A heap size as written (`"2g"`, `"512m"`), with its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapSize {
    /// Bytes.
    pub bytes: u64,
    /// The size as the JVM takes it (`-Xmx<text>`), unit in lower case.
    pub text: String,
}

/// The JVM settings of one `[jvm]` scope; what a scope leaves out comes from a wider one.
#[derive(Clone, Debug, Default)]
pub struct JvmSettings {
    /// `heap_min`: the initial heap (`-Xms`).
    pub heap_min: Option<At<HeapSize>>,
    /// `heap_max`: the maximum heap (`-Xmx`).
    pub heap_max: Option<At<HeapSize>>,
    /// `options`: further JVM options, each one word.
    pub options: Vec<At<String>>,
}

/// One scope of `[jvm]`: the table itself (every node), `[jvm."role:NAME"]` or
/// `[jvm."node:NAME"]`.
#[derive(Clone, Debug)]
pub struct JvmScope {
    /// Who it applies to.
    pub scope: At<Scope>,
    /// What it sets.
    pub settings: JvmSettings,
}

/// A node's JVM settings once its scopes are merged: node over role over cluster, field by field;
/// `options` accumulate in that order (the JVM takes the last occurrence of a flag, so the
/// narrower scope wins there too).
#[derive(Clone, Debug, Default)]
pub struct NodeJvmSettings {
    /// The initial heap, and the scope that set it.
    pub heap_min: Option<(At<HeapSize>, Scope)>,
    /// The maximum heap, and the scope that set it.
    pub heap_max: Option<(At<HeapSize>, Scope)>,
    /// Every option, widest scope first.
    pub options: Vec<At<String>>,
}

/// A parsed plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The folder relative paths are resolved against.
    pub base_dir: PathBuf,
    /// `[cluster]`.
    pub cluster: Cluster,
    /// `[distributions]`, by pack.
    pub distributions: BTreeMap<PackKind, Distribution>,
    /// `[admin]`.
    pub admin: Admin,
    /// `[databases.apim_db]`.
    pub apim_db: Option<Database>,
    /// `[databases.shared_db]`.
    pub shared_db: Option<Database>,
    /// `[drivers]`, by engine.
    pub drivers: BTreeMap<DbType, Driver>,
    /// The `[databases.*]` tables written in the plan, parsed or not (a table with an error is
    /// reported there, not as missing).
    pub databases_written: Vec<&'static str>,
    /// `[user_store] type`.
    pub user_store_type: At<String>,
    /// `[tls]`.
    pub tls: Tls,
    /// `[hosts]`: extra names for every machine's hosts block.
    pub hosts: Vec<(At<String>, At<IpAddr>)>,
    /// `[[machines]]`.
    pub machines: Vec<Machine>,
    /// `[[nodes]]`.
    pub nodes: Vec<Node>,
    /// `[load_balancers]`, by role.
    pub load_balancers: BTreeMap<Role, LoadBalancer>,
    /// `[[gateway_environments]]` (one default environment when absent).
    pub gateway_environments: Vec<GatewayEnvironment>,
    /// `[gateway_artifacts]`, when written.
    pub gateway_artifacts: Option<GatewayArtifacts>,
    /// `[analytics]`.
    pub analytics: Analytics,
    /// `[secure_vault]`.
    pub secure_vault: SecureVault,
    /// `[rollout]`.
    pub rollout: Rollout,
    /// `[overrides]`, in source order.
    pub overrides: Vec<Override>,
    /// `[jvm]`: the cluster scope first, then the role and node scopes in source order.
    pub jvm: Vec<JvmScope>,
}

impl Plan {
    /// The machine named `name`.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name.value == name)
    }

    /// The load balancers apimctl installs on `machine`, by role.
    pub fn balancers_on<'a>(&'a self, machine: &'a str) -> impl Iterator<Item = &'a LoadBalancer> {
        self.load_balancers
            .values()
            .filter(move |lb| lb.machine.as_ref().is_some_and(|m| m.value == machine))
    }

    /// Nodes of `role`, in plan order.
    pub fn nodes_of(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.role.value == role)
    }

    /// A path from the plan, resolved against the plan's folder.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        resolve_path(&self.base_dir, p)
    }

    /// `node`'s JVM settings: its `[jvm]` scopes merged, node over role over cluster.
    pub fn jvm_for(&self, node: &Node) -> NodeJvmSettings {
        let mut merged = NodeJvmSettings::default();
        for rank in 0..3 {
            for s in &self.jvm {
                let applies = match &s.scope.value {
                    Scope::All => rank == 0,
                    Scope::Role(r) => rank == 1 && *r == node.role.value,
                    Scope::Node(n) => rank == 2 && *n == node.name.value,
                };
                if !applies {
                    continue;
                }
                let scope = &s.scope.value;
                if let Some(h) = &s.settings.heap_min {
                    merged.heap_min = Some((h.clone(), scope.clone()));
                }
                if let Some(h) = &s.settings.heap_max {
                    merged.heap_max = Some((h.clone(), scope.clone()));
                }
                merged.options.extend(s.settings.options.iter().cloned());
            }
        }
        merged
    }

    /// Every secret reference of the plan with a description, for resolution and checking.
    pub fn secret_refs(&self) -> Vec<(&'static str, &Secret)> {
        let mut v = vec![("admin password", &self.admin.password)];
        if let Some(db) = &self.apim_db {
            v.push(("apim_db password", &db.password));
        }
        if let Some(db) = &self.shared_db {
            v.push(("shared_db password", &db.password));
        }
        v.push(("keystore password", &self.tls.keystore_password));
        v.push(("truststore password", &self.tls.truststore_password));
        if let Some(t) = &self.analytics.auth_token {
            v.push(("analytics auth token", t));
        }
        v
    }
}

/// Resolves `p` against `base` unless absolute.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}
