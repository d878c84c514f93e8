//! The plan's parser: one function per section of `plan.toml`, on the schema walker
//! ([`super::walk`]), collecting every problem instead of stopping at the first.
//!
//! [`parse`] reads the sections in a fixed order ([`settings`]: `[cluster]`, `[distributions]`,
//! `[admin]`, `[databases]`, `[user_store]`, `[tls]`; [`topology`]: `[hosts]`, `[[machines]]`,
//! `[[nodes]]`, `[load_balancers]`, `[[gateway_environments]]`; then `[gateway_artifacts]`,
//! `[analytics]`,
//! `[secure_vault]`, `[rollout]`,
//! [`jvm`] and [`overrides`]); the order decides how unknown-field hints list the known ones.

mod artifacts;
mod jvm;
mod overrides;
mod settings;
mod topology;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::walk::{Fields, SpannedValue};
use super::{At, Plan, Secret, SecretSource};
use crate::diag::{Diagnostic, did_you_mean};

/// Parses a duration such as `90s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        any = true;
    }
    if !digits.is_empty() || !any {
        return None;
    }
    Some(Duration::from_secs(total))
}

pub(super) fn secret(
    f: &mut Fields<'_, '_>,
    key: &'static str,
    out: &mut Vec<Diagnostic>,
) -> Option<Secret> {
    let v = f.raw(key)?;
    secret_value(v, &format!("`{key}` in {}", f.name), out)
}

fn secret_value(v: &SpannedValue<'_>, what: &str, out: &mut Vec<Diagnostic>) -> Option<Secret> {
    if let Some(s) = v.get_ref().as_str() {
        out.push(
            Diagnostic::warning(v.span(), format!("{what} is a literal secret in the plan"))
                .with_hint(
                    "use { env = \"VAR\" } or { file = \"path\" } so the plan can be shared",
                ),
        );
        return Some(At::new(SecretSource::Literal(s.to_string()), v.span()));
    }
    let Some(t) = v.get_ref().as_table() else {
        out.push(Diagnostic::error(
            v.span(),
            format!("{what} must be {{ env = \"VAR\" }}, {{ file = \"path\" }} or a string"),
        ));
        return None;
    };
    let mut f = Fields::new(t, what.to_string(), v.span());
    let env = f.string("env", out);
    let file = f.string("file", out);
    f.finish(out);
    match (env, file) {
        (Some(e), None) => Some(At::new(SecretSource::Env(e.value), e.span)),
        (None, Some(p)) => Some(At::new(SecretSource::File(PathBuf::from(p.value)), p.span)),
        _ => {
            out.push(
                Diagnostic::error(
                    v.span(),
                    format!("{what} needs exactly one of `env` or `file`"),
                )
                .with_hint("e.g. password = { env = \"APIM_DB_PASSWORD\" }"),
            );
            None
        }
    }
}

pub(super) fn ip(
    f: &mut Fields<'_, '_>,
    key: &'static str,
    out: &mut Vec<Diagnostic>,
) -> Option<At<IpAddr>> {
    let s = f.string(key, out)?;
    match s.value.parse::<IpAddr>() {
        Ok(a) => Some(At::new(a, s.span)),
        Err(_) => {
            out.push(
                Diagnostic::error(
                    s.span,
                    format!(
                        "`{key}` in {} must be an IP address, found `{}`",
                        f.name, s.value
                    ),
                )
                .with_hint("hosts files map names to addresses; use the machine's IP"),
            );
            None
        }
    }
}

pub(super) fn choice<T: Copy>(
    f: &mut Fields<'_, '_>,
    key: &'static str,
    options: &[(&'static str, T)],
    default: T,
    out: &mut Vec<Diagnostic>,
) -> At<T> {
    let Some(s) = f.string(key, out) else {
        return At::new(default, f.span.clone());
    };
    if let Some((_, v)) = options.iter().find(|(n, _)| *n == s.value) {
        return At::new(*v, s.span);
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let mut d = Diagnostic::error(
        s.span.clone(),
        format!(
            "`{key}` in {} is `{}`, not one of: {}",
            f.name,
            s.value,
            names.join(", ")
        ),
    );
    if let Some(near) = did_you_mean(&s.value, names.iter().copied()) {
        d = d.with_hint(format!("did you mean `{near}`?"));
    }
    out.push(d);
    At::new(default, s.span)
}

pub(super) const SPAN0: std::ops::Range<usize> = 0..0;

/// Parses plan text. Returns the plan (if the document's shape allowed building one) and every
/// diagnostic found on the way. `path` names the file in messages and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        out.push(
            Diagnostic::error(span, format!("TOML syntax: {}", e.message().trim()))
                .with_hint("see https://toml.io for the syntax"),
        );
    }
    if !errors.is_empty() {
        return (None, out);
    }
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let span = doc.span();
    let root_table = doc.get_ref();
    let mut root = Fields::new(root_table, "the plan", span);
    let plan = parse_root(&mut root, base_dir, text, &mut out);
    root.finish(&mut out);
    out.sort_by_key(|d| (d.span.start, d.span.end));
    (plan, out)
}

/// The whole plan, section by section (the order is the known-fields order in hints).
fn parse_root(
    root: &mut Fields<'_, '_>,
    base_dir: PathBuf,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<Plan> {
    let cluster = settings::cluster(root, out);
    let product = cluster.as_ref().map(|c| c.product.value);
    let distributions = settings::distributions(root, out);
    let drivers = settings::drivers(root, out);
    let admin = settings::admin(root, out);
    let (apim_db, shared_db, databases_written) = settings::databases(root, out);
    let user_store_type = settings::user_store(root, out);
    let tls = settings::tls(root, out);
    let hosts = topology::hosts(root, out);
    let machines = topology::machines(root, out);
    let nodes = topology::nodes(root, out);
    let load_balancers = topology::load_balancers(root, out);
    let gateway_environments = topology::gateway_environments(root, product, out);
    let gateway_artifacts = artifacts::gateway_artifacts(root, out);
    let analytics = settings::analytics(root, out);
    let secure_vault = settings::secure_vault(root, out);
    let rollout = settings::rollout(root, out);
    let jvm = jvm::jvm(root, out);
    let overrides = overrides::overrides(root, text, out);
    Some(Plan {
        base_dir,
        cluster: cluster?,
        distributions,
        admin: admin?,
        apim_db,
        shared_db,
        drivers,
        databases_written,
        user_store_type,
        tls: tls?,
        hosts,
        machines,
        nodes,
        load_balancers,
        gateway_environments,
        gateway_artifacts,
        analytics,
        secure_vault,
        rollout,
        overrides,
        jvm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
