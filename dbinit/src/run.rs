//! Connecting, locking, comparing tables and running scripts, over sqlx.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::net::TcpStream;

use crate::split::{created_table, split};
use crate::{DbError, Engine, Options, Outcome, Script, Secret, Statement, Target, addr, head};

/// Bounded TCP connect (the machine's pre-flight).
pub async fn reachable(host: &str, port: u16, timeout: Duration) -> Result<(), DbError> {
    let unreachable = |reason: String| DbError::Unreachable {
        addr: addr(host, port),
        reason,
    };
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no TCP connection within {}",
            secs(timeout)
        ))),
    }
}

/// The MySQL/MariaDB `GET_LOCK` name [`init_if_empty`] takes for a database:
/// `apimctl-init:<database>`, or a hash of the database name where that would pass MySQL's
/// 64-character limit. Public so that operators and tests can hold or inspect the lock.
pub fn mysql_lock_name(database: &str) -> String {
    let name = format!("apimctl-init:{database}");
    if name.chars().count() <= 64 {
        name
    } else {
        format!("apimctl-init:{:016x}", fnv1a64(database))
    }
}

/// The PostgreSQL advisory lock key [`init_if_empty`] takes for a database: a stable 64-bit hash
/// (FNV-1a) of `apimctl-init:<database>`. Public so that operators and tests can hold or inspect
/// the lock.
pub fn postgres_lock_key(database: &str) -> i64 {
    i64::from_ne_bytes(fnv1a64(&format!("apimctl-init:{database}")).to_ne_bytes())
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike std's hasher).
fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Creates the schema if the database holds none of the scripts' tables.
///
/// Splits every script first (a [`DbError::Script`] before any connection), then connects
/// (bounded by `connect_timeout`: a refused or timed-out connect is [`DbError::Unreachable`], a
/// rejected login or unknown database [`DbError::Auth`]), takes the database's init lock (bounded
/// by `lock_timeout`, [`DbError::Lock`]), and compares the database's tables with the union of
/// the scripts' `CREATE TABLE`s, case-insensitively: none there → every statement of every
/// script runs in order, un-prepared ([`Outcome::Created`]; the first failure is
/// [`DbError::Sql`]; PostgreSQL runs them in one transaction, so a failure leaves nothing, while
/// MySQL's DDL commits as it goes); all there → [`Outcome::AlreadyPresent`]; some →
/// [`DbError::Partial`] and nothing runs. Nothing is ever dropped; the lock is released on every
/// path (and by the server when the connection ends). Scripts that create no table are refused:
/// nothing could tell later whether they ran.
pub async fn init_if_empty(
    t: &Target,
    scripts: &[Script],
    o: &Options,
) -> Result<Outcome, DbError> {
    let mut parsed: Vec<(&Script, Vec<Statement>)> = Vec::new();
    let mut expected: Vec<String> = Vec::new();
    for script in scripts {
        let statements = split(t.engine, &script.text).map_err(|e| match e {
            DbError::Script { line, reason, .. } => DbError::Script {
                script: script.name.clone(),
                line,
                reason,
            },
            other => other,
        })?;
        for s in &statements {
            if let Some(table) = created_table(&s.text)
                && !expected.contains(&table)
            {
                expected.push(table);
            }
        }
        parsed.push((script, statements));
    }
    if expected.is_empty() {
        let names: Vec<&str> = scripts.iter().map(|s| s.name.as_str()).collect();
        return Err(DbError::Script {
            script: names.join(", "),
            line: 0,
            reason: "the scripts create no table, so nothing could tell whether they ran".into(),
        });
    }
    reachable(&t.host, t.port, o.connect_timeout).await?;
    let mut conn = Conn::connect(t, o).await?;
    let result = async {
        conn.lock(t, o).await?;
        let result = locked(&mut conn, t, &parsed, &expected).await;
        if let Err(e) = conn.unlock(t).await {
            // The server releases it when the connection closes, just below.
            tracing::warn!(database = %t.database, error = %redact(&e.to_string(), &t.password),
                "releasing the init lock failed; closing the connection releases it");
        }
        result
    }
    .await;
    conn.close().await;
    result
}

/// Compares and runs, holding the lock.
async fn locked(
    conn: &mut Conn,
    t: &Target,
    parsed: &[(&Script, Vec<Statement>)],
    expected: &[String],
) -> Result<Outcome, DbError> {
    let existing = conn.tables().await.map_err(|e| DbError::Sql {
        script: String::new(),
        line: 0,
        statement: head(conn.tables_query()),
        message: server_message(&e, &t.password),
    })?;
    let (mut found, mut missing): (Vec<String>, Vec<String>) = expected
        .iter()
        .cloned()
        .partition(|table| existing.contains(table));
    if !found.is_empty() && missing.is_empty() {
        tracing::info!(database = %t.database, tables = found.len(), "schema already present");
        return Ok(Outcome::AlreadyPresent {
            tables: found.len(),
        });
    }
    if !found.is_empty() {
        found.sort();
        missing.sort();
        return Err(DbError::Partial {
            database: t.database.clone(),
            found,
            missing,
        });
    }
    tracing::info!(database = %t.database, scripts = parsed.len(), tables = expected.len(),
        "creating schema");
    let transactional = t.engine == Engine::Postgres;
    if transactional {
        conn.raw("BEGIN").await.map_err(|e| DbError::Sql {
            script: String::new(),
            line: 0,
            statement: "BEGIN".into(),
            message: server_message(&e, &t.password),
        })?;
    }
    let mut statements = 0;
    for (script, stmts) in parsed {
        for s in stmts {
            if let Err(e) = conn.raw(&s.text).await {
                if transactional {
                    let _ = conn.raw("ROLLBACK").await;
                }
                return Err(DbError::Sql {
                    script: script.name.clone(),
                    line: s.line,
                    statement: head(&s.text),
                    message: server_message(&e, &t.password),
                });
            }
            statements += 1;
        }
    }
    if transactional {
        conn.raw("COMMIT").await.map_err(|e| DbError::Sql {
            script: String::new(),
            line: 0,
            statement: "COMMIT".into(),
            message: server_message(&e, &t.password),
        })?;
    }
    tracing::info!(database = %t.database, statements, tables = expected.len(), "schema created");
    Ok(Outcome::Created {
        tables: expected.to_vec(),
        statements,
    })
}

/// One connection to either engine.
enum Conn {
    My(MySqlConnection),
    Pg(PgConnection),
}

impl Conn {
    /// Logs in, bounded by `connect_timeout`.
    async fn connect(t: &Target, o: &Options) -> Result<Conn, DbError> {
        let login = async {
            match t.engine {
                Engine::Mysql => MySqlConnectOptions::new()
                    .host(&t.host)
                    .port(t.port)
                    .username(&t.username)
                    .password(&t.password.0)
                    .database(&t.database)
                    // The session as the mysql client's: the server's sql_mode, time zone.
                    .pipes_as_concat(false)
                    .no_engine_substitution(false)
                    .timezone(None)
                    .disable_statement_logging()
                    .connect()
                    .await
                    .map(Conn::My),
                Engine::Postgres => PgConnectOptions::new_without_pgpass()
                    .host(&t.host)
                    .port(t.port)
                    .username(&t.username)
                    .password(&t.password.0)
                    .database(&t.database)
                    .application_name("apimctl-dbinit")
                    // Not PGSSLMODE's: there is no TLS backend (see the crate doc).
                    .ssl_mode(PgSslMode::Prefer)
                    .disable_statement_logging()
                    .connect()
                    .await
                    .map(Conn::Pg),
            }
        };
        match tokio::time::timeout(o.connect_timeout, login).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(sqlx::Error::Io(e))) => Err(DbError::Unreachable {
                addr: t.addr(),
                reason: redact(&e.to_string(), &t.password),
            }),
            Ok(Err(e)) => Err(DbError::Auth {
                addr: t.addr(),
                database: t.database.clone(),
                user: t.username.clone(),
                reason: server_message(&e, &t.password),
            }),
            Err(_) => Err(DbError::Unreachable {
                addr: t.addr(),
                reason: format!("no login within {}", secs(o.connect_timeout)),
            }),
        }
    }

    /// Takes the database's init lock, waiting at most `lock_timeout`.
    async fn lock(&mut self, t: &Target, o: &Options) -> Result<(), DbError> {
        let lock_err = |reason: String| DbError::Lock {
            database: t.database.clone(),
            reason,
        };
        let timeout = format!(
            "not released by another session within {}",
            secs(o.lock_timeout)
        );
        // A failure guard: the server bounds the wait itself.
        let guard = o.lock_timeout.saturating_add(Duration::from_secs(30));
        let wait = async {
            match self {
                Conn::My(c) => {
                    let got: Option<i64> =
                        sqlx::query_scalar("SELECT CAST(GET_LOCK(?, ?) AS SIGNED)")
                            .bind(mysql_lock_name(&t.database))
                            .bind(
                                i64::try_from(o.lock_timeout.as_millis().div_ceil(1000))
                                    .unwrap_or(i64::MAX),
                            )
                            .fetch_one(&mut *c)
                            .await
                            .map_err(|e| lock_err(server_message(&e, &t.password)))?;
                    match got {
                        Some(1) => Ok(()),
                        Some(_) => Err(lock_err(timeout.clone())),
                        None => Err(lock_err("GET_LOCK failed".into())),
                    }
                }
                Conn::Pg(c) => {
                    // PostgreSQL's setting is an int of milliseconds.
                    let ms = o.lock_timeout.as_millis().clamp(1, i32::MAX as u128);
                    let set = format!("SET lock_timeout = {ms}");
                    Executor::execute(&mut *c, set.as_str())
                        .await
                        .map_err(|e| lock_err(server_message(&e, &t.password)))?;
                    let got = sqlx::query("SELECT pg_advisory_lock($1)")
                        .bind(postgres_lock_key(&t.database))
                        .execute(&mut *c)
                        .await;
                    let reset = Executor::execute(&mut *c, "RESET lock_timeout").await;
                    match got {
                        Ok(_) => {}
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                            return Err(lock_err(timeout.clone()));
                        }
                        Err(e) => return Err(lock_err(server_message(&e, &t.password))),
                    }
                    reset
                        .map(|_| ())
                        .map_err(|e| lock_err(server_message(&e, &t.password)))
                }
            }
        };
        tokio::time::timeout(guard, wait)
            .await
            .unwrap_or_else(|_| Err(lock_err(timeout.clone())))
    }

    /// Releases the init lock.
    async fn unlock(&mut self, t: &Target) -> Result<(), sqlx::Error> {
        match self {
            Conn::My(c) => sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(mysql_lock_name(&t.database))
                .execute(&mut *c)
                .await
                .map(|_| ()),
            Conn::Pg(c) => sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(postgres_lock_key(&t.database))
                .execute(&mut *c)
                .await
                .map(|_| ()),
        }
    }

    /// The query for the tables of the current database (MySQL) or schema (PostgreSQL).
    fn tables_query(&self) -> &'static str {
        match self {
            Conn::My(_) => {
                "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
                 WHERE table_schema = DATABASE()"
            }
            Conn::Pg(_) => {
                "SELECT tablename::text FROM pg_catalog.pg_tables \
                 WHERE schemaname = current_schema()"
            }
        }
    }

    /// The tables there, lower-cased.
    async fn tables(&mut self) -> Result<Vec<String>, sqlx::Error> {
        let q = self.tables_query();
        let names: Vec<String> = match self {
            Conn::My(c) => sqlx::query_scalar(q).fetch_all(&mut *c).await?,
            Conn::Pg(c) => sqlx::query_scalar(q).fetch_all(&mut *c).await?,
        };
        Ok(names.into_iter().map(|n| n.to_lowercase()).collect())
    }

    /// Runs one statement un-prepared (the simple-query protocol).
    async fn raw(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        // `Executor::execute` with a `&str` and no arguments is the simple-query protocol; it
        // also returns a boxed `Send` future (`raw_sql(..).execute` is `Send` only for the
        // call's own lifetimes, which the agent's spawned task cannot name).
        match self {
            Conn::My(c) => Executor::execute(&mut *c, sql).await.map(|_| ()),
            Conn::Pg(c) => Executor::execute(&mut *c, sql).await.map(|_| ()),
        }
    }

    /// Closes politely; a failure only means the server notices the closed socket instead.
    async fn close(self) {
        let _ = match self {
            Conn::My(c) => c.close().await,
            Conn::Pg(c) => c.close().await,
        };
    }
}

/// The server's message for a database error (with its code), else the error; never a password.
fn server_message(e: &sqlx::Error, password: &Secret) -> String {
    let text = match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => format!("{} ({code})", d.message()),
            None => d.message().to_owned(),
        },
        other => other.to_string(),
    };
    redact(&text, password)
}

/// `text` with the password replaced (servers echo parts of statements and logins).
fn redact(text: &str, password: &Secret) -> String {
    if password.0.is_empty() {
        text.to_owned()
    } else {
        text.replace(&password.0, "<redacted>")
    }
}

/// A duration for messages: "2.5 s".
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
