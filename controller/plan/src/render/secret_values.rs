//! Secrets in a node's document: the document is built once, with a sentinel string standing
//! for each secret value, and then turned into the real document (each sentinel replaced by the
//! secret) and the masked one (each sentinel replaced by [`MASK`]).
//!
//! Only a string value that is a sentinel as a whole is replaced, in the TOML tree, never text
//! inside a string. A sentinel holds NUL characters and a nonce derived from the whole plan, so
//! no value a plan writes (its fields, its overrides) can be one: it would have to contain the
//! digest of itself.

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::MASK;
use crate::plan::Plan;

/// The sentinels the document builders write, and the values they stand for.
pub(super) struct Secrets {
    /// The super admin's password.
    pub admin: String,
    /// `apim_db`'s password.
    pub apim_db: String,
    /// `shared_db`'s password.
    pub shared_db: String,
    /// The keystores' password.
    pub keystore: String,
    /// The truststore's password.
    pub truststore: String,
    /// The analytics auth token, if the plan has one.
    pub analytics_token: Option<String>,
    /// Sentinel → value.
    values: BTreeMap<String, String>,
    /// Sentinel → its secure vault alias (`admin_password`, …).
    aliases: BTreeMap<String, String>,
}

impl Secrets {
    /// Sentinels for `resolved`, the plan's secrets by description (as in
    /// [`Plan::secret_refs`]).
    pub fn new(plan: &Plan, resolved: BTreeMap<&'static str, String>) -> Self {
        let nonce = &crate::digest(format!("{plan:?}").as_bytes())[..32];
        Secrets::with_nonce(nonce, resolved)
    }

    fn with_nonce(nonce: &str, resolved: BTreeMap<&'static str, String>) -> Self {
        let sentinel = |what: &str| format!("\u{0}apimctl-secret:{nonce}:{what}\u{0}");
        let mut values = BTreeMap::new();
        let mut aliases = BTreeMap::new();
        let mut slot = |what: &str| {
            let s = sentinel(what);
            values.insert(s.clone(), resolved.get(what).cloned().unwrap_or_default());
            aliases.insert(s.clone(), what.replace(' ', "_"));
            s
        };
        Secrets {
            admin: slot("admin password"),
            apim_db: slot("apim_db password"),
            shared_db: slot("shared_db password"),
            keystore: slot("keystore password"),
            truststore: slot("truststore password"),
            analytics_token: resolved
                .contains_key("analytics auth token")
                .then(|| slot("analytics auth token")),
            values,
            aliases,
        }
    }

    /// The value a sentinel stands for.
    pub fn value(&self, sentinel: &str) -> String {
        self.values.get(sentinel).cloned().unwrap_or_default()
    }

    /// The document with every sentinel replaced by its secret.
    pub fn reveal(&self, doc: &Table) -> Table {
        self.substitute(doc, |v| v)
    }

    /// The document with every sentinel replaced by [`MASK`].
    pub fn mask(&self, doc: &Table) -> Table {
        self.substitute(doc, |_| MASK)
    }

    /// The document with every sentinel replaced by a secure vault reference,
    /// `$secret{alias}`.
    pub fn vault_refs(&self, doc: &Table) -> Table {
        let mut out = doc.clone();
        for (_, v) in out.iter_mut() {
            self.substitute_value(v, &mut |sentinel: &str| {
                format!("$secret{{{}}}", self.aliases[sentinel])
            });
        }
        out
    }

    /// The secrets `doc` holds, as (vault alias, value), each once, in alias order.
    pub fn used(&self, doc: &Table) -> Vec<(String, String)> {
        let mut found = BTreeMap::new();
        let mut note = |sentinel: &str| {
            found.insert(
                self.aliases[sentinel].clone(),
                self.values[sentinel].clone(),
            );
            String::new()
        };
        let mut copy = doc.clone();
        for (_, v) in copy.iter_mut() {
            self.substitute_value(v, &mut note);
        }
        found.into_iter().collect()
    }

    fn substitute<'a>(&'a self, doc: &Table, with: impl Fn(&'a str) -> &'a str + Copy) -> Table {
        let mut out = doc.clone();
        for (_, v) in out.iter_mut() {
            self.substitute_value(v, &mut |sentinel: &str| {
                with(&self.values[sentinel]).to_string()
            });
        }
        out
    }

    /// Replaces each whole-sentinel string with `with(sentinel)`.
    fn substitute_value(&self, v: &mut Value, with: &mut dyn FnMut(&str) -> String) {
        match v {
            Value::String(s) if self.values.contains_key(s.as_str()) => *s = with(s),
            Value::Array(items) => {
                for item in items {
                    self.substitute_value(item, with);
                }
            }
            Value::Table(t) => {
                for (_, item) in t.iter_mut() {
                    self.substitute_value(item, with);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_sentinel_values_are_replaced() {
        let resolved = [("admin password", "pw"), ("keystore password", "ks")]
            .map(|(k, v)| (k, v.to_string()))
            .into();
        let sec = Secrets::with_nonce("n", resolved);
        assert!(sec.analytics_token.is_none());
        let mut doc = Table::new();
        doc.insert("a".into(), Value::String(sec.admin.clone()));
        let mut inner = Table::new();
        inner.insert(
            "list".into(),
            Value::Array(vec![
                Value::String(sec.keystore.clone()),
                Value::String(format!("x{}", sec.keystore)),
            ]),
        );
        inner.insert("plain".into(), Value::String("pw".into()));
        doc.insert("t".into(), Value::Table(inner));
        let real = sec.reveal(&doc);
        assert_eq!(real["a"].as_str(), Some("pw"));
        assert_eq!(real["t"]["list"][0].as_str(), Some("ks"));
        assert_eq!(
            real["t"]["list"][1].as_str(),
            Some(format!("x{}", sec.keystore).as_str()),
            "never replaced inside a string"
        );
        let masked = sec.mask(&doc);
        assert_eq!(masked["a"].as_str(), Some(MASK));
        assert_eq!(masked["t"]["list"][0].as_str(), Some(MASK));
        assert_eq!(
            masked["t"]["plain"].as_str(),
            Some("pw"),
            "a value that merely equals a secret is not one"
        );
        assert_eq!(sec.value(&sec.keystore), "ks");
        assert_eq!(sec.value(&sec.truststore), "", "unresolved: empty");
    }
}
