//! Everything about a plan that can be checked offline, reported all at once.
//!
//! [`check`] parses and validates; it contacts nothing, but it does read what the plan points at
//! on this machine (packs and their sha256, secret files and variables), because a plan that
//! cannot be applied should fail here rather than half-way through a rollout.

mod balancers;
mod databases;
pub use databases::check_driver_file;
mod gateways;
mod jvm;
mod names;
mod vault;
pub use names::{is_safe_name, is_user_name, path_problem};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::catalogue::defaults::USER_STORE_TYPES;
use crate::catalogue::{self, Port, ProductLine, Role};
use crate::diag::{Diagnostic, Report, did_you_mean};
use crate::digest_cache::{Lookup, Pending};
use crate::plan::{self, DbType, Distribution, Issuer, Plan, Scope};
use crate::secrets::{self, EnvSource};

/// What [`check`] verifies beyond the plan text itself.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Read every pack and compare its sha256 (off only to render examples without the packs,
    /// and for `apimctl apply`, which checks them with [`check_pack`] on their way up).
    pub verify_packs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { verify_packs: true }
    }
}

/// Parses and validates plan text. The plan is returned only when there are no errors.
pub fn check(
    path: &Path,
    text: &str,
    env: &dyn EnvSource,
    opts: Options,
) -> (Option<Plan>, Report) {
    let (plan, mut diags) = plan::parse(path, text);
    if let Some(p) = &plan {
        validate(p, env, opts, &mut diags);
    }
    diags.sort_by_key(|d| (d.span.start, d.span.end));
    diags.dedup();
    let report = Report {
        path: path.display().to_string(),
        source: text.to_string(),
        diagnostics: diags,
    };
    let plan = if report.has_errors() { None } else { plan };
    (plan, report)
}

/// Reads a plan file and checks it; an unreadable file is reported as an error.
pub fn check_file(
    path: &Path,
    env: &dyn EnvSource,
    opts: Options,
) -> Result<(Option<Plan>, Report), std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    Ok(check(path, &text, env, opts))
}

fn validate(p: &Plan, env: &dyn EnvSource, opts: Options, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    names::check(p, out);
    check_unique(p, out);
    check_nodes(p, out);
    check_ports(p, out);
    balancers::check(p, out);
    check_roles(p, out);
    check_distributions(p, env, opts, out);
    check_secrets(p, env, out);
    check_databases(p, out);
    databases::check(p, env, opts, out);
    check_environments(p, out);
    gateways::check_membership(p, out);
    gateways::check_gateway_ids(p, out);
    gateways::check_artifacts(p, out);
    gateways::check_analytics(p, out);
    jvm::check(p, out);
    vault::check(p, env, out);
    check_hosts(p, out);
    if !USER_STORE_TYPES.contains(&p.user_store_type.value.as_str()) {
        let mut d = Diagnostic::error(
            p.user_store_type.span.clone(),
            format!("unknown user store type `{}`", p.user_store_type.value),
        );
        d = match did_you_mean(&p.user_store_type.value, USER_STORE_TYPES) {
            Some(near) => d.with_hint(format!("did you mean `{near}`?")),
            None => d.with_hint(format!("types: {}", USER_STORE_TYPES.join(", "))),
        };
        out.push(d);
    }
    for o in &p.overrides {
        if let Scope::Node(name) = &o.scope.value
            && !p.nodes.iter().any(|n| &n.name.value == name)
        {
            let mut d = Diagnostic::error(
                o.scope.span.clone(),
                format!("override for unknown node `{name}`"),
            );
            if let Some(near) = did_you_mean(name, p.nodes.iter().map(|n| n.name.value.as_str())) {
                d = d.with_hint(format!("did you mean `node:{near}`?"));
            }
            out.push(d);
        }
        if let Scope::Role(role) = o.scope.value
            && product.role_profile(role).is_none()
        {
            out.push(Diagnostic::error(
                o.scope.span.clone(),
                format!("override for role `{role}`, which {product} does not have"),
            ));
        }
    }
}

fn check_unique(p: &Plan, out: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for m in &p.machines {
        if seen.insert(&m.name.value, "").is_some() {
            out.push(
                Diagnostic::error(
                    m.name.span.clone(),
                    format!("duplicate machine name `{}`", m.name.value),
                )
                .with_hint("machine names identify agents and must be unique"),
            );
        }
    }
    let mut addrs = HashMap::new();
    for m in &p.machines {
        if let Some(other) = addrs.insert(m.address.value, &m.name.value) {
            out.push(
                Diagnostic::error(
                    m.address.span.clone(),
                    format!(
                        "machine `{}` has the same address {} as machine `{other}`",
                        m.name.value, m.address.value
                    ),
                )
                .with_hint("run several nodes on one machine with offsets instead"),
            );
        }
    }
    let mut names = HashMap::new();
    for n in &p.nodes {
        if names.insert(&n.name.value, ()).is_some() {
            out.push(Diagnostic::error(
                n.name.span.clone(),
                format!("duplicate node name `{}`", n.name.value),
            ));
        }
    }
    let mut hostnames: HashMap<String, &str> = HashMap::new();
    for n in &p.nodes {
        if let Some(other) = hostnames.insert(n.hostname.value.to_ascii_lowercase(), &n.name.value)
        {
            out.push(Diagnostic::error(
                n.hostname.span.clone(),
                format!("node `{}` has the same hostname `{}` as node `{other}`", n.name.value, n.hostname.value),
            ).with_hint("each node needs its own hostname (its certificate's CN); put a shared name in [load_balancers]"));
        }
    }
    for lb in p.load_balancers.values() {
        if let Some(node) = hostnames.get(&lb.hostname.value.to_ascii_lowercase()) {
            out.push(Diagnostic::error(
                lb.hostname.span.clone(),
                format!(
                    "load balancer hostname `{}` is also node `{node}`'s hostname",
                    lb.hostname.value
                ),
            ));
        }
    }
}

fn check_nodes(p: &Plan, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    for n in &p.nodes {
        if p.machine(&n.machine.value).is_none() {
            let mut d = Diagnostic::error(
                n.machine.span.clone(),
                format!(
                    "node `{}` is on unknown machine `{}`",
                    n.name.value, n.machine.value
                ),
            );
            d = match did_you_mean(
                &n.machine.value,
                p.machines.iter().map(|m| m.name.value.as_str()),
            ) {
                Some(near) => d.with_hint(format!("did you mean `{near}`?")),
                None => d.with_hint("add a [[machines]] entry with that name"),
            };
            out.push(d);
        }
        if product.role_profile(n.role.value).is_none() {
            let roles: Vec<&str> = product.roles().iter().map(|r| r.as_str()).collect();
            out.push(
                Diagnostic::error(
                    n.role.span.clone(),
                    format!(
                        "{product} has no `{}` role (node `{}`)",
                        n.role.value, n.name.value
                    ),
                )
                .with_hint(format!("{product} roles: {}", roles.join(", "))),
            );
        }
        if !is_hostname(&n.hostname.value) {
            out.push(Diagnostic::error(
                n.hostname.span.clone(),
                format!("`{}` is not a valid host name", n.hostname.value),
            ));
        }
        if let Some(id) = &n.gateway_id
            && (n.role.value != Role::Gateway || product.line() != ProductLine::V45Split)
        {
            out.push(Diagnostic::warning(
                id.span.clone(),
                "`gateway_id` only applies to 4.5+ gateway nodes; ignored",
            ));
        }
    }
}

/// Two nodes on one machine must not share a port once offsets are applied.
fn check_ports(p: &Plan, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    let mut by_port: BTreeMap<(&str, u32), &plan::Node> = BTreeMap::new();
    for n in p.nodes.iter().filter(|n| n.offset_valid) {
        let mut reported = BTreeSet::new();
        for named in catalogue::all_ports(product, n.role.value) {
            let base = named.base();
            let port = u32::from(base) + u32::from(n.offset.value);
            if port > 65535 {
                out.push(Diagnostic::error(
                    n.offset.span.clone(),
                    format!(
                        "offset {} pushes port {base} of node `{}` past 65535",
                        n.offset.value, n.name.value
                    ),
                ));
                break;
            }
            match by_port.get(&(n.machine.value.as_str(), port)) {
                Some(other) if reported.insert(other.name.value.clone()) => {
                    out.push(Diagnostic::error(
                        n.offset.span.clone(),
                        format!(
                            "node `{}` (offset {}) and node `{}` (offset {}) both use port {port} on machine `{}`",
                            n.name.value, n.offset.value, other.name.value, other.offset.value, n.machine.value
                        ),
                    ).with_hint(format!(
                        "give every node on a machine its own offset, and mind ports 100 apart ({}/{})",
                        Port::Binary.base(),
                        Port::BinaryAuth.base()
                    )));
                }
                Some(_) => {}
                None => {
                    by_port.insert((n.machine.value.as_str(), port), n);
                }
            }
        }
    }
}

fn check_roles(p: &Plan, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    let product_span = p.cluster.product.span.clone();
    for role in product.required_roles() {
        if p.nodes_of(*role).next().is_none() {
            out.push(
                Diagnostic::error(
                    product_span.clone(),
                    format!("{product} needs a `{role}` node and the plan has none"),
                )
                .with_hint(format!("add a [[nodes]] entry with role = \"{role}\"")),
            );
        }
    }
    for role in Role::ALL {
        // Gateways are grouped by environment; check_environments asks each shared one for a host.
        let nodes: Vec<_> = p.nodes_of(role).collect();
        if role != Role::Gateway && nodes.len() > 1 && !p.load_balancers.contains_key(&role) {
            out.push(
                Diagnostic::error(
                    nodes[1].role.span.clone(),
                    format!(
                        "role `{role}` has {} nodes and no load balancer hostname",
                        nodes.len()
                    ),
                )
                .with_hint(format!("add [load_balancers] {role} = \"<lb hostname>\"")),
            );
        }
    }
    for lb in p.load_balancers.values() {
        if p.nodes_of(lb.role.value).next().is_none() {
            out.push(Diagnostic::warning(
                lb.role.span.clone(),
                format!(
                    "load balancer for role `{}`, which has no nodes",
                    lb.role.value
                ),
            ));
        }
        if !is_hostname(&lb.hostname.value) {
            out.push(Diagnostic::error(
                lb.hostname.span.clone(),
                format!("`{}` is not a valid host name", lb.hostname.value),
            ));
        }
    }
}

fn check_distributions(p: &Plan, env: &dyn EnvSource, opts: Options, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    let needed: BTreeSet<_> = p
        .nodes
        .iter()
        .filter_map(|n| product.role_profile(n.role.value).map(|r| r.pack))
        .collect();
    for kind in product.packs() {
        if needed.contains(&kind) && !p.distributions.contains_key(&kind) {
            out.push(
                Diagnostic::error(
                    p.cluster.product.span.clone(),
                    format!(
                        "{product} needs the `{}` pack ({}.zip) in [distributions]",
                        kind.plan_key(),
                        product.pack_top_dir(kind)
                    ),
                )
                .with_hint(format!(
                    "[distributions] {} = {{ path = \"…\", sha256 = \"…\" }}",
                    kind.plan_key()
                )),
            );
        }
    }
    for d in p.distributions.values() {
        if !product.packs().contains(&d.kind) {
            let keys: Vec<&str> = product.packs().iter().map(|k| k.plan_key()).collect();
            out.push(
                Diagnostic::error(
                    d.path.span.clone(),
                    format!("{product} has no `{}` pack", d.kind.plan_key()),
                )
                .with_hint(format!("{product} packs: {}", keys.join(", "))),
            );
            continue;
        }
        let sha = d.sha256.value.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(
                Diagnostic::error(d.sha256.span.clone(), "sha256 must be 64 hex digits")
                    .with_hint("run `sha256sum` on the zip"),
            );
            continue;
        }
        if !opts.verify_packs {
            continue;
        }
        let path = p.resolve_path(&d.path.value);
        // The operator's digest cache (see crate::digest_cache), found through the same
        // environment the secrets come from.
        let cache = crate::digest_cache::default_dir(&|k| env.var(k));
        match crate::digest_cache::sha256_cached(&path, cache.as_deref()) {
            Ok(actual) if actual == sha => {
                if let Err(problem) = check_pack_contents(d, &path, &product.pack_top_dir(d.kind)) {
                    out.push(problem);
                }
            }
            Ok(actual) => out.push(pack_mismatch(d, &path, &actual)),
            Err(e) => out.push(pack_unreadable(d, &path, &e)),
        }
    }
}

/// Reads `d`'s pack's central directory (never its data): a pack no product pack looks like,
/// or one whose top directory is not `expected_top`, is the plan's error at `d.path`.
pub fn check_pack_contents(
    d: &Distribution,
    path: &Path,
    expected_top: &str,
) -> Result<(), Diagnostic> {
    let refused = |why: String| {
        Diagnostic::error(
            d.path.span.clone(),
            format!("pack `{}` is refused: {why}", path.display()),
        )
    };
    match crate::pack::inspect_file(path, &crate::pack::PackLimits::default()) {
        Ok(s) if s.top_dir == expected_top => Ok(()),
        Ok(s) => Err(refused(format!(
            "its top directory is `{}`, the release needs `{expected_top}`",
            s.top_dir
        ))
        .with_hint("the pack is for another release or product; check [cluster] product")),
        Err(problem) => Err(refused(problem.to_string())
            .with_hint("apimctl unpacks only packs laid out like WSO2's own zips")),
    }
}

/// What the operator's digest cache in `cache_dir` says of `d`'s pack at `path`, without
/// reading the pack: `Ok(None)` when it matches the plan, `Ok(Some(pending))` when the cache
/// does not know it (hash it, e.g. on its way to the controller, and compare with
/// [`pack_mismatch`]), the plan's error otherwise.
pub fn check_pack(
    d: &Distribution,
    path: &Path,
    cache_dir: Option<&Path>,
) -> Result<Option<Pending>, Diagnostic> {
    match crate::digest_cache::lookup(path, cache_dir) {
        Ok(Lookup::Known(actual)) if actual.eq_ignore_ascii_case(&d.sha256.value) => Ok(None),
        Ok(Lookup::Known(actual)) => Err(pack_mismatch(d, path, &actual)),
        Ok(Lookup::New(pending)) => Ok(Some(pending)),
        Err(e) => Err(pack_unreadable(d, path, &e)),
    }
}

/// The error for `d`'s pack at `path` that cannot be read.
fn pack_unreadable(d: &Distribution, path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::error(
        d.path.span.clone(),
        format!("pack `{}` cannot be read: {e}", path.display()),
    )
    .with_hint("paths are relative to the plan's folder")
}

/// The error for a pack at `path` whose sha256 is `actual`, not the one `d` names.
pub fn pack_mismatch(d: &Distribution, path: &Path, actual: &str) -> Diagnostic {
    Diagnostic::error(
        d.sha256.span.clone(),
        format!(
            "`{}` has sha256 {actual}, not the one in the plan",
            path.display()
        ),
    )
    .with_hint("the pack changed or the plan is wrong; check where the zip came from")
}

fn check_secrets(p: &Plan, env: &dyn EnvSource, out: &mut Vec<Diagnostic>) {
    for (what, s) in p.secret_refs() {
        if let Err(e) = secrets::resolve(&s.value, &p.base_dir, env) {
            out.push(
                Diagnostic::error(s.span.clone(), format!("{what}: {e}"))
                    .with_hint("secrets are read on the machine running apimctl"),
            );
        }
    }
    // Here only whether they are at hand; `provided::load` opens and checks them.
    if p.tls.issuer.value == Issuer::Provided {
        for f in [&p.tls.provided_keystore, &p.tls.provided_truststore]
            .into_iter()
            .flatten()
        {
            if let Err(e) = env.provided_file(&f.value, &p.base_dir) {
                out.push(
                    Diagnostic::error(f.span.clone(), e)
                        .with_hint("paths are relative to the plan's folder"),
                );
            }
        }
    }
}

fn check_databases(p: &Plan, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    let needs_apim = p.nodes.iter().any(|n| product.needs_apim_db(n.role.value));
    if p.shared_db.is_none() && !p.databases_written.contains(&"shared_db") {
        out.push(
            Diagnostic::error(
                0..0,
                "the plan has no [databases.shared_db]; every node needs it",
            )
            .with_hint("[databases.shared_db] type = \"mysql\" …"),
        );
    }
    if needs_apim && p.apim_db.is_none() && !p.databases_written.contains(&"apim_db") {
        out.push(
            Diagnostic::error(
                0..0,
                "the plan has no [databases.apim_db]; its control-plane roles need it",
            )
            .with_hint("[databases.apim_db] type = \"mysql\" …"),
        );
    }
    for db in [&p.apim_db, &p.shared_db].into_iter().flatten() {
        if db.db_type.value == DbType::H2 && p.nodes.len() > 1 {
            out.push(
                Diagnostic::warning(
                    db.db_type.span.clone(),
                    format!(
                        "{} is H2: each node gets its own embedded copy and nodes share nothing",
                        db.id
                    ),
                )
                .with_hint("use mysql, postgres, mssql or oracle for a distributed deployment"),
            );
        }
    }
}

fn check_environments(p: &Plan, out: &mut Vec<Diagnostic>) {
    let mut names = BTreeSet::new();
    let gateways: Vec<_> = p.nodes_of(Role::Gateway).collect();
    for env in &p.gateway_environments {
        if !names.insert(env.name.value.as_str()) {
            out.push(Diagnostic::error(
                env.name.span.clone(),
                format!("duplicate gateway environment `{}`", env.name.value),
            ));
        }
        let members: Vec<&str> = match &env.gateways {
            Some(list) => {
                for g in list {
                    match gateways.iter().find(|n| n.name.value == g.value) {
                        Some(_) => {}
                        None => {
                            let mut d = Diagnostic::error(
                                g.span.clone(),
                                format!(
                                    "gateway environment `{}` names `{}`, which is not a gateway node",
                                    env.name.value, g.value
                                ),
                            );
                            if let Some(near) = did_you_mean(
                                &g.value,
                                gateways.iter().map(|n| n.name.value.as_str()),
                            ) {
                                d = d.with_hint(format!("did you mean `{near}`?"));
                            }
                            out.push(d);
                        }
                    }
                }
                list.iter().map(|g| g.value.as_str()).collect()
            }
            None => gateways.iter().map(|n| n.name.value.as_str()).collect(),
        };
        if members.len() > 1
            && env.hostname.is_none()
            && !p.load_balancers.contains_key(&Role::Gateway)
        {
            out.push(
                Diagnostic::error(
                    env.name.span.clone(),
                    format!(
                        "gateway environment `{}` has {} gateways and no hostname",
                        env.name.value,
                        members.len()
                    ),
                )
                .with_hint("set `hostname` to the load balancer in front of them"),
            );
        }
    }
}

fn check_hosts(p: &Plan, out: &mut Vec<Diagnostic>) {
    let mut names: HashMap<String, std::net::IpAddr> = HashMap::new();
    for n in &p.nodes {
        if let Some(m) = p.machine(&n.machine.value) {
            names.insert(n.hostname.value.to_ascii_lowercase(), m.address.value);
        }
    }
    for (name, addr) in &p.hosts {
        if !is_hostname(&name.value) {
            out.push(Diagnostic::error(
                name.span.clone(),
                format!("`{}` is not a valid host name", name.value),
            ));
        }
        if let Some(a) = names.get(&name.value.to_ascii_lowercase())
            && *a != addr.value
        {
            out.push(Diagnostic::error(
                addr.span.clone(),
                format!(
                    "[hosts] maps `{}` to {}, but a node with that hostname is at {a}",
                    name.value, addr.value
                ),
            ));
        }
    }
}

/// RFC 1123 host name (letters, digits, hyphens, dots).
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
