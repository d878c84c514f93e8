//! Schema migrations: one versioned set (`migrations/V*.sql`) for both engines, run by refinery
//! through the two small adapters below. A database that has applied a version this build does
//! not know (a newer controller wrote it) is refused, never touched.
//!
//! SQLite stores made before refinery carry `PRAGMA user_version` 1..=3: the legacy steps bring
//! them to 3, which is schema version 1 here, recorded as applied without running it.

use refinery_core::traits::sync::{Migrate, Query, Transaction};
use refinery_core::{Migration, Runner, Target};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::StoreError;

/// The migrations, in order.
const SOURCES: &[(&str, &str)] = &[
    ("V1__initial", include_str!("migrations/V1__initial.sql")),
    (
        "V2__controllers",
        include_str!("migrations/V2__controllers.sql"),
    ),
    (
        "V3__shared_folders",
        include_str!("migrations/V3__shared_folders.sql"),
    ),
];

/// The schema version this build brings a store to.
pub const SCHEMA_VERSION: u32 = SOURCES.len() as u32;

/// The history table refinery keeps in each store (its default name).
const HISTORY: &str = "refinery_schema_history";

fn migrations() -> Vec<Migration> {
    SOURCES
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql).expect("migration names are valid"))
        .collect()
}

fn runner() -> Runner {
    Runner::new(&migrations())
        .set_abort_divergent(true)
        .set_abort_missing(true)
}

fn refused(e: refinery_core::Error) -> StoreError {
    use refinery_core::error::Kind;
    match e.kind() {
        Kind::MissingVersion(m) => StoreError::TooNew {
            found: i64::from(m.version()),
            known: i64::from(SCHEMA_VERSION),
        },
        _ => StoreError::Migration(e.to_string()),
    }
}

/// Brings a SQLite store to [`SCHEMA_VERSION`].
pub fn sqlite(conn: &mut rusqlite::Connection) -> Result<(), StoreError> {
    let has_history: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [HISTORY],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(super::sql("reading the schema history"))?;
    let legacy: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(super::sql("reading the schema version"))?;
    let mut adapter = SqliteMigrate(conn);
    if !has_history && legacy > 0 {
        legacy_sqlite(adapter.0, legacy)?;
        runner()
            .set_target(Target::FakeVersion(1))
            .run(&mut adapter)
            .map_err(refused)?;
    }
    runner().run(&mut adapter).map_err(refused)?;
    Ok(())
}

/// Brings a PostgreSQL store to [`SCHEMA_VERSION`], one controller at a time (an advisory lock
/// held for the duration: controllers started together do not race on `CREATE TABLE`).
pub fn postgres(client: &mut postgres::Client) -> Result<(), StoreError> {
    const LOCK: i64 = 0x6170_6d63_746c; // "apmctl"
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .map_err(super::pg::err("locking the schema"))?;
    let out = runner().run(&mut PgMigrate(client)).map_err(refused);
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .map_err(super::pg::err("unlocking the schema"));
    out?;
    unlocked?;
    Ok(())
}

/// The steps SQLite stores took before refinery (entry *i* brought `user_version` to *i + 1*).
const LEGACY: &[&str] = &[
    include_str!("migrations/legacy_1.sql"),
    "CREATE TABLE spec_history (machine TEXT NOT NULL, generation INTEGER NOT NULL,
     plan_generation INTEGER NOT NULL, PRIMARY KEY (machine, generation));
     INSERT INTO spec_history(machine, generation, plan_generation)
         SELECT machine, generation, 0 FROM specs;",
    "ALTER TABLE plans ADD COLUMN run_state TEXT NOT NULL DEFAULT '{}';",
];

fn legacy_sqlite(conn: &mut rusqlite::Connection, version: i64) -> Result<(), StoreError> {
    if version > LEGACY.len() as i64 {
        return Err(StoreError::TooNew {
            found: version,
            known: LEGACY.len() as i64,
        });
    }
    for (i, m) in LEGACY.iter().enumerate().skip(version as usize) {
        let tx = conn
            .transaction()
            .map_err(super::sql("starting a migration"))?;
        tx.execute_batch(m)
            .map_err(super::sql("migrating the schema"))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(super::sql("recording the schema version"))?;
        tx.commit().map_err(super::sql("committing a migration"))?;
    }
    Ok(())
}

fn applied(version: i32, name: String, on: &str, checksum: &str) -> Migration {
    Migration::applied(
        version,
        name,
        OffsetDateTime::parse(on, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        checksum.parse().unwrap_or(0),
    )
}

struct SqliteMigrate<'c>(&'c mut rusqlite::Connection);

impl Transaction for SqliteMigrate<'_> {
    type Error = rusqlite::Error;

    fn execute(&mut self, queries: &[&str]) -> Result<usize, Self::Error> {
        let tx = self.0.transaction()?;
        for q in queries {
            tx.execute_batch(q)?;
        }
        tx.commit()?;
        Ok(queries.len())
    }
}

impl Query<Vec<Migration>> for SqliteMigrate<'_> {
    fn query(&mut self, query: &str) -> Result<Vec<Migration>, Self::Error> {
        let mut stmt = self.0.prepare(query)?;
        let rows = stmt.query_map([], |r| {
            Ok(applied(
                r.get(0)?,
                r.get(1)?,
                &r.get::<_, String>(2)?,
                &r.get::<_, String>(3)?,
            ))
        })?;
        rows.collect()
    }
}

impl Migrate for SqliteMigrate<'_> {}

struct PgMigrate<'c>(&'c mut postgres::Client);

impl Transaction for PgMigrate<'_> {
    type Error = postgres::Error;

    fn execute(&mut self, queries: &[&str]) -> Result<usize, Self::Error> {
        let mut tx = self.0.transaction()?;
        for q in queries {
            tx.batch_execute(q)?;
        }
        tx.commit()?;
        Ok(queries.len())
    }
}

impl Query<Vec<Migration>> for PgMigrate<'_> {
    fn query(&mut self, query: &str) -> Result<Vec<Migration>, Self::Error> {
        let rows = self.0.query(query, &[])?;
        Ok(rows
            .iter()
            .map(|r| {
                applied(
                    r.get(0),
                    r.get(1),
                    &r.get::<_, String>(2),
                    &r.get::<_, String>(3),
                )
            })
            .collect())
    }
}

impl Migrate for PgMigrate<'_> {}
