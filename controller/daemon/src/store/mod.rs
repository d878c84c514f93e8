//! The controller's store: everything a controller restart must not lose, on one of two
//! engines behind one interface ([`Store::read`], [`Store::write`], [`Tx`]):
//!
//! - embedded SQLite (`<data_dir>/controller.db`, mode 0600, WAL journal), the default;
//! - PostgreSQL (`[store] url`), which several controllers share ([`Store::open_postgres`]).
//!
//! It holds the plans as numbered generations (author, time, plan text and the resolved secrets
//! needed to re-render), the rollouts and their per-node progress, enrolled agents, join-token
//! records (hashes only), revocations, the artifact index, per machine the last pushed
//! [`MachineSpec`] and the spec it runs when no rollout is in flight, and, for several
//! controllers, their membership, the rollout lease and the files they share (the CAs).
//! Secrets, specs and shared files are sealed with the key in `store.key` ([`seal`]): whoever
//! reads the database without that file reads no secret.
//!
//! One set of versioned migrations serves both engines ([`migrate`]); a store written by a newer
//! controller is refused. Every write runs in one transaction ([`Store::write`]).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "controller.db";

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
    /// PostgreSQL refused an operation (or the connection broke during it).
    #[error("store (PostgreSQL): {action}: {}", pg_text(source))]
    Postgres {
        /// What the store was doing.
        action: &'static str,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// PostgreSQL could not be reached.
    #[error("store: cannot connect to PostgreSQL at {url}: {}", pg_text(source))]
    Connect {
        /// The store URL (it never holds a password).
        url: String,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// The store's configuration is wrong.
    #[error("store: {0}")]
    Config(String),
    /// A migration failed.
    #[error("store: migrating the schema: {0}")]
    Migration(String),
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
    /// This controller lost the rollout lease before its write (another controller leads).
    #[error("store: this controller no longer holds the rollout lease")]
    LostLease,
    /// The database was written by a newer controller.
    #[error(
        "store: schema version {found} is newer than this controller's {known}: upgrade this controller"
    )]
    TooNew {
        /// The database's version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

impl StoreError {
    /// The same error, saying what the store was doing.
    pub(crate) fn during(self, action: &'static str) -> StoreError {
        match self {
            StoreError::Sqlite { source, .. } => StoreError::Sqlite { action, source },
            StoreError::Postgres { source, .. } => StoreError::Postgres { action, source },
            other => other,
        }
    }

    /// Whether the store could not be reached (rather than refusing the operation).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Postgres { source, .. } => {
                // Class 08: connection exception; class 57: operator intervention (shutdown).
                source.is_closed()
                    || source.as_db_error().is_none()
                    || source
                        .code()
                        .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"))
            }
            _ => false,
        }
    }
}

/// A PostgreSQL error as the server said it (the client's own text is only "db error").
fn pg_text(e: &postgres::Error) -> String {
    use std::error::Error as _;
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match e.source() {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

pub(crate) fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { action, source }
}

pub(crate) fn corrupt(what: &'static str) -> impl FnOnce(String) -> StoreError {
    move |reason| StoreError::Corrupt { what, reason }
}

pub(crate) mod db;
mod folders;
mod ha;
pub mod migrate;
mod pg;
mod records;
mod seal;
mod tx;

pub use folders::Put;
pub use ha::{Lease, MemberRow, ROLLOUT_LEASE};
pub use pg::PgTarget;
pub use records::{
    ArtifactRow, NodeProgress, Phase, RolloutRecord, RunState, StoredAgent, StoredPlan,
};
pub use seal::KEY_FILE;
pub use tx::Tx;

use db::{Db, PgDb, SqliteDb};
use seal::Sealer;

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Embedded SQLite: one controller.
    Sqlite,
    /// PostgreSQL: one or several controllers.
    Postgres,
}

#[derive(Debug)]
enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(Box<pg::Pg>),
}

/// The store. Cheap operations run synchronously under one connection lock.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
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

/// What the sealing key check seals: a store opened with another controller's key file fails
/// at start, naming the file, instead of on the first secret it reads.
const SEAL_CHECK: &[u8] = b"apimctl store key check";

pub(crate) fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

impl Store {
    /// Opens (creating it 0600, in a 0700 directory, if missing) the SQLite store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        private_dir(data_dir)?;
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
        Self::sqlite(conn, seal)
    }

    /// A store in memory (tests, and a server embedded without a data directory).
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql("opening in memory"))?;
        Self::sqlite(conn, Sealer::ephemeral()?)
    }

    /// Opens the PostgreSQL store at `target` (migrating it), sealing with the key file in
    /// `key_dir` (created on the first controller; every other controller needs a copy).
    pub fn open_postgres(target: PgTarget, key_dir: &Path) -> Result<Store, StoreError> {
        private_dir(key_dir)?;
        let seal = Sealer::load_or_create(key_dir)?;
        let store = Store {
            backend: Backend::Postgres(Box::new(pg::Pg::open(target)?)),
            seal,
            retention: DEFAULT_SECRETS_RETENTION,
        };
        store.check_seal(&key_dir.join(KEY_FILE))?;
        Ok(store)
    }

    /// The engine this store runs on.
    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Sqlite(_) => Engine::Sqlite,
            Backend::Postgres(_) => Engine::Postgres,
        }
    }

    /// Keeps the resolved secrets of the last `generations` plan generations (and of the one
    /// the cluster runs); older ones are forgotten when the next plan is stored.
    pub fn set_secrets_retention(&mut self, generations: u64) {
        self.retention = generations.max(1);
    }

    fn sqlite(mut conn: Connection, seal: Sealer) -> Result<Store, StoreError> {
        migrate::sqlite(&mut conn)?;
        seal_legacy(&mut conn, &seal)?;
        let store = Store {
            backend: Backend::Sqlite(Mutex::new(conn)),
            seal,
            retention: DEFAULT_SECRETS_RETENTION,
        };
        store.check_seal(Path::new(KEY_FILE))?;
        Ok(store)
    }

    /// Stores the key check on first use; afterwards, opens it or says the key file differs.
    fn check_seal(&self, key_file: &Path) -> Result<(), StoreError> {
        let stored: Option<Vec<u8>> = self.write(|tx| {
            let seen = tx.kv_bytes("seal_check")?;
            if seen.is_none() {
                tx.put_kv_bytes("seal_check", &self.seal.seal("kv.seal_check", SEAL_CHECK)?)?;
            }
            Ok(seen)
        })?;
        match stored {
            Some(s) if self.seal.open("kv.seal_check", &s).as_deref().ok() != Some(SEAL_CHECK) => {
                Err(StoreError::Config(format!(
                    "{} is not the key this store was sealed with: every controller of one store \
                     needs a copy of the first controller's key file",
                    key_file.display()
                )))
            }
            _ => Ok(()),
        }
    }

    fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction; nothing is written unless it returns `Ok`.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(true, f)
    }

    /// Runs `f` in one transaction without bumping the revision: for rows other controllers
    /// do not take into their view (heartbeats, the lease).
    pub fn write_unversioned<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(false, f)
    }

    fn transact<T>(
        &self,
        bump: bool,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let mut conn = Self::lock(conn);
                let tx = conn.transaction().map_err(sql("starting a transaction"))?;
                let out = self.run(&mut SqliteDb(&tx), Engine::Sqlite, bump, f)?;
                tx.commit().map_err(sql("committing"))?;
                Ok(out)
            }
            Backend::Postgres(pg) => pg.with(|client| {
                let mut tx = client
                    .transaction()
                    .map_err(pg::err("starting a transaction"))?;
                let out = self.run(&mut PgDb(&mut tx), Engine::Postgres, bump, f)?;
                tx.commit().map_err(pg::err("committing"))?;
                Ok(out)
            }),
        }
    }

    /// Runs read-only `f`.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = Self::lock(conn);
                self.run(&mut SqliteDb(&conn), Engine::Sqlite, false, f)
            }
            Backend::Postgres(pg) => pg.with(|client| {
                let mut tx = client
                    .build_transaction()
                    .read_only(true)
                    .start()
                    .map_err(pg::err("starting a read"))?;
                let out = self.run(&mut PgDb(&mut tx), Engine::Postgres, false, f)?;
                tx.commit().map_err(pg::err("ending a read"))?;
                Ok(out)
            }),
        }
    }

    fn run<T>(
        &self,
        db: &mut dyn Db,
        engine: Engine,
        writes: bool,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = Tx {
            db: RefCell::new(db),
            seal: &self.seal,
            retention: self.retention,
            engine,
        };
        // First: on PostgreSQL the revision row's lock orders concurrent writers (of every
        // controller), so the rows a write tags with its revision are committed in order and a
        // reader that sees revision R sees every row tagged R or less.
        if writes {
            tx.bump_revision()?;
        }
        f(&tx)
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
                .query_map([], |r| {
                    let v = match r.get_ref(1)? {
                        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                            b.to_vec()
                        }
                        _ => Vec::new(),
                    };
                    Ok((r.get(0)?, v))
                })
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
