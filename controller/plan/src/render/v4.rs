//! The 4.x wiring: control plane (event hub, resident or separate key manager), traffic manager
//! and gateways; 4.5's split packs use the same keys.

use toml::{Table, Value};

use super::doc::{Doc, arr, s};
use super::wiring::{
    LOCAL_MGMT, REF_PASS, REF_USER, Wiring, cache_invalidation, gateway_environments,
    key_manager_client, revoke_endpoint, throttling_client, token_revocation,
};
use crate::catalogue::{Port, ProductLine, Role, layout};
use crate::plan::{Node, Plan};

/// The 4.x wiring of one node; the key manager its clients call is the separate key manager
/// when the plan has one, else the control plane's resident one.
pub(super) fn v4_role(plan: &Plan, node: &Node, d: &mut Doc, w: &mut Wiring<'_>) {
    let separate_km = plan.nodes_of(Role::KeyManager).next().is_some();
    let km_role = if separate_km {
        Role::KeyManager
    } else {
        Role::ControlPlane
    };
    match node.role.value {
        Role::ControlPlane => control_plane(d, plan, w, km_role),
        Role::KeyManager => key_manager(d, w),
        Role::TrafficManager => traffic_manager(d, plan, w, km_role),
        Role::Gateway => gateway(d, plan, node, w, km_role),
        Role::Publisher | Role::Devportal => {}
    }
}

/// Gateway environments, the devportal URL, its own event hub (and its HA peers), the key
/// manager, and token revocation when the key manager is resident.
fn control_plane(d: &mut Doc, plan: &Plan, w: &mut Wiring<'_>, km_role: Role) {
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
    if km_role == Role::ControlPlane {
        token_revocation(d, &me);
    }
    cache_invalidation(d, Role::ControlPlane);
}

/// A separate key manager: the control plane's event hub, token revocation, throttling.
fn key_manager(d: &mut Doc, w: &mut Wiring<'_>) {
    event_hub_client(d, w);
    publish_groups(d, w);
    let cp = w.mgmt(Role::ControlPlane);
    token_revocation(d, &cp);
    throttling_client(d, w, false, true);
    cache_invalidation(d, Role::KeyManager);
}

/// The event hub, its HA peers, and (4.0–4.4) the key manager.
fn traffic_manager(d: &mut Doc, plan: &Plan, w: &mut Wiring<'_>, km_role: Role) {
    event_hub_client(d, w);
    let peers = w.peers("tcp", Port::Amqp);
    if !peers.is_empty() {
        d.set("apim.throttling.event_duplicate_url", arr(peers));
        d.set(
            "apim.throttling.throttle_decision_endpoints",
            arr([w.local("tcp", Port::Amqp)]),
        );
    }
    if plan.cluster.product.value.line() == ProductLine::V4 {
        key_manager_client(d, w, km_role, false);
        revoke_endpoint(d, w, km_role);
    }
}

/// The key manager, the event hub, throttling, the names of its environments as its
/// `gateway_labels` (the control plane deploys to an environment by name) and (4.5+) its
/// `gateway_id`.
fn gateway(d: &mut Doc, plan: &Plan, node: &Node, w: &mut Wiring<'_>, km_role: Role) {
    key_manager_client(d, w, km_role, false);
    event_hub_client(d, w);
    // The service URL too: the pack's gateway template ships a placeholder there.
    throttling_client(d, w, true, false);
    let labels: Vec<String> = plan
        .gateway_environments
        .iter()
        .filter(|e| {
            e.gateways
                .as_ref()
                .is_none_or(|g| g.iter().any(|g| g.value == node.name.value))
        })
        .map(|e| e.name.value.clone())
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
    if plan.cluster.product.value.line() == ProductLine::V45Split {
        let id = node
            .gateway_id
            .as_ref()
            .map_or(node.name.value.clone(), |g| g.value.clone());
        d.set("apim.gateway_notification.gateway_id", s(&id));
    }
}

/// `[apim.event_hub]` of a client: the control planes' service and listening endpoints.
fn event_hub_client(d: &mut Doc, w: &mut Wiring<'_>) {
    d.set("apim.event_hub.enable", Value::Boolean(true));
    d.set("apim.event_hub.username", s(REF_USER));
    d.set("apim.event_hub.password", s(REF_PASS));
    let url = format!("{}{}", w.mgmt(Role::ControlPlane), layout::SERVICES_PATH);
    d.set("apim.event_hub.service_url", s(&url));
    d.set(
        "apim.event_hub.event_listening_endpoints",
        arr(w.each(Role::ControlPlane, "tcp", Port::Amqp)),
    );
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
