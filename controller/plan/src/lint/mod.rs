//! Checks of a render against the node's own pack, for what the product would silently get
//! wrong: a key no template, default, inference or key mapping of the pack reads (the config
//! mapper ignores it: a misspelt override does nothing), and a peer URL left from the pack's file
//! naming a host the plan does not have (the templates ship placeholders such as `tm.wso2.com`).
//!
//! Both are warnings naming the node, the key and who wrote it (the renderer, an override with
//! its place in the plan, or the pack's file); `--strict` makes them errors.

mod catalogue;
mod hosts;
mod keys;

use std::collections::BTreeMap;

pub use catalogue::KeyCatalogue;

use crate::catalogue::PackKind;
use crate::diag::Diagnostic;
use crate::pack::PackSet;
use crate::plan::Plan;
use crate::render::ClusterRender;

/// One warning, with a stable code for machines (`render.unknown_key`,
/// `render.placeholder_host`, `render.provided_cert_name`); [`crate::provided::load`] reports
/// its errors the same way (`plan.provided_keystore`, `plan.provided_truststore`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The code.
    pub code: &'static str,
    /// The warning, at its place in the plan.
    pub diagnostic: Diagnostic,
}

/// Every warning about `render`'s nodes whose packs `packs` holds (a node whose pack was not read
/// is not checked).
pub fn check(plan: &Plan, render: &ClusterRender, packs: &PackSet) -> Vec<Finding> {
    let mut catalogues: BTreeMap<PackKind, Option<KeyCatalogue>> = BTreeMap::new();
    // Per plan and per pack file, not per node: a plan of thousands of nodes is checked in
    // linear time.
    let known = hosts::known_hosts(plan);
    let mut bases: BTreeMap<(PackKind, String), toml::Table> = BTreeMap::new();
    let plan_nodes: BTreeMap<&str, &crate::plan::Node> = plan
        .nodes
        .iter()
        .map(|n| (n.name.value.as_str(), n))
        .collect();
    let mut out = Vec::new();
    for node in render.nodes() {
        let Some(pack) = packs.get(node.pack) else {
            continue;
        };
        let Some(plan_node) = plan_nodes.get(node.name.as_str()).copied() else {
            continue;
        };
        let profile = plan
            .cluster
            .product
            .value
            .role_profile(node.role)
            .expect("rendered role");
        let Ok(doc) = node.deployment_toml_masked.parse::<toml::Table>() else {
            continue;
        };
        let base_file = profile.base_config_file();
        let base = bases
            .entry((node.pack, base_file.clone()))
            .or_insert_with(|| {
                pack.file(&base_file)
                    .and_then(|t| t.parse::<toml::Table>().ok())
                    .unwrap_or_default()
            });
        let doc = keys::Flat::new(&doc, base);
        let catalogue = catalogues
            .entry(node.pack)
            .or_insert_with(|| KeyCatalogue::of(pack));
        let finding = |code| move |diagnostic| Finding { code, diagnostic };
        if let Some(c) = catalogue {
            let unknown = keys::unknown(plan, plan_node, &doc, c);
            out.extend(unknown.into_iter().map(finding("render.unknown_key")));
        }
        let hosts = hosts::placeholders(plan_node, &doc, &known);
        out.extend(hosts.into_iter().map(finding("render.placeholder_host")));
    }
    out
}
