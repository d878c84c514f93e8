//! Drift, without content: how the bytes on disk differ from the bytes the agent wrote.
//!
//! Pure functions over bytes; the converge loop decides what to compare
//! (`daemon::converge::drift`). Nothing here returns a value read from a file: a TOML file is
//! compared by its dotted keys ([`toml_keys`]), any other file by whether its bytes are the same,
//! and a store by its sha256 ([`sha256_file`]). Key lists are capped ([`MAX_KEYS`]) so a file
//! rewritten whole cannot flood a report.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Most keys listed per kind of difference; the rest are counted.
pub const MAX_KEYS: usize = 32;
/// Longest key listed, in bytes (a longer one is cut, with `…`).
pub const MAX_KEY_LEN: usize = 200;

/// The keys two documents differ in (never their values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyDiff {
    /// On disk, not written.
    pub added: Vec<String>,
    /// Written, not on disk.
    pub removed: Vec<String>,
    /// On both sides with different values.
    pub changed: Vec<String>,
    /// How many keys the caps left out.
    pub omitted: usize,
}

impl KeyDiff {
    /// Whether no key differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// From full lists, each capped at [`MAX_KEYS`].
    pub(crate) fn capped(added: Vec<String>, removed: Vec<String>, changed: Vec<String>) -> Self {
        let mut omitted = 0;
        let mut cap = |mut v: Vec<String>| {
            omitted += v.len().saturating_sub(MAX_KEYS);
            v.truncate(MAX_KEYS);
            for k in &mut v {
                if k.len() > MAX_KEY_LEN {
                    let mut end = MAX_KEY_LEN;
                    while !k.is_char_boundary(end) {
                        end -= 1;
                    }
                    k.truncate(end);
                    k.push('…');
                }
            }
            v
        };
        KeyDiff {
            added: cap(added),
            removed: cap(removed),
            changed: cap(changed),
            omitted,
        }
    }
}

/// How a TOML file on disk compares with the document written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TomlDrift {
    /// The same bytes.
    Same,
    /// The file does not parse (or is not UTF-8).
    NotToml,
    /// Different bytes; the keys that differ (none: only comments, spacing or order changed).
    Keys(KeyDiff),
}

/// Compares `on_disk` with the document the agent wrote (`written`), by dotted keys.
pub fn toml_keys(written: &str, on_disk: &[u8]) -> TomlDrift {
    if on_disk == written.as_bytes() {
        return TomlDrift::Same;
    }
    let Some(disk) = std::str::from_utf8(on_disk)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
    else {
        return TomlDrift::NotToml;
    };
    // What the agent wrote came from the controller's renderer; were it not TOML, every key on
    // disk counts as added.
    let wrote = written.parse::<toml::Table>().unwrap_or_default();
    let (wrote, disk) = (toml::Value::Table(wrote), toml::Value::Table(disk));
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &wrote, &mut a);
    flatten("", &disk, &mut b);
    let added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let changed = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k.clone())
        .collect();
    TomlDrift::Keys(KeyDiff::capped(added, removed, changed))
}

/// Every leaf of `v` under its dotted path: tables by key, arrays of tables by index
/// (`a.b[0].c`), any other value (arrays of values included) as one leaf. An empty table is a
/// leaf too, so a table added empty is seen.
fn flatten<'a>(prefix: &str, v: &'a toml::Value, out: &mut BTreeMap<String, &'a toml::Value>) {
    match v {
        toml::Value::Table(t) if !t.is_empty() || prefix.is_empty() => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    key_segment(k)
                } else {
                    format!("{prefix}.{}", key_segment(k))
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_table()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), v);
        }
    }
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn key_segment(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if bare {
        k.to_owned()
    } else {
        toml::Value::String(k.to_owned()).to_string()
    }
}

/// The sha256 of a file's bytes (hex); `None` when it cannot be read.
pub fn sha256_file(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(hex::encode(h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITTEN: &str = r#"
[server]
hostname = "km-1.test"
offset = 1
[database.apim_db]
password = "s3cret-value"
[[apim.gateway.environment]]
name = "Default"
[[apim.gateway.environment]]
name = "Other"
"#;

    fn keys(on_disk: &str) -> KeyDiff {
        match toml_keys(WRITTEN, on_disk.as_bytes()) {
            TomlDrift::Keys(k) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_same_bytes_are_no_drift() {
        assert_eq!(toml_keys(WRITTEN, WRITTEN.as_bytes()), TomlDrift::Same);
    }

    #[test]
    fn keys_added_removed_and_changed_are_named_without_values() {
        let edited = WRITTEN
            .replace("offset = 1", "offset = 7\nextra = \"added-value\"")
            .replace("s3cret-value", "other-secret")
            .replace("name = \"Other\"", "name = \"Other\"\nlabel = \"x\"")
            .replace("hostname = \"km-1.test\"\n", "");
        let k = keys(&edited);
        assert_eq!(
            k.added,
            vec!["apim.gateway.environment[1].label", "server.extra"]
        );
        assert_eq!(k.removed, vec!["server.hostname"]);
        assert_eq!(
            k.changed,
            vec!["database.apim_db.password", "server.offset"]
        );
        let all = format!("{k:?}");
        for value in [
            "7",
            "added-value",
            "other-secret",
            "s3cret-value",
            "km-1.test",
        ] {
            assert!(!all.contains(value), "{value} leaked: {all}");
        }
    }

    #[test]
    fn comments_and_spacing_only_are_a_change_without_keys() {
        let k = keys(&format!("# edited by hand\n{WRITTEN}\n\n"));
        assert!(k.is_empty() && k.omitted == 0, "{k:?}");
    }

    #[test]
    fn a_file_that_does_not_parse_says_so() {
        assert_eq!(
            toml_keys(WRITTEN, b"[server\nhostname = "),
            TomlDrift::NotToml
        );
        assert_eq!(toml_keys(WRITTEN, b"\xff\xfe"), TomlDrift::NotToml);
    }

    #[test]
    fn odd_keys_are_quoted_and_lists_are_capped() {
        let k = keys(&format!("{WRITTEN}\n[\"a.b\"]\n\"c d\" = 1\n"));
        assert_eq!(k.added, vec![r#""a.b"."c d""#]);
        let many: String = (0..MAX_KEYS + 5)
            .map(|i| format!("k{i:03} = 1\n"))
            .collect();
        let k = keys(&format!("{many}{WRITTEN}"));
        assert_eq!(k.added.len(), MAX_KEYS);
        assert_eq!(k.omitted, 5);
        let long = "é".repeat(MAX_KEY_LEN);
        let k = keys(&format!("\"{long}\" = 1\n{WRITTEN}"));
        assert!(k.added[0].len() <= MAX_KEY_LEN + '…'.len_utf8(), "{k:?}");
        assert!(k.added[0].ends_with('…'));
    }

    #[test]
    fn an_empty_table_added_is_seen() {
        assert_eq!(
            keys(&format!("{WRITTEN}\n[new_table]\n")).added,
            vec!["new_table"]
        );
    }
}
