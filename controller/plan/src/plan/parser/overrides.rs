//! `[overrides]`: raw `deployment.toml` fragments per scope (`all`, `role:NAME`, `node:NAME`),
//! parsed here so that a TOML error points into the plan at the right line and column.

use crate::catalogue::Role;
use crate::diag::{Diagnostic, did_you_mean};
use crate::plan::walk::Fields;
use crate::plan::{At, Override, Scope};

/// `[overrides]`, in source order.
pub(super) fn overrides(
    root: &mut Fields<'_, '_>,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Vec<Override> {
    let Some(f) = root.table("overrides", out) else {
        return Vec::new();
    };
    let mut result = Vec::new();
    for (key, v) in f.entries() {
        let scope = scope(&key, "override", OVERRIDE_EXAMPLE, out);
        let Some(body) = v.get_ref().as_str() else {
            out.push(Diagnostic::error(
                v.span(),
                format!(
                    "override `{}` must be a string of deployment.toml text",
                    key.value
                ),
            ));
            continue;
        };
        let content_offset = string_content_offset(text, v.span());
        match body.parse::<toml::Table>() {
            Ok(table) => {
                if let Some(scope) = scope {
                    result.push(Override {
                        scope: At::new(scope, key.span.clone()),
                        text: body.to_string(),
                        content_offset,
                        table,
                    });
                }
            }
            Err(e) => {
                let inner = e.span().unwrap_or(0..0);
                let span = (content_offset + inner.start).min(v.span().end)
                    ..(content_offset + inner.end).min(v.span().end);
                out.push(Diagnostic::error(
                    span,
                    format!(
                        "override `{}` is not valid TOML: {}",
                        key.value,
                        e.message().trim()
                    ),
                ));
            }
        }
    }
    result
}

/// An override with a scope, for hints.
const OVERRIDE_EXAMPLE: &str = "e.g. \"role:gateway\" = '''[apim.cors]\\nallow_origins = \"*\"'''";

/// The scope a key names (`what`: `override` or `[jvm]`; `example` shows a good one):
/// `all`, `role:NAME` or `node:NAME`.
pub(super) fn scope(
    key: &At<String>,
    what: &str,
    example: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<Scope> {
    if key.value == "all" {
        Some(Scope::All)
    } else if let Some(r) = key.value.strip_prefix("role:") {
        match Role::parse(r) {
            Some(role) => Some(Scope::Role(role)),
            None => {
                let names = Role::ALL.map(Role::as_str);
                let mut d = Diagnostic::error(
                    key.span.clone(),
                    format!("{what} scope `{}` names no role", key.value),
                );
                if let Some(near) = did_you_mean(r, names) {
                    d = d.with_hint(format!("did you mean `role:{near}`?"));
                }
                out.push(d);
                None
            }
        }
    } else if let Some(n) = key.value.strip_prefix("node:") {
        Some(Scope::Node(n.to_string()))
    } else {
        out.push(
            Diagnostic::error(
                key.span.clone(),
                format!(
                    "{what} scope `{}` is not `all`, `role:NAME` or `node:NAME`",
                    key.value
                ),
            )
            .with_hint(example),
        );
        None
    }
}

/// Where the content of a string literal starts, skipping its opening quotes (and, for multi-line
/// strings, the newline right after them, which TOML trims).
fn string_content_offset(text: &str, span: std::ops::Range<usize>) -> usize {
    let lit = &text[span.clone()];
    for q in ["'''", "\"\"\"", "'", "\""] {
        if lit.starts_with(q) {
            let mut start = span.start + q.len();
            if q.len() == 3 {
                let rest = &text[start..];
                if rest.starts_with("\r\n") {
                    start += 2;
                } else if rest.starts_with('\n') {
                    start += 1;
                }
            }
            return start;
        }
    }
    span.start
}
