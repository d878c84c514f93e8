//! apim-dbinit: creates a database's schema from SQL script text, once.
//!
//! The agent uses it for the scripts the controller sends (the product's `dbscripts/*.sql`); it
//! knows SQL engines and nothing about WSO2. [`init_if_empty`] takes a database-level lock (two
//! agents racing for one database never both run the scripts), compares the database's tables
//! with the tables the scripts create ([`tables_of`]) and runs the scripts only into a database
//! that holds none of them; it never drops anything.
//!
//! - [`split`]: script text → statements with their first line, read as each engine's client
//!   reads them (comments, quoting, dollar quoting, `DELIMITER`);
//! - [`reachable`]: the bounded TCP pre-flight;
//! - [`init_if_empty`]: connect, lock, compare, run.
//!
//! Client: sqlx (MySQL protocol for MySQL and MariaDB, PostgreSQL), each statement sent
//! un-prepared (the simple-query protocol), so DDL, procedures and functions work. No TLS backend
//! is built in: connections are plain TCP (TLS is used by neither test server here).
//!
//! Passwords live in [`Secret`], whose Debug is `<redacted>`; no error or log holds one.

mod run;
mod split;

use std::fmt;
use std::time::Duration;

pub use run::{init_if_empty, mysql_lock_name, postgres_lock_key, reachable};
pub use split::{split, tables_of};

/// The SQL dialect and wire protocol of a database server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// MySQL and MariaDB (one protocol; `#` comments, backslash escapes, `DELIMITER`).
    Mysql,
    /// PostgreSQL (standard strings, dollar quoting, nested block comments).
    Postgres,
}

impl Engine {
    /// The server's usual TCP port (3306, 5432), for callers that were given none.
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Mysql => 3306,
            Engine::Postgres => 5432,
        }
    }
}

/// A password: Debug prints `<redacted>` so that it never reaches a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The database to initialise and how to log in to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's engine.
    pub engine: Engine,
    /// The server's host name or address.
    pub host: String,
    /// The server's TCP port.
    pub port: u16,
    /// The database (it must exist; its owner creates the tables).
    pub database: String,
    /// The user that logs in (needs the privileges to create the scripts' objects).
    pub username: String,
    /// The user's password.
    pub password: Secret,
}

impl Target {
    /// `host:port`, as errors name the server.
    pub fn addr(&self) -> String {
        addr(&self.host, self.port)
    }
}

/// `host:port` (IPv6 literals bracketed).
pub(crate) fn addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One SQL script: its name (for errors) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Where it came from, e.g. "dbscripts/apimgt/mysql.sql"; errors name it.
    pub name: String,
    /// The script's SQL text.
    pub text: String,
}

/// Bounds on the waits of [`init_if_empty`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Bounds the TCP connect and the login.
    pub connect_timeout: Duration,
    /// Bounds the wait for the database's init lock (another agent may be running the scripts).
    pub lock_timeout: Duration,
}

impl Default for Options {
    /// 10 s to connect, 120 s for the lock (long enough for another agent to run large scripts).
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(120),
        }
    }
}

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement without its delimiter; comments replaced by whitespace.
    pub text: String,
    /// The 1-based line of the script where it starts (its first non-comment character).
    pub line: usize,
}

/// What [`init_if_empty`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The database held none of the scripts' tables: every statement ran.
    Created {
        /// The tables the scripts created, lower-cased, in order.
        tables: Vec<String>,
        /// How many statements ran.
        statements: usize,
    },
    /// The database already held every table of the scripts: nothing ran.
    AlreadyPresent {
        /// How many of the scripts' tables are there.
        tables: usize,
    },
}

/// Why [`init_if_empty`] (or [`split`], [`reachable`]) failed. No variant holds a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// Nothing accepted a TCP connection (refused, unroutable, timed out).
    #[error("database server {addr} is unreachable: {reason}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The connect error, or the timeout.
        reason: String,
    },
    /// The server rejected the login or does not know the database.
    #[error("database server {addr} refused user {user} on database {database}: {reason}")]
    Auth {
        /// `host:port`.
        addr: String,
        /// The database asked for.
        database: String,
        /// The user that logged in.
        user: String,
        /// The server's message.
        reason: String,
    },
    /// A statement failed; the statements before it ran (in PostgreSQL, they were rolled back).
    #[error("{script} line {line}: {message} (in: {statement})")]
    Sql {
        /// The script's name.
        script: String,
        /// The 1-based line where the statement starts.
        line: usize,
        /// The statement's head: its first ~80 characters on one line.
        statement: String,
        /// The server's message.
        message: String,
    },
    /// The database holds some but not all of the scripts' tables: nothing was run, nothing
    /// dropped; someone must repair or empty it.
    #[error(
        "database {database} is partly initialised: it has {} of the scripts' tables ({}) \
         but lacks {} ({}); nothing was run or dropped",
        found.len(), list(found), missing.len(), list(missing)
    )]
    Partial {
        /// The database.
        database: String,
        /// The scripts' tables it has, sorted.
        found: Vec<String>,
        /// The scripts' tables it lacks, sorted.
        missing: Vec<String>,
    },
    /// The database's init lock could not be taken (in time).
    #[error("could not take the init lock of database {database}: {reason}")]
    Lock {
        /// The database.
        database: String,
        /// The timeout or the server's message.
        reason: String,
    },
    /// A script cannot be read as SQL (an unterminated quote or comment, a bad directive).
    #[error("{script} line {line}: {reason}")]
    Script {
        /// The script's name (empty from [`split`], which is given no name).
        script: String,
        /// The 1-based line where the problem starts.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Names for messages: the first few, then how many more.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// A statement's head for errors: whitespace runs collapsed, at most 80 characters.
pub(crate) fn head(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= 80 {
        one_line
    } else {
        let mut h: String = one_line.chars().take(77).collect();
        h.push_str("...");
        h
    }
}

#[cfg(test)]
mod split_tests;
