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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use apim_certs::{RevocationList, TokenRegistry};
use apim_proto::prost::Message;
use apim_proto::v1::MachineSpec;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::rollout::RolloutRecord;

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

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { action, source }
}

fn corrupt(what: &'static str) -> impl FnOnce(String) -> StoreError {
    move |reason| StoreError::Corrupt { what, reason }
}

/// A stored plan generation. `secrets` holds the resolved secret values (SECRET).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPlan {
    /// The generation number (1, 2, …).
    pub generation: u64,
    /// Who applied it (the operator certificate's name).
    pub author: String,
    /// When, unix seconds.
    pub created_at: i64,
    /// The plan's path on the operator's side (messages only).
    pub plan_path: String,
    /// The plan text.
    pub plan_toml: String,
    /// The resolved secrets, keyed as in `ApplyRequest.resolved_secrets`. SECRET.
    pub secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for StoredPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPlan")
            .field("generation", &self.generation)
            .field("author", &self.author)
            .field("created_at", &self.created_at)
            .field("plan_path", &self.plan_path)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What the store keeps about an enrolled agent (its live session is not persisted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredAgent {
    /// Unexpired certificate serials → not_after (unix seconds).
    pub serials: BTreeMap<String, i64>,
    /// The newest certificate's serial.
    pub cert_serial: Option<String>,
    /// The newest certificate's expiry, unix seconds.
    pub cert_not_after: Option<i64>,
    /// When last heard from, unix milliseconds.
    pub last_seen_ms: Option<i64>,
    /// Last facts, prost-encoded and hex.
    pub facts: Option<String>,
    /// The generation it held at its last `Hello`.
    pub held_generation: u64,
    /// Last status report, prost-encoded and hex.
    pub last_status: Option<String>,
}

/// One artifact of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Original file name.
    pub name: String,
}

/// The store. Cheap operations run synchronously under one connection lock.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

/// Operations inside one transaction (or one read).
pub struct Tx<'a>(&'a Connection);

fn now_s() -> i64 {
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

fn encode_spec(spec: &MachineSpec) -> Vec<u8> {
    spec.encode_to_vec()
}

fn decode_spec(bytes: &[u8]) -> Result<MachineSpec, StoreError> {
    MachineSpec::decode(bytes).map_err(|e| corrupt("machine spec")(e.to_string()))
}

impl Tx<'_> {
    fn kv_get<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let v: Option<String> = self
            .0
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql("reading kv"))?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what)(e.to_string())))
            .transpose()
    }

    fn kv_put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let s = serde_json::to_string(value).map_err(|e| corrupt("kv value")(e.to_string()))?;
        self.0
            .execute(
                "INSERT INTO kv(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, s],
            )
            .map_err(sql("writing kv"))?;
        Ok(())
    }

    // ---- tokens and revocations --------------------------------------------------------

    /// Every stored join-token record.
    pub fn tokens(&self) -> Result<TokenRegistry, StoreError> {
        let mut stmt = self
            .0
            .prepare("SELECT body FROM tokens")
            .map_err(sql("reading tokens"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql("reading tokens"))?;
        let mut records = Vec::new();
        for row in rows {
            let body = row.map_err(sql("reading tokens"))?;
            records.push(serde_json::from_str(&body).map_err(|e| corrupt("token")(e.to_string()))?);
        }
        Ok(TokenRegistry::from(records))
    }

    /// Replaces the stored token records with `registry`.
    pub fn save_tokens(&self, registry: &TokenRegistry) -> Result<(), StoreError> {
        self.0
            .execute("DELETE FROM tokens", [])
            .map_err(sql("clearing tokens"))?;
        for r in registry.records() {
            let body = serde_json::to_string(r).map_err(|e| corrupt("token")(e.to_string()))?;
            self.0
                .execute(
                    "INSERT INTO tokens(id, body) VALUES (?1, ?2)",
                    params![r.id, body],
                )
                .map_err(sql("writing a token"))?;
        }
        Ok(())
    }

    /// The revocation list (empty when none was stored).
    pub fn revocations(&self) -> Result<RevocationList, StoreError> {
        Ok(self
            .kv_get("revocations", "revocations")?
            .unwrap_or_default())
    }

    /// Stores the revocation list.
    pub fn save_revocations(&self, list: &RevocationList) -> Result<(), StoreError> {
        self.kv_put("revocations", list)
    }

    // ---- agents -------------------------------------------------------------------------

    /// Every stored agent.
    pub fn agents(&self) -> Result<BTreeMap<String, StoredAgent>, StoreError> {
        let mut stmt = self
            .0
            .prepare("SELECT machine, body FROM agents")
            .map_err(sql("reading agents"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql("reading agents"))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (m, body) = row.map_err(sql("reading agents"))?;
            out.insert(
                m,
                serde_json::from_str(&body).map_err(|e| corrupt("agent")(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Stores one agent.
    pub fn save_agent(&self, machine: &str, agent: &StoredAgent) -> Result<(), StoreError> {
        let body = serde_json::to_string(agent).map_err(|e| corrupt("agent")(e.to_string()))?;
        self.0
            .execute(
                "INSERT INTO agents(machine, body) VALUES (?1, ?2)
                 ON CONFLICT(machine) DO UPDATE SET body = excluded.body",
                params![machine, body],
            )
            .map_err(sql("writing an agent"))?;
        Ok(())
    }

    // ---- specs ---------------------------------------------------------------------------

    /// The last pushed spec of every machine.
    pub fn specs(&self) -> Result<Vec<MachineSpec>, StoreError> {
        self.spec_table("SELECT spec FROM specs ORDER BY machine")
    }

    fn spec_table(&self, query: &str) -> Result<Vec<MachineSpec>, StoreError> {
        let mut stmt = self.0.prepare(query).map_err(sql("reading specs"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(sql("reading specs"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode_spec(&row.map_err(sql("reading specs"))?)?);
        }
        Ok(out)
    }

    /// Stores the last pushed spec of `spec.machine`, and which plan generation its machine
    /// spec generation came from (for status: agents report the spec generation).
    pub fn save_spec(&self, spec: &MachineSpec) -> Result<(), StoreError> {
        self.0
            .execute(
                "INSERT INTO specs(machine, generation, spec) VALUES (?1, ?2, ?3)
                 ON CONFLICT(machine) DO UPDATE SET generation = excluded.generation,
                 spec = excluded.spec",
                params![spec.machine, spec.generation as i64, encode_spec(spec)],
            )
            .map_err(sql("writing a spec"))?;
        self.0
            .execute(
                "INSERT OR REPLACE INTO spec_history(machine, generation, plan_generation)
                 VALUES (?1, ?2, ?3)",
                params![
                    spec.machine,
                    spec.generation as i64,
                    spec.plan_generation as i64
                ],
            )
            .map_err(sql("writing spec history"))?;
        Ok(())
    }

    /// The plan generation machine spec `generation` of `machine` was rendered from (`None`:
    /// unknown, e.g. pushed before the history was kept).
    pub fn plan_generation_of(
        &self,
        machine: &str,
        generation: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.0
            .query_row(
                "SELECT plan_generation FROM spec_history WHERE machine = ?1 AND generation = ?2",
                params![machine, generation as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|g| g.map(|g| g as u64).filter(|g| *g > 0))
            .map_err(sql("reading spec history"))
    }

    /// What every machine runs when no rollout is in flight (all nodes desired RUNNING).
    pub fn baseline(&self) -> Result<BTreeMap<String, MachineSpec>, StoreError> {
        Ok(self
            .spec_table("SELECT spec FROM baseline ORDER BY machine")?
            .into_iter()
            .map(|s| (s.machine.clone(), s))
            .collect())
    }

    /// Replaces the baseline with `specs`.
    pub fn set_baseline(&self, specs: &[MachineSpec]) -> Result<(), StoreError> {
        self.0
            .execute("DELETE FROM baseline", [])
            .map_err(sql("clearing the baseline"))?;
        for s in specs {
            self.0
                .execute(
                    "INSERT INTO baseline(machine, spec) VALUES (?1, ?2)",
                    params![s.machine, encode_spec(s)],
                )
                .map_err(sql("writing the baseline"))?;
        }
        Ok(())
    }

    // ---- artifacts -----------------------------------------------------------------------

    /// Records a stored artifact (idempotent).
    pub fn record_artifact(&self, row: &ArtifactRow) -> Result<(), StoreError> {
        self.0
            .execute(
                "INSERT INTO artifacts(sha256, size, name, stored_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(sha256) DO NOTHING",
                params![row.sha256, row.size as i64, row.name, now_s()],
            )
            .map_err(sql("recording an artifact"))?;
        Ok(())
    }

    /// The artifact index.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRow>, StoreError> {
        let mut stmt = self
            .0
            .prepare("SELECT sha256, size, name FROM artifacts ORDER BY sha256")
            .map_err(sql("reading artifacts"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ArtifactRow {
                    sha256: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    name: r.get(2)?,
                })
            })
            .map_err(sql("reading artifacts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("reading artifacts"))
    }

    // ---- plans ---------------------------------------------------------------------------

    /// The newest plan generation, 0 when none.
    pub fn latest_generation(&self) -> Result<u64, StoreError> {
        let g: Option<i64> = self
            .0
            .query_row("SELECT MAX(generation) FROM plans", [], |r| r.get(0))
            .map_err(sql("reading plans"))?;
        Ok(g.unwrap_or(0) as u64)
    }

    /// Stores a plan as the next generation and returns it.
    pub fn insert_plan(
        &self,
        author: &str,
        plan_path: &str,
        plan_toml: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<u64, StoreError> {
        let generation = self.latest_generation()? + 1;
        let secrets =
            serde_json::to_string(secrets).map_err(|e| corrupt("plan secrets")(e.to_string()))?;
        self.0
            .execute(
                "INSERT INTO plans(generation, author, created_at, plan_path, plan_toml, secrets)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    generation as i64,
                    author,
                    now_s(),
                    plan_path,
                    plan_toml,
                    secrets
                ],
            )
            .map_err(sql("storing a plan"))?;
        Ok(generation)
    }

    /// One plan generation.
    pub fn plan(&self, generation: u64) -> Result<Option<StoredPlan>, StoreError> {
        let row = self
            .0
            .query_row(
                "SELECT author, created_at, plan_path, plan_toml, secrets FROM plans
                 WHERE generation = ?1",
                [generation as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("reading a plan"))?;
        row.map(|(author, created_at, plan_path, plan_toml, secrets)| {
            Ok(StoredPlan {
                generation,
                author,
                created_at,
                plan_path,
                plan_toml,
                secrets: serde_json::from_str(&secrets)
                    .map_err(|e| corrupt("plan secrets")(e.to_string()))?,
            })
        })
        .transpose()
    }

    // ---- rollouts ------------------------------------------------------------------------

    /// Stores (inserts or updates) a rollout.
    pub fn save_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(r).map_err(|e| corrupt("rollout")(e.to_string()))?;
        self.0
            .execute(
                "INSERT INTO rollouts(id, generation, state, updated_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state,
                 updated_at = excluded.updated_at, body = excluded.body",
                params![
                    r.id,
                    r.generation as i64,
                    format!("{:?}", r.state),
                    now_s(),
                    body
                ],
            )
            .map_err(sql("writing a rollout"))?;
        Ok(())
    }

    /// The newest rollout (by generation), if any.
    pub fn latest_rollout(&self) -> Result<Option<RolloutRecord>, StoreError> {
        let body: Option<String> = self
            .0
            .query_row(
                "SELECT body FROM rollouts ORDER BY generation DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading rollouts"))?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| corrupt("rollout")(e.to_string())))
            .transpose()
    }

    /// Stores the target spec of every machine of a rollout (all nodes desired RUNNING).
    pub fn save_targets(&self, rollout_id: &str, specs: &[MachineSpec]) -> Result<(), StoreError> {
        for s in specs {
            self.0
                .execute(
                    "INSERT OR REPLACE INTO rollout_targets(rollout_id, machine, spec)
                     VALUES (?1, ?2, ?3)",
                    params![rollout_id, s.machine, encode_spec(s)],
                )
                .map_err(sql("writing rollout targets"))?;
        }
        Ok(())
    }

    /// The target specs of a rollout, by machine.
    pub fn targets(&self, rollout_id: &str) -> Result<BTreeMap<String, MachineSpec>, StoreError> {
        let mut stmt = self
            .0
            .prepare("SELECT spec FROM rollout_targets WHERE rollout_id = ?1")
            .map_err(sql("reading rollout targets"))?;
        let rows = stmt
            .query_map([rollout_id], |r| r.get::<_, Vec<u8>>(0))
            .map_err(sql("reading rollout targets"))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let spec = decode_spec(&row.map_err(sql("reading rollout targets"))?)?;
            out.insert(spec.machine.clone(), spec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
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
