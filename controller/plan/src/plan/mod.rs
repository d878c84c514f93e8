//! The plan an operator writes (`plan.toml`): its typed model and its parser.
//!
//! Parsing never stops at the first problem: [`parse`] returns the best model it could build plus
//! every diagnostic, and [`crate::validate`] adds the cross-field checks. The format is
//! documented in `docs/plan.md`.

pub mod walk;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use crate::catalogue::defaults;
pub use crate::catalogue::{DbType, StoreType};
use crate::catalogue::{PackKind, Product, Role};
use crate::diag::{Diagnostic, did_you_mean};
pub use walk::At;
use walk::{Fields, SpannedValue};

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
    /// Span of the table, for messages.
    pub span: std::ops::Range<usize>,
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
    /// File name of each node's TLS keystore in the security folder
    /// ([`crate::catalogue::layout::SECURITY_DIR`]).
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
}

/// One `[[gateway_environments]]` entry.
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
    /// The label gateways of this environment subscribe to (4.x `gateway_labels`).
    pub label: At<String>,
    /// Gateway nodes of this environment (`None` = every gateway).
    pub gateways: Option<Vec<At<String>>>,
    /// Public host name of the environment (default: the gateway LB, or the single gateway).
    pub hostname: Option<At<String>>,
    /// Span of the entry.
    pub span: std::ops::Range<usize>,
}

/// `[analytics]`.
#[derive(Clone, Debug, Default)]
pub struct Analytics {
    /// Publish analytics.
    pub enabled: bool,
    /// 4.x: the analytics cloud config endpoint.
    pub config_endpoint: Option<At<String>>,
    /// 4.x: the analytics auth token.
    pub auth_token: Option<Secret>,
}

/// What to do when a node fails to become healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop: dependents stay unstarted.
    Halt,
    /// Return every touched node to the previous generation.
    Rollback,
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
    /// `[analytics]`.
    pub analytics: Analytics,
    /// `[rollout]`.
    pub rollout: Rollout,
    /// `[overrides]`, in source order.
    pub overrides: Vec<Override>,
}

impl Plan {
    /// The machine named `name`.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name.value == name)
    }

    /// Nodes of `role`, in plan order.
    pub fn nodes_of(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.role.value == role)
    }

    /// A path from the plan, resolved against the plan's folder.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        resolve_path(&self.base_dir, p)
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

/// Parses a duration such as `90s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        any = true;
    }
    if !digits.is_empty() || !any {
        return None;
    }
    Some(Duration::from_secs(total))
}

fn secret(f: &mut Fields<'_, '_>, key: &'static str, out: &mut Vec<Diagnostic>) -> Option<Secret> {
    let v = f.raw(key)?;
    secret_value(v, &format!("`{key}` in {}", f.name), out)
}

fn secret_value(v: &SpannedValue<'_>, what: &str, out: &mut Vec<Diagnostic>) -> Option<Secret> {
    if let Some(s) = v.get_ref().as_str() {
        out.push(
            Diagnostic::warning(v.span(), format!("{what} is a literal secret in the plan"))
                .with_hint(
                    "use { env = \"VAR\" } or { file = \"path\" } so the plan can be shared",
                ),
        );
        return Some(At::new(SecretSource::Literal(s.to_string()), v.span()));
    }
    let Some(t) = v.get_ref().as_table() else {
        out.push(Diagnostic::error(
            v.span(),
            format!("{what} must be {{ env = \"VAR\" }}, {{ file = \"path\" }} or a string"),
        ));
        return None;
    };
    let mut f = Fields::new(t, what.to_string(), v.span());
    let env = f.string("env", out);
    let file = f.string("file", out);
    f.finish(out);
    match (env, file) {
        (Some(e), None) => Some(At::new(SecretSource::Env(e.value), e.span)),
        (None, Some(p)) => Some(At::new(SecretSource::File(PathBuf::from(p.value)), p.span)),
        _ => {
            out.push(
                Diagnostic::error(
                    v.span(),
                    format!("{what} needs exactly one of `env` or `file`"),
                )
                .with_hint("e.g. password = { env = \"APIM_DB_PASSWORD\" }"),
            );
            None
        }
    }
}

fn ip(f: &mut Fields<'_, '_>, key: &'static str, out: &mut Vec<Diagnostic>) -> Option<At<IpAddr>> {
    let s = f.string(key, out)?;
    match s.value.parse::<IpAddr>() {
        Ok(a) => Some(At::new(a, s.span)),
        Err(_) => {
            out.push(
                Diagnostic::error(
                    s.span,
                    format!(
                        "`{key}` in {} must be an IP address, found `{}`",
                        f.name, s.value
                    ),
                )
                .with_hint("hosts files map names to addresses; use the machine's IP"),
            );
            None
        }
    }
}

fn choice<T: Copy>(
    f: &mut Fields<'_, '_>,
    key: &'static str,
    options: &[(&'static str, T)],
    default: T,
    out: &mut Vec<Diagnostic>,
) -> At<T> {
    let Some(s) = f.string(key, out) else {
        return At::new(default, f.span.clone());
    };
    if let Some((_, v)) = options.iter().find(|(n, _)| *n == s.value) {
        return At::new(*v, s.span);
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let mut d = Diagnostic::error(
        s.span.clone(),
        format!(
            "`{key}` in {} is `{}`, not one of: {}",
            f.name,
            s.value,
            names.join(", ")
        ),
    );
    if let Some(near) = did_you_mean(&s.value, names.iter().copied()) {
        d = d.with_hint(format!("did you mean `{near}`?"));
    }
    out.push(d);
    At::new(default, s.span)
}

const SPAN0: std::ops::Range<usize> = 0..0;

/// Parses plan text. Returns the plan (if the document's shape allowed building one) and every
/// diagnostic found on the way. `path` names the file in messages and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        out.push(
            Diagnostic::error(span, format!("TOML syntax: {}", e.message().trim()))
                .with_hint("see https://toml.io for the syntax"),
        );
    }
    if !errors.is_empty() {
        return (None, out);
    }
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let span = doc.span();
    let root_table = doc.get_ref();
    let mut root = Fields::new(root_table, "the plan", span);
    let plan = parse_root(&mut root, base_dir, text, &mut out);
    root.finish(&mut out);
    out.sort_by_key(|d| (d.span.start, d.span.end));
    (plan, out)
}

fn parse_root(
    root: &mut Fields<'_, '_>,
    base_dir: PathBuf,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<Plan> {
    let cluster = parse_cluster(root, out);
    let product = cluster.as_ref().map(|c| c.product.value);

    let mut distributions = BTreeMap::new();
    if let Some(mut d) = root.table("distributions", out) {
        for kind in PackKind::ALL {
            let Some(v) = d.raw(kind.plan_key()) else {
                continue;
            };
            let Some(t) = v.get_ref().as_table() else {
                out.push(Diagnostic::error(
                    v.span(),
                    format!(
                        "`distributions.{}` must be {{ path = \"…\", sha256 = \"…\" }}",
                        kind.plan_key()
                    ),
                ));
                continue;
            };
            let mut f = Fields::new(t, format!("`distributions.{}`", kind.plan_key()), v.span());
            let path = f.req_string("path", out, "the pack's zip, relative to the plan");
            let sha = f.req_string("sha256", out, "`sha256sum` of the zip");
            f.finish(out);
            if let (Some(path), Some(sha256)) = (path, sha) {
                distributions.insert(kind, Distribution { kind, path, sha256 });
            }
        }
        d.finish(out);
    } else {
        root.missing(
            "distributions",
            out,
            "add [distributions] with the pack(s) to install",
        );
    }

    let admin = match root.table("admin", out) {
        Some(mut a) => {
            let username = a
                .string("username", out)
                .unwrap_or_else(|| At::new(defaults::ADMIN_USERNAME.into(), a.span.clone()));
            let password = secret(&mut a, "password", out);
            if password.is_none() && a.key_span("password").is_none() {
                a.missing(
                    "password",
                    out,
                    "password = { env = \"APIM_ADMIN_PASSWORD\" }",
                );
            }
            a.finish(out);
            password.map(|password| Admin { username, password })
        }
        None => {
            root.missing("admin", out, "add [admin] with username and password");
            None
        }
    };

    let (mut apim_db, mut shared_db) = (None, None);
    if let Some(mut dbs) = root.table("databases", out) {
        apim_db = parse_db(&mut dbs, "apim_db", out);
        shared_db = parse_db(&mut dbs, "shared_db", out);
        dbs.finish(out);
    }

    let user_store_type = match root.table("user_store", out) {
        Some(mut u) => {
            let t = u.string("type", out);
            u.finish(out);
            t.unwrap_or_else(|| At::new(defaults::USER_STORE_TYPE.into(), SPAN0))
        }
        None => At::new(defaults::USER_STORE_TYPE.into(), SPAN0),
    };

    let tls = parse_tls(root, out);

    let mut hosts = Vec::new();
    if let Some(h) = root.table("hosts", out) {
        for (name, v) in h.entries() {
            match v.get_ref().as_str().map(str::parse::<IpAddr>) {
                Some(Ok(addr)) => hosts.push((name, At::new(addr, v.span()))),
                _ => out.push(Diagnostic::error(
                    v.span(),
                    format!("`hosts.\"{}\"` must be an IP address string", name.value),
                )),
            }
        }
    }

    let mut machines = Vec::new();
    for mut m in root.tables("machines", out) {
        let name = m.req_string("name", out, "name = \"vm-gw-1\"");
        let address = ip(&mut m, "address", out);
        if m.key_span("address").is_none() {
            m.missing("address", out, "address = \"10.0.0.11\"");
        }
        let java_home = m.string("java_home", out);
        let install_dir = m.string("install_dir", out);
        let run_as = m.string("run_as", out);
        let span = m.span.clone();
        m.finish(out);
        if let (Some(name), Some(address)) = (name, address) {
            machines.push(Machine {
                name,
                address,
                java_home,
                install_dir,
                run_as,
                span,
            });
        }
    }

    let mut nodes = Vec::new();
    for mut n in root.tables("nodes", out) {
        let name = n.req_string("name", out, "name = \"gw-1\"");
        let machine = n.req_string("machine", out, "the name of a [[machines]] entry");
        let role = n
            .req_string("role", out, "role = \"gateway\"")
            .and_then(|r| match Role::parse(&r.value) {
                Some(role) => Some(At::new(role, r.span)),
                None => {
                    let names = Role::ALL.map(Role::as_str);
                    let mut d =
                        Diagnostic::error(r.span.clone(), format!("unknown role `{}`", r.value));
                    d = match did_you_mean(&r.value, names) {
                        Some(near) => d.with_hint(format!("did you mean `{near}`?")),
                        None => d.with_hint(format!("roles: {}", names.join(", "))),
                    };
                    out.push(d);
                    None
                }
            });
        let hostname = n.req_string(
            "hostname",
            out,
            "the node's own DNS name, e.g. \"gw1.wso2.com\"",
        );
        let offset = n
            .int("offset", 0..=60000, out)
            .map(|o| At::new(o.value as u16, o.span))
            .unwrap_or_else(|| At::new(0, n.span.clone()));
        let gateway_id = n.string("gateway_id", out);
        let span = n.span.clone();
        n.finish(out);
        if let (Some(name), Some(machine), Some(role), Some(hostname)) =
            (name, machine, role, hostname)
        {
            nodes.push(Node {
                name,
                machine,
                role,
                hostname,
                offset,
                gateway_id,
                span,
            });
        }
    }

    let mut load_balancers = BTreeMap::new();
    if let Some(lbs) = root.table("load_balancers", out) {
        for (key, v) in lbs.entries() {
            let Some(role) = Role::parse(&key.value) else {
                let names = Role::ALL.map(Role::as_str);
                let mut d = Diagnostic::error(
                    key.span.clone(),
                    format!("`load_balancers.{}` is not a role", key.value),
                );
                if let Some(near) = did_you_mean(&key.value, names) {
                    d = d.with_hint(format!("did you mean `{near}`?"));
                }
                out.push(d);
                continue;
            };
            let role = At::new(role, key.span.clone());
            if let Some(h) = v.get_ref().as_str() {
                load_balancers.insert(
                    role.value,
                    LoadBalancer {
                        role,
                        hostname: At::new(h.to_string(), v.span()),
                        address: None,
                    },
                );
            } else if let Some(t) = v.get_ref().as_table() {
                let mut f = Fields::new(t, format!("`load_balancers.{}`", key.value), v.span());
                let hostname = f.req_string("hostname", out, "hostname = \"gw.wso2.com\"");
                let address = ip(&mut f, "address", out);
                f.finish(out);
                if let Some(hostname) = hostname {
                    load_balancers.insert(
                        role.value,
                        LoadBalancer {
                            role,
                            hostname,
                            address,
                        },
                    );
                }
            } else {
                out.push(Diagnostic::error(
                    v.span(),
                    format!(
                        "`load_balancers.{}` must be a host name or {{ hostname, address }}",
                        key.value
                    ),
                ));
            }
        }
    }

    let mut gateway_environments = Vec::new();
    for mut g in root.tables("gateway_environments", out) {
        let span = g.span.clone();
        let name = g.req_string("name", out, "name = \"Default\"");
        let types = defaults::GATEWAY_ENVIRONMENT_TYPES.map(|t| (t, t));
        let env_type = choice(&mut g, "type", &types, types[0].1, out);
        let description = g
            .string("description", out)
            .map(|d| d.value)
            .unwrap_or_else(|| defaults::gateway_environment_description(env_type.value).into());
        let display_in_api_console = g
            .bool("display_in_api_console", out)
            .is_none_or(|b| b.value);
        let show_as_token_endpoint_url = g
            .bool("show_as_token_endpoint_url", out)
            .is_none_or(|b| b.value);
        let label = g
            .string("label", out)
            .unwrap_or_else(|| At::new(defaults::GATEWAY_LABEL.into(), span.clone()));
        let gateways = g.strings("gateways", out);
        let hostname = g.string("hostname", out);
        g.finish(out);
        if let Some(name) = name {
            gateway_environments.push(GatewayEnvironment {
                name,
                env_type: At::new(env_type.value.to_string(), env_type.span),
                description,
                display_in_api_console,
                show_as_token_endpoint_url,
                label,
                gateways,
                hostname,
                span,
            });
        }
    }
    if gateway_environments.is_empty()
        && let Some(product) = product
    {
        let env_type = defaults::GATEWAY_ENVIRONMENT_TYPES[0];
        gateway_environments.push(GatewayEnvironment {
            name: At::new(defaults::gateway_environment_name(product).into(), SPAN0),
            env_type: At::new(env_type.into(), SPAN0),
            description: defaults::gateway_environment_description(env_type).into(),
            display_in_api_console: true,
            show_as_token_endpoint_url: true,
            label: At::new(defaults::GATEWAY_LABEL.into(), SPAN0),
            gateways: None,
            hostname: None,
            span: SPAN0,
        });
    }

    let mut analytics = Analytics::default();
    if let Some(mut a) = root.table("analytics", out) {
        analytics.enabled = a.bool("enabled", out).is_some_and(|b| b.value);
        analytics.config_endpoint = a.string("config_endpoint", out);
        analytics.auth_token = secret(&mut a, "auth_token", out);
        a.finish(out);
    }

    let rollout = parse_rollout(root, out);
    let overrides = parse_overrides(root, text, out);

    Some(Plan {
        base_dir,
        cluster: cluster?,
        distributions,
        admin: admin?,
        apim_db,
        shared_db,
        user_store_type,
        tls: tls?,
        hosts,
        machines,
        nodes,
        load_balancers,
        gateway_environments,
        analytics,
        rollout,
        overrides,
    })
}

fn parse_cluster(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Option<Cluster> {
    let Some(mut c) = root.table("cluster", out) else {
        root.missing(
            "cluster",
            out,
            "add [cluster] with name, product, install_dir and java_home",
        );
        return None;
    };
    let name = c.req_string("name", out, "name = \"apim-prod\"");
    let product = c
        .req_string("product", out, "product = \"wso2am-4.5.0\"")
        .and_then(|p| match Product::parse(&p.value) {
            Ok(product) => Some(At::new(product, p.span)),
            Err(msg) => {
                out.push(
                    Diagnostic::error(p.span, msg)
                        .with_hint("e.g. product = \"wso2am-3.2.0\" or \"wso2am-4.5.0\""),
                );
                None
            }
        });
    let install_dir = c
        .string("install_dir", out)
        .unwrap_or_else(|| At::new("/opt/wso2".into(), c.span.clone()));
    let java_home = c.req_string(
        "java_home",
        out,
        "java_home = \"/usr/lib/jvm/java-17-openjdk-amd64\"",
    );
    let run_as = c.string("run_as", out);
    c.finish(out);
    Some(Cluster {
        name: name?,
        product: product?,
        install_dir,
        java_home: java_home?,
        run_as,
    })
}

fn parse_db(
    dbs: &mut Fields<'_, '_>,
    id: &'static str,
    out: &mut Vec<Diagnostic>,
) -> Option<Database> {
    let mut f = dbs.table(id, out)?;
    f.name = format!("[databases.{id}]");
    let span = f.span.clone();
    let t = f.req_string(
        "type",
        out,
        "type = \"mysql\" (mysql, postgres, mssql, oracle, h2)",
    );
    let db_type = t.and_then(|t| match DbType::parse(&t.value) {
        Some(d) => Some(At::new(d, t.span)),
        None => {
            let mut d = Diagnostic::error(
                t.span.clone(),
                format!("unknown database type `{}`", t.value),
            );
            d = match did_you_mean(&t.value, DbType::NAMES) {
                Some(near) => d.with_hint(format!("did you mean `{near}`?")),
                None => d.with_hint(format!("types: {}", DbType::NAMES.join(", "))),
            };
            out.push(d);
            None
        }
    });
    let host = f.string("host", out);
    let port = f.int("port", 1..=65535, out);
    let name = f.string("name", out);
    let username = f.req_string("username", out, "the database user");
    let password = secret(&mut f, "password", out);
    if f.key_span("password").is_none() {
        f.missing("password", out, "password = { env = \"APIM_DB_PASSWORD\" }");
    }
    let url = f.string("url", out);
    let db_type = db_type?;
    if db_type.value != DbType::H2 && url.is_none() {
        if host.is_none() {
            f.missing(
                "host",
                out,
                "the database server's host name (or give a JDBC `url`)",
            );
        }
        if name.is_none() {
            f.missing("name", out, "the database name (or give a JDBC `url`)");
        }
    }
    f.finish(out);
    Some(Database {
        id,
        port: port.map_or(db_type.value.default_port(), |p| p.value as u16),
        db_type,
        host,
        name,
        username: username?,
        password: password?,
        url,
        span,
    })
}

fn parse_tls(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Option<Tls> {
    let Some(mut t) = root.table("tls", out) else {
        root.missing(
            "tls",
            out,
            "add [tls] with issuer = \"cluster-ca\" and keystore_password",
        );
        return None;
    };
    let issuer = choice(
        &mut t,
        "issuer",
        &[
            ("cluster-ca", Issuer::ClusterCa),
            ("provided", Issuer::Provided),
            ("pack-default", Issuer::PackDefault),
        ],
        Issuer::ClusterCa,
        out,
    );
    let keystore_type = choice(
        &mut t,
        "keystore_type",
        &[
            (StoreType::Jks.as_str(), StoreType::Jks),
            (StoreType::Pkcs12.as_str(), StoreType::Pkcs12),
        ],
        StoreType::Jks,
        out,
    )
    .value;
    let keystore_file = t
        .string("keystore_file", out)
        .map_or(keystore_type.keystore_file().to_string(), |s| s.value);
    let keystore_alias = t
        .string("keystore_alias", out)
        .map_or(defaults::KEY_ALIAS.to_string(), |s| s.value);
    let keystore_password = secret(&mut t, "keystore_password", out);
    let primary_keystore_file = t.string("primary_keystore_file", out).map(|s| s.value);
    let primary_alias = t
        .string("primary_alias", out)
        .map_or(defaults::PRIMARY_ALIAS.to_string(), |s| s.value);
    let truststore_file = t
        .string("truststore_file", out)
        .map_or(defaults::TRUSTSTORE_FILE.to_string(), |s| s.value);
    let truststore_password = secret(&mut t, "truststore_password", out).unwrap_or_else(|| {
        At::new(
            SecretSource::Default(defaults::STORE_PASSWORD),
            t.span.clone(),
        )
    });
    let provided_keystore = t.string("provided_keystore", out);
    let provided_truststore = t.string("provided_truststore", out);
    let keystore_password = match keystore_password {
        Some(p) => p,
        None if issuer.value == Issuer::PackDefault => At::new(
            SecretSource::Default(defaults::STORE_PASSWORD),
            t.span.clone(),
        ),
        None => {
            t.missing(
                "keystore_password",
                out,
                "keystore_password = { env = \"APIM_KEYSTORE_PASSWORD\" } (also the key password)",
            );
            At::new(
                SecretSource::Default(defaults::STORE_PASSWORD),
                t.span.clone(),
            )
        }
    };
    match issuer.value {
        Issuer::Provided if provided_keystore.is_none() => t.missing(
            "provided_keystore",
            out,
            "the keystore file to ship to every node, relative to the plan",
        ),
        Issuer::PackDefault => out.push(
            Diagnostic::warning(
                issuer.span.clone(),
                "issuer = \"pack-default\" keeps the shipped CN=localhost certificates",
            )
            .with_hint("peers will fail hostname verification; use \"cluster-ca\" outside demos"),
        ),
        _ => {}
    }
    t.finish(out);
    Some(Tls {
        issuer,
        keystore_type,
        keystore_file,
        keystore_alias,
        keystore_password,
        primary_keystore_file,
        primary_alias,
        truststore_file,
        truststore_password,
        provided_keystore,
        provided_truststore,
    })
}

fn parse_rollout(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Rollout {
    let mut r = Rollout {
        max_parallel: 2,
        health_timeout: Duration::from_secs(600),
        on_failure: OnFailure::Halt,
        start_order: StartOrder::Graph,
    };
    let Some(mut f) = root.table("rollout", out) else {
        return r;
    };
    if let Some(m) = f.int("max_parallel", 1..=1000, out) {
        r.max_parallel = m.value as u32;
    }
    if let Some(t) = f.string("health_timeout", out) {
        match parse_duration(&t.value) {
            Some(d) if d.as_secs() > 0 => r.health_timeout = d,
            _ => out.push(
                Diagnostic::error(
                    t.span,
                    format!("`health_timeout` `{}` is not a duration", t.value),
                )
                .with_hint("e.g. \"90s\", \"5m\", \"1h\""),
            ),
        }
    }
    r.on_failure = choice(
        &mut f,
        "on_failure",
        &[("halt", OnFailure::Halt), ("rollback", OnFailure::Rollback)],
        OnFailure::Halt,
        out,
    )
    .value;
    r.start_order = choice(
        &mut f,
        "start_order",
        &[("graph", StartOrder::Graph), ("strict", StartOrder::Strict)],
        StartOrder::Graph,
        out,
    )
    .value;
    f.finish(out);
    r
}

fn parse_overrides(
    root: &mut Fields<'_, '_>,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Vec<Override> {
    let Some(f) = root.table("overrides", out) else {
        return Vec::new();
    };
    let mut result = Vec::new();
    for (key, v) in f.entries() {
        let scope = if key.value == "all" {
            Some(Scope::All)
        } else if let Some(r) = key.value.strip_prefix("role:") {
            match Role::parse(r) {
                Some(role) => Some(Scope::Role(role)),
                None => {
                    let names = Role::ALL.map(Role::as_str);
                    let mut d = Diagnostic::error(
                        key.span.clone(),
                        format!("override scope `{}` names no role", key.value),
                    );
                    if let Some(near) = did_you_mean(r, names) {
                        d = d.with_hint(format!("did you mean `role:{near}`?"));
                    }
                    out.push(d);
                    None
                }
            }
        } else if let Some(n) = key.value.strip_prefix("node:") {
            Some(Scope::Node(n.to_string()))
        } else {
            out.push(
                Diagnostic::error(
                    key.span.clone(),
                    format!(
                        "override scope `{}` is not `all`, `role:NAME` or `node:NAME`",
                        key.value
                    ),
                )
                .with_hint("e.g. \"role:gateway\" = '''[apim.cors]\\nallow_origins = \"*\"'''"),
            );
            None
        };
        let Some(body) = v.get_ref().as_str() else {
            out.push(Diagnostic::error(
                v.span(),
                format!(
                    "override `{}` must be a string of deployment.toml text",
                    key.value
                ),
            ));
            continue;
        };
        let content_offset = string_content_offset(text, v.span());
        match body.parse::<toml::Table>() {
            Ok(table) => {
                if let Some(scope) = scope {
                    result.push(Override {
                        scope: At::new(scope, key.span.clone()),
                        text: body.to_string(),
                        content_offset,
                        table,
                    });
                }
            }
            Err(e) => {
                let inner = e.span().unwrap_or(0..0);
                let span = (content_offset + inner.start).min(v.span().end)
                    ..(content_offset + inner.end).min(v.span().end);
                out.push(Diagnostic::error(
                    span,
                    format!(
                        "override `{}` is not valid TOML: {}",
                        key.value,
                        e.message().trim()
                    ),
                ));
            }
        }
    }
    result
}

/// Where the content of a string literal starts, skipping its opening quotes (and, for multi-line
/// strings, the newline right after them, which TOML trims).
fn string_content_offset(text: &str, span: std::ops::Range<usize>) -> usize {
    let lit = &text[span.clone()];
    for q in ["'''", "\"\"\"", "'", "\""] {
        if lit.starts_with(q) {
            let mut start = span.start + q.len();
            if q.len() == 3 {
                let rest = &text[start..];
                if rest.starts_with("\r\n") {
                    start += 2;
                } else if rest.starts_with('\n') {
                    start += 1;
                }
            }
            return start;
        }
    }
    span.start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
