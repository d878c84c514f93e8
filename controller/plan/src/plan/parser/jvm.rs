//! `[jvm]`: heap sizes and JVM options for every node, and per role or node in the scopes
//! `[jvm."role:NAME"]` and `[jvm."node:NAME"]` (as `[overrides]` names them). Each value is
//! checked where it is written; how scopes combine for a node is checked by the validator.

use super::overrides::scope;
use crate::catalogue::jvm::{self, HEAP_CEILING, HEAP_FLOOR, RESERVED_OPTIONS};
use crate::diag::Diagnostic;
use crate::plan::walk::Fields;
use crate::plan::{At, HeapSize, JvmScope, JvmSettings, Scope};

/// A `[jvm]` scope, for hints.
const JVM_EXAMPLE: &str = "e.g. [jvm.\"role:gateway\"] or [jvm.\"node:gw-1\"] with heap_max = \"4g\"; \
     cluster-wide settings go in [jvm] itself";

/// `[jvm]`: the cluster scope (the table's own fields) first, then its scope tables in source
/// order.
pub(super) fn jvm(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Vec<JvmScope> {
    let Some(mut f) = root.table("jvm", out) else {
        return Vec::new();
    };
    let mut scopes = vec![JvmScope {
        scope: At::new(Scope::All, f.span.clone()),
        settings: settings(&mut f, out),
    }];
    let is_scope = |k: &str| k.contains(':') || k == "all";
    for (key, v) in f.entries() {
        if !is_scope(&key.value) {
            continue;
        }
        if key.value == "all" {
            out.push(
                Diagnostic::error(key.span.clone(), "[jvm] scope `all` repeats [jvm] itself")
                    .with_hint("write cluster-wide heap_min, heap_max and options in [jvm]"),
            );
            continue;
        }
        let Some(scope) = scope(&key, "[jvm]", JVM_EXAMPLE, out) else {
            continue;
        };
        let Some(t) = v.get_ref().as_table() else {
            out.push(
                Diagnostic::error(v.span(), format!("{} must be a table", scope.jvm_table()))
                    .with_hint(JVM_EXAMPLE),
            );
            continue;
        };
        let mut sf = Fields::new(t, scope.jvm_table(), v.span());
        let settings = settings(&mut sf, out);
        sf.finish(out);
        scopes.push(JvmScope {
            scope: At::new(scope, key.span.clone()),
            settings,
        });
    }
    f.finish_except(is_scope, out);
    scopes
}

/// The fields of one scope: each size and option checked where it is written, and a minimum
/// above the maximum of the same scope.
fn settings(f: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> JvmSettings {
    let heap_min = size(f, "heap_min", out);
    let heap_max = size(f, "heap_max", out);
    if let (Some(min), Some(max)) = (&heap_min, &heap_max)
        && min.value.bytes > max.value.bytes
    {
        out.push(
            Diagnostic::error(
                min.span.clone(),
                format!(
                    "`heap_min` {} in {} is above its `heap_max` {}",
                    min.value.text, f.name, max.value.text
                ),
            )
            .with_hint("the initial heap (-Xms) cannot exceed the maximum heap (-Xmx)"),
        );
    }
    let options = f
        .strings("options", out)
        .unwrap_or_default()
        .into_iter()
        .filter(|o| option_ok(o, &f.name, out))
        .collect();
    JvmSettings {
        heap_min,
        heap_max,
        options,
    }
}

/// A heap size: `<digits><k|m|g|t>` within [`HEAP_FLOOR`]..=[`HEAP_CEILING`].
fn size(
    f: &mut Fields<'_, '_>,
    key: &'static str,
    out: &mut Vec<Diagnostic>,
) -> Option<At<HeapSize>> {
    let s = f.string(key, out)?;
    let Some((bytes, text)) = jvm::parse_size(s.value.trim()).filter(|_| s.value.trim() == s.value)
    else {
        out.push(
            Diagnostic::error(
                s.span,
                format!("`{key}` in {} is `{}`, not a heap size", f.name, s.value),
            )
            .with_hint(
                "a whole number and a unit k, m, g or t, as the JVM takes it: \"512m\", \"2g\"",
            ),
        );
        return None;
    };
    if !(HEAP_FLOOR..=HEAP_CEILING).contains(&bytes) {
        out.push(
            Diagnostic::error(
                s.span,
                format!(
                    "`{key}` in {} is {text}, outside {}m..={}g",
                    f.name,
                    jvm::mib(HEAP_FLOOR),
                    HEAP_CEILING / jvm::GIB
                ),
            )
            .with_hint("API Manager does not start in less than 256m; did you mean another unit?"),
        );
        return None;
    }
    Some(At::new(HeapSize { bytes, text }, s.span))
}

/// One JVM option: one word starting with `-`, not one apimctl sets itself.
fn option_ok(o: &At<String>, table: &str, out: &mut Vec<Diagnostic>) -> bool {
    let v = &o.value;
    let problem = if !v.starts_with('-') || v.len() < 2 {
        Some((
            format!("option `{v}` in {table} is not a JVM option (they start with `-`)"),
            "e.g. options = [\"-XX:+UseG1GC\", \"-Dfile.encoding=UTF-8\"]".to_string(),
        ))
    } else if v.chars().any(char::is_whitespace) {
        Some((
            format!("option `{v}` in {table} holds white space"),
            format!(
                "the start scripts expand ${} unquoted, so the shell would split it into \
                 several arguments; give each argument as its own option",
                jvm::JAVA_OPTS
            ),
        ))
    } else {
        RESERVED_OPTIONS
            .iter()
            .find(|(prefix, _)| v.starts_with(prefix))
            .map(|(prefix, instead)| {
                (
                    format!("option `{v}` in {table} sets `{prefix}`, which apimctl sets"),
                    format!("use {instead} instead"),
                )
            })
    };
    match problem {
        Some((message, hint)) => {
            out.push(Diagnostic::error(o.span.clone(), message).with_hint(hint));
            false
        }
        None => true,
    }
}
