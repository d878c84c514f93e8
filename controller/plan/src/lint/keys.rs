//! A node's final document as dotted keys, each with where it came from, and the keys its pack
//! never reads.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Value;

use super::KeyCatalogue;
use crate::diag::Diagnostic;
use crate::plan::{Node, Override, Plan, Scope};

/// A document's leaves by dotted key (arrays, of tables too, are leaves; a segment with a dot in
/// it is quoted as the product quotes it), and whether each is the pack's own.
pub(super) struct Flat {
    /// Key → (value, whether the base file has the same value there).
    pub keys: BTreeMap<String, (Value, bool)>,
}

impl Flat {
    /// `doc` flattened; a key whose value is the `base`'s is the pack's.
    pub fn new(doc: &toml::Table, base: &toml::Table) -> Flat {
        let mut base_keys = BTreeMap::new();
        flatten("", base, &mut base_keys);
        let mut keys = BTreeMap::new();
        flatten("", doc, &mut keys);
        Flat {
            keys: keys
                .into_iter()
                .map(|(k, v)| {
                    let own = base_keys.get(&k) == Some(&v);
                    (k, (v, own))
                })
                .collect(),
        }
    }
}

/// Dotted leaf keys of `t` below `prefix`; `[secrets]` is read apart by the product, so left out.
pub(super) fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, Value>) {
    for (k, v) in t {
        if prefix.is_empty() && k == "secrets" {
            continue;
        }
        let seg = if k.contains('.') {
            format!("'{k}'")
        } else {
            k.clone()
        };
        let path = if prefix.is_empty() {
            seg
        } else {
            format!("{prefix}.{seg}")
        };
        match v {
            Value::Table(t) => flatten(&path, t, out),
            v => {
                out.insert(path, v.clone());
            }
        }
    }
}

/// Who wrote a key the pack does not read.
pub(super) enum Source<'a> {
    /// apimctl's renderer.
    Renderer,
    /// An `[overrides]` fragment, and the key's place in the plan when found.
    Override(&'a Override, Option<Range<usize>>),
}

/// The override that gives `node` its `key` (the last one that writes it: node, then role, then
/// all), else the renderer.
pub(super) fn source<'a>(plan: &'a Plan, node: &Node, key: &str) -> Source<'a> {
    let rank = |o: &Override| match &o.scope.value {
        Scope::Node(n) if *n == node.name.value => Some(2),
        Scope::Role(r) if *r == node.role.value => Some(1),
        Scope::All => Some(0),
        _ => None,
    };
    let mut applying: Vec<(usize, usize, &Override)> = plan
        .overrides
        .iter()
        .enumerate()
        .filter_map(|(i, o)| rank(o).map(|r| (r, i, o)))
        .collect();
    applying.sort_by_key(|(r, i, _)| std::cmp::Reverse((*r, *i)));
    for (_, _, o) in applying {
        let mut keys = BTreeMap::new();
        flatten("", &o.table, &mut keys);
        if keys.contains_key(key) {
            return Source::Override(o, key_span(o, key));
        }
    }
    Source::Renderer
}

/// Where `key` is written in an override's fragment, as a span of the plan.
fn key_span(o: &Override, key: &str) -> Option<Range<usize>> {
    let doc = toml_edit::Document::parse(o.text.as_str()).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let segs: Vec<String> = split_key(key);
    let (last, parents) = segs.split_last()?;
    for s in parents {
        table = table.get(s)?.as_table_like()?;
    }
    let (k, _) = table.get_key_value(last)?;
    let span = k.span()?;
    Some(o.content_offset + span.start..o.content_offset + span.end)
}

fn split_key(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        if let Some(q) = rest.strip_prefix('\'')
            && let Some(end) = q.find('\'')
        {
            out.push(q[..end].to_string());
            rest = q[end + 1..].strip_prefix('.').unwrap_or("");
            continue;
        }
        let (seg, next) = rest.split_once('.').unwrap_or((rest, ""));
        out.push(seg.to_string());
        rest = next;
    }
    out
}

/// Warnings for the keys of `doc` that `catalogue` does not know (the pack's own keys are not
/// checked: they are the product's business).
pub(super) fn unknown(
    plan: &Plan,
    node: &Node,
    doc: &Flat,
    catalogue: &KeyCatalogue,
) -> Vec<Diagnostic> {
    let release = plan.cluster.product.value;
    doc.keys
        .iter()
        .filter(|(k, (_, own))| !own && !catalogue.knows(k))
        .map(|(key, _)| {
            let (span, who) = match source(plan, node, key) {
                Source::Override(o, span) => (
                    span.unwrap_or(o.scope.span.clone()),
                    format!("set by the override \"{}\"", scope_name(&o.scope.value)),
                ),
                Source::Renderer => (
                    node.name.span.clone(),
                    "written by apimctl's renderer".to_string(),
                ),
            };
            let d = Diagnostic::warning(
                span,
                format!(
                    "node {}: `{key}` ({who}) is read by nothing in the {release} pack (no \
                     template, default, inference or key mapping names it): the product would \
                     ignore it",
                    node.name.value
                ),
            );
            match catalogue.closest(key) {
                Some(k) => d.with_hint(format!("did you mean `{k}`?")),
                None => d,
            }
        })
        .collect()
}

/// An override scope as written in the plan.
pub(super) fn scope_name(s: &Scope) -> String {
    match s {
        Scope::All => "all".to_string(),
        Scope::Role(r) => format!("role:{r}"),
        Scope::Node(n) => format!("node:{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_segments_split_and_flatten_alike() {
        let t: toml::Table = "[synapse_properties]\n'a.b' = 1\n[secrets]\nx = \"y\"\n"
            .parse()
            .unwrap();
        let mut out = BTreeMap::new();
        flatten("", &t, &mut out);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["synapse_properties.'a.b'"]);
        assert_eq!(
            split_key("synapse_properties.'a.b'.c"),
            ["synapse_properties", "a.b", "c"]
        );
    }
}
