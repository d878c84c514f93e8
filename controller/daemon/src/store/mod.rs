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
    r#"
ALTER TABLE plans ADD COLUMN run_state TEXT NOT NULL DEFAULT '{}';
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
mod seal;
mod tx;

pub use records::{
    ArtifactRow, NodeProgress, Phase, RolloutRecord, RunState, StoredAgent, StoredPlan,
};
pub use seal::KEY_FILE;
pub use tx::Tx;

use seal::Sealer;

/// The store. Cheap operations run synchronously under one connection lock.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    seal: Sealer,
    retention: u64,
}

/// Plan generations whose secrets are kept by default (see [`Store::set_secrets_retention`]).
pub const DEFAULT_SECRETS_RETENTION: u64 = 10;

/// Columns that hold sealed values: (table, key column, value column).
const SEALED: [(&str, &str, &str); 5] = [
    ("specs", "machine", "spec"),
    ("baseline", "machine", "spec"),
    ("rollout_targets", "rowid", "spec"),
    ("plans", "generation", "secrets"),
    ("plans", "generation", "plan_toml"),
];

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
        let seal = Sealer::load_or_create(data_dir)?;
        Self::migrate(conn, seal)
    }

    /// A store in memory (tests, and a server embedded without a data directory).
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql("opening in memory"))?;
        Self::migrate(conn, Sealer::ephemeral()?)
    }

    /// Keeps the resolved secrets of the last `generations` plan generations (and of the one
    /// the cluster runs); older ones are forgotten when the next plan is stored.
    pub fn set_secrets_retention(&mut self, generations: u64) {
        self.retention = generations.max(1);
    }

    fn migrate(mut conn: Connection, seal: Sealer) -> Result<Store, StoreError> {
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
        seal_legacy(&mut conn, &seal)?;
        Ok(Store {
            conn: Mutex::new(conn),
            seal,
            retention: DEFAULT_SECRETS_RETENTION,
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
        let out = f(&Tx {
            conn: &tx,
            seal: &self.seal,
            retention: self.retention,
        })?;
        tx.commit().map_err(sql("committing"))?;
        Ok(out)
    }

    /// Runs read-only `f`.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.lock();
        f(&Tx {
            conn: &conn,
            seal: &self.seal,
            retention: self.retention,
        })
    }
}

/// Seals every value written before sealing existed (a one-time pass; a no-op afterwards).
fn seal_legacy(conn: &mut Connection, seal: &Sealer) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sql("starting to seal"))?;
    for (table, key, column) in SEALED {
        let place = format!("{table}.{column}");
        let rows: Vec<(rusqlite::types::Value, Vec<u8>)> = {
            let mut stmt = tx
                .prepare(&format!("SELECT {key}, {column} FROM {table}"))
                .map_err(sql("reading values to seal"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, tx::bytes_at(r, 1)?)))
                .map_err(sql("reading values to seal"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sql("reading values to seal"))?
        };
        for (id, value) in rows.into_iter().filter(|(_, v)| !Sealer::is_sealed(v)) {
            tx.execute(
                &format!("UPDATE {table} SET {column} = ?1 WHERE {key} = ?2"),
                rusqlite::params![seal.seal(&place, &value)?, id],
            )
            .map_err(sql("sealing a value"))?;
        }
    }
    tx.commit().map_err(sql("committing sealed values"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apim_proto::prost::Message as _;
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

    /// Every byte of the data directory's database files, for "no secret in clear" checks.
    fn db_bytes(data: &Path) -> Vec<u8> {
        let mut all = Vec::new();
        for e in std::fs::read_dir(data).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(DB_FILE)
            {
                all.extend(std::fs::read(&p).unwrap());
            }
        }
        all
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    fn secret_spec(machine: &str, generation: u64, secret: &str) -> MachineSpec {
        MachineSpec {
            machine: machine.into(),
            generation,
            nodes: vec![apim_proto::v1::NodeSpec {
                name: "km-1".into(),
                deployment_toml: format!("[super_admin]\npassword = \"{secret}\"\n"),
                ..Default::default()
            }],
            ..MachineSpec::default()
        }
    }

    #[test]
    fn no_secret_is_stored_in_clear_and_old_values_are_sealed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let secret = "hunter2-db-password";
        {
            let s = Store::open(&data).unwrap();
            let secrets: BTreeMap<String, String> = [("env:DB".into(), secret.into())].into();
            s.write(|tx| {
                let g =
                    tx.insert_plan("alice", "plan.toml", "# literal s3cret-in-plan", &secrets)?;
                let spec = secret_spec("vm-a", g, secret);
                tx.save_spec(&spec)?;
                tx.set_baseline(std::slice::from_ref(&spec))?;
                tx.save_targets("rollout-1", &[spec])
            })
            .unwrap();
            // What a controller before sealing would have written.
            let raw = rusqlite::Connection::open(data.join(DB_FILE)).unwrap();
            raw.execute(
                "INSERT INTO specs(machine, generation, spec) VALUES ('vm-old', 1, ?1)",
                [secret_spec("vm-old", 1, "legacy-pass").encode_to_vec()],
            )
            .unwrap();
        }
        let s = Store::open(&data).unwrap();
        let specs = s.read(|tx| tx.specs()).unwrap();
        assert_eq!(specs.len(), 2);
        assert!(specs[1].nodes[0].deployment_toml.contains("legacy-pass"));
        assert!(
            s.read(|tx| tx.plan(1))
                .unwrap()
                .unwrap()
                .plan_toml
                .contains("s3cret-in-plan")
        );
        s.write(|tx| tx.save_spec(&secret_spec("vm-b", 2, secret)))
            .unwrap();
        drop(s);
        let bytes = db_bytes(&data);
        for needle in [secret, "legacy-pass", "s3cret-in-plan"] {
            assert!(
                !contains(&bytes, needle),
                "{needle} is in controller.db in clear"
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn old_generations_secrets_are_pruned_but_the_running_one_is_kept() {
        let mut s = Store::in_memory().unwrap();
        s.set_secrets_retention(2);
        let secrets = |g: u64| -> BTreeMap<String, String> {
            [("env:PW".to_string(), format!("pw-{g}"))].into()
        };
        // Generation 1 is what the cluster runs (its baseline); 2..=5 were applied later.
        s.write(|tx| {
            let g = tx.insert_plan("a", "p", "t", &secrets(1))?;
            tx.save_targets("rollout-1", &[secret_spec("vm-a", 1, "pw-1")])?;
            tx.set_baseline(&[MachineSpec {
                plan_generation: g,
                ..secret_spec("vm-a", 1, "pw-1")
            }])
        })
        .unwrap();
        for g in 2..=5 {
            s.write(|tx| tx.insert_plan("a", "p", "t", &secrets(g)).map(drop))
                .unwrap();
        }
        let kept = |g: u64| {
            s.read(|tx| tx.plan(g))
                .unwrap()
                .unwrap()
                .secrets
                .get("env:PW")
                .cloned()
        };
        assert_eq!(
            kept(1).as_deref(),
            Some("pw-1"),
            "the baseline's plan keeps its secrets"
        );
        assert_eq!((kept(2), kept(3)), (None, None));
        assert_eq!(kept(4).as_deref(), Some("pw-4"));
        assert_eq!(kept(5).as_deref(), Some("pw-5"));
    }
}
