//! The parts of the Carbon config mapper an agent can observe (research §5, §8, §9).
//!
//! The toml is read leniently (a syntax error is logged and the server goes on, unknown keys
//! are ignored); startup fails only on an unresolvable `$ref{}`/`$env{}`/`$sys{}`, a
//! `$secret{}` alias missing from `[secrets]`, or a secret still in plaintext `[...]` form.
//! `${...}` runtime placeholders are kept verbatim.

use std::collections::{BTreeMap, BTreeSet};

use toml::{Table, Value};

/// A parsed `deployment.toml`; a syntax error leaves an empty table plus the message.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    /// The document (empty if it did not parse).
    pub table: Table,
    /// The TOML syntax error, if any (the real mapper only logs it).
    pub parse_error: Option<String>,
}

impl NodeConfig {
    /// Parses `text`, never failing.
    pub fn parse_lenient(text: &str) -> NodeConfig {
        match text.parse::<Table>() {
            Ok(table) => NodeConfig {
                table,
                parse_error: None,
            },
            Err(e) => NodeConfig {
                table: Table::new(),
                parse_error: Some(e.to_string().trim().to_string()),
            },
        }
    }

    /// Looks up a dotted path of plain (unquoted) segments, e.g. `server.hostname`.
    pub fn get(&self, dotted: &str) -> Option<&Value> {
        let mut parts = dotted.split('.');
        let mut cur = self.table.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_table()?.get(p)?;
        }
        Some(cur)
    }

    /// A string value at `dotted`.
    pub fn get_str(&self, dotted: &str) -> Option<&str> {
        self.get(dotted).and_then(Value::as_str)
    }

    /// The `[secrets]` table as alias → value.
    pub fn secrets(&self) -> BTreeMap<String, String> {
        self.table
            .get("secrets")
            .and_then(Value::as_table)
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The per-node test overrides in `[apimsim]` (the real mapper ignores this table).
    pub fn overrides(&self) -> Overrides {
        let t = self.table.get("apimsim").and_then(Value::as_table);
        let int = |k: &str| t.and_then(|t| t.get(k)).and_then(Value::as_integer);
        Overrides {
            startup_delay_ms: int("startup_delay_ms").and_then(|v| u64::try_from(v).ok()),
            never_ready: t
                .and_then(|t| t.get("never_ready"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            exit_code: int("exit_code").and_then(|v| i32::try_from(v).ok()),
            exit_after_ms: int("exit_after_ms")
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0),
            restart_requests: int("restart_requests")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
        }
    }
}

/// Per-node behaviour switches for tests, from `[apimsim]` in `deployment.toml`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Overrides the machine's startup delay.
    pub startup_delay_ms: Option<u64>,
    /// Listen, but never log "started" and keep the health check at 500.
    pub never_ready: bool,
    /// Die with this exit code after start (after "started", or at that moment if never ready).
    pub exit_code: Option<i32>,
    /// How long after that moment to die.
    pub exit_after_ms: u64,
    /// Ask for a restart (exit 121, which the start script's loop honours) once started,
    /// as long as the log holds no more than this many starts.
    pub restart_requests: u32,
}

/// Why the config mapper stops the server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Placeholders that resolve to nothing (missing key, cycle, missing env/sys/secret).
    #[error("References can't be resolved for [{}]", .refs.join(", "))]
    Unresolved {
        /// The unresolved placeholders, e.g. `$ref{super_admin.user}`.
        refs: Vec<String>,
    },
    /// A `$secret{alias}` whose alias `[secrets]` lacks (kernel `ReferenceResolver`'s words).
    #[error("Secret References can't be resolved for {alias}")]
    SecretUnresolved {
        /// The first such alias.
        alias: String,
    },
    /// A referenced `[secrets]` entry still in `[plaintext]` form (the cipher tool was not run).
    #[error("Secret References can't be Plain-Text for {alias}")]
    PlainTextSecret {
        /// The first such alias.
        alias: String,
    },
}

/// Kernel defaults a `$ref{}` may point at without the user setting them; the server adds the
/// pack's own `default.json` on top.
pub fn kernel_defaults() -> BTreeMap<String, String> {
    kernel_table()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn kernel_table() -> BTreeMap<&'static str, &'static str> {
    let mut d = BTreeMap::from([
        ("super_admin.username", "admin"),
        ("super_admin.password", "admin"),
        ("super_admin.admin_role", "admin"),
        ("super_admin.create_admin_account", "true"),
        ("server.hostname", "localhost"),
        ("server.offset", "0"),
        ("server.server_role", "default"),
        ("user_store.type", "database"),
        ("keystore.primary.file_name", "wso2carbon.jks"),
        ("keystore.primary.type", "JKS"),
        ("keystore.primary.password", "wso2carbon"),
        ("keystore.primary.alias", "wso2carbon"),
        ("keystore.primary.key_password", "wso2carbon"),
        ("truststore.file_name", "client-truststore.jks"),
        ("truststore.type", "JKS"),
        ("truststore.password", "wso2carbon"),
    ]);
    for store in ["tls", "internal"] {
        for (field, reference) in [
            ("file_name", "$ref{keystore.primary.file_name}"),
            ("type", "$ref{keystore.primary.type}"),
            ("password", "$ref{keystore.primary.password}"),
            ("alias", "$ref{keystore.primary.alias}"),
            ("key_password", "$ref{keystore.primary.key_password}"),
        ] {
            let key: &'static str = match (store, field) {
                ("tls", "file_name") => "keystore.tls.file_name",
                ("tls", "type") => "keystore.tls.type",
                ("tls", "password") => "keystore.tls.password",
                ("tls", "alias") => "keystore.tls.alias",
                ("tls", _) => "keystore.tls.key_password",
                (_, "file_name") => "keystore.internal.file_name",
                (_, "type") => "keystore.internal.type",
                (_, "password") => "keystore.internal.password",
                (_, "alias") => "keystore.internal.alias",
                _ => "keystore.internal.key_password",
            };
            d.insert(key, reference);
        }
    }
    d
}

fn flat_key(prefix: &str, key: &str) -> String {
    let seg = if key.contains('.') {
        format!("'{key}'")
    } else {
        key.to_string()
    };
    if prefix.is_empty() {
        seg
    } else {
        format!("{prefix}.{seg}")
    }
}

/// Flattens tables into dotted keys (the mapper's view); arrays of tables are not addressable.
pub fn flatten(table: &Table) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, t: &Table, out: &mut BTreeMap<String, Value>) {
        for (k, v) in t {
            let key = flat_key(prefix, k);
            match v {
                Value::Table(inner) => walk(&key, inner, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

/// Every string value in the document with its dotted location, skipping `[secrets]` and
/// `[apimsim]` (not config-mapper input).
pub fn strings(table: &Table) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => out.push((prefix.to_string(), s.clone())),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), item, out);
                }
            }
            Value::Table(t) => {
                for (k, v) in t {
                    walk(&flat_key(prefix, k), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in table {
        if k == "secrets" || k == "apimsim" {
            continue;
        }
        walk(&flat_key("", k), v, &mut out);
    }
    out
}

/// Placeholders (`$ref{..}`, `$env{..}`, `$sys{..}`, `$secret{..}`) in a string, in order.
pub fn placeholders(s: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        let kind = ["ref", "env", "sys", "secret"]
            .into_iter()
            .find(|k| after.starts_with(k) && after[k.len()..].starts_with('{'));
        match kind {
            Some(k) => {
                let body = &after[k.len() + 1..];
                match body.find('}') {
                    Some(end) => {
                        out.push((k, body[..end].to_string()));
                        rest = &body[end + 1..];
                    }
                    None => break,
                }
            }
            None => rest = after,
        }
    }
    out
}

struct Resolver<'a> {
    flat: BTreeMap<String, Value>,
    defaults: &'a BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    sysprops: &'a BTreeMap<String, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    /// Whether every placeholder in `s` resolves; `visiting` guards against `$ref` cycles.
    fn resolves(&self, s: &str, visiting: &mut BTreeSet<String>, bad: &mut Vec<String>) -> bool {
        let mut ok = true;
        for (kind, name) in placeholders(s) {
            let good = match kind {
                "ref" => self.ref_resolves(&name, visiting, bad),
                "env" => (self.env)(&name).is_some(),
                "sys" => self.sysprops.contains_key(&name),
                _ => self.secrets.contains_key(&name),
            };
            if !good {
                let p = format!("${kind}{{{name}}}");
                if !bad.contains(&p) {
                    bad.push(p);
                }
                ok = false;
            }
        }
        ok
    }

    fn ref_resolves(
        &self,
        key: &str,
        visiting: &mut BTreeSet<String>,
        bad: &mut Vec<String>,
    ) -> bool {
        if !visiting.insert(key.to_string()) {
            return false;
        }
        let result = match self.flat.get(key) {
            Some(Value::String(s)) => self.resolves(&s.clone(), visiting, bad),
            Some(_) => true,
            None => match self.defaults.get(key) {
                Some(d) => self.resolves(d, visiting, bad),
                None => false,
            },
        };
        visiting.remove(key);
        result
    }
}

impl Resolver<'_> {
    /// The value of `key` with every placeholder substituted, or `None` if one does not
    /// resolve; `secret` supplies `$secret{}` values.
    fn value(
        &self,
        key: &str,
        secret: &dyn Fn(&str) -> Option<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Option<String> {
        if !visiting.insert(key.to_string()) {
            return None;
        }
        let raw = match self.flat.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Integer(i)) => Some(i.to_string()),
            Some(Value::Boolean(b)) => Some(b.to_string()),
            Some(Value::Float(f)) => Some(f.to_string()),
            Some(_) => None,
            None => self.defaults.get(key).cloned(),
        };
        let out = raw.and_then(|r| self.substitute(&r, secret, visiting));
        visiting.remove(key);
        out
    }

    fn substitute(
        &self,
        s: &str,
        secret: &dyn Fn(&str) -> Option<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Option<String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let kind = ["ref", "env", "sys", "secret"]
                .into_iter()
                .find(|k| after.starts_with(k) && after[k.len()..].starts_with('{'));
            let Some(kind) = kind else {
                out.push('$');
                rest = after;
                continue;
            };
            let body = &after[kind.len() + 1..];
            let end = body.find('}')?;
            let name = &body[..end];
            let value = match kind {
                "ref" => self.value(name, secret, visiting)?,
                "env" => (self.env)(name)?,
                "sys" => self.sysprops.get(name)?.clone(),
                _ => secret(name)?,
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// The effective value of a dotted key (user value, else kernel default) with placeholders
/// substituted; `$secret{}` values come from `secret` (the vault's decrypted values).
pub fn resolve_value(
    cfg: &NodeConfig,
    key: &str,
    defaults: &BTreeMap<String, String>,
    sysprops: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let resolver = Resolver {
        flat: flatten(&cfg.table),
        defaults,
        secrets: cfg.secrets(),
        sysprops,
        env,
    };
    resolver.value(key, secret, &mut BTreeSet::new())
}

/// Runs the checks that make the real server exit 1 before it starts: every `$secret{}` alias
/// must exist in `[secrets]` and not be plaintext (kernel `ReferenceResolver.resolveSecrets`,
/// which runs first and stops at the first bad alias), then every other placeholder resolves.
pub fn check(
    cfg: &NodeConfig,
    defaults: &BTreeMap<String, String>,
    sysprops: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let secrets = cfg.secrets();
    for (_, s) in strings(&cfg.table) {
        for (kind, alias) in placeholders(&s) {
            if kind != "secret" {
                continue;
            }
            match secrets.get(&alias) {
                None => return Err(ConfigError::SecretUnresolved { alias }),
                Some(v) if v.contains('[') && v.contains(']') => {
                    return Err(ConfigError::PlainTextSecret { alias });
                }
                Some(_) => {}
            }
        }
    }
    let resolver = Resolver {
        flat: flatten(&cfg.table),
        defaults,
        secrets,
        sysprops,
        env,
    };
    let mut bad = Vec::new();
    for (_, s) in strings(&cfg.table) {
        resolver.resolves(&s, &mut BTreeSet::new(), &mut bad);
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Unresolved { refs: bad })
    }
}

/// Whether any value uses `$secret{}` (the mapper then sets `secVault.enabled`).
pub fn uses_secrets(cfg: &NodeConfig) -> bool {
    strings(&cfg.table)
        .iter()
        .any(|(_, s)| placeholders(s).iter().any(|(k, _)| *k == "secret"))
}

/// A peer the server talks to, taken from a URL in the config.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerUrl {
    /// Host name or address as written.
    pub host: String,
    /// Port as written (peers' offsets are the renderer's job).
    pub port: u16,
    /// `tcp`, `ssl` or `https`.
    pub scheme: String,
    /// Where in the config it was found (first occurrence).
    pub key: String,
}

/// Every `tcp://`, `ssl://` and explicit-port `https://` peer in the config, once per host:port;
/// `localhost`, `${...}` hosts/ports and port-less URLs are skipped.
pub fn peer_urls(table: &Table) -> Vec<PeerUrl> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (key, s) in strings(table) {
        for scheme in ["tcp", "ssl", "https"] {
            let marker = format!("{scheme}://");
            let mut rest = s.as_str();
            while let Some(pos) = rest.find(&marker) {
                let after = &rest[pos + marker.len()..];
                let authority_end = after
                    .find(|c: char| c == '/' || c == ',' || c == '"' || c.is_whitespace())
                    .unwrap_or(after.len());
                let authority = &after[..authority_end];
                rest = &after[authority_end..];
                let Some((host, port)) = authority.rsplit_once(':') else {
                    continue;
                };
                if host.is_empty()
                    || host.eq_ignore_ascii_case("localhost")
                    || host.contains(['$', '{', '}'])
                {
                    continue;
                }
                let Ok(port) = port.parse::<u16>() else {
                    continue;
                };
                if seen.insert((host.to_ascii_lowercase(), port)) {
                    out.push(PeerUrl {
                        host: host.to_string(),
                        port,
                        scheme: scheme.to_string(),
                        key: key.clone(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(text: &str) -> Result<(), ConfigError> {
        let cfg = NodeConfig::parse_lenient(text);
        assert!(cfg.parse_error.is_none(), "{:?}", cfg.parse_error);
        check(&cfg, &kernel_defaults(), &BTreeMap::new(), &no_env)
    }

    #[test]
    fn refs_resolve_against_file_and_defaults_and_runtime_placeholders_stay() {
        let ok = r#"
[server]
hostname = "gw.wso2.com"
base_path = "${carbon.protocol}://${carbon.host}:${carbon.management.port}"
[apim.key_manager]
username = "$ref{super_admin.username}"
service_url = "https://$ref{server.hostname}:9443/services/"
[keystore.primary]
password = "changed"
[x]
tls = "$ref{keystore.tls.password}"
"#;
        assert_eq!(run(ok), Ok(()));
    }

    #[test]
    fn missing_ref_env_sys_and_cycles_are_reported() {
        let bad = r#"
[a]
one = "$ref{super_admin.nobody}"
two = "$env{APIM_SIM_SURELY_UNSET}"
three = "$sys{no.such.prop}"
[c]
x = "$ref{c.y}"
y = "$ref{c.x}"
"#;
        let err = run(bad).expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.starts_with("References can't be resolved for ["),
            "{msg}"
        );
        for p in [
            "$ref{super_admin.nobody}",
            "$env{APIM_SIM_SURELY_UNSET}",
            "$sys{no.such.prop}",
            "$ref{c.y}",
        ] {
            assert!(msg.contains(p), "{p} missing from {msg}");
        }
    }

    #[test]
    fn secrets_must_exist_and_be_encrypted() {
        let missing = "[super_admin]\npassword = \"$secret{admin_password}\"\n";
        let err = run(missing).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "Secret References can't be resolved for admin_password"
        );
        let plain = "[super_admin]\npassword = \"$secret{admin_password}\"\n[secrets]\nadmin_password = \"[admin]\"\n";
        let err = run(plain).expect_err("plaintext");
        assert_eq!(
            err.to_string(),
            "Secret References can't be Plain-Text for admin_password"
        );
        let unused = "[secrets]\nadmin_password = \"[admin]\"\n";
        assert_eq!(
            run(unused),
            Ok(()),
            "an unreferenced plaintext secret is not checked"
        );
        let enc = "[super_admin]\npassword = \"$secret{admin_password}\"\n[secrets]\nadmin_password = \"bXlzZWNyZXQ=\"\n";
        assert_eq!(run(enc), Ok(()));
        assert!(uses_secrets(&NodeConfig::parse_lenient(enc)));
        assert!(!uses_secrets(&NodeConfig::parse_lenient(unused)));
    }

    #[test]
    fn env_and_sys_resolve_when_present() {
        let cfg =
            NodeConfig::parse_lenient("[a]\nx = \"$env{HOME_X}\"\ny = \"$sys{carbon.home}\"\n");
        let props = BTreeMap::from([("carbon.home".to_string(), "/opt".to_string())]);
        let env = |k: &str| (k == "HOME_X").then(|| "v".to_string());
        assert_eq!(check(&cfg, &kernel_defaults(), &props, &env), Ok(()));
    }

    #[test]
    fn values_resolve_through_refs_defaults_and_secrets() {
        let cfg = NodeConfig::parse_lenient(
            "[keystore.primary]\npassword = \"$secret{ks}\"\n[server]\noffset = 2\n[a]\nurl = \"https://$ref{server.hostname}:944$ref{server.offset}/x\"\n",
        );
        let props = BTreeMap::new();
        let secret = |k: &str| (k == "ks").then(|| "vault-pass".to_string());
        let defaults = kernel_defaults();
        let get = |k: &str| resolve_value(&cfg, k, &defaults, &props, &no_env, &secret);
        assert_eq!(get("keystore.tls.password").as_deref(), Some("vault-pass"));
        assert_eq!(
            get("keystore.tls.file_name").as_deref(),
            Some("wso2carbon.jks")
        );
        assert_eq!(get("a.url").as_deref(), Some("https://localhost:9442/x"));
        assert_eq!(get("server.offset").as_deref(), Some("2"));
        assert_eq!(get("no.such.key"), None);
        let none = |_: &str| None;
        assert_eq!(
            resolve_value(
                &cfg,
                "keystore.tls.password",
                &defaults,
                &props,
                &no_env,
                &none
            ),
            None
        );
    }

    #[test]
    fn syntax_errors_are_lenient() {
        let cfg = NodeConfig::parse_lenient("[server\nhostname=");
        assert!(cfg.parse_error.is_some());
        assert!(cfg.table.is_empty());
    }

    #[test]
    fn peers_are_collected_with_the_documented_skips() {
        let cfg = NodeConfig::parse_lenient(
            r#"
[apim.throttling]
service_url = "https://tm.wso2.com:9446/services/"
throttle_decision_endpoints = ["tcp://tm.wso2.com:5675", "tcp://tm2.wso2.com:5675"]
[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm.wso2.com:9614"]
traffic_manager_auth_urls = ["ssl://tm.wso2.com:9714"]
[apim.key_manager]
service_url = "https://km-lb.wso2.com/services/"
[[apim.gateway.environment]]
https_endpoint = "https://localhost:${https.nio.port}"
other = "https://${carbon.host}:9443"
ws = "ws://gw.wso2.com:9099"
[event_listener.properties]
notification_endpoint = "https://tm.wso2.com:9446/internal/data/v1/notify"
[apimsim]
x = "tcp://ignored.wso2.com:1"
"#,
        );
        let peers: BTreeSet<String> = peer_urls(&cfg.table)
            .into_iter()
            .map(|p| format!("{}://{}:{}", p.scheme, p.host, p.port))
            .collect();
        let expected: BTreeSet<String> = [
            "tcp://tm.wso2.com:5675",
            "tcp://tm2.wso2.com:5675",
            "https://tm.wso2.com:9446",
            "tcp://tm.wso2.com:9614",
            "ssl://tm.wso2.com:9714",
        ]
        .map(String::from)
        .into();
        assert_eq!(peers, expected);
    }

    #[test]
    fn overrides_are_read() {
        let cfg = NodeConfig::parse_lenient(
            "[apimsim]\nstartup_delay_ms = 5\nnever_ready = true\nexit_code = 3\n",
        );
        assert_eq!(
            cfg.overrides(),
            Overrides {
                startup_delay_ms: Some(5),
                never_ready: true,
                exit_code: Some(3),
                exit_after_ms: 0,
                restart_requests: 0,
            }
        );
    }
}
