//! The renderer: a validated plan becomes one typed spec per machine, with each node's complete
//! `deployment.toml`, its machine's hosts block, the optimizer/start/stop commands and readiness
//! checks, and the start order.
//!
//! WSO2 facts (ports, paths, defaults, role profiles) come from [`crate::catalogue`]; the
//! wiring (which keys name which peers, see `docs/plan.md`, "What the renderer writes") is here:
//! - `document`: a node's `deployment.toml`, section by section; the role wiring in `v3` and
//!   `v4`, the peer URLs and the sections several roles share in `wiring` (whose `Wiring`
//!   records who points at whom, from which [`crate::graph`] derives the start order);
//! - `secret_values`: the document is built once, secrets as sentinels, and yields both the real
//!   and the masked text;
//! - `node`: install paths, commands, readiness, TLS; `hosts`: the hosts block;
//! - `balancer`: the `nginx.conf` of a machine the plan places load balancers on;
//! - `base`: the pack's own file (its optimizer template, or its shipped `deployment.toml`) as
//!   the base the tree is merged onto;
//! - `output`: the render's types, re-exported here.

pub mod balancer;
pub use balancer::{BalancerProbe, BalancerRender};
mod base;
mod databases;
mod doc;
mod document;
mod hosts;
mod node;
pub use node::cert_names;
mod output;
mod secret_values;
mod v3;
mod v4;
mod vault;
mod wiring;

use std::collections::{BTreeMap, BTreeSet};

use crate::graph;
use crate::pack::PackSet;
use crate::plan::{Node, Plan};
use crate::secrets::{self, EnvSource};
pub use output::{
    ClusterRender, CommandSpec, HostsEntry, HttpCheck, MachineRender, NodeDatabase, NodeDbInit,
    NodeFile, NodeJvm, NodeLib, NodeRender, NodeTls, Readiness, Sensitive, SharedFolders,
    SharedHow,
};
use secret_values::Secrets;
pub use vault::VaultCipher;

/// What masked secrets look like in printed output.
pub const MASK: &str = "********";

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
    /// A pack lacks the file a node's configuration is built on, or the file does not parse.
    #[error("node {node}: the pack's {file}: {reason}")]
    Base {
        /// The node.
        node: String,
        /// Its pack.
        pack: crate::catalogue::PackKind,
        /// The file, under the pack's top directory.
        file: String,
        /// Why.
        reason: String,
    },
    /// The secure vault's cipher failed on a secret.
    #[error("node {node}: encrypting `{alias}` for the secure vault: {reason}")]
    Vault {
        /// The node.
        node: String,
        /// The secret's vault alias.
        alias: String,
        /// Why (never the value).
        reason: String,
    },
}

/// Every secret of the plan, by description, read through `env`.
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

/// Renders a validated plan. Each node's `deployment.toml` is merged onto its pack's base file
/// when `packs` holds the pack, and written whole otherwise.
pub fn render(
    plan: &Plan,
    env: &dyn EnvSource,
    packs: &PackSet,
) -> Result<ClusterRender, RenderError> {
    render_with(plan, env, packs, None)
}

/// [`render`], with the secure vault's `cipher` when the plan turns the vault on (without one,
/// `[secrets]` holds the plaintexts in brackets, for the product's own cipher tool).
pub fn render_with(
    plan: &Plan,
    env: &dyn EnvSource,
    packs: &PackSet,
    cipher: Option<&dyn VaultCipher>,
) -> Result<ClusterRender, RenderError> {
    let secrets = Secrets::new(plan, resolve_secrets(plan, env)?);
    let vault_on = plan.secure_vault.enabled;

    // Each document is built once; the real and the masked text come from the same tree.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut documents = Vec::new();
    for node in &plan.nodes {
        let mut wiring = wiring::Wiring::new(plan, node);
        let tree = document::node_document(plan, node, &secrets, &mut wiring);
        let (real, masked) = if vault_on {
            let refs = secrets.vault_refs(&tree);
            (refs.clone(), refs)
        } else {
            (secrets.reveal(&tree), secrets.mask(&tree))
        };
        let (base_file, mut toml_text, mut masked_text) = match node_base(plan, node, packs)? {
            Some((file, text)) => {
                let merge = |t| {
                    base::merge(text, t).map_err(|reason| RenderError::Base {
                        node: node.name.value.clone(),
                        pack: profile_pack(plan, node),
                        file: file.clone(),
                        reason,
                    })
                };
                (Some(file.clone()), merge(&real)?, merge(&masked)?)
            }
            None => (None, doc::to_text(&real), doc::to_text(&masked)),
        };
        if vault_on {
            let used = secrets.used(&tree);
            let (r, m) = vault::secrets_tables(&node.name.value, &used, cipher)?;
            toml_text.push_str(&r);
            masked_text.push_str(&m);
        }
        edges.insert(node.name.value.clone(), wiring.refs);
        documents.push((node, base_file, toml_text, masked_text));
    }
    let deps = graph::dependencies(plan, &edges);
    let tiers = graph::tiers_of(plan, &deps);

    let initialisers = databases::initialisers(plan);
    let db_password = |id: &str| match id {
        "apim_db" => secrets.value(&secrets.apim_db),
        _ => secrets.value(&secrets.shared_db),
    };
    let hosts = hosts::hosts_block(plan);
    let mut machines: Vec<MachineRender> = plan
        .machines
        .iter()
        .map(|m| MachineRender {
            name: m.name.value.clone(),
            address: m.address.value,
            hosts: hosts.clone(),
            nodes: Vec::new(),
            balancer: balancer::render(plan, m),
        })
        .collect();
    let machine_index: std::collections::HashMap<&str, usize> = plan
        .machines
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.value.as_str(), i))
        .collect();
    for (node, base_file, deployment_toml, deployment_toml_masked) in documents {
        let (libs, databases) = databases::node_databases(plan, node, &initialisers, &db_password);
        let parts = node::NodeParts {
            libs,
            databases,
            base_file,
            deployment_toml,
            deployment_toml_masked,
            depends_on: deps.get(&node.name.value).cloned().unwrap_or_default(),
            keystore_password: secrets.value(&secrets.keystore),
            truststore_password: secrets.value(&secrets.truststore),
            vault: vault_on,
        };
        let idx = *machine_index
            .get(node.machine.value.as_str())
            .expect("machine exists");
        machines[idx]
            .nodes
            .push(node::node_render(plan, node, parts));
    }
    Ok(ClusterRender {
        cluster: plan.cluster.name.value.clone(),
        product: plan.cluster.product.value,
        machines,
        tiers,
    })
}

fn profile_pack(plan: &Plan, node: &Node) -> crate::catalogue::PackKind {
    plan.cluster
        .product
        .value
        .role_profile(node.role.value)
        .expect("validated role")
        .pack
}

/// The node's base file: its path under the pack's top directory and its text, when `packs`
/// holds the node's pack.
fn node_base<'a>(
    plan: &Plan,
    node: &Node,
    packs: &'a PackSet,
) -> Result<Option<(String, &'a str)>, RenderError> {
    let profile = plan
        .cluster
        .product
        .value
        .role_profile(node.role.value)
        .expect("validated role");
    let Some(config) = packs.get(profile.pack) else {
        return Ok(None);
    };
    let path = profile.base_config_file();
    let file = format!("{}/{path}", config.top_dir);
    match config.file(&path) {
        Some(text) => Ok(Some((file, text))),
        None => Err(RenderError::Base {
            node: node.name.value.clone(),
            pack: profile.pack,
            file,
            reason: format!(
                "missing: {} ships it for the {} role",
                plan.cluster.product.value, node.role.value
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{self, Options};

    #[test]
    fn one_tree_gives_the_real_and_the_masked_text() {
        // The example's admin password is `admin`, the same as its user name.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/v45-single.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let env = BTreeMap::new();
        let opts = Options {
            verify_packs: false,
        };
        let (plan, report) = validate::check(&path, &text, &env, opts);
        let plan = plan.unwrap_or_else(|| panic!("{}", report.render()));
        let c = render(&plan, &env, &PackSet::none()).unwrap();
        for n in c.nodes() {
            let real: toml::Table = n.deployment_toml.parse().unwrap();
            let masked: toml::Table = n.deployment_toml_masked.parse().unwrap();
            assert_eq!(real["super_admin"]["username"].as_str(), Some("admin"));
            assert_eq!(real["super_admin"]["password"].as_str(), Some("admin"));
            assert_eq!(masked["super_admin"]["username"].as_str(), Some("admin"));
            assert_eq!(masked["super_admin"]["password"].as_str(), Some(MASK));
            assert_eq!(real["truststore"]["password"].as_str(), Some("wso2carbon"));
            assert_eq!(masked["truststore"]["password"].as_str(), Some(MASK));
            for t in [&n.deployment_toml, &n.deployment_toml_masked] {
                assert!(!t.contains('\u{0}'), "no sentinel left in {}", n.name);
            }
            assert_eq!(
                n.tls.keystore_password.0,
                real["keystore"]["tls"]["password"].as_str().unwrap()
            );
        }
    }
}
