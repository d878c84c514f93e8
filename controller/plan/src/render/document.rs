//! A node's `deployment.toml`: the settings every role gets, its role's wiring ([`super::v3`],
//! [`super::v4`]), and the plan's overrides merged last.

use toml::{Table, Value};

use super::doc::{Doc, arr, s};
use super::secret_values::Secrets;
use super::wiring::Wiring;
use super::{node, v3, v4};
use crate::catalogue::defaults;
use crate::catalogue::{Port, ProductLine, Role, database};
use crate::plan::{Database, DbType, Issuer, Node, Plan, Scope};

/// The ports a load balancer serves HTTP and HTTPS on (not product ports: WSO2 only advertises
/// them as `proxyPort`).
const LB_HTTP_PORT: u16 = 80;
const LB_HTTPS_PORT: u16 = 443;

/// The node's whole `deployment.toml` as a tree, secrets as their sentinels: `[server]`, admin,
/// databases, keystores, transports, the role's wiring, analytics, CORS, then the plan's
/// overrides (all, role, node).
pub(super) fn node_document(plan: &Plan, node: &Node, sec: &Secrets, w: &mut Wiring<'_>) -> Table {
    let mut d = Doc::new();
    server(&mut d, plan, node);
    admin_and_databases(&mut d, plan, node, sec);
    keystores(&mut d, plan, sec);
    transports(&mut d, plan, node);
    match plan.cluster.product.value.line() {
        ProductLine::V3 => v3::v3_role(plan, node, &mut d, w),
        ProductLine::V4 | ProductLine::V45Split => v4::v4_role(plan, node, &mut d, w),
    }
    analytics(&mut d, plan, node, sec);
    cors(&mut d, plan, node);
    overrides(&mut d, plan, node);
    d.into_table()
}

/// `[server]`: the name peers reach the node by (its role's LB if any), address, role, offset.
fn server(d: &mut Doc, plan: &Plan, node: &Node) {
    let role = node.role.value;
    let profile = plan
        .cluster
        .product
        .value
        .role_profile(role)
        .expect("validated role");
    let machine = plan
        .machine(&node.machine.value)
        .expect("validated machine");
    let lb = plan.load_balancers.get(&role);
    let server_hostname = lb.map_or(&node.hostname.value, |lb| &lb.hostname.value);
    d.set("server.hostname", s(server_hostname));
    d.set("server.node_ip", s(&machine.address.value.to_string()));
    d.set("server.server_role", s(profile.server_role));
    d.set(
        "server.offset",
        Value::Integer(i64::from(node.offset.value)),
    );
    if role == Role::ControlPlane {
        d.set(
            "server.base_path",
            s("${carbon.protocol}://${carbon.host}:${carbon.management.port}"),
        );
    }
}

/// `[super_admin]`, `[user_store]`, and the databases the role uses.
fn admin_and_databases(d: &mut Doc, plan: &Plan, node: &Node, sec: &Secrets) {
    d.set("super_admin.username", s(&plan.admin.username.value));
    d.set("super_admin.password", s(&sec.admin));
    d.set("super_admin.create_admin_account", Value::Boolean(true));
    d.set("user_store.type", s(&plan.user_store_type.value));
    let product = plan.cluster.product.value;
    if product.needs_apim_db(node.role.value)
        && let Some(db) = &plan.apim_db
    {
        database(d, db, &sec.apim_db);
    }
    if let Some(db) = &plan.shared_db {
        database(d, db, &sec.shared_db);
    }
}

/// `[keystore.tls]`, `[keystore.primary]` (cluster CA and provided) and `[truststore]`.
fn keystores(d: &mut Doc, plan: &Plan, sec: &Secrets) {
    let tls = &plan.tls;
    let shipped = defaults::SHIPPED_KEYSTORE_TYPE;
    let (ks_file, ks_alias) = match tls.issuer.value {
        Issuer::PackDefault => (
            shipped.keystore_file().to_string(),
            defaults::KEY_ALIAS.to_string(),
        ),
        _ => (tls.keystore_file.clone(), tls.keystore_alias.clone()),
    };
    let ks_type = if tls.issuer.value == Issuer::PackDefault {
        shipped.as_str()
    } else {
        tls.keystore_type.as_str()
    };
    keystore_section(
        d,
        "keystore.tls",
        &ks_file,
        ks_type,
        &sec.keystore,
        &ks_alias,
    );
    // The primary keystore signs tokens and (through `keystore.internal`) encrypts: the cluster
    // CA's shared one, or the provided keystore itself; the pack's own stays the primary only
    // with `pack-default` (its password `wso2carbon` would not open a provided file).
    let primary = match (node::primary_keystore_file(plan), tls.issuer.value) {
        (Some(file), _) => Some((file, tls.primary_alias.clone())),
        (None, Issuer::Provided) => Some((ks_file, ks_alias)),
        (None, _) => None,
    };
    if let Some((file, alias)) = primary {
        keystore_section(
            d,
            "keystore.primary",
            &file,
            tls.keystore_type.as_str(),
            &sec.keystore,
            &alias,
        );
    }
    d.set("truststore.file_name", s(&tls.truststore_file));
    d.set("truststore.type", s(defaults::TRUSTSTORE_TYPE.as_str()));
    d.set("truststore.password", s(&sec.truststore));
}

/// Behind a load balancer: advertise the LB's ports.
fn transports(d: &mut Doc, plan: &Plan, node: &Node) {
    let role = node.role.value;
    if !plan.load_balancers.contains_key(&role) {
        return;
    }
    if role == Role::Gateway {
        let http = i64::from(Port::Http.base());
        let https = i64::from(Port::Https.base());
        d.set("transport.http.properties.port", Value::Integer(http));
        d.set(
            "transport.http.properties.proxyPort",
            Value::Integer(LB_HTTP_PORT.into()),
        );
        d.set("transport.https.properties.port", Value::Integer(https));
    }
    d.set(
        "transport.https.properties.proxyPort",
        Value::Integer(LB_HTTPS_PORT.into()),
    );
}

/// `[apim.analytics]` on the roles the release configures it on (see
/// [`crate::catalogue::Product::configures_analytics`]); the cloud endpoint and token when enabled.
fn analytics(d: &mut Doc, plan: &Plan, node: &Node, sec: &Secrets) {
    let product = plan.cluster.product.value;
    if !product.configures_analytics(node.role.value) {
        return;
    }
    d.set(
        "apim.analytics.enable",
        Value::Boolean(plan.analytics.enabled),
    );
    if plan.analytics.enabled && product.has_cloud_analytics() {
        if let Some(ep) = &plan.analytics.config_endpoint {
            d.set("apim.analytics.config_endpoint", s(&ep.value));
        }
        if let Some(t) = &sec.analytics_token {
            d.set("apim.analytics.auth_token", s(t));
        }
    }
}

/// The CORS defaults the packs ship for API-serving roles.
fn cors(d: &mut Doc, plan: &Plan, node: &Node) {
    if let Some(cors) = defaults::cors(plan.cluster.product.value, node.role.value) {
        d.set("apim.cors.allow_origins", s(cors.allow_origins));
        d.set("apim.cors.allow_methods", arr(cors.allow_methods));
        d.set("apim.cors.allow_headers", arr(cors.allow_headers));
        d.set(
            "apim.cors.allow_credentials",
            Value::Boolean(cors.allow_credentials),
        );
    }
}

/// The plan's overrides, merged last: all, then role, then node.
fn overrides(d: &mut Doc, plan: &Plan, node: &Node) {
    for rank in 0..3 {
        for o in &plan.overrides {
            let applies = match &o.scope.value {
                Scope::All => rank == 0,
                Scope::Role(r) => rank == 1 && *r == node.role.value,
                Scope::Node(n) => rank == 2 && *n == node.name.value,
            };
            if applies {
                d.merge(&o.table);
            }
        }
    }
}

/// A `[keystore.*]` section; WSO2 requires the key password to equal the store password.
fn keystore_section(d: &mut Doc, section: &str, file: &str, ty: &str, password: &str, alias: &str) {
    d.set(&format!("{section}.file_name"), s(file));
    d.set(&format!("{section}.type"), s(ty));
    d.set(&format!("{section}.password"), s(password));
    d.set(&format!("{section}.alias"), s(alias));
    d.set(&format!("{section}.key_password"), s(password));
}

/// A `[database.*]` section: the JDBC URL, or host/port/name, and the credentials.
fn database(d: &mut Doc, db: &Database, password: &str) {
    let p = format!("database.{}", db.id);
    d.set(&format!("{p}.type"), s(db.db_type.value.wso2_type()));
    match (&db.url, db.db_type.value) {
        (Some(url), _) => d.set(&format!("{p}.url"), s(&url.value)),
        (None, DbType::H2) => d.set(&format!("{p}.url"), s(database::h2_url(db.id))),
        (None, DbType::Oracle) => {
            let host = db.host.as_ref().map_or("", |h| h.value.as_str());
            let name = db.name.as_ref().map_or("", |n| n.value.as_str());
            d.set(
                &format!("{p}.url"),
                s(&database::oracle_url(host, db.port, name)),
            );
        }
        (None, _) => {
            d.set(
                &format!("{p}.hostname"),
                s(db.host.as_ref().map_or("", |h| h.value.as_str())),
            );
            d.set(
                &format!("{p}.name"),
                s(db.name.as_ref().map_or("", |n| n.value.as_str())),
            );
            // WSO2's own samples write the port as a string.
            d.set(&format!("{p}.port"), s(&db.port.to_string()));
        }
    }
    d.set(&format!("{p}.username"), s(&db.username.value));
    d.set(&format!("{p}.password"), s(password));
}
