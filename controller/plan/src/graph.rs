//! The start order: which nodes wait for which, and the tiers they start in.
//!
//! Edges come from the wiring: node A depends on node B when A's `deployment.toml` names B (its
//! hostname or its role's load balancer). The wiring has mutual references (a 3.x key manager
//! points at the traffic manager for throttling and the traffic manager back at it for key
//! validation; a control plane lists the gateways it deploys to), so an edge is kept only when B's
//! role comes strictly earlier in the guides' order (KM, TM, Publisher, Dev Portal, Gateway;
//! KM, control plane, TM, gateway). HA peers never wait for each other: the rollout restarts them
//! one at a time instead. With `start_order = "strict"` every node waits for every node of an
//! earlier rank, which is the guides' order exactly.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::{Plan, StartOrder};

/// Start tiers: every node of tier *n* depends only on nodes of earlier tiers.
pub type Tiers = Vec<Vec<String>>;

/// For each node, the nodes that must be ready before it starts, in plan order.
pub fn dependencies(
    plan: &Plan,
    refs: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, Vec<String>> {
    let product = plan.cluster.product.value;
    // Each node's rank, computed once (node names are unique): a lookup by name per pair of
    // nodes made this cubic in the plan's size.
    let ranks: Vec<u32> = plan
        .nodes
        .iter()
        .map(|n| product.start_rank(n.role.value))
        .collect();
    let mut deps = BTreeMap::new();
    for (n, my_rank) in plan.nodes.iter().zip(&ranks) {
        let my_refs = refs.get(&n.name.value);
        let list: Vec<String> = plan
            .nodes
            .iter()
            .zip(&ranks)
            .filter(|(m, rank)| {
                let lower = *rank < my_rank;
                match plan.rollout.start_order {
                    StartOrder::Strict => lower,
                    StartOrder::Graph => {
                        lower && my_refs.is_some_and(|r| r.contains(&m.name.value))
                    }
                }
            })
            .map(|(m, _)| m.name.value.clone())
            .collect();
        deps.insert(n.name.value.clone(), list);
    }
    deps
}

/// Groups nodes into tiers by their longest dependency chain.
pub fn tiers(plan: &Plan, refs: &BTreeMap<String, BTreeSet<String>>) -> Tiers {
    tiers_of(plan, &dependencies(plan, refs))
}

/// [`tiers`] from the [`dependencies`] already computed.
pub fn tiers_of(plan: &Plan, deps: &BTreeMap<String, Vec<String>>) -> Tiers {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    // Dependencies always point at a strictly lower rank, so visiting by rank settles every node
    // after the nodes it depends on.
    let product = plan.cluster.product.value;
    let mut order: Vec<_> = plan.nodes.iter().collect();
    order.sort_by_key(|n| product.start_rank(n.role.value));
    for n in order {
        let l = deps[&n.name.value]
            .iter()
            .map(|d| level.get(d.as_str()).map_or(0, |l| l + 1))
            .max()
            .unwrap_or(0);
        level.insert(&n.name.value, l);
    }
    let max = level.values().copied().max().map_or(0, |m| m + 1);
    let mut tiers = vec![Vec::new(); max];
    for n in &plan.nodes {
        tiers[level[n.name.value.as_str()]].push(n.name.value.clone());
    }
    tiers
}
