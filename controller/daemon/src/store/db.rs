//! The one seam between the store's queries and its two engines: [`Db`] runs a statement with
//! [`Val`] parameters and returns [`Row`]s, over SQLite (rusqlite) or PostgreSQL (postgres).
//!
//! Queries are written once, in the SQL both engines accept, with `?1`-style placeholders;
//! [`pg_placeholders`] turns them into PostgreSQL's `$1`. Columns are `TEXT`, `BIGINT` or
//! `BYTEA` only, so every value is one of [`Val`]'s three kinds.

use rusqlite::types::ValueRef;

use super::StoreError;

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// `BIGINT`.
    I(i64),
    /// `TEXT`.
    T(String),
    /// `BYTEA` (sealed values).
    B(Vec<u8>),
    /// SQL NULL (read only: aggregates over no rows).
    Null,
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::I(v)
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Self {
        Val::I(v as i64)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::T(v.to_owned())
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::T(v.clone())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::T(v)
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Self {
        Val::B(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Val::I(i64::from(v))
    }
}

/// Parameters: `params![a, b]` → `&[Val]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::store::db::Val::from($v)),*][..] };
}
pub(crate) use params;

/// One result row.
#[derive(Debug)]
pub struct Row(pub Vec<Val>);

impl Row {
    fn at(&self, i: usize) -> Result<&Val, StoreError> {
        self.0.get(i).ok_or_else(|| StoreError::Corrupt {
            what: "row",
            reason: format!("no column {i}"),
        })
    }

    /// Column `i` as an integer (NULL reads as `None`).
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Val::I(v) => Ok(Some(*v)),
            Val::Null => Ok(None),
            other => Err(mismatch(i, "an integer", other)),
        }
    }

    /// Column `i` as an integer.
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| mismatch(i, "an integer", &Val::Null))
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.at(i)? {
            Val::T(v) => Ok(v.clone()),
            other => Err(mismatch(i, "text", other)),
        }
    }

    /// Column `i` as bytes (text too: values written before sealing existed).
    pub fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.at(i)? {
            Val::B(v) => Ok(v.clone()),
            Val::T(v) => Ok(v.clone().into_bytes()),
            other => Err(mismatch(i, "bytes", other)),
        }
    }
}

fn mismatch(i: usize, want: &str, got: &Val) -> StoreError {
    StoreError::Corrupt {
        what: "row",
        reason: format!("column {i} is not {want}: {got:?}"),
    }
}

/// A connection (inside a transaction, or for one read) that runs statements.
pub trait Db {
    /// Runs a statement; returns the rows it changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError>;
}

/// SQLite through rusqlite (statements cached per connection).
pub struct SqliteDb<'c>(pub &'c rusqlite::Connection);

fn sqlite_err(source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        action: "running a statement",
        source,
    }
}

impl Db for SqliteDb<'_> {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(sql).map_err(sqlite_err)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params.iter().map(to_sqlite)))
            .map_err(sqlite_err)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql).map_err(sqlite_err)?;
        let n = stmt.column_count();
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(params.iter().map(to_sqlite)),
                |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                ValueRef::Null => Val::Null,
                                ValueRef::Integer(v) => Val::I(v),
                                ValueRef::Real(v) => Val::I(v as i64),
                                ValueRef::Text(t) => Val::T(String::from_utf8_lossy(t).into()),
                                ValueRef::Blob(b) => Val::B(b.to_vec()),
                            })
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(Row)
                },
            )
            .map_err(sqlite_err)?;
        rows.collect::<Result<_, _>>().map_err(sqlite_err)
    }
}

fn to_sqlite(v: &Val) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match v {
        Val::I(i) => Value::Integer(*i),
        Val::T(t) => Value::Text(t.clone()),
        Val::B(b) => Value::Blob(b.clone()),
        Val::Null => Value::Null,
    }
}

/// PostgreSQL through the `postgres` client, inside one transaction.
pub struct PgDb<'c, 't>(pub &'c mut postgres::Transaction<'t>);

impl Db for PgDb<'_, '_> {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let sql = pg_placeholders(sql);
        let p = pg_params(params);
        self.0
            .execute(sql.as_str(), &p)
            .map_err(super::pg::err("running a statement"))
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let sql = pg_placeholders(sql);
        let p = pg_params(params);
        let rows = self
            .0
            .query(sql.as_str(), &p)
            .map_err(super::pg::err("running a query"))?;
        rows.iter().map(pg_row).collect()
    }
}

fn pg_params(params: &[Val]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|v| -> &(dyn postgres::types::ToSql + Sync) {
            match v {
                Val::I(i) => i,
                Val::T(t) => t,
                Val::B(b) => b,
                Val::Null => &None::<i64>,
            }
        })
        .collect()
}

fn pg_row(row: &postgres::Row) -> Result<Row, StoreError> {
    use postgres::types::Type;
    let get = |e: postgres::Error| super::pg::err("reading a row")(e);
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)
                .map_err(get)?
                .map_or(Val::Null, Val::I)
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)
                .map_err(get)?
                .map_or(Val::Null, |v| Val::I(v.into()))
        } else if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)
                .map_err(get)?
                .map_or(Val::Null, |v| Val::I(v.into()))
        } else if *t == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)
                .map_err(get)?
                .map_or(Val::Null, Val::B)
        } else {
            row.try_get::<_, Option<String>>(i)
                .map_err(get)?
                .map_or(Val::Null, Val::T)
        };
        out.push(v);
    }
    Ok(Row(out))
}

/// `?N` placeholders (outside quotes) as PostgreSQL's `$N`.
pub fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes_only() {
        assert_eq!(
            pg_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?10"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $10"
        );
    }

    #[test]
    fn sqlite_rows_carry_every_kind() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let mut db = SqliteDb(&c);
        db.exec("CREATE TABLE t (i BIGINT, s TEXT, b BYTEA)", &[])
            .unwrap();
        db.exec(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            params![7i64, "x", vec![1u8, 2]],
        )
        .unwrap();
        let rows = db.query("SELECT i, s, b, MAX(i) FROM t", &[]).unwrap();
        assert_eq!(rows[0].int(0).unwrap(), 7);
        assert_eq!(rows[0].text(1).unwrap(), "x");
        assert_eq!(rows[0].bytes(2).unwrap(), vec![1, 2]);
        let none = db.query("SELECT MAX(i) FROM t WHERE i > 9", &[]).unwrap();
        assert_eq!(none[0].opt_int(0).unwrap(), None);
        assert!(rows[0].text(0).is_err(), "a type mismatch is an error");
    }
}
