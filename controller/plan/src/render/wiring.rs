//! Peer URLs and the wiring sections several roles share.
//!
//! Every URL that names a peer is built by [`Wiring`], which also records the reference so the
//! start order can be derived from who points at whom ([`crate::graph`]). A role with a load
//! balancer is reached through it (no port); per-node endpoints (event hub, throttling) name
//! every node with its port at its offset.

use std::collections::BTreeSet;

use toml::{Table, Value};

use super::doc::{Doc, arr, s};
use crate::catalogue::{Port, Role, layout};
use crate::plan::{Node, Plan};

/// A node's own management endpoint, through the property the product sets to its HTTPS port.
pub(super) const LOCAL_MGMT: &str = "https://localhost:${mgt.transport.https.port}";

/// The super admin's credentials, by reference.
pub(super) const REF_USER: &str = "$ref{super_admin.username}";
pub(super) const REF_PASS: &str = "$ref{super_admin.password}";

/// Builds peer URLs for one node and records which nodes it points at.
pub(super) struct Wiring<'p> {
    plan: &'p Plan,
    /// The node being rendered.
    pub me: &'p Node,
    /// The nodes it points at.
    pub refs: BTreeSet<String>,
}

impl<'p> Wiring<'p> {
    pub fn new(plan: &'p Plan, me: &'p Node) -> Self {
        Wiring {
            plan,
            me,
            refs: BTreeSet::new(),
        }
    }

    fn nodes(&self, role: Role) -> Vec<&'p Node> {
        self.plan.nodes_of(role).collect()
    }

    fn note(&mut self, role: Role) {
        for n in self.plan.nodes_of(role) {
            if n.name.value != self.me.name.value {
                self.refs.insert(n.name.value.clone());
            }
        }
    }

    /// `https://host:port` of a role's management endpoint: its LB (no port) when it has one,
    /// else its single node's hostname with [`Port::Https`] at the node's offset.
    pub fn mgmt(&mut self, role: Role) -> String {
        self.note(role);
        if let Some(lb) = self.plan.load_balancers.get(&role) {
            return format!("https://{}", lb.hostname.value);
        }
        match self.nodes(role).first() {
            Some(n) => format!(
                "https://{}:{}",
                n.hostname.value,
                Port::Https.at(n.offset.value)
            ),
            None => LOCAL_MGMT.to_string(),
        }
    }

    /// `scheme://node:base+offset` for every node of a role (per-node endpoints never go through an LB).
    pub fn each(&mut self, role: Role, scheme: &str, port: Port) -> Vec<String> {
        self.note(role);
        self.nodes(role)
            .iter()
            .map(|n| {
                format!(
                    "{scheme}://{}:{}",
                    n.hostname.value,
                    port.at(n.offset.value)
                )
            })
            .collect()
    }

    /// Same, for the other nodes of my own role (HA peers).
    pub fn peers(&self, scheme: &str, port: Port) -> Vec<String> {
        self.plan
            .nodes_of(self.me.role.value)
            .filter(|n| n.name.value != self.me.name.value)
            .map(|n| {
                format!(
                    "{scheme}://{}:{}",
                    n.hostname.value,
                    port.at(n.offset.value)
                )
            })
            .collect()
    }

    /// My own endpoint through `localhost`.
    pub fn local(&self, scheme: &str, port: Port) -> String {
        format!("{scheme}://localhost:{}", port.at(self.me.offset.value))
    }
}

/// `[apim.throttling]` decision endpoints and one url_group per traffic manager.
pub(super) fn throttling_client(
    d: &mut Doc,
    w: &mut Wiring<'_>,
    service_url: bool,
    credentials: bool,
) {
    if service_url {
        let url = format!("{}{}", w.mgmt(Role::TrafficManager), layout::SERVICES_PATH);
        d.set("apim.throttling.service_url", s(&url));
    }
    d.set(
        "apim.throttling.throttle_decision_endpoints",
        arr(w.each(Role::TrafficManager, "tcp", Port::Amqp)),
    );
    if credentials {
        d.set("apim.throttling.username", s(REF_USER));
        d.set("apim.throttling.password", s(REF_PASS));
    }
    let binary = w.each(Role::TrafficManager, "tcp", Port::Binary);
    let auth = w.each(Role::TrafficManager, "ssl", Port::BinaryAuth);
    for (b, a) in binary.into_iter().zip(auth) {
        let mut t = Table::new();
        t.insert("traffic_manager_urls".into(), arr([b]));
        t.insert("traffic_manager_auth_urls".into(), arr([a]));
        d.push("apim.throttling.url_group", t);
    }
}

/// `[apim.oauth_config] revoke_endpoint`: the key manager's OAuth2 revoke endpoint.
pub(super) fn revoke_endpoint(d: &mut Doc, w: &mut Wiring<'_>, km_role: Role) {
    let km = w.mgmt(km_role);
    d.set(
        "apim.oauth_config.revoke_endpoint",
        s(&format!("{km}{}", layout::REVOKE_PATH)),
    );
}

/// `[apim.key_manager]`: the key manager's service URL and credentials.
pub(super) fn key_manager_client(
    d: &mut Doc,
    w: &mut Wiring<'_>,
    km_role: Role,
    type_default: bool,
) {
    let url = format!("{}{}", w.mgmt(km_role), layout::SERVICES_PATH);
    d.set("apim.key_manager.service_url", s(&url));
    d.set("apim.key_manager.username", s(REF_USER));
    d.set("apim.key_manager.password", s(REF_PASS));
    if type_default {
        d.set("apim.key_manager.type", s("default"));
    }
}

/// The key manager's `[[event_listener]]` that notifies `notify_base` of revoked tokens.
pub(super) fn token_revocation(d: &mut Doc, notify_base: &str) {
    let mut t = Table::new();
    t.insert("id".into(), s("token_revocation"));
    t.insert(
        "type".into(),
        s("org.wso2.carbon.identity.core.handler.AbstractIdentityHandler"),
    );
    t.insert(
        "name".into(),
        s("org.wso2.is.notification.ApimOauthEventInterceptor"),
    );
    t.insert("order".into(), Value::Integer(1));
    let mut props = Table::new();
    props.insert(
        "notification_endpoint".into(),
        s(&format!("{notify_base}{}", layout::NOTIFY_PATH)),
    );
    props.insert("username".into(), s("${admin.username}"));
    props.insert("password".into(), s("${admin.password}"));
    props.insert("header.X-WSO2-KEY-MANAGER".into(), s("default"));
    t.insert("properties".into(), Value::Table(props));
    d.push("event_listener", t);
}

/// `[apim.cache_invalidation]` in the role's domain.
pub(super) fn cache_invalidation(d: &mut Doc, role: Role) {
    d.set("apim.cache_invalidation.enabled", Value::Boolean(true));
    d.set("apim.cache_invalidation.domain", s(role.cache_domain()));
}

/// `[[apim.gateway.environment]]` for every environment.
pub(super) fn gateway_environments(
    d: &mut Doc,
    plan: &Plan,
    w: &mut Wiring<'_>,
    with_service: bool,
) {
    for env in &plan.gateway_environments {
        let members: Vec<&Node> = match &env.gateways {
            Some(list) => plan
                .nodes_of(Role::Gateway)
                .filter(|n| list.iter().any(|g| g.value == n.name.value))
                .collect(),
            None => plan.nodes_of(Role::Gateway).collect(),
        };
        for m in &members {
            if m.name.value != w.me.name.value {
                w.refs.insert(m.name.value.clone());
            }
        }
        let lb_host = env.hostname.as_ref().map(|h| h.value.clone()).or_else(|| {
            (members.len() != 1)
                .then(|| {
                    plan.load_balancers
                        .get(&Role::Gateway)
                        .map(|lb| lb.hostname.value.clone())
                })
                .flatten()
        });
        let (service, ws, wss, http, https) = match (lb_host, members.first()) {
            (Some(h), _) => (
                format!("https://{h}{}", layout::SERVICES_PATH),
                format!("ws://{h}:{}", Port::Ws.base()),
                format!("wss://{h}:{}", Port::Wss.base()),
                format!("http://{h}"),
                format!("https://{h}"),
            ),
            (None, Some(g)) => {
                let (h, o) = (&g.hostname.value, g.offset.value);
                (
                    format!("https://{h}:{}{}", Port::Https.at(o), layout::SERVICES_PATH),
                    format!("ws://{h}:{}", Port::Ws.at(o)),
                    format!("wss://{h}:{}", Port::Wss.at(o)),
                    format!("http://{h}:{}", Port::PassthruHttp.at(o)),
                    format!("https://{h}:{}", Port::PassthruHttps.at(o)),
                )
            }
            (None, None) => continue,
        };
        let mut t = Table::new();
        t.insert("name".into(), s(&env.name.value));
        t.insert("type".into(), s(&env.env_type.value));
        t.insert(
            "display_in_api_console".into(),
            Value::Boolean(env.display_in_api_console),
        );
        t.insert("description".into(), s(&env.description));
        t.insert(
            "show_as_token_endpoint_url".into(),
            Value::Boolean(env.show_as_token_endpoint_url),
        );
        if with_service {
            t.insert("service_url".into(), s(&service));
            t.insert("username".into(), s("${admin.username}"));
            t.insert("password".into(), s("${admin.password}"));
        }
        t.insert("ws_endpoint".into(), s(&ws));
        t.insert("wss_endpoint".into(), s(&wss));
        t.insert("http_endpoint".into(), s(&http));
        t.insert("https_endpoint".into(), s(&https));
        d.push("apim.gateway.environment", t);
    }
}
