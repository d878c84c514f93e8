//! The renderer: a validated plan becomes one typed spec per machine, with each node's complete
//! `deployment.toml`, its machine's hosts block, the optimizer/start/stop commands and readiness
//! checks, and the start order.
//!
//! WSO2 facts (ports, paths, defaults, role profiles) come from [`crate::catalogue`]; the
//! wiring (which keys name which peers, see `docs/plan.md`, "What the renderer writes") is here:
//! - [`document`]: a node's `deployment.toml`, on [`doc::Doc`]; the role wiring in [`v3`] and
//!   [`v4`], the peer URLs and shared sections in [`wiring`];
//! - [`node`]: install paths, commands, readiness, TLS; [`hosts`]: the hosts block;
//! - [`output`]: the render's types.
//!
//! [`wiring::Wiring`] records who points at whom, from which [`crate::graph`] derives the start
//! order.

mod doc;
mod document;
mod hosts;
mod node;
mod output;
mod v3;
mod v4;
mod wiring;

use std::collections::{BTreeMap, BTreeSet};

use crate::graph;
use crate::plan::Plan;
use crate::secrets::{self, EnvSource};
pub use output::{
    ClusterRender, CommandSpec, HostsEntry, HttpCheck, MachineRender, NodeRender, NodeTls,
    Readiness, Sensitive,
};

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

    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut documents = Vec::new();
    for node in &plan.nodes {
        let mut wiring = wiring::Wiring::new(plan, node);
        let toml_text = document::node_document(plan, node, &revealed, &mut wiring);
        let mut throwaway = wiring::Wiring::new(plan, node);
        let masked_text = document::node_document(plan, node, &masked, &mut throwaway);
        edges.insert(node.name.value.clone(), wiring.refs);
        documents.push((node, toml_text, masked_text));
    }
    let tiers = graph::tiers(plan, &edges);
    let deps = graph::dependencies(plan, &edges);

    let hosts = hosts::hosts_block(plan);
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
    for (node, deployment_toml, deployment_toml_masked) in documents {
        let parts = node::NodeParts {
            deployment_toml,
            deployment_toml_masked,
            depends_on: deps.get(&node.name.value).cloned().unwrap_or_default(),
            keystore_password: revealed.keystore.clone(),
            truststore_password: revealed.truststore.clone(),
        };
        let idx = plan
            .machines
            .iter()
            .position(|m| m.name.value == node.machine.value)
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
