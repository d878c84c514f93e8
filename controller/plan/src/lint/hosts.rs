//! Peer URLs the pack's file leaves in a node's document that name no host of the plan: the
//! packs' templates ship placeholders (`https://tm.wso2.com:443/services/`,
//! `tcp://tm1.local:5672`) for the operator to replace, and a node left with one would call a
//! host that does not exist.

use std::collections::BTreeSet;

use toml::Value;

use super::keys::Flat;
use crate::diag::Diagnostic;
use crate::plan::{Node, Plan};

/// Names a node may always reach.
const LOCAL: [&str; 4] = ["localhost", "127.0.0.1", "0.0.0.0", "::1"];

/// The schemes of the URLs the product's peers are named in.
const SCHEMES: [&str; 6] = ["https", "http", "tcp", "ssl", "ws", "wss"];

/// Every host a node of `plan` may name, lowercase: the local names, the nodes, the load
/// balancers, `[hosts]` and the machines' addresses. Built once per plan.
pub(super) fn known_hosts(plan: &Plan) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = LOCAL.iter().map(|s| s.to_string()).collect();
    known.extend(
        plan.nodes
            .iter()
            .map(|n| n.hostname.value.to_ascii_lowercase()),
    );
    known.extend(
        plan.load_balancers
            .values()
            .map(|lb| lb.hostname.value.to_ascii_lowercase()),
    );
    known.extend(plan.hosts.iter().map(|(n, _)| n.value.to_ascii_lowercase()));
    known.extend(plan.machines.iter().map(|m| m.address.value.to_string()));
    known
}

/// Warnings for the pack's own URL values that name a host the plan does not know (`known`:
/// [`known_hosts`]).
pub(super) fn placeholders(node: &Node, doc: &Flat, known: &BTreeSet<String>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (key, (value, own)) in &doc.keys {
        if !own || disabled(doc, key) {
            continue;
        }
        let strings: Vec<&str> = match value {
            Value::String(s) => vec![s],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        for s in strings {
            let Some(host) = url_host(s) else { continue };
            if known.contains(&host.to_ascii_lowercase()) {
                continue;
            }
            out.push(
                Diagnostic::warning(
                    node.name.span.clone(),
                    format!(
                        "node {}: `{key}` = \"{s}\" is left from the pack's file and names \
                         {host}, which is no host of the plan (a placeholder of the product's \
                         template): the node would call a host that does not exist",
                        node.name.value
                    ),
                )
                .with_hint(format!(
                    "set `{key}` in an [overrides] fragment for node:{} or its role",
                    node.name.value
                )),
            );
        }
    }
    out
}

/// Whether a table above `key` is switched off (`enable = false`, as 3.x analytics ships).
fn disabled(doc: &Flat, key: &str) -> bool {
    let mut prefix = key;
    while let Some((p, _)) = prefix.rsplit_once('.') {
        for flag in ["enable", "enabled"] {
            if let Some((Value::Boolean(false), _)) = doc.keys.get(&format!("{p}.{flag}")) {
                return true;
            }
        }
        prefix = p;
    }
    false
}

/// The host of a `scheme://host:port[/…]` URL (an endpoint: identifiers such as claim dialect
/// URIs carry no port); `None` for anything else, and for URLs built from the product's own
/// references (`${carbon.host}`, `$ref{…}`).
fn url_host(s: &str) -> Option<&str> {
    let (scheme, rest) = s.split_once("://")?;
    if !SCHEMES.contains(&scheme) || rest.contains('{') {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.starts_with('[') {
        return None;
    }
    let (host, port) = host.split_once(':')?;
    (!host.is_empty() && !port.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_host("https://tm.wso2.com:443/services/"),
            Some("tm.wso2.com")
        );
        assert_eq!(url_host("tcp://tm1.local:5672"), Some("tm1.local"));
        assert_eq!(url_host("ws://gw:9099"), Some("gw"));
        assert_eq!(
            url_host("${carbon.protocol}://${carbon.host}:${carbon.management.port}"),
            None
        );
        assert_eq!(
            url_host("https://localhost:${mgt.transport.https.port}/x"),
            None
        );
        assert_eq!(url_host("jdbc:h2:./repository/database/WSO2AM_DB"), None);
        assert_eq!(url_host("http://wso2.org/claims"), None);
        assert_eq!(url_host("https://[::1]:9443/"), None);
    }
}
