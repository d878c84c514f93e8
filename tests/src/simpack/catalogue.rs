//! The config mapper's key catalogue a simulated pack ships (research §5): the Jinja templates
//! under `repository/resources/conf/templates/`, `default.json`, `infer.json` and
//! `key-mappings.json`, in the real files' shapes but our own words and much smaller.
//!
//! A real pack's effective key set is the union of the keys in those files: `default.json` keys
//! (and the keys their `$ref{}` values name), `infer.json` condition and target keys,
//! `key-mappings.json` source and target keys, and the `{{ ... }}` variables of the templates.
//! [`Catalogue::parse`] reads exactly that out of an unpacked pack, so apimctl (and the drift
//! test) can tell a misspelt `deployment.toml` key from one the pack uses. The simulated
//! server, like the real mapper, ignores unknown keys silently.
//!
//! Template grammar understood (a subset of Jinja): `{{ a.b.c }}` (filters after `|` ignored),
//! `{% for x in a.b %}` (then `{{ x.f }}` means `a.b.f`, `{{ x }}` means `a.b`),
//! `{% for k, v in a.b.items() %}` (any key under `a.b`, written `a.b.*`), `{% if a.b ... %}`;
//! `loop.*` is Jinja's own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value, json};

use super::layout::{PackKind, PackLayout, Release};

/// Where the catalogue lives inside a pack.
pub const CONF_DIR: &str = "repository/resources/conf";

/// The keys a pack's config mapper knows; `a.b.*` entries cover every key under `a.b`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalogue {
    keys: BTreeSet<String>,
}

impl Catalogue {
    /// Whether `key` (a flattened `deployment.toml` key, quoted segments as `'x.y'`) is known.
    pub fn knows(&self, key: &str) -> bool {
        if self.keys.contains(key) {
            return true;
        }
        let mut prefix = key;
        while let Some((head, _)) = rsplit_key(prefix) {
            if self.keys.contains(&format!("{head}.*")) {
                return true;
            }
            prefix = head;
        }
        false
    }

    /// Every known key (wildcards as `a.b.*`).
    pub fn keys(&self) -> &BTreeSet<String> {
        &self.keys
    }

    /// Reads the catalogue of an unpacked pack from `<home>/repository/resources/conf`.
    pub fn read(carbon_home: &Path) -> std::io::Result<Catalogue> {
        let dir = carbon_home.join(CONF_DIR);
        let mut files = BTreeMap::new();
        for name in ["default.json", "infer.json", "key-mappings.json"] {
            files.insert(name.to_string(), std::fs::read_to_string(dir.join(name))?);
        }
        let mut stack = vec![dir.join("templates")];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "j2") {
                    let rel = path.strip_prefix(&dir).unwrap_or(&path);
                    files.insert(
                        rel.to_string_lossy().into_owned(),
                        std::fs::read_to_string(&path)?,
                    );
                }
            }
        }
        Ok(Catalogue::parse(&files))
    }

    /// Parses the catalogue files given as (path under `repository/resources/conf`, text).
    pub fn parse(files: &BTreeMap<String, String>) -> Catalogue {
        let mut keys = BTreeSet::new();
        for (name, text) in files {
            if name.ends_with(".j2") {
                template_keys(text, &mut keys);
            } else if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
                json_keys(name, &map, &mut keys);
            }
        }
        Catalogue { keys }
    }
}

/// Splits `a.b.'c.d'` at its last unquoted dot.
fn rsplit_key(key: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in key.char_indices().rev() {
        match c {
            '\'' => quoted = !quoted,
            '.' if !quoted => return Some((&key[..i], &key[i + 1..])),
            _ => {}
        }
    }
    None
}

fn refs_in(value: &Value, keys: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(pos) = rest.find("$ref{") {
                let body = &rest[pos + 5..];
                let Some(end) = body.find('}') else { break };
                keys.insert(body[..end].to_string());
                rest = &body[end + 1..];
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, keys)),
        Value::Object(map) => map.values().for_each(|v| refs_in(v, keys)),
        _ => {}
    }
}

fn json_keys(name: &str, map: &Map<String, Value>, keys: &mut BTreeSet<String>) {
    for (key, value) in map {
        keys.insert(key.clone());
        match name {
            // {"condition.key": {"value": {"target.key": value}}}
            "infer.json" => {
                for targets in value.as_object().into_iter().flat_map(Map::values) {
                    for (target, v) in targets.as_object().into_iter().flatten() {
                        keys.insert(target.clone());
                        refs_in(v, keys);
                    }
                }
            }
            // {"user.key": "internal.key" | ["internal.key", ...]}
            "key-mappings.json" => match value {
                Value::String(s) => {
                    keys.insert(s.clone());
                }
                Value::Array(items) => {
                    keys.extend(items.iter().filter_map(Value::as_str).map(str::to_string));
                }
                _ => {}
            },
            _ => refs_in(value, keys),
        }
    }
}

/// The variables of one Jinja template, loop variables resolved to the keys they iterate over.
fn template_keys(text: &str, keys: &mut BTreeSet<String>) {
    // Loop variables in scope: name -> the key it iterates over (`a.b`), or `a.b.*` for items().
    let mut scopes: Vec<Vec<(String, String)>> = Vec::new();
    let resolve = |scopes: &[Vec<(String, String)>], expr: &str| -> Option<String> {
        let expr = expr.split('|').next()?.trim();
        let path: String = expr
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '\'' | '-'))
            .collect();
        if path.is_empty() || path.starts_with("loop.") || path == "loop" {
            return None;
        }
        let (head, rest) = path.split_once('.').unwrap_or((&path, ""));
        for scope in scopes.iter().rev() {
            if let Some((_, target)) = scope.iter().find(|(n, _)| n == head) {
                return Some(if rest.is_empty() {
                    target.clone()
                } else if let Some(base) = target.strip_suffix(".*") {
                    format!("{base}.*")
                } else {
                    format!("{target}.{rest}")
                });
            }
        }
        Some(path)
    };
    let mut rest = text;
    while let Some(start) = rest.find(['{']) {
        let after = &rest[start..];
        if let Some(body) = after.strip_prefix("{{") {
            let Some(end) = body.find("}}") else { break };
            if let Some(k) = resolve(&scopes, &body[..end]) {
                keys.insert(k);
            }
            rest = &body[end + 2..];
        } else if let Some(body) = after.strip_prefix("{%") {
            let Some(end) = body.find("%}") else { break };
            let tag = body[..end].trim();
            if let Some(spec) = tag.strip_prefix("for ") {
                let (vars, iter) = spec.split_once(" in ").unwrap_or((spec, ""));
                let iter = iter.trim();
                let mut scope = Vec::new();
                if let Some(base) = iter.strip_suffix(".items()") {
                    let target = format!("{}.*", resolve(&scopes, base).unwrap_or_default());
                    keys.insert(target.clone());
                    for v in vars.split(',') {
                        scope.push((v.trim().to_string(), target.clone()));
                    }
                } else if let Some(target) = resolve(&scopes, iter) {
                    keys.insert(target.clone());
                    scope.push((vars.trim().to_string(), target));
                }
                scopes.push(scope);
            } else if tag == "endfor" {
                scopes.pop();
            } else if let Some(cond) = tag.strip_prefix("if ").or(tag.strip_prefix("elif ")) {
                let first = cond.trim_start_matches("not ").split_whitespace().next();
                if let Some(k) = first.and_then(|e| resolve(&scopes, e)) {
                    keys.insert(k);
                }
            }
            rest = &body[end + 2..];
        } else {
            rest = &after[1..];
        }
    }
}

/// What a release line's mapper knows beyond the 3.2 base.
fn is_4x(r: Release) -> bool {
    r >= Release::V4_0
}

const CARBON_XML: &str = r#"<!-- Carbon server configuration (simulated distribution) -->
<Server>
    <HostName>{{server.hostname}}</HostName>
    <NodeIp>{{server.node_ip}}</NodeIp>
    <ServerRole>{{server.server_role}}</ServerRole>
    <BasePath>{{server.base_path}}</BasePath>
    <Ports><Offset>{{server.offset}}</Offset></Ports>
    <Security>
        <KeyStore>
            <Location>${carbon.home}/repository/resources/security/{{keystore.primary.file_name}}</Location>
            <Type>{{keystore.primary.type}}</Type>
            <Password>{{keystore.primary.password}}</Password>
            <KeyAlias>{{keystore.primary.alias}}</KeyAlias>
            <KeyPassword>{{keystore.primary.key_password}}</KeyPassword>
        </KeyStore>
        <InternalKeyStore>
            <Location>${carbon.home}/repository/resources/security/{{keystore.internal.file_name}}</Location>
            <Type>{{keystore.internal.type}}</Type>
            <Password>{{keystore.internal.password}}</Password>
            <KeyAlias>{{keystore.internal.alias}}</KeyAlias>
            <KeyPassword>{{keystore.internal.key_password}}</KeyPassword>
        </InternalKeyStore>
        <TrustStore>
            <Location>${carbon.home}/repository/resources/security/{{truststore.file_name}}</Location>
            <Type>{{truststore.type}}</Type>
            <Password>{{truststore.password}}</Password>
        </TrustStore>
    </Security>
</Server>
"#;

const CATALINA_XML: &str = r#"<!-- Tomcat connectors (simulated distribution) -->
<Server>
  <Service name="Catalina">
    <Connector protocol="org.apache.coyote.http11.Http11NioProtocol" port="{{transport.http.properties.port}}"
      {% if transport.http.properties.proxyPort is defined %}proxyPort="{{transport.http.properties.proxyPort}}"{% endif %}/>
    <Connector protocol="org.apache.coyote.http11.Http11NioProtocol" port="{{transport.https.properties.port}}"
      {% if transport.https.properties.proxyPort is defined %}proxyPort="{{transport.https.properties.proxyPort}}"{% endif %}
      keystoreFile="${carbon.home}/repository/resources/security/{{keystore.tls.file_name}}"
      keystoreType="{{keystore.tls.type}}" keystorePass="{{keystore.tls.password}}"
      keyAlias="{{keystore.tls.alias}}" keyPass="{{keystore.tls.key_password}}"/>
  </Service>
</Server>
"#;

const USER_MGT_XML: &str = r#"<!-- User realm (simulated distribution) -->
<UserManager>
    <Realm>
        <Configuration>
            <AddAdmin>{{super_admin.create_admin_account}}</AddAdmin>
            <AdminRole>{{super_admin.admin_role}}</AdminRole>
            <AdminUser><UserName>{{super_admin.username}}</UserName><Password>{{super_admin.password}}</Password></AdminUser>
        </Configuration>
        <UserStoreManager type="{{user_store.type}}"/>
    </Realm>
</UserManager>
"#;

const DATASOURCES_XML: &str = r#"<!-- Data sources (simulated distribution) -->
<datasources-configuration>
    <datasource><name>WSO2CARBON_DB</name><url>{{database.local.url}}</url><username>{{database.local.username}}</username><password>{{database.local.password}}</password><driverClassName>{{database.local.driver}}</driverClassName></datasource>
    <datasource><name>WSO2AM_DB</name><url>{{database.apim_db.url}}</url><username>{{database.apim_db.username}}</username><password>{{database.apim_db.password}}</password><driverClassName>{{database.apim_db.driver}}</driverClassName></datasource>
    <datasource><name>WSO2_SHARED_DB</name><url>{{database.shared_db.url}}</url><username>{{database.shared_db.username}}</username><password>{{database.shared_db.password}}</password><driverClassName>{{database.shared_db.driver}}</driverClassName></datasource>
</datasources-configuration>
"#;

const IDENTITY_XML: &str = r#"<!-- Identity server settings (simulated distribution) -->
<Server>
    <ServiceProviders><SPNameRegex>{{service_provider.sp_name_regex}}</SPNameRegex></ServiceProviders>
    <OAuth>
        <IdentityOAuthTokenGenerator>{{oauth.extensions.token_generator}}</IdentityOAuthTokenGenerator>
        <TokenExchange enable="{{oauth.grant_type.token_exchange.enable}}" allowRefreshTokens="{{oauth.grant_type.token_exchange.allow_refresh_tokens}}" iatValidityPeriod="{{oauth.grant_type.token_exchange.iat_validity_period}}"/>
    </OAuth>
    <EventListeners>
{% for listener in event_listener %}
        <EventListener id="{{listener.id}}" type="{{listener.type}}" name="{{listener.name}}" orderId="{{listener.order}}">
{% for key, value in listener.properties.items() %}
            <Property name="{{key}}">{{value}}</Property>
{% endfor %}
        </EventListener>
{% endfor %}
    </EventListeners>
</Server>
"#;

const IDENTITY_EVENT: &str = r#"# Identity event handlers (simulated distribution)
{% for handler in event_handler %}
module.name.{{loop.index}}={{handler.name}}
{% for subscription in handler.subscriptions %}
{{handler.name}}.subscription.{{loop.index}}={{subscription}}
{% endfor %}
{% endfor %}
"#;

const CARBON_PROPERTIES: &str = r#"# System properties set before OSGi starts (simulated distribution)
{% for key, value in system.parameter.items() %}
{{key}}={{value}}
{% endfor %}
"#;

const DATA_BRIDGE: &str = r#"<!-- Binary/thrift event receivers (simulated distribution) -->
<dataBridgeConfiguration>
    <dataReceiver name="Binary"><config name="tcpPort">{{transport.binary.receiver.tcpPort}}</config><config name="sslPort">{{transport.binary.receiver.sslPort}}</config></dataReceiver>
    <dataReceiver name="Thrift"><config name="tcpPort">{{transport.thrift.receiver.tcpPort}}</config><config name="sslPort">{{transport.thrift.receiver.sslPort}}</config></dataReceiver>
</dataBridgeConfiguration>
"#;

/// `api-manager.xml.j2`: the API-M keys, with the release's additions.
fn api_manager_xml(layout: &PackLayout) -> String {
    let r = layout.release;
    let mut s =
        String::from("<!-- API Manager configuration (simulated distribution) -->\n<APIManager>\n");
    s.push_str(
        r#"    <Environments>
{% for environment in apim.gateway.environment %}
        <Environment type="{{environment.type}}" api-console="{{environment.display_in_api_console}}" isDefault="{{environment.show_as_token_endpoint_url}}">
            <Name>{{environment.name}}</Name><Description>{{environment.description}}</Description>
            <ServerURL>{{environment.service_url}}</ServerURL><Username>{{environment.username}}</Username><Password>{{environment.password}}</Password>
            <GatewayEndpoint>{{environment.http_endpoint}},{{environment.https_endpoint}}</GatewayEndpoint>
            <GatewayWSEndpoint>{{environment.ws_endpoint}},{{environment.wss_endpoint}}</GatewayWSEndpoint>
"#,
    );
    if is_4x(r) {
        s.push_str("            <Provider>{{environment.provider}}</Provider>\n            <GatewayWebSubEndpoint>{{environment.websub_event_receiver_http_endpoint}},{{environment.websub_event_receiver_https_endpoint}}</GatewayWebSubEndpoint>\n");
    }
    s.push_str(
        r#"        </Environment>
{% endfor %}
    </Environments>
    <APIKeyValidator>
        <ServerURL>{{apim.key_manager.service_url}}</ServerURL><Username>{{apim.key_manager.username}}</Username><Password>{{apim.key_manager.password}}</Password>
        <EnableKeyMgtRegistration>{{apim.key_manager.enable_registration}}</EnableKeyMgtRegistration>
        <EnableKeyMgtRetriever>{{apim.key_manager.enable_retriever}}</EnableKeyMgtRetriever>
"#,
    );
    if is_4x(r) {
        s.push_str(
            "        <DefaultKeyManagerType>{{apim.key_manager.type}}</DefaultKeyManagerType>\n",
        );
    }
    if matches!(r, Release::V4_1 | Release::V4_2 | Release::V4_3) {
        s.push_str("        <EnableAPIKeySubscriptionValidation>{{apim.key_manager.enable_apikey_subscription_validation}}</EnableAPIKeySubscriptionValidation>\n");
    }
    s.push_str(
        r#"    </APIKeyValidator>
    <ThrottlingConfigurations>
        <ServiceURL>{{apim.throttling.service_url}}</ServiceURL><Username>{{apim.throttling.username}}</Username><Password>{{apim.throttling.password}}</Password>
        <EnableUnlimitedTier>{{apim.throttling.enable_unlimited_tier}}</EnableUnlimitedTier>
        <PolicyDeployer enabled="{{apim.throttling.enable_policy_deploy}}"/>
        <DataPublisher enabled="{{apim.throttling.enable_data_publishing}}">
{% for group in apim.throttling.url_group %}
            <ReceiverUrlGroup type="{{group.type}}">{{group.traffic_manager_urls}}</ReceiverUrlGroup><AuthUrlGroup>{{group.traffic_manager_auth_urls}}</AuthUrlGroup>
{% endfor %}
        </DataPublisher>
        <JMSConnectionDetails enabled="{{apim.throttling.enable_decision_connection}}">
{% for endpoint in apim.throttling.throttle_decision_endpoints %}<Endpoint>{{endpoint}}</Endpoint>{% endfor %}
        </JMSConnectionDetails>
        <BlockCondition enabled="{{apim.throttling.enable_blacklist_condition}}"/>
{% for url in apim.throttling.event_duplicate_url %}<EventDuplicateURL>{{url}}</EventDuplicateURL>{% endfor %}
    </ThrottlingConfigurations>
    <Analytics><Enabled>{{apim.analytics.enable}}</Enabled>
"#,
    );
    if is_4x(r) {
        s.push_str("        <ConfigEndpoint>{{apim.analytics.config_endpoint}}</ConfigEndpoint><AuthToken>{{apim.analytics.auth_token}}</AuthToken>\n");
    } else {
        s.push_str("        <StoreAPIURL>{{apim.analytics.store_api_url}}</StoreAPIURL>\n");
    }
    s.push_str(
        r#"    </Analytics>
    <CacheInvalidation enabled="{{apim.cache_invalidation.enabled}}" domain="{{apim.cache_invalidation.domain}}"/>
    <CacheConfigurations>
        <EnableGatewayTokenCache>{{apim.cache.gateway_token.enable}}</EnableGatewayTokenCache>
        <TokenCacheExpiry>{{apim.cache.token_expiry_time}}</TokenCacheExpiry>
        <EnableGatewayResourceCache>{{apim.cache.resource.enable}}</EnableGatewayResourceCache>
        <EnableJWTClaimCache>{{apim.cache.jwt_claim.enable}}</EnableJWTClaimCache><JWTClaimCacheExpiry>{{apim.cache.jwt_claim.expiry_time}}</JWTClaimCacheExpiry>
    </CacheConfigurations>
    <CORSConfiguration>
        <Access-Control-Allow-Origin>{{apim.cors.allow_origins}}</Access-Control-Allow-Origin>
        <Access-Control-Allow-Methods>{{apim.cors.allow_methods}}</Access-Control-Allow-Methods>
        <Access-Control-Allow-Headers>{{apim.cors.allow_headers}}</Access-Control-Allow-Headers>
        <Access-Control-Allow-Credentials>{{apim.cors.allow_credentials}}</Access-Control-Allow-Credentials>
    </CORSConfiguration>
    <DevPortal><URL>{{apim.devportal.url}}</URL></DevPortal>
    <OAuthConfigurations>
        <RevokeAPIURL>{{apim.oauth_config.revoke_endpoint}}</RevokeAPIURL>
        <RemoveOAuthHeadersFromOutMessage>{{apim.oauth_config.remove_outbound_auth_header}}</RemoveOAuthHeadersFromOutMessage>
        <AuthorizationHeader>{{apim.oauth_config.auth_header}}</AuthorizationHeader>
        <EncryptPersistedTokens>{{apim.oauth_config.enable_token_encryption}}</EncryptPersistedTokens>
        <EnableTokenHashMode>{{apim.oauth_config.enable_token_hashing}}</EnableTokenHashMode>
    </OAuthConfigurations>
    <JWTConfiguration>
        <EnableJWTGeneration>{{apim.jwt.enable}}</EnableJWTGeneration><Encoding>{{apim.jwt.encoding}}</Encoding>
        <JWTGeneratorImpl>{{apim.jwt.generator_impl}}</JWTGeneratorImpl><ClaimDialect>{{apim.jwt.claim_dialect}}</ClaimDialect>
        <JWTHeader>{{apim.jwt.header}}</JWTHeader><SignatureAlgorithm>{{apim.jwt.signing_algorithm}}</SignatureAlgorithm>
    </JWTConfiguration>
"#,
    );
    if is_4x(r) {
        s.push_str(
            r#"    <GatewayArtifactSynchronizer enabled="{{apim.sync_runtime_artifacts.gateway.enable}}">
{% for label in apim.sync_runtime_artifacts.gateway.gateway_labels %}<GatewayLabel>{{label}}</GatewayLabel>{% endfor %}
    </GatewayArtifactSynchronizer>
    <EventHub enabled="{{apim.event_hub.enable}}">
        <ServiceURL>{{apim.event_hub.service_url}}</ServiceURL><Username>{{apim.event_hub.username}}</Username><Password>{{apim.event_hub.password}}</Password>
{% for endpoint in apim.event_hub.event_listening_endpoints %}<ListeningEndpoint>{{endpoint}}</ListeningEndpoint>{% endfor %}
{% for url in apim.event_hub.event_duplicate_url %}<EventDuplicateURL>{{url}}</EventDuplicateURL>{% endfor %}
{% for group in apim.event_hub.publish.url_group %}<PublishUrlGroup>{{group.urls}}</PublishUrlGroup><PublishAuthUrlGroup>{{group.auth_urls}}</PublishAuthUrlGroup>{% endfor %}
    </EventHub>
"#,
        );
    }
    if r >= Release::V4_5 {
        s.push_str("    <GatewayNotification><GatewayID>{{apim.gateway_notification.gateway_id}}</GatewayID></GatewayNotification>\n");
        if layout.kind == PackKind::ApiControlPlane {
            s.push_str("    <GatewayTypes>{{apim.gateway_type}}</GatewayTypes>\n");
        }
    }
    s.push_str("</APIManager>\n");
    s
}

/// `default.json`: what the mapper fills in for keys the toml leaves out.
fn default_json(layout: &PackLayout) -> Value {
    let r = layout.release;
    let h2 = |db: &str| format!("jdbc:h2:./repository/database/{db};DB_CLOSE_ON_EXIT=FALSE");
    let mut d = json!({
        "server.hostname": "localhost",
        "server.node_ip": "127.0.0.1",
        "server.offset": "0",
        "server.server_role": "default",
        "server.base_path": "${carbon.protocol}://${carbon.host}:${carbon.management.port}",
        "super_admin.username": "admin",
        "super_admin.password": "admin",
        "super_admin.admin_role": "admin",
        "super_admin.create_admin_account": true,
        "user_store.type": "database",
        "keystore.primary.file_name": "wso2carbon.jks",
        "keystore.primary.type": "JKS",
        "keystore.primary.password": "wso2carbon",
        "keystore.primary.alias": "wso2carbon",
        "keystore.primary.key_password": "wso2carbon",
        "truststore.file_name": "client-truststore.jks",
        "truststore.type": "JKS",
        "truststore.password": "wso2carbon",
        "transport.http.properties.port": 9763,
        "transport.https.properties.port": 9443,
        "database.local.url": h2("WSO2CARBON_DB"),
        "database.local.username": "wso2carbon",
        "database.local.password": "wso2carbon",
        "database.local.driver": "org.h2.Driver",
        "database.apim_db.url": h2("WSO2AM_DB"),
        "database.apim_db.username": "wso2carbon",
        "database.apim_db.password": "wso2carbon",
        "database.apim_db.driver": "org.h2.Driver",
        "database.shared_db.url": h2("WSO2SHARED_DB"),
        "database.shared_db.username": "wso2carbon",
        "database.shared_db.password": "wso2carbon",
        "database.shared_db.driver": "org.h2.Driver",
        "system.parameter.'org.wso2.CipherTransformation'": "RSA/ECB/OAEPwithSHA1andMGF1Padding",
        "oauth.extensions.token_generator": "org.wso2.carbon.identity.oauth2.token.JWTTokenIssuer",
        "oauth.grant_type.token_exchange.enable": true,
        "oauth.grant_type.token_exchange.allow_refresh_tokens": true,
        "oauth.grant_type.token_exchange.iat_validity_period": "1h",
        "transport.binary.receiver.tcpPort": 9611,
        "transport.binary.receiver.sslPort": 9711,
        "transport.thrift.receiver.tcpPort": 7611,
        "transport.thrift.receiver.sslPort": 7711,
        "apim.analytics.enable": false,
        "apim.cache_invalidation.enabled": false,
        "apim.cache.gateway_token.enable": true,
        "apim.cache.token_expiry_time": "900s",
        "apim.cache.resource.enable": true,
        "apim.cache.jwt_claim.enable": true,
        "apim.cache.jwt_claim.expiry_time": "900s",
        "apim.cors.allow_origins": "*",
        "apim.cors.allow_credentials": false,
        "apim.throttling.enable_unlimited_tier": true,
        "apim.throttling.enable_policy_deploy": true,
        "apim.throttling.enable_data_publishing": true,
        "apim.throttling.enable_decision_connection": true,
        "apim.throttling.enable_blacklist_condition": true,
        "apim.key_manager.enable_registration": true,
        "apim.key_manager.enable_retriever": true,
        "apim.oauth_config.remove_outbound_auth_header": true,
        "apim.oauth_config.auth_header": "Authorization",
        "apim.oauth_config.enable_token_encryption": false,
        "apim.oauth_config.enable_token_hashing": false,
        "apim.jwt.enable": false,
        "apim.jwt.encoding": "base64",
        "apim.jwt.claim_dialect": "http://wso2.org/claims",
        "apim.jwt.header": "X-JWT-Assertion",
        "apim.jwt.signing_algorithm": "SHA256withRSA",
        "apim.key_manager.username": "$ref{super_admin.username}",
        "apim.key_manager.password": "$ref{super_admin.password}",
        "apim.throttling.username": "$ref{super_admin.username}",
        "apim.throttling.password": "$ref{super_admin.password}",
    });
    let map = d.as_object_mut().expect("object");
    for store in ["tls", "internal"] {
        for field in ["file_name", "type", "password", "alias", "key_password"] {
            map.insert(
                format!("keystore.{store}.{field}"),
                Value::String(format!("$ref{{keystore.primary.{field}}}")),
            );
        }
    }
    if is_4x(r) {
        map.insert("apim.key_manager.type".into(), json!("default"));
        map.insert("apim.event_hub.enable".into(), json!(false));
        map.insert(
            "apim.event_hub.username".into(),
            json!("$ref{super_admin.username}"),
        );
        map.insert(
            "apim.event_hub.password".into(),
            json!("$ref{super_admin.password}"),
        );
        map.insert(
            "apim.sync_runtime_artifacts.gateway.enable".into(),
            json!(true),
        );
    }
    d
}

/// `infer.json`: what a `server_role` (and a database type) implies, per release.
fn infer_json(layout: &PackLayout) -> Value {
    let r = layout.release;
    let gateway = json!({
        "apim.throttling.enable_policy_deploy": false,
        "apim.key_manager.enable_registration": false,
        "oauth.grant_type.token_exchange.enable": false,
        "system.parameter.profile": "gateway-worker",
    });
    let key_manager = |profile: &str| {
        json!({
            "apim.throttling.enable_policy_deploy": false,
            "apim.throttling.enable_data_publishing": false,
            "apim.throttling.enable_decision_connection": false,
            "apim.key_manager.enable_retriever": false,
            "oauth.extensions.token_generator": "org.wso2.carbon.identity.oauth2.token.OauthTokenIssuerImpl",
            "system.parameter.profile": profile,
        })
    };
    let tm = json!({
        "apim.throttling.enable_policy_deploy": false,
        "apim.throttling.enable_data_publishing": false,
        "apim.throttling.enable_decision_connection": false,
        "oauth.grant_type.token_exchange.enable": false,
        "system.parameter.profile": "traffic-manager",
    });
    let portal = |profile: &str| json!({"system.parameter.profile": profile, "apim.throttling.enable_data_publishing": false});
    let default = json!({"oauth.extensions.token_generator": "org.wso2.carbon.identity.oauth2.token.OauthTokenIssuerImpl"});
    let mut roles = Map::new();
    match (layout.kind, r) {
        (PackKind::AllInOne, Release::V3_2) => {
            roles.insert("gateway-worker".into(), gateway);
            roles.insert("api-key-manager".into(), key_manager("api-key-manager"));
            roles.insert("api-publisher".into(), portal("api-publisher"));
            roles.insert("api-devportal".into(), portal("api-devportal"));
            roles.insert("traffic-manager".into(), tm);
        }
        (PackKind::AllInOne, r) if r < Release::V4_5 => {
            roles.insert("gateway-worker".into(), gateway);
            roles.insert(
                "api-key-manager-deprecated".into(),
                key_manager("api-key-manager-deprecated"),
            );
            if r <= Release::V4_1 {
                roles.insert(
                    "api-publisher-deprecated".into(),
                    portal("api-publisher-deprecated"),
                );
                roles.insert(
                    "api-devportal-deprecated".into(),
                    portal("api-devportal-deprecated"),
                );
            }
            roles.insert("traffic-manager".into(), tm);
            roles.insert(
                "control-plane".into(),
                json!({"system.parameter.profile": "control-plane", "apim.sync_runtime_artifacts.gateway.enable": false}),
            );
        }
        _ => {}
    }
    roles.insert("default".into(), default);
    let db = |db: &str| {
        json!({
            "mysql": {
                format!("database.{db}.url"): format!("jdbc:mysql://$ref{{database.{db}.hostname}}:$ref{{database.{db}.port}}/$ref{{database.{db}.name}}?useSSL=false"),
                format!("database.{db}.driver"): "com.mysql.cj.jdbc.Driver",
            },
            "postgre": {
                format!("database.{db}.url"): format!("jdbc:postgresql://$ref{{database.{db}.hostname}}:$ref{{database.{db}.port}}/$ref{{database.{db}.name}}"),
                format!("database.{db}.driver"): "org.postgresql.Driver",
            },
        })
    };
    json!({
        "server.server_role": Value::Object(roles),
        "database.apim_db.type": db("apim_db"),
        "database.shared_db.type": db("shared_db"),
        "apim.jwt.encoding": {
            "base64": {"apim.jwt.generator_impl": "org.wso2.carbon.apimgt.keymgt.token.JWTGenerator"},
            "base64url": {"apim.jwt.generator_impl": "org.wso2.carbon.apimgt.keymgt.token.URLSafeJWTGenerator"},
        },
    })
}

/// `key-mappings.json`: user-facing keys renamed or fanned out to internal ones.
fn key_mappings_json() -> Value {
    json!({
        "apim.cache.gateway_token.expiry_time": "apim.cache.token_expiry_time",
        "apim.cache.km_token.expiry_time": "apim.cache.token_expiry_time",
        "transport.receiver.tcp_port": ["transport.thrift.receiver.tcpPort", "transport.binary.receiver.tcpPort"],
        "transport.receiver.ssl_port": ["transport.thrift.receiver.sslPort", "transport.binary.receiver.sslPort"],
    })
}

/// The catalogue files of a pack: (path under the pack's top directory, content).
pub fn pack_files(layout: &PackLayout) -> Vec<(String, String)> {
    let t = format!("{CONF_DIR}/templates/repository/conf");
    let pretty = |v: Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    vec![
        (
            format!("{CONF_DIR}/default.json"),
            pretty(default_json(layout)),
        ),
        (format!("{CONF_DIR}/infer.json"), pretty(infer_json(layout))),
        (
            format!("{CONF_DIR}/key-mappings.json"),
            pretty(key_mappings_json()),
        ),
        (format!("{t}/carbon.xml.j2"), CARBON_XML.to_string()),
        (
            format!("{t}/carbon.properties.j2"),
            CARBON_PROPERTIES.to_string(),
        ),
        (
            format!("{t}/tomcat/catalina-server.xml.j2"),
            CATALINA_XML.to_string(),
        ),
        (format!("{t}/user-mgt.xml.j2"), USER_MGT_XML.to_string()),
        (
            format!("{t}/datasources/master-datasources.xml.j2"),
            DATASOURCES_XML.to_string(),
        ),
        (
            format!("{t}/identity/identity.xml.j2"),
            IDENTITY_XML.to_string(),
        ),
        (
            format!("{t}/identity/identity-event.properties.j2"),
            IDENTITY_EVENT.to_string(),
        ),
        (
            format!("{t}/data-bridge/data-bridge-config.xml.j2"),
            DATA_BRIDGE.to_string(),
        ),
        (format!("{t}/api-manager.xml.j2"), api_manager_xml(layout)),
    ]
}

/// The catalogue a pack of `layout` ships, as [`Catalogue::read`] would find it after unpacking.
pub fn for_layout(layout: &PackLayout) -> Catalogue {
    let files = pack_files(layout)
        .into_iter()
        .map(|(path, text)| {
            let rel = path
                .strip_prefix(&format!("{CONF_DIR}/"))
                .unwrap_or(&path)
                .to_string();
            (rel, text)
        })
        .collect();
    Catalogue::parse(&files)
}

/// The `default.json` values as strings (what a `$ref{}` to a key the toml leaves out yields).
pub fn defaults_of(text: &str) -> BTreeMap<String, String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k, s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_loops_and_wildcards_resolve_to_keys() {
        let mut keys = BTreeSet::new();
        template_keys(
            "{{ a.b | default('x') }}{% for e in c.d %}{{e.f}}{% for k, v in e.props.items() %}{{k}}{% endfor %}{% endfor %}{% for s in g.h %}{{s}}{{loop.index}}{% endfor %}{% if i.j is defined %}{% endif %}",
            &mut keys,
        );
        let want: BTreeSet<String> = ["a.b", "c.d", "c.d.f", "c.d.props.*", "g.h", "i.j"]
            .map(String::from)
            .into();
        assert_eq!(keys, want);
    }

    #[test]
    fn every_pack_knows_its_shipped_and_wildcard_keys() {
        for (kind, v) in [
            (PackKind::AllInOne, "3.2.0"),
            (PackKind::AllInOne, "4.2.0"),
            (PackKind::ApiControlPlane, "4.5.0"),
            (PackKind::UniversalGateway, "4.5.0"),
        ] {
            let layout = PackLayout::new(kind, v).expect("layout");
            let c = for_layout(&layout);
            for key in [
                "server.hostname",
                "keystore.tls.password",
                "database.apim_db.hostname",
                "event_listener.properties.'header.X-WSO2-KEY-MANAGER'",
                "event_handler.subscriptions",
                "service_provider.sp_name_regex",
                "system.parameter.'org.wso2.CipherTransformation'",
                "apim.cache.gateway_token.expiry_time",
                "apim.throttling.url_group.traffic_manager_urls",
            ] {
                assert!(c.knows(key), "{kind} {v}: {key}");
            }
            assert!(
                !c.knows("apim.throttling.servce_url"),
                "{kind} {v}: typo known"
            );
            assert_eq!(c.knows("apim.event_hub.enable"), v != "3.2.0");
        }
        let l42 = PackLayout::new(PackKind::AllInOne, "4.2.0").expect("4.2");
        let l44 = PackLayout::new(PackKind::AllInOne, "4.4.0").expect("4.4");
        let key = "apim.key_manager.enable_apikey_subscription_validation";
        assert!(for_layout(&l42).knows(key));
        assert!(!for_layout(&l44).knows(key));
    }
}
