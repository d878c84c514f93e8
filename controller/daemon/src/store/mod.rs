//! The controller's embedded SQLite store: everything a controller restart must not lose.
//!
//! One file (`<data_dir>/controller.db`, mode 0600, WAL journal) holds the plans as numbered
//! generations (author, time, plan text and the resolved secrets needed to re-render), the
//! rollouts and their per-node progress, enrolled agents, join-token records (hashes only),
//! revocations, the artifact index (the files stay in the artifact directory), and per machine
//! the last pushed [`MachineSpec`] and the spec it runs when no rollout is in flight. The
//! control-plane CA stays in its own files.
//!
//! Migrations are plain SQL in [`MIGRATIONS`], applied in order and tracked with
//! `PRAGMA user_version`. Every write runs in a transaction ([`Store::write`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "controller.db";

/// Schema migrations, applied in order; entry *i* brings the schema to version *i + 1*.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE plans (
    generation INTEGER PRIMARY KEY,
    author TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    plan_path TEXT NOT NULL,
    plan_toml TEXT NOT NULL,
    secrets TEXT NOT NULL
);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE rollout_targets (
    rollout_id TEXT NOT NULL,
    machine TEXT NOT NULL,
    spec BLOB NOT NULL,
    PRIMARY KEY (rollout_id, machine)
);
CREATE TABLE agents (machine TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE tokens (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    name TEXT NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE TABLE specs (machine TEXT PRIMARY KEY, generation INTEGER NOT NULL, spec BLOB NOT NULL);
CREATE TABLE baseline (machine TEXT PRIMARY KEY, spec BLOB NOT NULL);
"#,
    r#"
CREATE TABLE spec_history (
    machine TEXT NOT NULL,
    generation INTEGER NOT NULL,
    plan_generation INTEGER NOT NULL,
    PRIMARY KEY (machine, generation)
);
INSERT INTO spec_history(machine, generation, plan_generation)
    SELECT machine, generation, 0 FROM specs;
"#,
];

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("store: {action}: {source}")]
    Sqlite {
        /// What the store was doing.
        action: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating the data directory or the database file failed.
    #[error("store: {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored value could not be decoded (a corrupt or foreign database).
    #[error("store: corrupt {what}: {reason}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The database was written by a newer controller.
    #[error("store: schema version {found} is newer than this controller's {known}")]
    TooNew {
        /// The database's version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

pub(crate) fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { action, source }
}

pub(crate) fn corrupt(what: &'static str) -> impl FnOnce(String) -> StoreError {
    move |reason| StoreError::Corrupt { what, reason }
}

mod records;
mod tx;

pub use records::{ArtifactRow, NodeProgress, Phase, RolloutRecord, StoredAgent, StoredPlan};
pub use tx::Tx;

/// The store. Cheap operations run synchronously under one connection lock.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

pub(crate) fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Store {
    /// Opens (creating it 0600, in a 0700 directory, if missing) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io(data_dir))?;
        let path = data_dir.join(DB_FILE);
        // Create the file ourselves so it is never world-readable, even for a moment; SQLite
        // gives its -wal and -shm files the same mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&path))?;
        let conn = Connection::open(&path).map_err(sql("opening the database"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("setting synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql("setting busy timeout"))?;
        Self::migrate(conn)
    }

    /// A store in memory (tests, and a server embedded without a data directory).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::migrate(Connection::open_in_memory().map_err(sql("opening in memory"))?)
    }

    fn migrate(mut conn: Connection) -> Result<Store, StoreError> {
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading the schema version"))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(sql("starting a migration"))?;
            tx.execute_batch(m).map_err(sql("migrating the schema"))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(sql("recording the schema version"))?;
            tx.commit().map_err(sql("committing a migration"))?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction; nothing is written unless it returns `Ok`.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("starting a transaction"))?;
        let out = f(&Tx(&tx))?;
        tx.commit().map_err(sql("committing"))?;
        Ok(out)
    }

    /// Runs read-only `f`.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.lock();
        f(&Tx(&conn))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apim_proto::v1::MachineSpec;

    use super::*;

    #[test]
    fn survives_reopen_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let s = Store::open(&data).unwrap();
            let secrets: BTreeMap<String, String> = [("env:X".into(), "v".into())].into();
            let g = s
                .write(|tx| tx.insert_plan("alice", "plan.toml", "[cluster]", &secrets))
                .unwrap();
            assert_eq!(g, 1);
            let spec = MachineSpec {
                machine: "vm-a".into(),
                generation: 3,
                ..MachineSpec::default()
            };
            s.write(|tx| tx.save_spec(&spec)).unwrap();
        }
        let s = Store::open(&data).unwrap();
        assert_eq!(s.read(|tx| tx.latest_generation()).unwrap(), 1);
        let plan = s.read(|tx| tx.plan(1)).unwrap().unwrap();
        assert_eq!(plan.author, "alice");
        assert_eq!(plan.secrets["env:X"], "v");
        assert!(!format!("{plan:?}").contains("\"v\""), "Debug hides values");
        assert_eq!(s.read(|tx| tx.specs()).unwrap()[0].generation, 3);
        let mode = std::fs::metadata(data.join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_transaction_writes_nothing() {
        let s = Store::in_memory().unwrap();
        let r: Result<(), StoreError> = s.write(|tx| {
            tx.insert_plan("a", "p", "t", &BTreeMap::new())?;
            Err(StoreError::Corrupt {
                what: "test",
                reason: "abort".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(s.read(|tx| tx.latest_generation()).unwrap(), 0);
    }
}
