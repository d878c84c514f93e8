//! The cluster-wide sections: `[cluster]`, `[distributions]`, `[admin]`, `[databases]`,
//! `[user_store]`, `[tls]`, `[analytics]` and `[rollout]`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{SPAN0, choice, parse_duration, secret};
use crate::catalogue::defaults::{self, StoreType};
use crate::catalogue::{DbType, PackKind, Product};
use crate::diag::{Diagnostic, did_you_mean};
use crate::plan::walk::Fields;
use crate::plan::{
    Admin, Analytics, At, Cluster, Database, DbInit, Distribution, DriftMode, Driver, Issuer,
    OnFailure, Rollout, SecretSource, SecureVault, StartOrder, Tls,
};

/// `[cluster]`.
pub(super) fn cluster(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Option<Cluster> {
    let Some(mut c) = root.table("cluster", out) else {
        root.missing(
            "cluster",
            out,
            "add [cluster] with name, product, install_dir and java_home",
        );
        return None;
    };
    let name = c.req_string("name", out, "name = \"apim-prod\"");
    let product = c
        .req_string("product", out, "product = \"wso2am-4.5.0\"")
        .and_then(|p| match Product::parse(&p.value) {
            Ok(product) => Some(At::new(product, p.span)),
            Err(msg) => {
                out.push(
                    Diagnostic::error(p.span, msg)
                        .with_hint("e.g. product = \"wso2am-3.2.0\" or \"wso2am-4.5.0\""),
                );
                None
            }
        });
    let install_dir = c
        .string("install_dir", out)
        .unwrap_or_else(|| At::new("/opt/wso2".into(), c.span.clone()));
    let java_home = c.req_string(
        "java_home",
        out,
        "java_home = \"/usr/lib/jvm/java-17-openjdk-amd64\"",
    );
    let run_as = c.string("run_as", out);
    c.finish(out);
    Some(Cluster {
        name: name?,
        product: product?,
        install_dir,
        java_home: java_home?,
        run_as,
    })
}

/// `[distributions]`: one `{ path, sha256 }` per pack.
pub(super) fn distributions(
    root: &mut Fields<'_, '_>,
    out: &mut Vec<Diagnostic>,
) -> BTreeMap<PackKind, Distribution> {
    let mut distributions = BTreeMap::new();
    let Some(mut d) = root.table("distributions", out) else {
        root.missing(
            "distributions",
            out,
            "add [distributions] with the pack(s) to install",
        );
        return distributions;
    };
    for kind in PackKind::ALL {
        let Some(v) = d.raw(kind.plan_key()) else {
            continue;
        };
        let Some(t) = v.get_ref().as_table() else {
            out.push(Diagnostic::error(
                v.span(),
                format!(
                    "`distributions.{}` must be {{ path = \"…\", sha256 = \"…\" }}",
                    kind.plan_key()
                ),
            ));
            continue;
        };
        let mut f = Fields::new(t, format!("`distributions.{}`", kind.plan_key()), v.span());
        let path = f.req_string("path", out, "the pack's zip, relative to the plan");
        let sha = f.req_string("sha256", out, "`sha256sum` of the zip");
        f.finish(out);
        if let (Some(path), Some(sha256)) = (path, sha) {
            distributions.insert(kind, Distribution { kind, path, sha256 });
        }
    }
    d.finish(out);
    distributions
}

/// `[drivers]`: the JDBC driver jar of each engine the databases use.
pub(super) fn drivers(
    root: &mut Fields<'_, '_>,
    out: &mut Vec<Diagnostic>,
) -> BTreeMap<DbType, Driver> {
    let mut drivers = BTreeMap::new();
    let Some(mut d) = root.table("drivers", out) else {
        return drivers;
    };
    for db_type in [
        DbType::Mysql,
        DbType::Postgres,
        DbType::Mssql,
        DbType::Oracle,
    ] {
        let key = db_type.plan_name();
        let Some(v) = d.raw(key) else {
            continue;
        };
        let Some(t) = v.get_ref().as_table() else {
            out.push(Diagnostic::error(
                v.span(),
                format!("`drivers.{key}` must be {{ path = \"…\", sha256 = \"…\" }}"),
            ));
            continue;
        };
        let mut f = Fields::new(t, format!("`drivers.{key}`"), v.span());
        let path = f.req_string("path", out, "the driver's jar, relative to the plan");
        let sha = f.req_string("sha256", out, "`sha256sum` of the jar");
        f.finish(out);
        if let (Some(path), Some(sha256)) = (path, sha) {
            drivers.insert(
                db_type,
                Driver {
                    db_type,
                    path,
                    sha256,
                },
            );
        }
    }
    d.finish(out);
    drivers
}

/// `[admin]`.
pub(super) fn admin(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Option<Admin> {
    let Some(mut a) = root.table("admin", out) else {
        root.missing("admin", out, "add [admin] with username and password");
        return None;
    };
    let username = a
        .string("username", out)
        .unwrap_or_else(|| At::new(defaults::ADMIN_USERNAME.into(), a.span.clone()));
    let password = secret(&mut a, "password", out);
    if password.is_none() && a.key_span("password").is_none() {
        a.missing(
            "password",
            out,
            "password = { env = \"APIM_ADMIN_PASSWORD\" }",
        );
    }
    a.finish(out);
    password.map(|password| Admin { username, password })
}

/// `[databases]`: `apim_db` and `shared_db`.
pub(super) fn databases(
    root: &mut Fields<'_, '_>,
    out: &mut Vec<Diagnostic>,
) -> (Option<Database>, Option<Database>, Vec<&'static str>) {
    let Some(mut dbs) = root.table("databases", out) else {
        return (None, None, Vec::new());
    };
    let written = ["apim_db", "shared_db"]
        .into_iter()
        .filter(|id| dbs.key_span(id).is_some())
        .collect();
    let apim_db = database(&mut dbs, "apim_db", out);
    let shared_db = database(&mut dbs, "shared_db", out);
    dbs.finish(out);
    (apim_db, shared_db, written)
}

fn database(
    dbs: &mut Fields<'_, '_>,
    id: &'static str,
    out: &mut Vec<Diagnostic>,
) -> Option<Database> {
    let mut f = dbs.table(id, out)?;
    f.name = format!("[databases.{id}]");
    let span = f.span.clone();
    let t = f.req_string(
        "type",
        out,
        "type = \"mysql\" (mysql, postgres, mssql, oracle, h2)",
    );
    let db_type = t.and_then(|t| match DbType::parse(&t.value) {
        Some(d) => Some(At::new(d, t.span)),
        None => {
            let mut d = Diagnostic::error(
                t.span.clone(),
                format!("unknown database type `{}`", t.value),
            );
            d = match did_you_mean(&t.value, DbType::NAMES) {
                Some(near) => d.with_hint(format!("did you mean `{near}`?")),
                None => d.with_hint(format!("types: {}", DbType::NAMES.join(", "))),
            };
            out.push(d);
            None
        }
    });
    let host = f.string("host", out);
    let port = f.int("port", 1..=65535, out);
    let name = f.string("name", out);
    let username = f.req_string("username", out, "the database user");
    let password = secret(&mut f, "password", out);
    if f.key_span("password").is_none() {
        f.missing("password", out, "password = { env = \"APIM_DB_PASSWORD\" }");
    }
    let url = f.string("url", out);
    let init = choice(
        &mut f,
        "init",
        &[("never", DbInit::Never), ("if-empty", DbInit::IfEmpty)],
        DbInit::Never,
        out,
    );
    let db_type = db_type?;
    if db_type.value != DbType::H2 && url.is_none() {
        if host.is_none() {
            f.missing(
                "host",
                out,
                "the database server's host name (or give a JDBC `url`)",
            );
        }
        if name.is_none() {
            f.missing("name", out, "the database name (or give a JDBC `url`)");
        }
    }
    f.finish(out);
    Some(Database {
        id,
        port: port.map_or(db_type.value.default_port(), |p| p.value as u16),
        db_type,
        host,
        name,
        username: username?,
        password: password?,
        url,
        init,
        span,
    })
}

/// `[user_store] type`.
pub(super) fn user_store(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> At<String> {
    let default = || At::new(defaults::USER_STORE_TYPE.into(), SPAN0);
    let Some(mut u) = root.table("user_store", out) else {
        return default();
    };
    let t = u.string("type", out);
    u.finish(out);
    t.unwrap_or_else(default)
}

/// `[tls]`: who issues the keystores, their names, aliases and passwords.
pub(super) fn tls(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Option<Tls> {
    let Some(mut t) = root.table("tls", out) else {
        root.missing(
            "tls",
            out,
            "add [tls] with issuer = \"cluster-ca\" and keystore_password",
        );
        return None;
    };
    let issuer = choice(
        &mut t,
        "issuer",
        &[
            ("cluster-ca", Issuer::ClusterCa),
            ("provided", Issuer::Provided),
            ("pack-default", Issuer::PackDefault),
        ],
        Issuer::ClusterCa,
        out,
    );
    let keystore_type = choice(
        &mut t,
        "keystore_type",
        &[
            (StoreType::Jks.as_str(), StoreType::Jks),
            (StoreType::Pkcs12.as_str(), StoreType::Pkcs12),
        ],
        StoreType::Jks,
        out,
    )
    .value;
    let keystore_file = t
        .string("keystore_file", out)
        .map_or(keystore_type.keystore_file().to_string(), |s| s.value);
    let keystore_alias = t
        .string("keystore_alias", out)
        .map_or(defaults::KEY_ALIAS.to_string(), |s| s.value);
    let keystore_password = secret(&mut t, "keystore_password", out);
    let primary_keystore_file = t.string("primary_keystore_file", out).map(|s| s.value);
    let primary_alias = t
        .string("primary_alias", out)
        .map_or(defaults::PRIMARY_ALIAS.to_string(), |s| s.value);
    let truststore_file = t
        .string("truststore_file", out)
        .map_or(defaults::TRUSTSTORE_FILE.to_string(), |s| s.value);
    let span = t.span.clone();
    let shipped_password = || {
        At::new(
            SecretSource::Default(defaults::STORE_PASSWORD),
            span.clone(),
        )
    };
    let truststore_password =
        secret(&mut t, "truststore_password", out).unwrap_or_else(shipped_password);
    let provided_keystore = t.string("provided_keystore", out);
    let provided_truststore = t.string("provided_truststore", out);
    let keystore_password = match keystore_password {
        Some(p) => p,
        None if issuer.value == Issuer::PackDefault => shipped_password(),
        None => {
            t.missing(
                "keystore_password",
                out,
                "keystore_password = { env = \"APIM_KEYSTORE_PASSWORD\" } (also the key password)",
            );
            shipped_password()
        }
    };
    match issuer.value {
        Issuer::Provided if provided_keystore.is_none() => t.missing(
            "provided_keystore",
            out,
            "the keystore file to ship to every node, relative to the plan",
        ),
        Issuer::PackDefault => out.push(
            Diagnostic::warning(
                issuer.span.clone(),
                "issuer = \"pack-default\" keeps the shipped CN=localhost certificates",
            )
            .with_hint("peers will fail hostname verification; use \"cluster-ca\" outside demos"),
        ),
        _ => {}
    }
    t.finish(out);
    Some(Tls {
        issuer,
        keystore_type,
        keystore_file,
        keystore_alias,
        keystore_password,
        primary_keystore_file,
        primary_alias,
        truststore_file,
        truststore_password,
        provided_keystore,
        provided_truststore,
    })
}

/// `[analytics]`.
pub(super) fn analytics(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Analytics {
    let mut analytics = Analytics::default();
    if let Some(mut a) = root.table("analytics", out) {
        if let Some(enabled) = a.bool("enabled", out) {
            analytics.enabled = enabled.value;
            analytics.enabled_span = enabled.span;
        }
        analytics.config_endpoint = a.string("config_endpoint", out);
        analytics.auth_token = secret(&mut a, "auth_token", out);
        a.finish(out);
    }
    analytics
}

/// `[secure_vault]`.
pub(super) fn secure_vault(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> SecureVault {
    let mut vault = SecureVault::default();
    if let Some(mut v) = root.table("secure_vault", out) {
        if let Some(enabled) = v.bool("enabled", out) {
            vault.enabled = enabled.value;
            vault.span = enabled.span;
        }
        v.finish(out);
    }
    vault
}

/// `[rollout]`.
pub(super) fn rollout(root: &mut Fields<'_, '_>, out: &mut Vec<Diagnostic>) -> Rollout {
    let mut r = Rollout {
        max_parallel: 2,
        health_timeout: Duration::from_secs(600),
        on_failure: OnFailure::Halt,
        start_order: StartOrder::Graph,
        drift: At::new(DriftMode::Report, SPAN0),
    };
    let Some(mut f) = root.table("rollout", out) else {
        return r;
    };
    if let Some(m) = f.int("max_parallel", 1..=1000, out) {
        r.max_parallel = m.value as u32;
    }
    if let Some(t) = f.string("health_timeout", out) {
        match parse_duration(&t.value) {
            Some(d) if d.as_secs() > 0 => r.health_timeout = d,
            _ => out.push(
                Diagnostic::error(
                    t.span,
                    format!("`health_timeout` `{}` is not a duration", t.value),
                )
                .with_hint("e.g. \"90s\", \"5m\", \"1h\""),
            ),
        }
    }
    r.on_failure = choice(
        &mut f,
        "on_failure",
        &[("halt", OnFailure::Halt), ("rollback", OnFailure::Rollback)],
        OnFailure::Halt,
        out,
    )
    .value;
    r.start_order = choice(
        &mut f,
        "start_order",
        &[("graph", StartOrder::Graph), ("strict", StartOrder::Strict)],
        StartOrder::Graph,
        out,
    )
    .value;
    r.drift = choice(
        &mut f,
        "drift",
        &[("report", DriftMode::Report), ("repair", DriftMode::Repair)],
        DriftMode::Report,
        out,
    );
    f.finish(out);
    r
}
