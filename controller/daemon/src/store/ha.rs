//! The queries of several controllers on one store: membership rows, the rollout lease, the
//! files they share (sealed), and "what changed since revision R".
//!
//! Times that decide who leads come from the database's clock on PostgreSQL (controllers'
//! clocks may disagree), from this host's on SQLite (one controller only).

use std::collections::BTreeMap;

use apim_proto::v1::MachineSpec;

use super::db::params;
use super::{Engine, StoreError, StoredAgent, Tx, corrupt};

/// The rollout lease's name in `leases`.
pub const ROLLOUT_LEASE: &str = "rollouts";

/// One row of `controllers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The controller's id.
    pub id: String,
    /// The address it advertises.
    pub address: String,
    /// Its build's version.
    pub version: String,
    /// When it started, unix ms.
    pub started_at_ms: i64,
    /// Its last heartbeat, unix ms (store clock).
    pub heartbeat_ms: i64,
    /// The store revision it had caught up with at that heartbeat.
    pub seen_revision: i64,
}

/// The rollout lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds (or last held) it.
    pub holder: String,
    /// Until when, unix ms (store clock).
    pub expires_at_ms: i64,
    /// Bumped on every change of holder: a fencing token.
    pub epoch: i64,
}

impl Tx<'_> {
    /// Now, unix ms, by the store's clock (PostgreSQL's; this host's for SQLite).
    pub fn now_ms(&self) -> Result<i64, StoreError> {
        match self.engine {
            Engine::Sqlite => {
                Ok((time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
            }
            Engine::Postgres => self
                .query_opt(
                    "reading the database clock",
                    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
                    &[],
                )?
                .map_or(Ok(0), |r| r.int(0)),
        }
    }

    /// Writes this controller's membership row (its heartbeat).
    pub fn heartbeat(
        &self,
        id: &str,
        address: &str,
        version: &str,
        started_at_ms: i64,
        seen_revision: i64,
    ) -> Result<(), StoreError> {
        let now = self.now_ms()?;
        self.exec(
            "writing a heartbeat",
            "INSERT INTO controllers(id, address, version, started_at, heartbeat_at, seen_revision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET address = excluded.address,
             version = excluded.version, started_at = excluded.started_at,
             heartbeat_at = excluded.heartbeat_at, seen_revision = excluded.seen_revision",
            params![id, address, version, started_at_ms, now, seen_revision],
        )?;
        Ok(())
    }

    /// Every membership row, by id.
    pub fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        self.query(
            "reading controllers",
            "SELECT id, address, version, started_at, heartbeat_at, seen_revision
             FROM controllers ORDER BY id",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(MemberRow {
                id: r.text(0)?,
                address: r.text(1)?,
                version: r.text(2)?,
                started_at_ms: r.int(3)?,
                heartbeat_ms: r.int(4)?,
                seen_revision: r.int(5)?,
            })
        })
        .collect()
    }

    /// Takes or renews the lease `name` for `holder` for `ttl_ms`: it succeeds when nobody
    /// holds it, `holder` does, or the holder's time ran out. Returns the lease as it stands.
    pub fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Lease, StoreError> {
        let now = self.now_ms()?;
        self.exec(
            "taking the lease",
            "INSERT INTO leases(name, holder, expires_at, epoch) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT(name) DO UPDATE SET holder = excluded.holder,
             expires_at = excluded.expires_at,
             epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch
                          ELSE leases.epoch + 1 END
             WHERE leases.holder = excluded.holder OR leases.expires_at < ?4",
            params![name, holder, now + ttl_ms, now],
        )?;
        self.lease(name)?
            .ok_or_else(|| corrupt("lease")("missing after taking it".into()))
    }

    /// Gives the lease up (a clean shutdown): the next controller need not wait it out.
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.exec(
            "releasing the lease",
            "UPDATE leases SET expires_at = 0 WHERE name = ?1 AND holder = ?2",
            params![name, holder],
        )?;
        Ok(())
    }

    /// The lease `name`, if ever taken.
    pub fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.query_opt(
            "reading the lease",
            "SELECT holder, expires_at, epoch FROM leases WHERE name = ?1",
            params![name],
        )?
        .map(|r| {
            Ok(Lease {
                holder: r.text(0)?,
                expires_at_ms: r.int(1)?,
                epoch: r.int(2)?,
            })
        })
        .transpose()
    }

    /// Whether `holder` holds lease `name` now, at `epoch` (the fencing check a leader's write
    /// makes in its own transaction: a leader that lost the lease writes nothing).
    pub fn holds_lease(&self, name: &str, holder: &str, epoch: i64) -> Result<bool, StoreError> {
        let now = self.now_ms()?;
        Ok(self
            .lease(name)?
            .is_some_and(|l| l.holder == holder && l.epoch == epoch && l.expires_at_ms >= now))
    }

    /// Agents written after revision `after` up to `upto`.
    pub fn agents_changed(
        &self,
        after: i64,
        upto: i64,
    ) -> Result<BTreeMap<String, StoredAgent>, StoreError> {
        let mut out = BTreeMap::new();
        for row in self.query(
            "reading changed agents",
            "SELECT machine, body FROM agents WHERE revision > ?1 AND revision <= ?2",
            params![after, upto],
        )? {
            out.insert(
                row.text(0)?,
                serde_json::from_str(&row.text(1)?).map_err(|e| corrupt("agent")(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Specs written after revision `after` up to `upto`.
    pub fn specs_changed(&self, after: i64, upto: i64) -> Result<Vec<MachineSpec>, StoreError> {
        self.query(
            "reading changed specs",
            "SELECT spec FROM specs WHERE revision > ?1 AND revision <= ?2",
            params![after, upto],
        )?
        .iter()
        .map(|r| self.decode_spec("specs.spec", &r.bytes(0)?))
        .collect()
    }

    /// The shared files under `prefix/` (sealed in the store) written after revision `after`,
    /// by relative path, and the newest revision among them (`after` when none).
    pub fn shared_files(
        &self,
        prefix: &str,
        after: i64,
    ) -> Result<(BTreeMap<String, Vec<u8>>, i64), StoreError> {
        let mut out = BTreeMap::new();
        let mut newest = after;
        for row in self.query(
            "reading shared files",
            "SELECT path, data, revision FROM shared_files WHERE path LIKE ?1 AND revision > ?2",
            params![format!("{prefix}/%"), after],
        )? {
            let path = row.text(0)?;
            let data = self.seal.open("shared_files.data", &row.bytes(1)?)?;
            newest = newest.max(row.int(2)?);
            out.insert(path, data);
        }
        Ok((out, newest))
    }

    /// Stores a shared file; with `replace` false an existing one is kept. Returns whether
    /// this call wrote it.
    pub fn put_shared_file(
        &self,
        path: &str,
        data: &[u8],
        replace: bool,
    ) -> Result<bool, StoreError> {
        let sealed = self.seal.seal("shared_files.data", data)?;
        let sql = if replace {
            "INSERT INTO shared_files(path, data, revision)
             VALUES (?1, ?2, (SELECT n FROM revision WHERE id = 1))
             ON CONFLICT(path) DO UPDATE SET data = excluded.data, revision = excluded.revision"
        } else {
            "INSERT INTO shared_files(path, data, revision)
             VALUES (?1, ?2, (SELECT n FROM revision WHERE id = 1))
             ON CONFLICT(path) DO NOTHING"
        };
        Ok(self.exec("writing a shared file", sql, params![path, sealed])? == 1)
    }

    /// Stores chunk `idx` of artifact `sha256` (several controllers: one received the upload).
    pub fn put_artifact_chunk(
        &self,
        sha256: &str,
        idx: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        self.exec(
            "storing an artifact chunk",
            "INSERT INTO artifact_chunks(sha256, idx, data) VALUES (?1, ?2, ?3)
             ON CONFLICT(sha256, idx) DO UPDATE SET data = excluded.data",
            params![sha256, idx, data.to_vec()],
        )?;
        Ok(())
    }

    /// Chunk `idx` of artifact `sha256`, if stored.
    pub fn artifact_chunk(&self, sha256: &str, idx: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_opt(
            "reading an artifact chunk",
            "SELECT data FROM artifact_chunks WHERE sha256 = ?1 AND idx = ?2",
            params![sha256, idx],
        )?
        .map(|r| r.bytes(0))
        .transpose()
    }

    /// The indexed size of artifact `sha256` (its upload completed on some controller).
    pub fn artifact_size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        self.query_opt(
            "reading the artifact index",
            "SELECT size FROM artifacts WHERE sha256 = ?1",
            params![sha256],
        )?
        .map(|r| r.int(0).map(|n| n as u64))
        .transpose()
    }
}
