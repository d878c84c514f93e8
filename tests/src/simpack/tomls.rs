//! Our own stand-ins for the shipped `deployment.toml` and the per-profile templates.
//!
//! They are plausible (same tables and keys an operator would expect, `${...}` runtime
//! placeholders, `$ref{...}` references to `super_admin`) but deliberately small.

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

const PORTAL_COMMON: &str = r#"
[apim.analytics]
enable = false
auth_token = ""

[apim.key_manager]
enable_apikey_subscription_validation = true

[apim.cors]
allow_origins = "*"
allow_methods = ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
allow_headers = ["authorization", "Access-Control-Allow-Origin", "Content-Type", "SOAPAction", "apikey", "Internal-Key"]
allow_credentials = false

[[event_listener]]
id = "token_revocation"
type = "org.wso2.carbon.identity.core.handler.AbstractIdentityHandler"
name = "org.wso2.is.notification.ApimOauthEventInterceptor"
order = 1

[event_listener.properties]
notification_endpoint = "https://localhost:${mgt.transport.https.port}/internal/data/v1/notify"
username = "${admin.username}"
password = "${admin.password}"
'header.X-WSO2-KEY-MANAGER' = "default"

[oauth.grant_type.token_exchange]
enable = true
allow_refresh_tokens = true
iat_validity_period = "1h"
"#;

/// The default `repository/conf/deployment.toml` of a pack.
pub fn default_deployment_toml(layout: &PackLayout) -> String {
    let header = format!(
        "# {} {} configuration (simulated distribution).\n# Unknown keys are ignored; see the product docs for the full catalogue.\n\n",
        layout.product_name, layout.version
    );
    let mut s = header + &COMMON_HEAD.replace("@ROLE@", "default");
    match layout.kind {
        PackKind::AllInOne | PackKind::ApiControlPlane => {
            if layout.kind == PackKind::AllInOne {
                s.push_str(LOCAL_GATEWAY_ENV);
            }
            if layout.release >= Release::V4_0 {
                s.push_str(
                    "\n[apim.sync_runtime_artifacts.gateway]\ngateway_labels = [\"Default\"]\n",
                );
            }
            s.push_str(PORTAL_COMMON);
        }
        PackKind::UniversalGateway => {
            s.push_str(TRUSTSTORE);
            s.push_str(
                r#"
[apim.key_manager]
service_url = "https://localhost:${mgt.transport.https.port}/services/"
username = "$ref{super_admin.username}"
password = "$ref{super_admin.password}"

[apim.sync_runtime_artifacts.gateway]
gateway_labels = ["Default"]

[apim.throttling]
username = "$ref{super_admin.username}"
password = "$ref{super_admin.password}"
enable_unlimited_tier = true
"#,
            );
        }
        PackKind::TrafficManager => {
            s.push_str(TRUSTSTORE);
            s.push_str("\n[apim.throttling]\nenable_unlimited_tier = true\n");
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
    let mut s = format!(
        "# {} {}: template for the {profile} profile (copied over deployment.toml by profileSetup.sh).\n\n",
        layout.product_name, layout.version
    );
    s.push_str(&COMMON_HEAD.replace("@ROLE@", role));
    s.push_str(TRUSTSTORE);
    let km_ref = r#"username = "$ref{super_admin.username}"
password = "$ref{super_admin.password}"
"#;
    match profile {
        "gateway-worker" => {
            s.push_str(
                "\n[apim.key_manager]\nservice_url = \"https://km.wso2.com:443/services/\"\n",
            );
            s.push_str(km_ref);
            s.push_str(
                r#"
[apim.sync_runtime_artifacts.gateway]
gateway_labels = ["Default"]

[apim.throttling]
service_url = "https://tm.wso2.com:443/services/"
throttle_decision_endpoints = ["tcp://tm1.wso2.com:5672", "tcp://tm2.wso2.com:5672"]
"#,
            );
            s.push_str(km_ref);
            s.push_str(
                r#"
[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm1.wso2.com:9611"]
traffic_manager_auth_urls = ["ssl://tm1.wso2.com:9711"]

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm2.wso2.com:9611"]
traffic_manager_auth_urls = ["ssl://tm2.wso2.com:9711"]
"#,
            );
        }
        "traffic-manager" => {
            s.push_str(
                r#"
[apim.throttling]
event_duplicate_url = ["tcp://tm2.wso2.com:5672"]
"#,
            );
            s.push_str(km_ref);
        }
        "control-plane"
        | "api-publisher"
        | "api-devportal"
        | "api-publisher-deprecated"
        | "api-devportal-deprecated" => {
            s.push_str(
                r#"
[[apim.gateway.environment]]
name = "Default"
type = "hybrid"
display_in_api_console = true
service_url = "https://gw.wso2.com:9443/services/"
username = "${admin.username}"
password = "${admin.password}"
http_endpoint = "http://gw.wso2.com"
https_endpoint = "https://gw.wso2.com"

[apim.throttling]
service_url = "https://tm.wso2.com:9443/services/"
throttle_decision_endpoints = ["tcp://tm.wso2.com:5672"]

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm.wso2.com:9611"]
traffic_manager_auth_urls = ["ssl://tm.wso2.com:9711"]
"#,
            );
            s.push_str(
                "\n[apim.key_manager]\nservice_url = \"https://km.wso2.com:9443/services/\"\n",
            );
            s.push_str(km_ref);
        }
        _ => {
            // key manager flavours
            s.push_str(
                r#"
[[event_listener]]
id = "token_revocation"
type = "org.wso2.carbon.identity.core.handler.AbstractIdentityHandler"
name = "org.wso2.is.notification.ApimOauthEventInterceptor"
order = 1

[event_listener.properties]
notification_endpoint = "https://tm.wso2.com:9443/internal/data/v1/notify"
username = "${admin.username}"
password = "${admin.password}"
'header.X-WSO2-KEY-MANAGER' = "default"
"#,
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_toml_parses() {
        for (kind, v) in [
            (PackKind::AllInOne, "3.2.0"),
            (PackKind::AllInOne, "4.2.0"),
            (PackKind::AllInOne, "4.4.0"),
            (PackKind::ApiControlPlane, "4.5.0"),
            (PackKind::UniversalGateway, "4.5.0"),
            (PackKind::TrafficManager, "4.5.0"),
        ] {
            let layout = PackLayout::new(kind, v).expect("layout");
            let main: toml::Table = default_deployment_toml(&layout).parse().expect("default");
            assert_eq!(main["server"]["server_role"].as_str(), Some("default"));
            for t in &layout.templates {
                let table: toml::Table = template_toml(&layout, t).parse().expect("template");
                assert!(table.contains_key("server"), "{kind} {v} {t}");
            }
        }
    }
}
