//! Properties of rendering over random topologies: a generated plan validates, rendering it is
//! deterministic, every rendered deployment.toml parses as TOML, and every per-node endpoint URL
//! (tcp://, ssl://) names a node of the plan at that node's port plus its offset.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use apim_plan::catalogue::{Product, Role};
use apim_plan::render;
use apim_plan::validate::{self, Options};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Topology {
    product: &'static str,
    /// (role, count) in product order.
    counts: Vec<(Role, usize)>,
    machines: usize,
    /// Machine index per node, in node order.
    placement: Vec<usize>,
    override_node: Option<usize>,
}

fn topology() -> impl Strategy<Value = Topology> {
    prop_oneof![
        Just("wso2am-3.2.0"),
        Just("wso2am-4.2.0"),
        Just("wso2am-4.4.0"),
        Just("wso2am-4.5.0")
    ]
    .prop_flat_map(|product| {
        let p = Product::parse(product).unwrap();
        let roles: Vec<Role> = p.roles().to_vec();
        let required: Vec<Role> = p.required_roles().to_vec();
        let counts = roles
            .into_iter()
            .map(move |r| {
                let min = usize::from(required.contains(&r));
                (Just(r), min..=2usize)
            })
            .collect::<Vec<_>>();
        (Just(product), counts, 1usize..=4)
    })
    .prop_flat_map(|(product, counts, machines)| {
        let total: usize = counts.iter().map(|(_, c)| *c).sum();
        (
            Just(product),
            Just(counts),
            Just(machines),
            proptest::collection::vec(0..machines, total),
            proptest::option::of(0..total),
        )
    })
    .prop_map(
        |(product, counts, machines, placement, override_node)| Topology {
            product,
            counts,
            machines,
            placement,
            override_node,
        },
    )
}

fn plan_text(t: &Topology) -> String {
    let p = Product::parse(t.product).unwrap();
    let mut s = format!(
        "[cluster]\nname = \"prop\"\nproduct = \"{}\"\njava_home = \"/jdk\"\n\n[distributions]\n",
        t.product
    );
    for kind in p.packs() {
        let _ = writeln!(
            s,
            "{} = {{ path = \"{}.zip\", sha256 = \"{}\" }}",
            kind.plan_key(),
            p.pack_top_dir(kind),
            "0".repeat(64)
        );
    }
    s.push_str("\n[drivers]\nmysql = { path = \"drivers/mysql.jar\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }\npostgres = { path = \"drivers/postgres.jar\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }\n");
    s.push_str("\n[admin]\npassword = \"pw\"\n\n[databases.apim_db]\ntype = \"mysql\"\nhost = \"db\"\nname = \"apim\"\nusername = \"u\"\npassword = \"pw\"\n");
    s.push_str("\n[databases.shared_db]\ntype = \"postgres\"\nhost = \"db\"\nname = \"shared\"\nusername = \"u\"\npassword = \"pw\"\n");
    s.push_str("\n[tls]\nkeystore_password = \"pw\"\n\n[load_balancers]\n");
    for (role, count) in &t.counts {
        if *count > 1 {
            let _ = writeln!(s, "{role} = \"{role}.lb.example.com\"");
        }
    }
    for m in 0..t.machines {
        let _ = write!(
            s,
            "\n[[machines]]\nname = \"vm-{m}\"\naddress = \"10.1.0.{}\"\n",
            m + 1
        );
    }
    let mut per_machine = vec![0u16; t.machines];
    let mut i = 0;
    for (role, count) in &t.counts {
        for k in 0..*count {
            let m = t.placement[i];
            let offset = per_machine[m];
            per_machine[m] += 1;
            let _ = write!(
                s,
                "\n[[nodes]]\nname = \"{role}-{k}\"\nmachine = \"vm-{m}\"\nrole = \"{role}\"\nhostname = \"{role}-{k}.example.com\"\noffset = {offset}\n"
            );
            i += 1;
        }
    }
    if let Some(o) = t.override_node {
        let mut names = t
            .counts
            .iter()
            .flat_map(|(r, c)| (0..*c).map(move |k| format!("{r}-{k}")));
        let name = names.nth(o).unwrap();
        let _ = write!(
            s,
            "\n[overrides]\n\"node:{name}\" = '''\n[apim.cors]\nallow_origins = \"https://x.example.com\"\n'''\n"
        );
    }
    s
}

/// Every `tcp://host:port` / `ssl://host:port` string in a document.
fn endpoints(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) if s.starts_with("tcp://") || s.starts_with("ssl://") => {
            out.push(s.clone())
        }
        toml::Value::Array(a) => a.iter().for_each(|x| endpoints(x, out)),
        toml::Value::Table(t) => t.values().for_each(|x| endpoints(x, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rendering_is_deterministic_and_well_formed(t in topology()) {
        let text = plan_text(&t);
        let env = BTreeMap::new();
        let (plan, report) = validate::check(Path::new("prop.toml"), &text, &env, Options { verify_packs: false });
        prop_assert!(!report.has_errors(), "{}\n{}", report.render(), text);
        let plan = plan.unwrap();
        let a = render::render(&plan, &env, &apim_plan::pack::PackSet::none()).unwrap();
        let b = render::render(&plan, &env, &apim_plan::pack::PackSet::none()).unwrap();
        prop_assert_eq!(&a.tiers, &b.tiers);
        let ports: BTreeMap<String, u16> = plan.nodes.iter().map(|n| (n.hostname.value.clone(), n.offset.value)).collect();
        for (x, y) in a.nodes().zip(b.nodes()) {
            prop_assert_eq!(&x.deployment_toml, &y.deployment_toml);
            prop_assert_eq!(&x.config_digest, &y.config_digest);
            let doc: toml::Table = x.deployment_toml.parse().map_err(|e| TestCaseError::fail(format!("{}: {e}", x.name)))?;
            let _: toml::Table = x.deployment_toml_masked.parse().map_err(|e| TestCaseError::fail(format!("{}: {e}", x.name)))?;
            prop_assert_eq!(doc["server"]["offset"].as_integer(), Some(i64::from(x.offset)));
            let mut eps = Vec::new();
            endpoints(&toml::Value::Table(doc), &mut eps);
            for ep in eps {
                let hostport = ep.split("://").nth(1).unwrap();
                let (host, port) = hostport.rsplit_once(':').unwrap();
                let port: u16 = port.parse().unwrap();
                let offset = if host == "localhost" { x.offset } else { *ports.get(host).ok_or_else(|| TestCaseError::fail(format!("{}: {ep} names no node", x.name)))? };
                prop_assert!([5672u16, 9611, 9711].contains(&(port - offset)), "{}: {} is not a base port + offset {}", x.name, ep, offset);
            }
        }
        for (m, n) in a.machines.iter().zip(&b.machines) {
            prop_assert_eq!(m.hosts_text(), n.hosts_text());
        }
        // Tiers cover every node once, and nobody waits for a node of its own or a later tier.
        let mut seen: Vec<&str> = a.tiers.iter().flatten().map(String::as_str).collect();
        seen.sort();
        let mut all: Vec<&str> = plan.nodes.iter().map(|n| n.name.value.as_str()).collect();
        all.sort();
        prop_assert_eq!(seen, all);
        for (i, tier) in a.tiers.iter().enumerate() {
            for name in tier {
                for dep in &a.node(name).unwrap().depends_on {
                    let dep_tier = a.tiers.iter().position(|t| t.contains(dep)).unwrap();
                    prop_assert!(dep_tier < i, "{name} (tier {i}) waits for {dep} (tier {dep_tier})");
                }
            }
        }
    }
}
