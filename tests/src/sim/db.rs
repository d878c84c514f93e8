//! The server's databases at start: a `[database.shared_db]` / `[database.apim_db]` the node's
//! role opens, on MySQL/MariaDB or PostgreSQL, needs its JDBC driver in
//! `repository/components/lib`, a reachable server that accepts the login, and the tables the
//! pack's own `dbscripts/` create (facts and sources: `docs/databases.md`).
//!
//! Each failure is logged with the product's words (tomcat jdbc-pool's pool error with the
//! driver's exception, then the component that could not start) and the server never becomes
//! ready: like the real one, whose user core (shared database) or API manager component (API-M
//! database) does not come up, it keeps running without listening. H2 (and any other) URLs are
//! not checked: the quickstart runs on the packs' own H2 files.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use super::config::{NodeConfig, resolve_value};
use super::hosts::Hosts;
use super::log::CarbonLog;
use super::roles::Role;
use crate::simpack::{APIM_DB_TABLES, SHARED_DB_TABLES};

/// Failure guard for one connection attempt (the product's pools wait longer; a test must not).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const POOL: &str = "org.apache.tomcat.jdbc.pool.ConnectionPool";
const USER_CORE: &str = "org.wso2.carbon.user.core.internal.Activator";
const APIM_COMPONENT: &str = "org.wso2.carbon.apimgt.impl.internal.APIManagerComponent";

/// The database protocol a JDBC URL speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbEngine {
    /// `jdbc:mysql://` (MySQL Connector/J).
    MySql,
    /// `jdbc:mariadb://` (MariaDB Connector/J), same wire protocol.
    MariaDb,
    /// `jdbc:postgresql://` (pgJDBC).
    Postgres,
}

impl DbEngine {
    /// The driver class the product uses when `[database.*] driver` is not set.
    pub fn default_driver(self) -> &'static str {
        match self {
            DbEngine::MySql => "com.mysql.cj.jdbc.Driver",
            DbEngine::MariaDb => "org.mariadb.jdbc.Driver",
            DbEngine::Postgres => "org.postgresql.Driver",
        }
    }
}

/// Where a JDBC URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JdbcTarget {
    /// The protocol.
    pub engine: DbEngine,
    /// Host name or address as written.
    pub host: String,
    /// The port (the engine's default when the URL has none).
    pub port: u16,
    /// The database name (path of the URL, without parameters).
    pub database: String,
}

/// Parses `jdbc:mysql://h:p/db?x`, `jdbc:mariadb://…`, `jdbc:postgresql://…`; anything else
/// (H2, Oracle, SQL Server, malformed) is `None`: not checked here.
pub fn parse_jdbc_url(url: &str) -> Option<JdbcTarget> {
    let (engine, rest, default_port) = if let Some(r) = url.strip_prefix("jdbc:mysql://") {
        (DbEngine::MySql, r, 3306)
    } else if let Some(r) = url.strip_prefix("jdbc:mariadb://") {
        (DbEngine::MariaDb, r, 3306)
    } else if let Some(r) = url.strip_prefix("jdbc:postgresql://") {
        (DbEngine::Postgres, r, 5432)
    } else {
        return None;
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let database = path
        .split(['?', ';'])
        .next()
        .unwrap_or_default()
        .to_string();
    // A failover list names several hosts; the driver tries the first one first.
    let first = authority.split(',').next().unwrap_or_default();
    let (host, port) = if let Some(bracketed) = first.strip_prefix('[') {
        let (h, rest) = bracketed.split_once(']')?;
        match rest.strip_prefix(':') {
            Some(p) => (h.to_string(), p.parse().ok()?),
            None => (h.to_string(), default_port),
        }
    } else {
        match first.split_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (first.to_string(), default_port),
        }
    };
    (!host.is_empty()).then_some(JdbcTarget {
        engine,
        host,
        port,
        database,
    })
}

/// Whether a jar directly under `<carbon home>/repository/components/lib` holds `class`; jars
/// in `dropins` do not count (the product makes OSGi bundles only from `lib`).
pub fn driver_in_lib(carbon_home: &Path, class: &str) -> bool {
    let entry = format!("{}.class", class.replace('.', "/"));
    let Ok(dir) = std::fs::read_dir(carbon_home.join("repository/components/lib")) else {
        return false;
    };
    dir.flatten().any(|e| {
        let path = e.path();
        path.extension().is_some_and(|x| x == "jar")
            && std::fs::File::open(&path)
                .ok()
                .and_then(|f| zip::ZipArchive::new(f).ok())
                .is_some_and(|mut z| {
                    z.by_name(&entry)
                        .map(|mut f| f.read(&mut [0u8; 1]).is_ok())
                        .unwrap_or(false)
                })
    })
}

/// One of the two databases the roles share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `[database.shared_db]`: registry and user management (`WSO2_SHARED_DB`).
    Shared,
    /// `[database.apim_db]`: the API-M database (`WSO2AM_DB`).
    Apim,
}

impl Which {
    fn key(self) -> &'static str {
        match self {
            Which::Shared => "shared_db",
            Which::Apim => "apim_db",
        }
    }

    /// The tables this database must hold (the pack's own scripts create them).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Which::Shared => SHARED_DB_TABLES,
            Which::Apim => APIM_DB_TABLES,
        }
    }

    /// The component that cannot start without this database, and its first words.
    fn consequence(self) -> (&'static str, &'static str) {
        match self {
            Which::Shared => (
                USER_CORE,
                "Cannot start User Manager Core bundle\norg.wso2.carbon.user.core.UserStoreException: Cannot initialize the realm.",
            ),
            Which::Apim => (
                APIM_COMPONENT,
                "Error while initializing the API manager component\norg.wso2.carbon.apimgt.api.APIManagementException: Error while initializing the API-M database (WSO2AM_DB)",
            ),
        }
    }
}

/// The databases a role opens: the gateway only the shared database (its templates configure
/// no `apim_db`); every other role both (the 3.2–4.4 templates and the 4.5 ACP and TM packs).
pub fn databases_of(role: Role) -> &'static [Which] {
    match role {
        Role::Gateway => &[Which::Shared],
        _ => &[Which::Shared, Which::Apim],
    }
}

/// What the check needs from the server's start.
pub struct Context<'a> {
    /// CARBON_HOME.
    pub carbon_home: &'a Path,
    /// The parsed `deployment.toml`.
    pub cfg: &'a NodeConfig,
    /// Kernel and pack defaults.
    pub defaults: &'a BTreeMap<String, String>,
    /// JVM system properties.
    pub props: &'a BTreeMap<String, String>,
    /// Resolves `$secret{alias}` (the vault's decrypted value).
    pub secret: &'a dyn Fn(&str) -> Option<String>,
    /// The machine's hosts file, to resolve the database host like the JVM would.
    pub hosts_file: &'a Path,
    /// The server log.
    pub log: &'a CarbonLog,
}

/// Checks every database the role opens; logs the product's lines for the first failure and
/// returns `false` (the server must then never become ready).
pub async fn check(ctx: &Context<'_>, role: Role) -> bool {
    for which in databases_of(role) {
        if let Err(failure) = check_one(ctx, *which).await {
            log_failure(ctx.log, *which, &failure);
            return false;
        }
    }
    true
}

/// Why a database is unusable, with the Java exception text the product prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The pool could not create its connections (driver, network, login, unknown database).
    Pool(String),
    /// Connected, but a query on a needed table failed (missing table, no privilege).
    Query(String),
}

async fn check_one(ctx: &Context<'_>, which: Which) -> Result<(), Failure> {
    let env = |k: &str| std::env::var(k).ok();
    let get = |field: &str| {
        let key = format!("database.{}.{field}", which.key());
        resolve_value(ctx.cfg, &key, ctx.defaults, ctx.props, &env, ctx.secret)
    };
    let Some(url) = get("url") else {
        return Ok(());
    };
    let Some(target) = parse_jdbc_url(&url) else {
        return Ok(());
    };
    let user_set_driver = ctx
        .cfg
        .get(&format!("database.{}.driver", which.key()))
        .is_some();
    let driver = user_set_driver
        .then(|| get("driver"))
        .flatten()
        .unwrap_or_else(|| target.engine.default_driver().to_string());
    if !driver_in_lib(ctx.carbon_home, &driver) {
        return Err(Failure::Pool(missing_driver(&driver)));
    }
    let username = get("username").unwrap_or_default();
    let password = get("password").unwrap_or_default();
    let ip = Hosts::load(ctx.hosts_file)
        .ok()
        .and_then(|h| h.resolve(&target.host))
        .ok_or_else(|| {
            Failure::Pool(unreachable(
                &target,
                &format!("java.net.UnknownHostException: {}", target.host),
            ))
        })?;
    let host = ip.to_string();
    match target.engine {
        DbEngine::MySql | DbEngine::MariaDb => {
            let opts = MySqlConnectOptions::new()
                .host(&host)
                .port(target.port)
                .username(&username)
                .password(&password)
                .database(&target.database)
                .ssl_mode(MySqlSslMode::Disabled);
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await;
            let mut conn = connected(&target, conn)?;
            let result = tables_exist(&mut conn, which).await;
            let _ = conn.close().await;
            result.map_err(|e| Failure::Query(query_error(&target, &e)))
        }
        DbEngine::Postgres => {
            let opts = PgConnectOptions::new()
                .host(&host)
                .port(target.port)
                .username(&username)
                .password(&password)
                .database(&target.database)
                .ssl_mode(PgSslMode::Disable);
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await;
            let mut conn = connected(&target, conn)?;
            let result = tables_exist(&mut conn, which).await;
            let _ = conn.close().await;
            result.map_err(|e| Failure::Query(query_error(&target, &e)))
        }
    }
}

type Attempt<C> = Result<Result<C, sqlx::Error>, tokio::time::error::Elapsed>;

fn connected<C>(target: &JdbcTarget, attempt: Attempt<C>) -> Result<C, Failure> {
    match attempt {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Failure::Pool(connect_error(target, &e))),
        Err(_) => Err(Failure::Pool(unreachable(
            target,
            "java.net.SocketTimeoutException: Connect timed out",
        ))),
    }
}

/// Queries each needed table the way the product's DAOs do (unquoted upper-case names: folded
/// to lower case by PostgreSQL, taken as written by MySQL/MariaDB on Linux).
async fn tables_exist<C>(conn: &mut C, which: Which) -> Result<(), sqlx::Error>
where
    for<'c> &'c mut C: sqlx::Executor<'c>,
{
    for table in which.tables() {
        let sql = format!("SELECT 1 FROM {table} WHERE 1 = 0");
        sqlx::raw_sql(&sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// tomcat jdbc-pool's words when the driver class is not on its class path (no bundle from
/// `repository/components/lib` exports it).
fn missing_driver(class: &str) -> String {
    let loaders = "ClassLoader:org.eclipse.osgi.internal.loader.EquinoxClassLoader@3383c2e1[jdbc-pool:9.0.35.wso2v1(id=80)];ClassLoader:org.eclipse.osgi.internal.framework.ContextFinder@1d37a901";
    format!(
        "java.sql.SQLException: Unable to load class: {class} from {loaders}\nCaused by: java.lang.ClassNotFoundException: Unable to load class: {class} from {loaders}"
    )
}

/// The driver's exception for a server it cannot reach, with `cause` as the socket error.
fn unreachable(target: &JdbcTarget, cause: &str) -> String {
    match target.engine {
        DbEngine::MySql => format!(
            "com.mysql.cj.jdbc.exceptions.CommunicationsException: Communications link failure\n\nThe last packet sent successfully to the server was 0 milliseconds ago. The driver has not received any packets from the server.\nCaused by: {cause}"
        ),
        DbEngine::MariaDb => format!(
            "java.sql.SQLNonTransientConnectionException: Could not connect to address=(host={})(port={})(type=master) : {}\nCaused by: {cause}",
            target.host,
            target.port,
            cause.rsplit(": ").next().unwrap_or(cause)
        ),
        DbEngine::Postgres if cause.contains("Connection refused") => format!(
            "org.postgresql.util.PSQLException: Connection to {}:{} refused. Check that the hostname and port are correct and that the postmaster is accepting TCP/IP connections.\nCaused by: {cause}",
            target.host, target.port
        ),
        DbEngine::Postgres => format!(
            "org.postgresql.util.PSQLException: The connection attempt failed.\nCaused by: {cause}"
        ),
    }
}

/// The driver's exception for a server error (login refused, unknown database, ...): the
/// server's own message in the driver's exception class.
fn server_error(target: &JdbcTarget, code: Option<Cow<'_, str>>, message: &str) -> String {
    match target.engine {
        DbEngine::Postgres => {
            let severity = match code.as_deref() {
                // Errors raised while authenticating or opening the database are FATAL.
                Some(c) if c.starts_with("28") || c == "3D000" => "FATAL",
                _ => "ERROR",
            };
            format!("org.postgresql.util.PSQLException: {severity}: {message}")
        }
        DbEngine::MySql | DbEngine::MariaDb => {
            let class = match code.as_deref() {
                Some("42000" | "42S02") => "java.sql.SQLSyntaxErrorException",
                Some(c) if c.starts_with("28") => "java.sql.SQLException",
                _ => "java.sql.SQLException",
            };
            format!("{class}: {message}")
        }
    }
}

fn connect_error(target: &JdbcTarget, e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => server_error(target, db.code(), db.message()),
        sqlx::Error::Io(io) => {
            let cause = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "java.net.ConnectException: Connection refused".to_string()
                }
                std::io::ErrorKind::TimedOut => {
                    "java.net.SocketTimeoutException: Connect timed out".to_string()
                }
                _ => format!("java.net.SocketException: {io}"),
            };
            unreachable(target, &cause)
        }
        other => unreachable(target, &format!("java.io.IOException: {other}")),
    }
}

fn query_error(target: &JdbcTarget, e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => server_error(target, db.code(), db.message()),
        other => format!("java.sql.SQLException: {other}"),
    }
}

fn log_failure(log: &CarbonLog, which: Which, failure: &Failure) {
    let (logger, words) = which.consequence();
    match failure {
        Failure::Pool(exception) => {
            log.error(
                POOL,
                &format!("Unable to create initial connections of pool.\n{exception}"),
            );
            log.error(logger, &format!("{words}\nCaused by: {exception}"));
        }
        Failure::Query(exception) => {
            if which == Which::Shared {
                log.error(
                    "org.wso2.carbon.user.core.util.DatabaseUtil",
                    &format!("Database Error - {}", first_line(exception)),
                );
            }
            log.error(logger, &format!("{words}\nCaused by: {exception}"));
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simpack::driver_jar;

    #[test]
    fn jdbc_urls_parse_like_the_drivers() {
        let t = parse_jdbc_url("jdbc:mysql://db.example:3307/apim_db?useSSL=false").expect("mysql");
        assert_eq!(
            (t.engine, t.host.as_str(), t.port, t.database.as_str()),
            (DbEngine::MySql, "db.example", 3307, "apim_db")
        );
        let t = parse_jdbc_url("jdbc:postgresql://127.0.0.1/shared_db").expect("pg");
        assert_eq!((t.engine, t.port), (DbEngine::Postgres, 5432));
        let t = parse_jdbc_url("jdbc:mariadb://a:3306,b:3306/x").expect("failover");
        assert_eq!((t.engine, t.host.as_str()), (DbEngine::MariaDb, "a"));
        for other in [
            "jdbc:h2:./repository/database/WSO2AM_DB;DB_CLOSE_ON_EXIT=FALSE",
            "jdbc:oracle:thin:@db:1521/ORCL",
            "jdbc:sqlserver://db:1433;databaseName=x",
            "jdbc:mysql://:3306/x",
        ] {
            assert_eq!(parse_jdbc_url(other), None, "{other}");
        }
    }

    #[test]
    fn only_jars_in_lib_provide_drivers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let comp = tmp.path().join("repository/components");
        for d in ["lib", "dropins"] {
            std::fs::create_dir_all(comp.join(d)).expect("dir");
        }
        let class = "com.mysql.cj.jdbc.Driver";
        std::fs::write(
            comp.join("dropins/mysql-connector-j-8.4.0.jar"),
            driver_jar(class),
        )
        .expect("jar");
        assert!(!driver_in_lib(tmp.path(), class));
        std::fs::write(
            comp.join("lib/mysql-connector-j-8.4.0.jar"),
            driver_jar(class),
        )
        .expect("jar");
        assert!(driver_in_lib(tmp.path(), class));
        assert!(!driver_in_lib(tmp.path(), "org.postgresql.Driver"));
    }

    #[test]
    fn exceptions_read_like_the_drivers() {
        let pg = parse_jdbc_url("jdbc:postgresql://localhost:5432/x").expect("pg");
        let refused = unreachable(&pg, "java.net.ConnectException: Connection refused");
        assert!(refused.starts_with(
            "org.postgresql.util.PSQLException: Connection to localhost:5432 refused."
        ));
        assert_eq!(
            server_error(
                &pg,
                Some("28P01".into()),
                "password authentication failed for user \"u\""
            ),
            "org.postgresql.util.PSQLException: FATAL: password authentication failed for user \"u\""
        );
        let my = parse_jdbc_url("jdbc:mysql://localhost/x").expect("my");
        assert_eq!(
            server_error(
                &my,
                Some("42S02".into()),
                "Table 'x.UM_TENANT' doesn't exist"
            ),
            "java.sql.SQLSyntaxErrorException: Table 'x.UM_TENANT' doesn't exist"
        );
        assert!(
            missing_driver("org.postgresql.Driver")
                .contains("ClassNotFoundException: Unable to load class: org.postgresql.Driver")
        );
        assert_eq!(databases_of(Role::Gateway), &[Which::Shared]);
        assert_eq!(databases_of(Role::TrafficManager).len(), 2);
    }
}
