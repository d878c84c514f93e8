//! `[jvm]` across scopes: each scope names a node or a role the plan has, and every node's
//! merged heap has its minimum at or below its maximum (the start scripts' `-Xmx1024m` when no
//! scope sets one).

use std::collections::BTreeMap;

use crate::catalogue::jvm::{self, DEFAULT_HEAP_MAX};
use crate::diag::{Diagnostic, did_you_mean};
use crate::plan::{Plan, Scope};

pub(super) fn check(p: &Plan, out: &mut Vec<Diagnostic>) {
    check_scopes(p, out);
    check_heaps(p, out);
}

fn check_scopes(p: &Plan, out: &mut Vec<Diagnostic>) {
    let product = p.cluster.product.value;
    for s in &p.jvm {
        match &s.scope.value {
            Scope::Node(name) if !p.nodes.iter().any(|n| &n.name.value == name) => {
                let mut d = Diagnostic::error(
                    s.scope.span.clone(),
                    format!("[jvm] settings for unknown node `{name}`"),
                );
                let names = p.nodes.iter().map(|n| n.name.value.as_str());
                if let Some(near) = did_you_mean(name, names) {
                    d = d.with_hint(format!("did you mean `node:{near}`?"));
                }
                out.push(d);
            }
            Scope::Role(role) if product.role_profile(*role).is_none() => {
                out.push(Diagnostic::error(
                    s.scope.span.clone(),
                    format!("[jvm] settings for role `{role}`, which {product} does not have"),
                ));
            }
            _ => {}
        }
    }
}

/// A node's merged `heap_min` above its merged `heap_max` (or above the scripts' default maximum
/// when no scope sets one) is reported once per pair of values, at the value of the narrower
/// scope, naming the nodes it affects.
fn check_heaps(p: &Plan, out: &mut Vec<Diagnostic>) {
    let mut found: BTreeMap<Found, Vec<&str>> = BTreeMap::new();
    for n in &p.nodes {
        let merged = p.jvm_for(n);
        let Some((min, min_scope)) = &merged.heap_min else {
            continue;
        };
        let (span, message, hint) = match &merged.heap_max {
            Some((max, max_scope)) if min.value.bytes > max.value.bytes => {
                let span = if rank(min_scope) >= rank(max_scope) {
                    min.span.clone()
                } else {
                    max.span.clone()
                };
                (
                    span,
                    format!(
                        "`heap_min` {} ({}) is above `heap_max` {} ({})",
                        min.value.text,
                        min_scope.jvm_table(),
                        max.value.text,
                        max_scope.jvm_table()
                    ),
                    "a narrower scope replaces one heap value, not both: set the other one there too"
                        .to_string(),
                )
            }
            None if min.value.bytes > DEFAULT_HEAP_MAX => (
                min.span.clone(),
                format!(
                    "`heap_min` {} ({}) is above the default heap_max {}m (the start scripts' \
                     -Xmx{}m)",
                    min.value.text,
                    min_scope.jvm_table(),
                    jvm::mib(DEFAULT_HEAP_MAX),
                    jvm::mib(DEFAULT_HEAP_MAX)
                ),
                "set `heap_max` as well".to_string(),
            ),
            _ => continue,
        };
        found
            .entry(((span.start, span.end), message, hint))
            .or_default()
            .push(&n.name.value);
    }
    for (((start, end), message, hint), nodes) in found {
        out.push(
            Diagnostic::error(
                start..end,
                format!("{message} for node(s) {}", nodes.join(", ")),
            )
            .with_hint(hint),
        );
    }
}

/// A heap problem: where (start, end), the message and the hint.
type Found = ((usize, usize), String, String);

/// How narrow a scope is: cluster 0, role 1, node 2.
fn rank(s: &Scope) -> u8 {
    match s {
        Scope::All => 0,
        Scope::Role(_) => 1,
        Scope::Node(_) => 2,
    }
}
