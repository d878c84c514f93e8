//! The renderer: a validated plan becomes one typed spec per machine, with each node's complete
//! `deployment.toml`, its machine's hosts block, the optimizer/start/stop commands and readiness
//! checks, and the start order.
//!
//! All WSO2 wiring knowledge lives here (see `docs/plan.md`, "What the renderer writes"). Every
//! URL that names a peer is built by [`Wiring`], which also records the reference so the start
//! order can be derived from who points at whom ([`crate::graph`]).

mod doc;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use toml::{Table, Value};

use crate::catalogue::defaults::{self, StoreType};
use crate::catalogue::{PackKind, Port, Product, ProductLine, Role, database, layout};
use crate::graph::{self, Tiers};
use crate::plan::{DbType, Issuer, Plan, Scope};
use crate::secrets::{self, EnvSource};
use doc::{Doc, arr, s};

/// What masked secrets look like in printed output.
pub const MASK: &str = "********";

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
}

impl MachineRender {
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
    fn plain(argv: Vec<String>) -> Self {
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

/// A secret value that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(pub String);

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
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
    /// The full `deployment.toml`, secrets included.
    pub deployment_toml: String,
    /// The same with secrets masked, for printing.
    pub deployment_toml_masked: String,
    /// sha256 of `deployment_toml`: a change means a restart.
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
}

/// Resolved secrets; in masked mode every value is [`MASK`].
struct Secrets {
    admin: String,
    apim_db: String,
    shared_db: String,
    keystore: String,
    truststore: String,
    analytics_token: Option<String>,
}

/// Errors the renderer can meet on a plan that passed validation.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A secret could not be read (the environment changed since validation).
    #[error("{what}: {reason}")]
    Secret {
        /// Which secret.
        what: &'static str,
        /// Why (never the value).
        reason: String,
    },
}

fn resolve_secrets(
    plan: &Plan,
    env: &dyn EnvSource,
) -> Result<BTreeMap<&'static str, String>, RenderError> {
    let mut map = BTreeMap::new();
    for (what, s) in plan.secret_refs() {
        let v = secrets::resolve(&s.value, &plan.base_dir, env)
            .map_err(|reason| RenderError::Secret { what, reason })?;
        map.insert(what, v);
    }
    Ok(map)
}

impl Secrets {
    fn new(map: &BTreeMap<&'static str, String>, masked: bool) -> Self {
        let get = |k: &str| -> String {
            if masked {
                MASK.to_string()
            } else {
                map.get(k).cloned().unwrap_or_default()
            }
        };
        Secrets {
            admin: get("admin password"),
            apim_db: get("apim_db password"),
            shared_db: get("shared_db password"),
            keystore: get("keystore password"),
            truststore: get("truststore password"),
            analytics_token: map
                .contains_key("analytics auth token")
                .then(|| get("analytics auth token")),
        }
    }
}

/// Renders a validated plan.
pub fn render(plan: &Plan, env: &dyn EnvSource) -> Result<ClusterRender, RenderError> {
    let secret_map = resolve_secrets(plan, env)?;
    let revealed = Secrets::new(&secret_map, false);
    let masked = Secrets::new(&secret_map, true);
    let product = plan.cluster.product.value;
    let hosts = hosts_block(plan);

    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rendered_nodes = Vec::new();
    for node in &plan.nodes {
        let mut wiring = Wiring::new(plan, node);
        let toml_text = node_document(plan, node, &revealed, &mut wiring);
        let mut throwaway = Wiring::new(plan, node);
        let masked_text = node_document(plan, node, &masked, &mut throwaway);
        edges.insert(node.name.value.clone(), wiring.refs);
        rendered_nodes.push((node, toml_text, masked_text));
    }

    let tiers = graph::tiers(plan, &edges);
    let deps = graph::dependencies(plan, &edges);

    let mut machines: Vec<MachineRender> = plan
        .machines
        .iter()
        .map(|m| MachineRender {
            name: m.name.value.clone(),
            address: m.address.value,
            hosts: hosts.clone(),
            nodes: Vec::new(),
        })
        .collect();
    for (node, toml_text, masked_text) in rendered_nodes {
        let machine = plan
            .machine(&node.machine.value)
            .expect("validated: node machine exists");
        let profile = product
            .role_profile(node.role.value)
            .expect("validated: role exists");
        let top_dir = product.pack_top_dir(profile.pack);
        let base_install = machine
            .install_dir
            .as_ref()
            .unwrap_or(&plan.cluster.install_dir)
            .value
            .trim_end_matches('/')
            .to_string();
        let install_dir = format!("{base_install}/{}", node.name.value);
        let carbon_home = format!("{install_dir}/{top_dir}");
        let offset = node.offset.value;
        let optimizer = profile.optimizer_argv().map(|argv| CommandSpec {
            argv,
            success_marker: Some(layout::OPTIMIZER_SUCCESS.to_string()),
            failure_markers: vec![layout::OPTIMIZER_FAILURE.to_string()],
        });
        let start = profile.start_argv();
        let stop = profile.stop_argv();

        let address = machine.address.value;
        let host = match address {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        let mut http = vec![HttpCheck {
            url: format!(
                "http://{host}:{}{}",
                Port::Http.at(offset),
                layout::VERSION_PATH
            ),
            expect_status: 200,
            expect_body: Some(product.server_name(profile.pack)),
            tls_insecure: false,
        }];
        if node.role.value == Role::Gateway && product.has_gateway_healthcheck() {
            http.push(HttpCheck {
                url: format!(
                    "https://{host}:{}{}",
                    Port::Https.at(offset),
                    layout::GATEWAY_HEALTHCHECK_PATH
                ),
                expect_status: 200,
                expect_body: None,
                tls_insecure: true,
            });
        }
        let lb = plan
            .load_balancers
            .get(&node.role.value)
            .map(|lb| lb.hostname.value.clone());
        let primary_keystore_file = primary_keystore_file(plan);
        let render = NodeRender {
            name: node.name.value.clone(),
            role: node.role.value,
            machine: machine.name.value.clone(),
            hostname: node.hostname.value.clone(),
            offset,
            pack: profile.pack,
            pack_top_dir: top_dir,
            pack_sha256: plan
                .distributions
                .get(&profile.pack)
                .map(|d| d.sha256.value.to_ascii_lowercase())
                .unwrap_or_default(),
            install_dir,
            carbon_home,
            java_home: machine
                .java_home
                .as_ref()
                .unwrap_or(&plan.cluster.java_home)
                .value
                .clone(),
            run_as: machine
                .run_as
                .as_ref()
                .or(plan.cluster.run_as.as_ref())
                .map(|u| u.value.clone()),
            config_digest: crate::digest(toml_text.as_bytes()),
            deployment_toml: toml_text,
            deployment_toml_masked: masked_text,
            optimizer,
            start: CommandSpec::plain(start),
            stop: CommandSpec::plain(stop),
            readiness: Readiness {
                log_file: layout::LOG_FILE.to_string(),
                log_line: layout::READY_LINE.to_string(),
                address,
                tcp_ports: crate::catalogue::readiness_ports(product, node.role.value)
                    .into_iter()
                    .map(|p| p.at(offset))
                    .collect(),
                http,
                timeout_secs: plan.rollout.health_timeout.as_secs(),
            },
            depends_on: deps.get(&node.name.value).cloned().unwrap_or_default(),
            tls: NodeTls {
                issuer: plan.tls.issuer.value,
                store_type: plan.tls.keystore_type,
                keystore_file: plan.tls.keystore_file.clone(),
                alias: plan.tls.keystore_alias.clone(),
                common_name: node.hostname.value.clone(),
                sans: std::iter::once(node.hostname.value.clone())
                    .chain(lb)
                    .collect(),
                primary_keystore_file,
                primary_alias: plan.tls.primary_alias.clone(),
                truststore_file: plan.tls.truststore_file.clone(),
                keystore_password: Sensitive(revealed.keystore.clone()),
                truststore_password: Sensitive(revealed.truststore.clone()),
            },
        };
        let idx = plan
            .machines
            .iter()
            .position(|m| m.name.value == node.machine.value)
            .expect("machine exists");
        machines[idx].nodes.push(render);
    }
    Ok(ClusterRender {
        cluster: plan.cluster.name.value.clone(),
        product,
        machines,
        tiers,
    })
}

/// The hosts block every machine gets: node hostnames, LBs with an address, and `[hosts]`.
fn hosts_block(plan: &Plan) -> Vec<HostsEntry> {
    let mut entries: Vec<HostsEntry> = Vec::new();
    let mut add = |address: IpAddr, name: &str| {
        if entries
            .iter()
            .any(|e| e.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        {
            return;
        }
        match entries.iter_mut().find(|e| e.address == address) {
            Some(e) => e.names.push(name.to_string()),
            None => entries.push(HostsEntry {
                address,
                names: vec![name.to_string()],
            }),
        }
    };
    for m in &plan.machines {
        for n in plan
            .nodes
            .iter()
            .filter(|n| n.machine.value == m.name.value)
        {
            add(m.address.value, &n.hostname.value);
        }
    }
    for lb in plan.load_balancers.values() {
        if let Some(a) = &lb.address {
            add(a.value, &lb.hostname.value);
        }
    }
    for (name, addr) in &plan.hosts {
        add(addr.value, &name.value);
    }
    entries
}

/// Builds peer URLs for one node and records which nodes it points at.
struct Wiring<'p> {
    plan: &'p Plan,
    me: &'p crate::plan::Node,
    refs: BTreeSet<String>,
}

impl<'p> Wiring<'p> {
    fn new(plan: &'p Plan, me: &'p crate::plan::Node) -> Self {
        Wiring {
            plan,
            me,
            refs: BTreeSet::new(),
        }
    }

    fn nodes(&self, role: Role) -> Vec<&'p crate::plan::Node> {
        self.plan.nodes_of(role).collect()
    }

    fn note(&mut self, role: Role) {
        for n in self.plan.nodes_of(role) {
            if n.name.value != self.me.name.value {
                self.refs.insert(n.name.value.clone());
            }
        }
    }

    /// `https://host:port` of a role's management endpoint: its LB (no port) when it has one,
    /// else its single node's hostname with [`Port::Https`] at the node's offset.
    fn mgmt(&mut self, role: Role) -> String {
        self.note(role);
        if let Some(lb) = self.plan.load_balancers.get(&role) {
            return format!("https://{}", lb.hostname.value);
        }
        match self.nodes(role).first() {
            Some(n) => format!(
                "https://{}:{}",
                n.hostname.value,
                Port::Https.at(n.offset.value)
            ),
            None => LOCAL_MGMT.to_string(),
        }
    }

    /// `scheme://node:base+offset` for every node of a role (per-node endpoints never go through an LB).
    fn each(&mut self, role: Role, scheme: &str, port: Port) -> Vec<String> {
        self.note(role);
        self.nodes(role)
            .iter()
            .map(|n| {
                format!(
                    "{scheme}://{}:{}",
                    n.hostname.value,
                    port.at(n.offset.value)
                )
            })
            .collect()
    }

    /// Same, for the other nodes of my own role (HA peers).
    fn peers(&self, scheme: &str, port: Port) -> Vec<String> {
        self.plan
            .nodes_of(self.me.role.value)
            .filter(|n| n.name.value != self.me.name.value)
            .map(|n| {
                format!(
                    "{scheme}://{}:{}",
                    n.hostname.value,
                    port.at(n.offset.value)
                )
            })
            .collect()
    }

    /// My own endpoint through `localhost`.
    fn local(&self, scheme: &str, port: Port) -> String {
        format!("{scheme}://localhost:{}", port.at(self.me.offset.value))
    }
}

fn node_document(
    plan: &Plan,
    node: &crate::plan::Node,
    sec: &Secrets,
    w: &mut Wiring<'_>,
) -> String {
    let product = plan.cluster.product.value;
    let role = node.role.value;
    let line = product.line();
    let profile = product.role_profile(role).expect("validated role");
    let machine = plan
        .machine(&node.machine.value)
        .expect("validated machine");
    let lb = plan.load_balancers.get(&role);
    let mut d = Doc::new();

    // [server]
    let server_hostname = lb.map_or(&node.hostname.value, |lb| &lb.hostname.value);
    d.set("server.hostname", s(server_hostname));
    d.set("server.node_ip", s(&machine.address.value.to_string()));
    d.set("server.server_role", s(profile.server_role));
    d.set(
        "server.offset",
        Value::Integer(i64::from(node.offset.value)),
    );
    if role == Role::ControlPlane {
        d.set(
            "server.base_path",
            s("${carbon.protocol}://${carbon.host}:${carbon.management.port}"),
        );
    }

    d.set("super_admin.username", s(&plan.admin.username.value));
    d.set("super_admin.password", s(&sec.admin));
    d.set("super_admin.create_admin_account", Value::Boolean(true));
    d.set("user_store.type", s(&plan.user_store_type.value));

    if product.needs_apim_db(role)
        && let Some(db) = &plan.apim_db
    {
        database(&mut d, db, &sec.apim_db);
    }
    if let Some(db) = &plan.shared_db {
        database(&mut d, db, &sec.shared_db);
    }

    // Keystores.
    let tls = &plan.tls;
    let shipped = defaults::SHIPPED_KEYSTORE_TYPE;
    let (ks_file, ks_alias) = match tls.issuer.value {
        Issuer::PackDefault => (
            shipped.keystore_file().to_string(),
            defaults::KEY_ALIAS.to_string(),
        ),
        _ => (tls.keystore_file.clone(), tls.keystore_alias.clone()),
    };
    let ks_type = if tls.issuer.value == Issuer::PackDefault {
        shipped.as_str()
    } else {
        tls.keystore_type.as_str()
    };
    keystore_section(
        &mut d,
        "keystore.tls",
        &ks_file,
        ks_type,
        &sec.keystore,
        &ks_alias,
    );
    if let Some(file) = primary_keystore_file(plan) {
        let ty = tls.keystore_type.as_str();
        keystore_section(
            &mut d,
            "keystore.primary",
            &file,
            ty,
            &sec.keystore,
            &tls.primary_alias,
        );
    }
    d.set("truststore.file_name", s(&tls.truststore_file));
    d.set("truststore.type", s(defaults::TRUSTSTORE_TYPE.as_str()));
    d.set("truststore.password", s(&sec.truststore));

    // Behind a load balancer: advertise the LB's ports.
    if lb.is_some() {
        if role == Role::Gateway {
            let http = i64::from(Port::Http.base());
            let https = i64::from(Port::Https.base());
            d.set("transport.http.properties.port", Value::Integer(http));
            d.set(
                "transport.http.properties.proxyPort",
                Value::Integer(LB_HTTP_PORT.into()),
            );
            d.set("transport.https.properties.port", Value::Integer(https));
        }
        d.set(
            "transport.https.properties.proxyPort",
            Value::Integer(LB_HTTPS_PORT.into()),
        );
    }

    match line {
        ProductLine::V3 => v3_role(plan, node, &mut d, w),
        ProductLine::V4 | ProductLine::V45Split => v4_role(plan, node, &mut d, w),
    }

    // Analytics.
    let analytics_here = match line {
        ProductLine::V3 => true,
        _ => matches!(role, Role::Gateway | Role::ControlPlane),
    };
    if analytics_here
        && (plan.analytics.enabled || line == ProductLine::V3 || role == Role::Gateway)
    {
        d.set(
            "apim.analytics.enable",
            Value::Boolean(plan.analytics.enabled),
        );
        if plan.analytics.enabled && line != ProductLine::V3 {
            if let Some(ep) = &plan.analytics.config_endpoint {
                d.set("apim.analytics.config_endpoint", s(&ep.value));
            }
            if let Some(t) = &sec.analytics_token {
                d.set("apim.analytics.auth_token", s(t));
            }
        }
    }

    // The CORS defaults the packs ship for API-serving roles.
    if let Some(cors) = defaults::cors(product, role) {
        d.set("apim.cors.allow_origins", s(cors.allow_origins));
        d.set("apim.cors.allow_methods", arr(cors.allow_methods));
        d.set("apim.cors.allow_headers", arr(cors.allow_headers));
        d.set(
            "apim.cors.allow_credentials",
            Value::Boolean(cors.allow_credentials),
        );
    }

    // Overrides, merged last: all, then role, then node.
    for rank in 0..3 {
        for o in &plan.overrides {
            let applies = match &o.scope.value {
                Scope::All => rank == 0,
                Scope::Role(r) => rank == 1 && *r == role,
                Scope::Node(n) => rank == 2 && *n == node.name.value,
            };
            if applies {
                d.merge(&o.table);
            }
        }
    }
    d.to_string()
}

/// The shared primary keystore's file name: only the cluster CA makes one; provided and shipped
/// keystores double as primary (they are the same file on every node).
fn primary_keystore_file(plan: &Plan) -> Option<String> {
    let tls = &plan.tls;
    (tls.issuer.value == Issuer::ClusterCa).then(|| {
        tls.primary_keystore_file
            .clone()
            .unwrap_or_else(|| tls.keystore_type.primary_keystore_file().to_string())
    })
}

/// A `[keystore.*]` section; WSO2 requires the key password to equal the store password.
fn keystore_section(d: &mut Doc, section: &str, file: &str, ty: &str, password: &str, alias: &str) {
    d.set(&format!("{section}.file_name"), s(file));
    d.set(&format!("{section}.type"), s(ty));
    d.set(&format!("{section}.password"), s(password));
    d.set(&format!("{section}.alias"), s(alias));
    d.set(&format!("{section}.key_password"), s(password));
}

fn database(d: &mut Doc, db: &crate::plan::Database, password: &str) {
    let p = format!("database.{}", db.id);
    d.set(&format!("{p}.type"), s(db.db_type.value.wso2_type()));
    match (&db.url, db.db_type.value) {
        (Some(url), _) => d.set(&format!("{p}.url"), s(&url.value)),
        (None, DbType::H2) => d.set(&format!("{p}.url"), s(database::h2_url(db.id))),
        (None, DbType::Oracle) => {
            let host = db.host.as_ref().map_or("", |h| h.value.as_str());
            let name = db.name.as_ref().map_or("", |n| n.value.as_str());
            d.set(
                &format!("{p}.url"),
                s(&format!("jdbc:oracle:thin:@//{host}:{}/{name}", db.port)),
            );
        }
        (None, _) => {
            d.set(
                &format!("{p}.hostname"),
                s(db.host.as_ref().map_or("", |h| h.value.as_str())),
            );
            d.set(
                &format!("{p}.name"),
                s(db.name.as_ref().map_or("", |n| n.value.as_str())),
            );
            // WSO2's own samples write the port as a string.
            d.set(&format!("{p}.port"), s(&db.port.to_string()));
        }
    }
    d.set(&format!("{p}.username"), s(&db.username.value));
    d.set(&format!("{p}.password"), s(password));
}

/// The ports a load balancer serves HTTP and HTTPS on (not product ports: WSO2 only advertises
/// them as `proxyPort`).
const LB_HTTP_PORT: u16 = 80;
const LB_HTTPS_PORT: u16 = 443;

/// A node's own management endpoint, through the property the product sets to its HTTPS port.
const LOCAL_MGMT: &str = "https://localhost:${mgt.transport.https.port}";

const REF_USER: &str = "$ref{super_admin.username}";
const REF_PASS: &str = "$ref{super_admin.password}";

/// `[apim.throttling]` decision endpoints and one url_group per traffic manager.
fn throttling_client(d: &mut Doc, w: &mut Wiring<'_>, service_url: bool, credentials: bool) {
    if service_url {
        let url = format!("{}{}", w.mgmt(Role::TrafficManager), layout::SERVICES_PATH);
        d.set("apim.throttling.service_url", s(&url));
    }
    d.set(
        "apim.throttling.throttle_decision_endpoints",
        arr(w.each(Role::TrafficManager, "tcp", Port::Amqp)),
    );
    if credentials {
        d.set("apim.throttling.username", s(REF_USER));
        d.set("apim.throttling.password", s(REF_PASS));
    }
    let binary = w.each(Role::TrafficManager, "tcp", Port::Binary);
    let auth = w.each(Role::TrafficManager, "ssl", Port::BinaryAuth);
    for (b, a) in binary.into_iter().zip(auth) {
        let mut t = Table::new();
        t.insert("traffic_manager_urls".into(), arr([b]));
        t.insert("traffic_manager_auth_urls".into(), arr([a]));
        d.push("apim.throttling.url_group", t);
    }
}

fn key_manager_client(d: &mut Doc, w: &mut Wiring<'_>, km_role: Role, type_default: bool) {
    let url = format!("{}{}", w.mgmt(km_role), layout::SERVICES_PATH);
    d.set("apim.key_manager.service_url", s(&url));
    d.set("apim.key_manager.username", s(REF_USER));
    d.set("apim.key_manager.password", s(REF_PASS));
    if type_default {
        d.set("apim.key_manager.type", s("default"));
    }
}

fn token_revocation(d: &mut Doc, notify_base: &str) {
    let mut t = Table::new();
    t.insert("id".into(), s("token_revocation"));
    t.insert(
        "type".into(),
        s("org.wso2.carbon.identity.core.handler.AbstractIdentityHandler"),
    );
    t.insert(
        "name".into(),
        s("org.wso2.is.notification.ApimOauthEventInterceptor"),
    );
    t.insert("order".into(), Value::Integer(1));
    let mut props = Table::new();
    props.insert(
        "notification_endpoint".into(),
        s(&format!("{notify_base}{}", layout::NOTIFY_PATH)),
    );
    props.insert("username".into(), s("${admin.username}"));
    props.insert("password".into(), s("${admin.password}"));
    props.insert("header.X-WSO2-KEY-MANAGER".into(), s("default"));
    t.insert("properties".into(), Value::Table(props));
    d.push("event_listener", t);
}

fn cache_invalidation(d: &mut Doc, role: Role) {
    d.set("apim.cache_invalidation.enabled", Value::Boolean(true));
    d.set("apim.cache_invalidation.domain", s(role.cache_domain()));
}

/// `[[apim.gateway.environment]]` for every environment.
fn gateway_environments(d: &mut Doc, plan: &Plan, w: &mut Wiring<'_>, with_service: bool) {
    for env in &plan.gateway_environments {
        let members: Vec<&crate::plan::Node> = match &env.gateways {
            Some(list) => plan
                .nodes_of(Role::Gateway)
                .filter(|n| list.iter().any(|g| g.value == n.name.value))
                .collect(),
            None => plan.nodes_of(Role::Gateway).collect(),
        };
        for m in &members {
            if m.name.value != w.me.name.value {
                w.refs.insert(m.name.value.clone());
            }
        }
        let lb_host = env.hostname.as_ref().map(|h| h.value.clone()).or_else(|| {
            (members.len() != 1)
                .then(|| {
                    plan.load_balancers
                        .get(&Role::Gateway)
                        .map(|lb| lb.hostname.value.clone())
                })
                .flatten()
        });
        let (service, ws, wss, http, https) = match (lb_host, members.first()) {
            (Some(h), _) => (
                format!("https://{h}{}", layout::SERVICES_PATH),
                format!("ws://{h}:{}", Port::Ws.base()),
                format!("wss://{h}:{}", Port::Wss.base()),
                format!("http://{h}"),
                format!("https://{h}"),
            ),
            (None, Some(g)) => {
                let (h, o) = (&g.hostname.value, g.offset.value);
                (
                    format!("https://{h}:{}{}", Port::Https.at(o), layout::SERVICES_PATH),
                    format!("ws://{h}:{}", Port::Ws.at(o)),
                    format!("wss://{h}:{}", Port::Wss.at(o)),
                    format!("http://{h}:{}", Port::PassthruHttp.at(o)),
                    format!("https://{h}:{}", Port::PassthruHttps.at(o)),
                )
            }
            (None, None) => continue,
        };
        let mut t = Table::new();
        t.insert("name".into(), s(&env.name.value));
        t.insert("type".into(), s(&env.env_type.value));
        t.insert(
            "display_in_api_console".into(),
            Value::Boolean(env.display_in_api_console),
        );
        t.insert("description".into(), s(&env.description));
        t.insert(
            "show_as_token_endpoint_url".into(),
            Value::Boolean(env.show_as_token_endpoint_url),
        );
        if with_service {
            t.insert("service_url".into(), s(&service));
            t.insert("username".into(), s("${admin.username}"));
            t.insert("password".into(), s("${admin.password}"));
        }
        t.insert("ws_endpoint".into(), s(&ws));
        t.insert("wss_endpoint".into(), s(&wss));
        t.insert("http_endpoint".into(), s(&http));
        t.insert("https_endpoint".into(), s(&https));
        d.push("apim.gateway.environment", t);
    }
}

/// The five-profile 3.x wiring (the 3.x distributed deployment guide, step 6).
fn v3_role(plan: &Plan, node: &crate::plan::Node, d: &mut Doc, w: &mut Wiring<'_>) {
    let role = node.role.value;
    match role {
        Role::KeyManager => {
            throttling_client(d, w, false, false);
            let tm = w.mgmt(Role::TrafficManager);
            token_revocation(d, &tm);
            cache_invalidation(d, role);
        }
        Role::TrafficManager => {
            key_manager_client(d, w, Role::KeyManager, false);
            let peers = w.peers("tcp", Port::Amqp);
            if !peers.is_empty() {
                d.set("apim.throttling.event_duplicate_url", arr(peers));
            }
        }
        Role::Publisher => {
            gateway_environments(d, plan, w, true);
            throttling_client(d, w, true, true);
            let devportal = w.mgmt(Role::Devportal);
            d.set(
                "apim.devportal.url",
                s(&format!("{devportal}{}", layout::DEVPORTAL_PATH)),
            );
            key_manager_client(d, w, Role::KeyManager, false);
            cache_invalidation(d, role);
        }
        Role::Devportal => {
            gateway_environments(d, plan, w, false);
            key_manager_client(d, w, Role::KeyManager, false);
            let km = w.mgmt(Role::KeyManager);
            d.set(
                "apim.oauth_config.revoke_endpoint",
                s(&format!("{km}{}", layout::REVOKE_PATH)),
            );
            throttling_client(d, w, false, false);
            cache_invalidation(d, role);
        }
        Role::Gateway => {
            key_manager_client(d, w, Role::KeyManager, false);
            throttling_client(d, w, true, false);
        }
        Role::ControlPlane => {}
    }
}

/// The 4.x wiring: control plane (event hub, resident or separate key manager), traffic
/// manager and gateways; 4.5's split packs use the same keys.
fn v4_role(plan: &Plan, node: &crate::plan::Node, d: &mut Doc, w: &mut Wiring<'_>) {
    let product = plan.cluster.product.value;
    let role = node.role.value;
    let separate_km = plan.nodes_of(Role::KeyManager).next().is_some();
    let km_role = if separate_km {
        Role::KeyManager
    } else {
        Role::ControlPlane
    };
    let event_hub_client = |d: &mut Doc, w: &mut Wiring<'_>| {
        d.set("apim.event_hub.enable", Value::Boolean(true));
        d.set("apim.event_hub.username", s(REF_USER));
        d.set("apim.event_hub.password", s(REF_PASS));
        let url = format!("{}{}", w.mgmt(Role::ControlPlane), layout::SERVICES_PATH);
        d.set("apim.event_hub.service_url", s(&url));
        d.set(
            "apim.event_hub.event_listening_endpoints",
            arr(w.each(Role::ControlPlane, "tcp", Port::Amqp)),
        );
    };
    match role {
        Role::ControlPlane => {
            gateway_environments(d, plan, w, true);
            let me = w.mgmt(Role::ControlPlane);
            d.set(
                "apim.devportal.url",
                s(&format!("{me}{}", layout::DEVPORTAL_PATH)),
            );
            // The control plane's own event hub, reached through localhost (guide text).
            d.set("apim.event_hub.enable", Value::Boolean(true));
            d.set("apim.event_hub.username", s(REF_USER));
            d.set("apim.event_hub.password", s(REF_PASS));
            d.set(
                "apim.event_hub.service_url",
                s(&format!("{LOCAL_MGMT}{}", layout::SERVICES_PATH)),
            );
            d.set(
                "apim.event_hub.event_listening_endpoints",
                arr([w.local("tcp", Port::Amqp)]),
            );
            let peers = w.peers("tcp", Port::Amqp);
            if !peers.is_empty() {
                d.set("apim.event_hub.event_duplicate_url", arr(peers));
            }
            publish_groups(d, w);
            key_manager_client(d, w, km_role, true);
            if !separate_km {
                token_revocation(d, &me);
            }
            cache_invalidation(d, role);
        }
        Role::KeyManager => {
            event_hub_client(d, w);
            publish_groups(d, w);
            let cp = w.mgmt(Role::ControlPlane);
            token_revocation(d, &cp);
            throttling_client(d, w, false, true);
            cache_invalidation(d, role);
        }
        Role::TrafficManager => {
            event_hub_client(d, w);
            let peers = w.peers("tcp", Port::Amqp);
            if !peers.is_empty() {
                d.set("apim.throttling.event_duplicate_url", arr(peers));
                d.set(
                    "apim.throttling.throttle_decision_endpoints",
                    arr([w.local("tcp", Port::Amqp)]),
                );
            }
            if product.line() == ProductLine::V4 {
                key_manager_client(d, w, km_role, false);
            }
        }
        Role::Gateway => {
            key_manager_client(d, w, km_role, false);
            event_hub_client(d, w);
            throttling_client(d, w, false, false);
            let labels: Vec<String> = plan
                .gateway_environments
                .iter()
                .filter(|e| {
                    e.gateways
                        .as_ref()
                        .is_none_or(|g| g.iter().any(|g| g.value == node.name.value))
                })
                .map(|e| e.label.value.clone())
                .fold(Vec::new(), |mut acc, l| {
                    if !acc.contains(&l) {
                        acc.push(l);
                    }
                    acc
                });
            d.set(
                "apim.sync_runtime_artifacts.gateway.gateway_labels",
                arr(labels),
            );
            if product.line() == ProductLine::V45Split {
                let id = node
                    .gateway_id
                    .as_ref()
                    .map_or(node.name.value.clone(), |g| g.value.clone());
                d.set("apim.gateway_notification.gateway_id", s(&id));
            }
        }
        Role::Publisher | Role::Devportal => {}
    }
}

/// One `[[apim.event_hub.publish.url_group]]` per control plane (event hub).
fn publish_groups(d: &mut Doc, w: &mut Wiring<'_>) {
    let urls = w.each(Role::ControlPlane, "tcp", Port::Binary);
    let auth = w.each(Role::ControlPlane, "ssl", Port::BinaryAuth);
    for (u, a) in urls.into_iter().zip(auth) {
        let mut t = Table::new();
        t.insert("urls".into(), arr([u]));
        t.insert("auth_urls".into(), arr([a]));
        d.push("apim.event_hub.publish.url_group", t);
    }
}
