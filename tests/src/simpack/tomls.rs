//! Our own stand-ins for the shipped `deployment.toml` and the per-profile templates
//! (`repository/resources/conf/deployment-templates/<profile>.toml`).
//!
//! They follow what the real files carry per release and role (see the research notes and the
//! per-version reference files) in our own, much smaller words, including the defaults a plan
//! does not mention but the product needs (see [`crate::sim::packdefaults`]):
//! - `[[event_handler]] name = "userPostSelfRegistration"` with `subscriptions =
//!   ["POST_ADD_USER"]` on the roles that let users sign themselves up: the all-in-one default
//!   (3.2, 4.x, 4.5 all-in-one), the 3.2 key manager and devportal templates, the 4.x
//!   control-plane and key manager templates, the 4.5 ACP default and its `key-manager.toml`;
//! - `[service_provider] sp_name_regex` in the all-in-one and 4.5 ACP defaults and the 4.x
//!   control-plane template (not in any key manager, devportal or publisher template);
//! - `[apim.key_manager] enable_apikey_subscription_validation = true` in the 4.2 shipped
//!   `deployment.toml` only (no template carries it);
//! - `[apim.sync_runtime_artifacts.gateway] gateway_labels` in every 4.x gateway file.

use super::layout::{PackKind, PackLayout, Release};

const COMMON_HEAD: &str = r#"[server]
hostname = "localhost"
base_path = "${carbon.protocol}://${carbon.host}:${carbon.management.port}"
#offset = 0
server_role = "@ROLE@"

[super_admin]
username = "admin"
password = "admin"
create_admin_account = true

[user_store]
type = "database_unique_id"

[database.apim_db]
type = "h2"
url = "jdbc:h2:./repository/database/WSO2AM_DB;AUTO_SERVER=TRUE;DB_CLOSE_ON_EXIT=FALSE"
username = "wso2carbon"
password = "wso2carbon"

[database.shared_db]
type = "h2"
url = "jdbc:h2:./repository/database/WSO2SHARED_DB;DB_CLOSE_ON_EXIT=FALSE"
username = "wso2carbon"
password = "wso2carbon"

[keystore.tls]
file_name = "wso2carbon.jks"
type = "JKS"
password = "wso2carbon"
alias = "wso2carbon"
key_password = "wso2carbon"
"#;

const TRUSTSTORE: &str = r#"
[truststore]
file_name = "client-truststore.jks"
type = "JKS"
password = "wso2carbon"
"#;

/// The self sign-up handler the key manager, devportal and control plane files carry.
pub const EVENT_HANDLER: &str = r#"
[[event_handler]]
name = "userPostSelfRegistration"
subscriptions = ["POST_ADD_USER"]
"#;

/// The service-provider name pattern (admits whitespace) of the all-in-one and control plane.
pub const SERVICE_PROVIDER: &str = r#"
[service_provider]
sp_name_regex = "^[\\sa-zA-Z0-9._-]*$"
"#;

const LOCAL_DB: &str = r#"
[database.local]
url = "jdbc:h2:./repository/database/WSO2CARBON_DB;DB_CLOSE_ON_EXIT=FALSE"
"#;

const CORS: &str = r#"
[apim.cors]
allow_origins = "*"
allow_methods = ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
allow_headers = ["authorization", "Access-Control-Allow-Origin", "Content-Type", "SOAPAction", "apikey", "Internal-Key"]
allow_credentials = false
"#;

const LOCAL_GATEWAY_ENV: &str = r#"
[[apim.gateway.environment]]
name = "Default"
type = "hybrid"
display_in_api_console = true
description = "Gateway that serves both production and sandbox traffic."
show_as_token_endpoint_url = true
service_url = "https://localhost:${mgt.transport.https.port}/services/"
username = "${admin.username}"
password = "${admin.password}"
ws_endpoint = "ws://localhost:9099"
wss_endpoint = "wss://localhost:8099"
http_endpoint = "http://localhost:${http.nio.port}"
https_endpoint = "https://localhost:${https.nio.port}"
"#;

const GATEWAY_LABELS: &str = r#"
[apim.sync_runtime_artifacts.gateway]
gateway_labels = ["Default"]
"#;

const TOKEN_EXCHANGE: &str = r#"
[oauth.grant_type.token_exchange]
enable = true
allow_refresh_tokens = true
iat_validity_period = "1h"
"#;

const GATEWAY_CACHES: &str = r#"
[apim.cache.gateway_token]
enable = true
expiry_time = 15

[apim.cache.resource]
enable = true

[apim.cache.jwt_claim]
enable = true
expiry_time = 900

[apim.oauth_config]
remove_outbound_auth_header = true
auth_header = "Authorization"
"#;

const KM_REFS: &str = r#"username = "$ref{super_admin.username}"
password = "$ref{super_admin.password}"
"#;

/// The token revocation listener, notifying `endpoint` (the TM, the CP or the node itself).
fn revocation_listener(endpoint: &str) -> String {
    format!(
        r#"
[[event_listener]]
id = "token_revocation"
type = "org.wso2.carbon.identity.core.handler.AbstractIdentityHandler"
name = "org.wso2.is.notification.ApimOauthEventInterceptor"
order = 1

[event_listener.properties]
notification_endpoint = "{endpoint}/internal/data/v1/notify"
username = "${{admin.username}}"
password = "${{admin.password}}"
'header.X-WSO2-KEY-MANAGER' = "default"
"#
    )
}

const LOCAL_NOTIFY: &str = "https://localhost:${mgt.transport.https.port}";

/// Throttling wiring with placeholder TM hosts an operator is expected to replace.
const THROTTLING_PEERS: &str = r#"throttle_decision_endpoints = ["tcp://tm1.wso2.com:5672", "tcp://tm2.wso2.com:5672"]

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm1.wso2.com:9611"]
traffic_manager_auth_urls = ["ssl://tm1.wso2.com:9711"]

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm2.wso2.com:9611"]
traffic_manager_auth_urls = ["ssl://tm2.wso2.com:9711"]
"#;

/// The default `repository/conf/deployment.toml` of a pack.
pub fn default_deployment_toml(layout: &PackLayout) -> String {
    let r = layout.release;
    let header = format!(
        "# {} {} configuration (simulated distribution).\n# Unknown keys are ignored; see the product docs for the full catalogue.\n\n",
        layout.product_name, layout.version
    );
    let mut s = header + &COMMON_HEAD.replace("@ROLE@", "default");
    match layout.kind {
        PackKind::AllInOne => {
            s.push_str(LOCAL_GATEWAY_ENV);
            if r >= Release::V4_0 {
                s.push_str(GATEWAY_LABELS);
                s.push_str("\n[apim.analytics]\nenable = false\nauth_token = \"\"\n");
            }
            if r == Release::V4_2 {
                s.push_str("\n[apim.key_manager]\nenable_apikey_subscription_validation = true\n");
            }
            s.push_str(CORS);
            s.push_str(EVENT_HANDLER);
            s.push_str(SERVICE_PROVIDER);
            s.push_str(LOCAL_DB);
            s.push_str(&revocation_listener(LOCAL_NOTIFY));
            if r >= Release::V4_0 {
                s.push_str(TOKEN_EXCHANGE);
            }
        }
        PackKind::ApiControlPlane => {
            s.push_str("\n[apim]\ngateway_type = \"Regular\"\n");
            s.push_str(CORS);
            s.push_str(EVENT_HANDLER);
            s.push_str(SERVICE_PROVIDER);
            s.push_str(LOCAL_DB);
            s.push_str(&revocation_listener(LOCAL_NOTIFY));
        }
        PackKind::UniversalGateway => {
            s.push_str(TRUSTSTORE);
            s.push_str(GATEWAY_LABELS);
            s.push_str("\n[apim.key_manager]\nservice_url = \"https://localhost:${mgt.transport.https.port}/services/\"\n");
            s.push_str(KM_REFS);
            s.push_str("\n[apim.throttling]\nenable_unlimited_tier = true\n");
            s.push_str(KM_REFS);
            s.push_str("\n[apim.analytics]\nenable = false\nauth_token = \"\"\n");
            s.push_str(GATEWAY_CACHES);
            s.push_str(CORS);
        }
        PackKind::TrafficManager => {
            s.push_str(TRUSTSTORE);
        }
    }
    s
}

/// The `deployment-templates/<profile>.toml` contents: the shape the docs recommend for a
/// distributed node, with placeholder peer host names an operator is expected to replace.
pub fn template_toml(layout: &PackLayout, profile: &str) -> String {
    // Two known oddities: 4.3/4.4's key manager template says control-plane, 4.5 ACP's says default.
    let role = match profile {
        "api-key-manager-node" => "control-plane",
        "key-manager" => "default",
        p => p,
    };
    let r = layout.release;
    let mut s = format!(
        "# {} {}: template for the {profile} profile (copied over deployment.toml by profileSetup.sh).\n\n",
        layout.product_name, layout.version
    );
    s.push_str(&COMMON_HEAD.replace("@ROLE@", role));
    match profile {
        "gateway-worker" => {
            s.push_str(TRUSTSTORE);
            s.push_str(
                "\n[apim.key_manager]\nservice_url = \"https://km.wso2.com:443/services/\"\n",
            );
            s.push_str(KM_REFS);
            s.push_str("\n[apim.jwt]\nenable = true\nencoding = \"base64\"\nclaim_dialect = \"http://wso2.org/claims\"\nheader = \"X-JWT-Assertion\"\nsigning_algorithm = \"SHA256withRSA\"\n");
            if r >= Release::V4_0 {
                s.push_str(GATEWAY_LABELS);
            }
            s.push_str("\n[apim.throttling]\nservice_url = \"https://tm.wso2.com:443/services/\"\nenable_unlimited_tier = true\n");
            s.push_str(KM_REFS);
            s.push_str(THROTTLING_PEERS);
            s.push_str(GATEWAY_CACHES);
            s.push_str(CORS);
        }
        "traffic-manager" => {
            s.push_str(TRUSTSTORE);
            s.push_str(
                "\n[apim.key_manager]\nservice_url = \"https://km.wso2.com:443/services/\"\n",
            );
            s.push_str("\n[apim.oauth_config]\nrevoke_endpoint = \"https://km.wso2.com:9443/oauth2/revoke\"\nenable_token_encryption = false\nenable_token_hashing = false\n");
        }
        "control-plane" => {
            s.push_str(LOCAL_GATEWAY_ENV);
            s.push_str(CORS);
            s.push_str(EVENT_HANDLER);
            s.push_str(SERVICE_PROVIDER);
            s.push_str(LOCAL_DB);
            s.push_str(&revocation_listener(LOCAL_NOTIFY));
        }
        "api-publisher"
        | "api-publisher-deprecated"
        | "api-devportal"
        | "api-devportal-deprecated" => {
            s.push_str(TRUSTSTORE);
            s.push_str(
                r#"
[[apim.gateway.environment]]
name = "Production and Sandbox"
type = "hybrid"
display_in_api_console = true
service_url = "https://gw.wso2.com:443/services/"
username = "${admin.username}"
password = "${admin.password}"
http_endpoint = "http://gw.wso2.com:8280"
https_endpoint = "https://gw.wso2.com:8243"
"#,
            );
            s.push_str(
                "\n[apim.key_manager]\nservice_url = \"https://km.wso2.com:443/services/\"\n",
            );
            s.push_str(KM_REFS);
            if profile.starts_with("api-devportal") {
                s.push_str(EVENT_HANDLER);
            }
            s.push_str("\n[apim.throttling]\n");
            s.push_str(KM_REFS);
            s.push_str(THROTTLING_PEERS);
        }
        "key-manager" => {
            // 4.5 ACP: the key manager listens to the control plane's event hub.
            s.push_str(TRUSTSTORE);
            s.push_str(EVENT_HANDLER);
            s.push_str(&revocation_listener("https://localhost:9443"));
            s.push_str("\n[apim.event_hub]\nenable = true\n");
            s.push_str(KM_REFS);
            s.push_str("service_url = \"https://localhost:9443/services/\"\nevent_listening_endpoints = [\"tcp://localhost:5672\"]\n");
        }
        _ => {
            // the 3.2 and 4.x key manager flavours
            s.push_str(TRUSTSTORE);
            s.push_str(EVENT_HANDLER);
            s.push_str(&revocation_listener("https://tm.wso2.com:443"));
            s.push_str("\n[apim.throttling]\n");
            s.push_str(KM_REFS);
            s.push_str(THROTTLING_PEERS);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simpack::catalogue;

    fn flat(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let seg = if k.contains('.') {
                        format!("'{k}'")
                    } else {
                        k.clone()
                    };
                    let key = if prefix.is_empty() {
                        seg
                    } else {
                        format!("{prefix}.{seg}")
                    };
                    flat(&key, v, out);
                }
            }
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                items.iter().for_each(|i| flat(prefix, i, out));
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn every_generated_toml_parses_and_uses_only_catalogued_keys() {
        for (kind, v) in [
            (PackKind::AllInOne, "3.2.0"),
            (PackKind::AllInOne, "4.0.0"),
            (PackKind::AllInOne, "4.2.0"),
            (PackKind::AllInOne, "4.4.0"),
            (PackKind::AllInOne, "4.5.0"),
            (PackKind::ApiControlPlane, "4.5.0"),
            (PackKind::UniversalGateway, "4.5.0"),
            (PackKind::TrafficManager, "4.5.0"),
        ] {
            let layout = PackLayout::new(kind, v).expect("layout");
            let known = catalogue::for_layout(&layout);
            let mut docs = vec![("default".to_string(), default_deployment_toml(&layout))];
            for t in &layout.templates {
                docs.push((t.to_string(), template_toml(&layout, t)));
            }
            for (name, text) in docs {
                let table: toml::Table = text
                    .parse()
                    .unwrap_or_else(|e| panic!("{kind} {v} {name}: {e}"));
                assert!(table.contains_key("server"), "{kind} {v} {name}");
                let mut keys = Vec::new();
                flat("", &toml::Value::Table(table), &mut keys);
                for key in keys {
                    assert!(known.knows(&key), "{kind} {v} {name}: {key} not catalogued");
                }
            }
            let main: toml::Table = default_deployment_toml(&layout).parse().expect("default");
            assert_eq!(main["server"]["server_role"].as_str(), Some("default"));
        }
    }
}
