//! What keys a pack's config mapper reads (wso2_internals.md §5, "Validation oracle"): the
//! `{{ … }}`/`{% … %}` variables of its `templates/**.j2` and the keys of its `default.json`,
//! `infer.json` and `key-mappings.json`. A key none of them names is silently ignored by the
//! product.
//!
//! The scan is of Jinja expressions, not a Jinja parser: every dotted path in an expression is
//! taken as a key (loop variables and the like add harmless extra names), a path a template
//! iterates over (`for x in a.b`, `a.b.items()`) accepts any key below it, and `{% set x = a.b %}`
//! makes `x.c` mean `a.b.c`.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalogue::layout;
use crate::pack::PackConfig;

/// The keys a pack reads.
#[derive(Clone, Debug, Default)]
pub struct KeyCatalogue {
    /// Keys named exactly (dotted; a segment with a dot in it quoted `'…'`).
    exact: BTreeSet<String>,
    /// Keys with `$1`-style wildcard segments, split.
    patterns: Vec<Vec<String>>,
    /// Paths any key below which is read (iterated tables, arrays of tables).
    open: BTreeSet<String>,
}

impl KeyCatalogue {
    /// The catalogue of `pack`; `None` when the pack has neither templates nor rule files (then
    /// nothing can be said about its keys).
    pub fn of(pack: &PackConfig) -> Option<KeyCatalogue> {
        let mut c = KeyCatalogue::default();
        let mut any = false;
        for (_, text) in pack.templates() {
            any = true;
            scan_template(text, &mut c);
        }
        for (path, depth) in layout::KEY_RULE_FILES.iter().zip(RULE_KEY_DEPTHS) {
            if let Some(text) = pack.file(path) {
                any = true;
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                    rule_keys(&v, 0, depth, &mut c);
                }
            }
        }
        any.then_some(c)
    }

    /// Whether the product reads `key` (dotted, as [`super::keys`] flattens documents).
    pub fn knows(&self, key: &str) -> bool {
        if self.exact.contains(key) || self.open.contains(key) {
            return true;
        }
        let segs = split(key);
        (1..segs.len()).any(|n| self.open.contains(&segs[..n].join(".")))
            || self.patterns.iter().any(|p| {
                p.len() == segs.len() && p.iter().zip(&segs).all(|(p, s)| p == s || is_wildcard(p))
            })
    }

    /// The known key most like `key`: among its siblings first, else among all keys.
    pub fn closest(&self, key: &str) -> Option<String> {
        let segs = split(key);
        let (last, parents) = segs.split_last()?;
        let parent = parents.join(".");
        let siblings: Vec<&str> = self
            .exact
            .iter()
            .filter_map(|k| {
                let (p, l) = k.rsplit_once('.')?;
                (p == parent).then_some(l)
            })
            .collect();
        if let Some(l) = crate::diag::did_you_mean(last, siblings) {
            return Some(format!("{parent}.{l}"));
        }
        crate::diag::did_you_mean(key, self.exact.iter().map(String::as_str)).map(str::to_string)
    }

    fn add(&mut self, key: &str) {
        let key = key.trim_matches(|c: char| c == ',' || c.is_whitespace());
        if key.is_empty() {
            return;
        }
        let segs = split(key);
        if segs.iter().any(|s| is_wildcard(s)) {
            self.patterns.push(segs);
        } else {
            self.exact.insert(key.to_string());
        }
    }
}

/// Per rule file, the depths of its JSON whose object keys are configuration keys:
/// `default.json` {key: value}; `infer.json` {key: {value: {key: value}}};
/// `key-mappings.json` {key: key or [keys]} (the values are added as strings).
const RULE_KEY_DEPTHS: [&[usize]; 3] = [&[0], &[0, 2], &[0]];

fn rule_keys(v: &serde_json::Value, depth: usize, key_depths: &[usize], c: &mut KeyCatalogue) {
    // A value built from other keys reads them: `"jdbc:mysql://$ref{database.apim_db.hostname}…"`.
    if let serde_json::Value::String(s) = v {
        let mut rest = s.as_str();
        while let Some(i) = rest.find("$ref{") {
            let after = &rest[i + 5..];
            let Some(end) = after.find('}') else { break };
            c.add(&after[..end]);
            rest = &after[end..];
        }
    }
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                // (A rule file's keys always have a dot; a bare word is a value.)
                if key_depths.contains(&depth) && k.contains('.') {
                    // `a.b:c` renames field `c` of the array of tables `a.b`.
                    c.add(k.split(':').next().unwrap_or(k));
                }
                rule_keys(v, depth + 1, key_depths, c);
            }
        }
        // key-mappings.json's targets are keys too (internal ones, read by the templates).
        serde_json::Value::String(s)
            if depth == 1 && key_depths == [0] && s.contains('.') && !s.contains('{') =>
        {
            c.add(s);
        }
        serde_json::Value::Array(a) if depth == 1 && key_depths == [0] => {
            for s in a
                .iter()
                .filter_map(serde_json::Value::as_str)
                .filter(|s| s.contains('.'))
            {
                c.add(s);
            }
        }
        _ => {}
    }
}

fn is_wildcard(seg: &str) -> bool {
    seg.len() > 1 && seg.starts_with('$') && seg[1..].bytes().all(|b| b.is_ascii_digit())
}

/// A dotted key's segments; a `'…'` segment may hold dots.
fn split(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in key.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                cur.push(ch);
            }
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out
}

/// Scans one template's `{{ … }}` and `{% … %}` blocks.
fn scan_template(text: &str, c: &mut KeyCatalogue) {
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let close = match after.as_bytes().first() {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            _ => {
                rest = after;
                continue;
            }
        };
        let body = &after[1..];
        let Some(end) = body.find(close) else { break };
        scan_expression(
            body[..end].trim_matches('-'),
            close == "%}",
            c,
            &mut aliases,
        );
        rest = &body[end + close.len()..];
    }
}

/// A path as written: its segments and what follows it.
struct Path {
    segs: Vec<String>,
    /// Called as `.items()`, `.keys()` or `.values()`.
    iterated: bool,
}

fn scan_expression(
    expr: &str,
    statement: bool,
    c: &mut KeyCatalogue,
    aliases: &mut BTreeMap<String, String>,
) {
    let words: Vec<&str> = expr.split_whitespace().collect();
    let paths = paths_in(expr);
    let resolve = |segs: &[String], aliases: &BTreeMap<String, String>| -> String {
        match aliases.get(&segs[0]) {
            Some(target) => std::iter::once(target.clone())
                .chain(segs[1..].iter().cloned())
                .collect::<Vec<_>>()
                .join("."),
            None => segs.join("."),
        }
    };
    for p in &paths {
        let key = resolve(&p.segs, aliases);
        if p.iterated {
            c.open.insert(key.clone());
        }
        c.add(&key);
    }
    if !statement {
        return;
    }
    match words.first().copied() {
        // `for x in a.b` / `for k, v in a.b.items()`: anything below a.b is read.
        Some("for") => {
            if let Some(i) = words.iter().position(|w| *w == "in")
                && let Some(p) = paths_in(&words[i + 1..].join(" ")).first()
            {
                let target = resolve(&p.segs, aliases);
                for var in words[1..i].join(" ").split(',') {
                    let var = var.trim();
                    if !var.is_empty() {
                        aliases.insert(var.to_string(), target.clone());
                    }
                }
                c.open.insert(target);
            }
        }
        // `set x = a.b`: x.c is a.b.c.
        Some("set") => {
            if let (Some(name), Some("="), Some(p)) = (
                words.get(1),
                words.get(2).copied(),
                paths_in(&words.get(3..).unwrap_or_default().join(" ")).first(),
            ) {
                aliases.insert(name.to_string(), resolve(&p.segs, aliases));
            }
        }
        _ => {}
    }
}

/// Every dotted path in an expression: identifiers joined by `.` or `['…']`, outside string
/// literals, leaving out filter and test names (after `|` and `is`).
fn paths_in(expr: &str) -> Vec<Path> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    let mut skip_next = false;
    while i < b.len() {
        let ch = b[i];
        if ch == b'\'' || ch == b'"' {
            i = b[i + 1..]
                .iter()
                .position(|&c| c == ch)
                .map_or(b.len(), |p| i + p + 2);
            continue;
        }
        if ch == b'|' {
            skip_next = true;
            i += 1;
            continue;
        }
        if !(ch.is_ascii_alphabetic() || ch == b'_') || (i > 0 && ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut iterated = false;
        loop {
            let s = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            segs.push(expr[s..i].to_string());
            if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|&c| ident(c)) {
                i += 1;
                continue;
            }
            if b.get(i) == Some(&b'[') && matches!(b.get(i + 1), Some(b'\'' | b'"')) {
                let q = b[i + 1];
                if let Some(len) = b[i + 2..].iter().position(|&c| c == q)
                    && b.get(i + 2 + len + 1) == Some(&b']')
                {
                    let inner = &expr[i + 2..i + 2 + len];
                    segs.push(if inner.contains('.') {
                        format!("'{inner}'")
                    } else {
                        inner.to_string()
                    });
                    i += len + 4;
                    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|&c| ident(c)) {
                        i += 1;
                        continue;
                    }
                }
            }
            break;
        }
        if let Some(last) = segs.last()
            && matches!(last.as_str(), "items" | "keys" | "values")
            && b.get(i) == Some(&b'(')
        {
            segs.pop();
            iterated = true;
        }
        let word = segs.join(".");
        match word.as_str() {
            "is" => skip_next = true,
            // `is not defined`: still a test name next.
            "not" => {}
            _ if skip_next => skip_next = false,
            w if KEYWORDS.contains(&w) => {}
            _ => out.push(Path { segs, iterated }),
        }
    }
    out
}

/// Jinja's own words, never keys.
const KEYWORDS: [&str; 22] = [
    "for", "in", "if", "elif", "else", "endif", "endfor", "set", "not", "and", "or", "is", "true",
    "false", "True", "False", "none", "None", "loop", "endmacro", "macro", "with",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue(templates: &[&str], default_json: &str) -> KeyCatalogue {
        let mut pack = PackConfig::default();
        for (i, t) in templates.iter().enumerate() {
            pack.files.insert(
                format!(
                    "{}/repository/conf/f{i}.xml.j2",
                    layout::CONFIG_TEMPLATES_DIR
                ),
                t.to_string(),
            );
        }
        pack.files.insert(
            layout::KEY_RULE_FILES[0].to_string(),
            default_json.to_string(),
        );
        KeyCatalogue::of(&pack).unwrap()
    }

    #[test]
    fn template_variables_loops_and_rule_files_are_keys() {
        let c = catalogue(
            &[
                "<a>{{server.hostname}}</a>{% if apim.cors.allow_origins is defined %}\
                 {{ apim.cors.allow_origins | join(',') }}{% endif %}",
                "{% for env in apim.gateway.environment %}{{env.name}}{% endfor %}\
                 {% for k, v in system.parameter.items() %}{{k}}{% endfor %}\
                 {% set t = apim.throttling %}{{ t.enable_unlimited_tier }}\
                 {{ synapse_properties['synapse.commons.json.buildValidNCNames'] }}",
            ],
            r#"{"server.offset": "0", "datasource.$1.type": "h2", "server.base_path,": "x",
                "database.apim_db.url": "jdbc:mysql://$ref{database.apim_db.hostname}/x"}"#,
        );
        for key in [
            "server.hostname",
            "apim.cors.allow_origins",
            "apim.gateway.environment",
            "system.parameter.anything",
            "apim.throttling.enable_unlimited_tier",
            "synapse_properties.'synapse.commons.json.buildValidNCNames'",
            "server.offset",
            "datasource.WSO2AM_DB.type",
            "server.base_path",
            "database.apim_db.hostname",
        ] {
            assert!(c.knows(key), "{key}");
        }
        for key in [
            "apim.cors.allow_orgins",
            "server.hostnme",
            "defined",
            "join",
            "datasource.x.url",
        ] {
            assert!(!c.knows(key), "{key}");
        }
        assert_eq!(
            c.closest("apim.cors.allow_orgins").as_deref(),
            Some("apim.cors.allow_origins")
        );
    }
}
