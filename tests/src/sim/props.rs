//! Java `.properties` files as `java.util.Properties` reads and `store()`s them: `key=value`
//! lines, `#`/`!` comments, `\`-escapes; `store` writes a `#<date>` comment line first and
//! escapes `=`, `:`, `#` and `!` (and backslashes) in keys and values.

use std::collections::BTreeMap;

/// Parses properties text (no line continuations: the secure vault files have none).
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        // the first unescaped '=' or ':' separates key and value
        let mut split = None;
        let mut escaped = false;
        for (i, c) in line.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '=' | ':' if !escaped => {
                    split = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let (k, v) = match split {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        map.insert(unescape(k.trim_end()), unescape(v.trim_start()));
    }
    map
}

fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '\\' | '=' | ':' | '#' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Writes properties like `Properties.store(out, null)` (sorted, for reproducibility).
pub fn store(props: &BTreeMap<String, String>) -> String {
    let mut out = format!("#{}\n", crate::sim::log::timestamp());
    for (k, v) in props {
        out.push_str(&format!("{}={}\n", escape(k), escape(v)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_parse_round_trip() {
        let props = BTreeMap::from([
            ("a.b".to_string(), "x=y:z".to_string()),
            ("secVault.enabled".to_string(), "true".to_string()),
        ]);
        let text = store(&props);
        assert!(text.starts_with('#'));
        assert!(text.contains("a.b=x\\=y\\:z\n"), "{text}");
        assert_eq!(parse(&text), props);
        assert_eq!(parse("! c\nk : v\n")["k"], "v");
    }
}
