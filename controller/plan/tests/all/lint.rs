//! The render checked against its packs: keys the product would ignore, placeholder hosts left
//! from a pack's file. The packs here read exactly what the renderer writes for the fixture's
//! plan (and the tests add or take away from that).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use apim_plan::catalogue::Product;
use apim_plan::diag::line_col;
use apim_plan::lint::{self, Finding};
use apim_plan::pack::{self, PackSet};
use apim_plan::plan::Plan;
use apim_plan::render::{self, ClusterRender};
use apim_plan::validate::{self, Options};
use apim_testkit::plans::{Fixture, pack_with, template_reading};

fn env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn parse(f: &Fixture, text: &str) -> Plan {
    let path = f.dir.path().join("plan.toml");
    let (plan, report) = validate::check(&path, text, &env(), Options::default());
    plan.unwrap_or_else(|| panic!("{}", report.render()))
}

/// Packs for `plan`'s release whose config mapper reads every key `reads` renders, plus
/// `extra` files in every pack.
fn packs(plan: &Plan, reads: &ClusterRender, extra: &[(String, String)]) -> PackSet {
    let product: Product = plan.cluster.product.value;
    let mut set = PackSet::none();
    let template = template_reading(reads.nodes().map(|n| n.deployment_toml.as_str()));
    for kind in product.packs() {
        let mut files = vec![template.clone()];
        files.extend(extra.iter().cloned());
        let zip = pack_with(&product.pack_top_dir(kind), &files);
        set.insert(
            kind,
            Arc::new(pack::config::read(Cursor::new(zip)).unwrap()),
        );
    }
    set
}

fn lint_of(plan: &Plan, packs: &PackSet) -> Vec<Finding> {
    let r = render::render(plan, &env(), packs).unwrap();
    lint::check(plan, &r, packs)
}

/// The fixture's plan, its render without packs, and packs that read what that render writes.
fn clean(f: &Fixture) -> (Plan, PackSet) {
    let plan = parse(f, &f.base_plan());
    let bare = render::render(&plan, &env(), &PackSet::none()).unwrap();
    let packs = packs(&plan, &bare, &[]);
    (plan, packs)
}

#[test]
fn the_renderers_own_output_is_clean_on_packs_that_read_it() {
    let f = Fixture::new();
    let (plan, packs) = clean(&f);
    assert_eq!(lint_of(&plan, &packs), []);
}

#[test]
fn a_misspelt_override_key_is_named_with_its_place_in_the_plan_and_a_suggestion() {
    let f = Fixture::new();
    let (_, packs) = clean(&f);
    let text = format!(
        "{}\n[overrides]\n\"role:gateway\" = '''\n[apim.cors]\nallow_orgins = \"https://portal.example.com\"\n'''\n",
        f.base_plan()
    );
    let plan = parse(&f, &text);
    let found = lint_of(&plan, &packs);
    assert_eq!(found.len(), 1, "{found:#?}");
    let w = &found[0];
    assert_eq!(w.code, "render.unknown_key");
    let at = text.find("allow_orgins").unwrap();
    assert_eq!(w.diagnostic.span.start, at);
    assert_eq!(line_col(&text, w.diagnostic.span.start).1, 1);
    for needle in [
        "node gw-1",
        "`apim.cors.allow_orgins`",
        "set by the override \"role:gateway\"",
        "wso2am-4.5.0",
        "ignore it",
    ] {
        assert!(w.diagnostic.message.contains(needle), "{needle}: {w:?}");
    }
    assert_eq!(
        w.diagnostic.hint.as_deref(),
        Some("did you mean `apim.cors.allow_origins`?")
    );
}

#[test]
fn a_key_the_renderer_writes_that_the_pack_does_not_read_names_the_renderer_and_the_node() {
    let f = Fixture::new();
    let plan = parse(&f, &f.base_plan());
    let bare = render::render(&plan, &env(), &PackSet::none()).unwrap();
    // A pack that does not read `[server] node_ip`.
    let mut reads = bare.clone();
    for m in &mut reads.machines {
        for n in &mut m.nodes {
            n.deployment_toml = n
                .deployment_toml
                .lines()
                .filter(|l| !l.starts_with("node_ip"))
                .map(|l| format!("{l}\n"))
                .collect();
        }
    }
    let packs = packs(&plan, &reads, &[]);
    let found = lint_of(&plan, &packs);
    assert_eq!(found.len(), plan.nodes.len(), "{found:#?}");
    for (w, node) in found.iter().zip(&plan.nodes) {
        assert_eq!(w.diagnostic.span, node.name.span);
        assert!(
            w.diagnostic
                .message
                .contains("`server.node_ip` (written by apimctl's renderer)"),
            "{w:?}"
        );
    }
}

#[test]
fn a_placeholder_host_left_from_the_packs_file_is_named_until_the_plan_sets_it() {
    let f = Fixture::new();
    let plan = parse(&f, &f.base_plan());
    let bare = render::render(&plan, &env(), &PackSet::none()).unwrap();
    let product = plan.cluster.product.value;
    let gw = product
        .role_profile(apim_plan::catalogue::Role::Gateway)
        .unwrap();
    let base = "[server]\nhostname = \"localhost\"\n\n[apim.workflow]\nservice_url = \"https://bps.wso2.com:9445/bpmn\"\n\n[apim.analytics]\nenable = false\nconfig_endpoint = \"https://analytics.wso2.com:8080/auth/v1\"\n";
    let extra = [(gw.base_config_file(), base.to_string())];
    // The product reads the placeholder's keys too.
    let also = "[apim.workflow]\nservice_url = 1\n[apim.analytics]\nconfig_endpoint = 1\n";
    let template = template_reading(
        bare.nodes()
            .map(|n| n.deployment_toml.as_str())
            .chain([also]),
    );
    let mut packs = PackSet::none();
    for kind in product.packs() {
        let mut files = vec![template.clone()];
        if kind == gw.pack {
            files.extend(extra.iter().cloned());
        }
        let zip = pack_with(&product.pack_top_dir(kind), &files);
        packs.insert(
            kind,
            Arc::new(pack::config::read(Cursor::new(zip)).unwrap()),
        );
    }

    let found = lint_of(&plan, &packs);
    // The disabled analytics section's placeholder is not worth a warning.
    assert_eq!(found.len(), 1, "{found:#?}");
    let w = &found[0];
    assert_eq!(w.code, "render.placeholder_host");
    for needle in ["node gw-1", "`apim.workflow.service_url`", "bps.wso2.com"] {
        assert!(w.diagnostic.message.contains(needle), "{needle}: {w:?}");
    }

    let text = format!(
        "{}\n[overrides]\n\"node:gw-1\" = '''\n[apim.workflow]\nservice_url = \"https://bps.example.com:9445/bpmn\"\n'''\n",
        f.base_plan()
    );
    let plan = parse(&f, &text);
    assert_eq!(lint_of(&plan, &packs), []);
}
