//! The renderer against the simulated packs' own configuration files, for every release and role
//! they cover: each node's `deployment.toml` is its pack's base file with the plan merged on top,
//! so every key of the base the plan does not set survives, with its value; and the renderer's
//! output passes the lint against the pack's own key catalogue.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use apim_e2e::simpack::{self, PackKind as SimPack, PackOptions};
use apim_plan::catalogue::{PackKind, Product, Role};
use apim_plan::pack::{self, PackSet};
use apim_plan::plan::Plan;
use apim_plan::render::{self, ClusterRender};
use apim_plan::validate::{self, Options};
use toml::Value;

/// Every release the simulator builds.
const RELEASES: [&str; 9] = [
    "3.2.0", "4.0.0", "4.1.0", "4.2.0", "4.3.0", "4.4.0", "4.5.0", "4.6.0", "4.7.0",
];

fn sim_pack(pack: PackKind) -> SimPack {
    match pack {
        PackKind::AllInOne => SimPack::AllInOne,
        PackKind::ControlPlane => SimPack::ApiControlPlane,
        PackKind::Gateway => SimPack::UniversalGateway,
        PackKind::TrafficManager => SimPack::TrafficManager,
    }
}

/// A plan with one node of every role `product` has, on one machine at growing offsets.
fn plan_text(
    product: Product,
    packs: &BTreeMap<PackKind, (String, String)>,
    driver: &(String, String),
) -> String {
    let mut s = format!(
        "[cluster]\nname = \"base\"\nproduct = \"wso2am-{}\"\njava_home = \"/jdk\"\n\n[distributions]\n",
        product.version()
    );
    for (kind, (path, sha)) in packs {
        let _ = writeln!(
            s,
            "{} = {{ path = \"{path}\", sha256 = \"{sha}\" }}",
            kind.plan_key()
        );
    }
    let _ = write!(
        s,
        "\n[drivers]\nmysql = {{ path = \"{}\", sha256 = \"{}\" }}\n",
        driver.0, driver.1
    );
    s.push_str("\n[admin]\npassword = \"pw\"\n\n[databases.apim_db]\ntype = \"mysql\"\nhost = \"db\"\nname = \"apim\"\nusername = \"u\"\npassword = \"pw\"\n");
    s.push_str("\n[databases.shared_db]\ntype = \"mysql\"\nhost = \"db\"\nname = \"shared\"\nusername = \"u\"\npassword = \"pw\"\n");
    s.push_str("\n[tls]\nkeystore_password = \"pw\"\n\n[[machines]]\nname = \"vm\"\naddress = \"10.1.0.1\"\n");
    for (i, role) in product.roles().iter().enumerate() {
        let _ = write!(
            s,
            "\n[[nodes]]\nname = \"{role}\"\nmachine = \"vm\"\nrole = \"{role}\"\nhostname = \"{role}.example.com\"\noffset = {i}\n"
        );
        if *role == Role::Gateway && product.line() == apim_plan::catalogue::ProductLine::V45Split {
            s.push_str("gateway_id = \"gw-1\"\n");
        }
    }
    s
}

/// A release's packs built under `dir`, their configuration read as the controller reads it,
/// and a plan using them.
fn release(version: &str, dir: &Path) -> (Product, PackSet, String) {
    let product = Product::parse(&format!("wso2am-{version}")).unwrap();
    let mut set = PackSet::none();
    let mut files = BTreeMap::new();
    for kind in product.packs() {
        let info = simpack::build_pack(sim_pack(kind), version, dir, &PackOptions::default())
            .unwrap_or_else(|e| panic!("{version} {kind:?}: {e}"));
        pack::inspect_file(&info.path, &pack::PackLimits::default()).unwrap();
        let config = pack::config::read_file(&info.path).unwrap();
        set.insert(kind, Arc::new(config));
        files.insert(kind, (info.path.display().to_string(), info.sha256));
    }
    let jar = simpack::driver_jar("com.mysql.cj.jdbc.Driver");
    let jar_path = dir.join("mysql-connector-j.jar");
    std::fs::write(&jar_path, &jar).unwrap();
    let driver = (jar_path.display().to_string(), apim_plan::digest(&jar));
    (product, set, plan_text(product, &files, &driver))
}

fn render_with(text: &str, packs: &PackSet) -> (Plan, ClusterRender) {
    let env = BTreeMap::new();
    let (plan, report) = validate::check(Path::new("plan.toml"), text, &env, Options::default());
    let plan = plan.unwrap_or_else(|| panic!("{}\n{text}", report.render()));
    let r = render::render(&plan, &env, packs).unwrap();
    (plan, r)
}

/// Dotted leaf paths of a document; arrays (of tables too) are leaves.
fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, Value>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => flatten(&path, t, out),
            v => {
                out.insert(path, v.clone());
            }
        }
    }
}

fn flat(text: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    flatten("", &text.parse().unwrap(), &mut out);
    out
}

/// Whether the plan's document sets `key` or a table below it, or a value above it, or writes
/// the `[database.*]` section it is in (those replace the base's whole).
fn plan_touches(plan: &BTreeMap<String, Value>, key: &str) -> bool {
    let section = |k: &str| {
        let mut parts = k.splitn(3, '.');
        (parts.next() == Some("database"))
            .then(|| parts.next().map(|id| format!("database.{id}.")))
            .flatten()
    };
    let whole = section(key).is_some_and(|s| plan.keys().any(|p| p.starts_with(&s)));
    whole
        || plan.contains_key(key)
        || plan.keys().any(|p| {
            key.strip_prefix(p.as_str())
                .is_some_and(|r| r.starts_with('.'))
                || p.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
        })
}

#[test]
fn a_rendered_node_keeps_every_key_of_its_packs_base_file_the_plan_does_not_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for version in RELEASES {
        let (product, packs, text) = release(version, &dir.path().join(version));
        let (plan, merged) = render_with(&text, &packs);
        let (_, bare) = render_with(&text, &PackSet::none());
        // The renderer's own output is clean against the pack's key catalogue and placeholders.
        for kind in product.packs() {
            let pack = packs.get(kind).unwrap();
            assert!(
                apim_plan::lint::KeyCatalogue::of(pack).is_some(),
                "{version} {kind:?}: the pack has a key catalogue to check against"
            );
        }
        let findings = apim_plan::lint::check(&plan, &merged, &packs);
        assert!(findings.is_empty(), "{version}: {findings:#?}");
        for node in merged.nodes() {
            let profile = product.role_profile(node.role).unwrap();
            let base_path = profile.base_config_file();
            let base_text = packs
                .get(profile.pack)
                .unwrap()
                .file(&base_path)
                .unwrap_or_else(|| panic!("{version} {}: no {base_path}", node.role));
            assert_eq!(
                node.base_file.as_deref(),
                Some(format!("{}/{base_path}", product.pack_top_dir(profile.pack)).as_str())
            );
            let got = flat(&node.deployment_toml);
            let plan = flat(&bare.node(&node.name).unwrap().deployment_toml);
            let base = flat(base_text);
            for (k, v) in &plan {
                assert_eq!(
                    got.get(k),
                    Some(v),
                    "{version} {}: the plan's {k}",
                    node.role
                );
            }
            let mut kept = 0;
            for (k, v) in base.iter().filter(|(k, _)| !plan_touches(&plan, k)) {
                assert_eq!(
                    got.get(k),
                    Some(v),
                    "{version} {}: the pack's {k}",
                    node.role
                );
                kept += 1;
            }
            assert!(
                got.keys()
                    .all(|k| plan.contains_key(k) || base.contains_key(k)),
                "{version} {}: nothing but the plan and the base",
                node.role
            );
            assert!(
                kept > 0,
                "{version} {}: the base adds nothing to check",
                node.role
            );
            checked += 1;
        }
    }
    // 3.2: five roles; 4.0–4.4: four each; 4.5–4.7: four each.
    assert_eq!(checked, 5 + 5 * 4 + 3 * 4);
}
