//! `[drivers]` and `[databases.*] init`: every server database needs its engine's JDBC driver
//! (the packs ship none), and apimctl creates only the schemas it can (docs/plan.md).

use std::collections::BTreeSet;

use super::Options;
use crate::catalogue::DbType;
use crate::catalogue::database::schema_scripts;
use crate::diag::Diagnostic;
use crate::plan::{Database, DbInit, Driver, Plan};
use crate::secrets::EnvSource;

/// The databases of `p` its nodes use.
fn used(p: &Plan) -> impl Iterator<Item = &Database> {
    [&p.apim_db, &p.shared_db].into_iter().flatten()
}

pub(super) fn check(p: &Plan, env: &dyn EnvSource, opts: Options, out: &mut Vec<Diagnostic>) {
    let mut engines = BTreeSet::new();
    for db in used(p) {
        let t = db.db_type.value;
        if t == DbType::H2 {
            if db.init.value == DbInit::IfEmpty {
                out.push(
                    Diagnostic::error(
                        db.init.span.clone(),
                        format!(
                            "{} is H2: the product creates its embedded databases itself",
                            db.id
                        ),
                    )
                    .with_hint("remove `init`"),
                );
            }
            continue;
        }
        engines.insert(t);
        if !p.drivers.contains_key(&t) {
            let jar = t.driver_hint().unwrap_or_default();
            out.push(
                Diagnostic::error(
                    db.db_type.span.clone(),
                    format!(
                        "{} is {}, and [drivers] has no `{}` jar: the packs ship no JDBC driver \
                         for it and the servers would not start",
                        db.id,
                        t.plan_name(),
                        t.plan_name()
                    ),
                )
                .with_hint(format!(
                    "get {jar} and add [drivers] {} = {{ path = \"…\", sha256 = \"…\" }}",
                    t.plan_name()
                )),
            );
        }
        if db.init.value != DbInit::IfEmpty {
            continue;
        }
        if !t.init_supported() {
            let scripts = schema_scripts(db.id, t).join(", ");
            out.push(
                Diagnostic::error(
                    db.init.span.clone(),
                    format!(
                        "apimctl does not create {} schemas: run {scripts} of the pack against \
                         {} as its owner before applying",
                        t.plan_name(),
                        db.id
                    ),
                )
                .with_hint("remove `init` (the default `never` leaves the schema to you)"),
            );
        } else if db.endpoint().is_none() {
            out.push(
                Diagnostic::error(
                    db.init.span.clone(),
                    format!(
                        "`init` needs {}'s host, port and database name; its `url` is not a \
                         jdbc:mysql://, jdbc:mariadb:// or jdbc:postgresql://host:port/name URL",
                        db.id
                    ),
                )
                .with_hint("write host, port and name instead of url"),
            );
        }
    }
    for d in p.drivers.values() {
        check_driver(p, d, env, opts, out);
        if !engines.contains(&d.db_type) {
            out.push(
                Diagnostic::warning(
                    d.path.span.clone(),
                    format!(
                        "no database is {}: the `{}` driver is not placed on any node",
                        d.db_type.plan_name(),
                        d.db_type.plan_name()
                    ),
                )
                .with_hint("remove it, or check [databases.*] type"),
            );
        }
    }
}

/// A driver's digest is well formed and, when files are verified, matches a jar.
fn check_driver(
    p: &Plan,
    d: &Driver,
    env: &dyn EnvSource,
    opts: Options,
    out: &mut Vec<Diagnostic>,
) {
    let sha = d.sha256.value.to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        out.push(
            Diagnostic::error(d.sha256.span.clone(), "sha256 must be 64 hex digits")
                .with_hint("run `sha256sum` on the jar"),
        );
        return;
    }
    if !d.path.value.ends_with(".jar") {
        out.push(
            Diagnostic::error(
                d.path.span.clone(),
                format!("driver `{}` is not a .jar", d.path.value),
            )
            .with_hint("the servers load drivers from jars in repository/components/lib"),
        );
        return;
    }
    if opts.verify_packs
        && let Err(d) = check_driver_file(p, d, env)
    {
        out.push(d);
    }
}

/// Reads driver `d`'s jar: its sha256 must be the plan's and it must open as a zip (a jar).
/// Drivers are small, so `apimctl apply` runs this on every one before it uploads any.
pub fn check_driver_file(p: &Plan, d: &Driver, env: &dyn EnvSource) -> Result<(), Diagnostic> {
    let sha = d.sha256.value.to_ascii_lowercase();
    let path = p.resolve_path(&d.path.value);
    let cache = crate::digest_cache::default_dir(&|k| env.var(k));
    match crate::digest_cache::sha256_cached(&path, cache.as_deref()) {
        Ok(actual) if actual == sha => std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| zip::ZipArchive::new(f).map_err(|e| e.to_string()))
            .map(|_| ())
            .map_err(|e| {
                Diagnostic::error(
                    d.path.span.clone(),
                    format!("driver `{}` is not a jar: {e}", path.display()),
                )
                .with_hint("a JDBC driver is a zip-format .jar")
            }),
        Ok(actual) => Err(Diagnostic::error(
            d.sha256.span.clone(),
            format!(
                "driver `{}` has sha256 {actual}, the plan says {sha}",
                path.display()
            ),
        )
        .with_hint("a different jar than the plan names: check the file or update sha256")),
        Err(e) => Err(Diagnostic::error(
            d.path.span.clone(),
            format!("driver `{}` cannot be read: {e}", path.display()),
        )),
    }
}
