//! [`Tx`]: every query of the store, inside one transaction (or one read).

use std::collections::BTreeMap;

use apim_certs::{RevocationList, TokenRegistry};
use apim_proto::prost::Message;
use apim_proto::v1::MachineSpec;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::seal::Sealer;
use super::{
    ArtifactRow, RolloutRecord, RunState, StoreError, StoredAgent, StoredPlan, corrupt, now_s, sql,
};

/// Operations inside one transaction (or one read).
pub struct Tx<'a> {
    pub(super) conn: &'a Connection,
    pub(super) seal: &'a Sealer,
    /// Plan generations whose secrets are kept (older ones are pruned by `insert_plan`).
    pub(super) retention: u64,
}

/// A column that may hold bytes or (written before sealing) text.
pub(super) fn bytes_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    match row.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b.to_vec()),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            "sealed value".into(),
            other.data_type(),
        )),
    }
}

impl Tx<'_> {
    fn encode_spec(&self, place: &str, spec: &MachineSpec) -> Result<Vec<u8>, StoreError> {
        self.seal.seal(place, &spec.encode_to_vec())
    }

    fn decode_spec(&self, place: &str, bytes: &[u8]) -> Result<MachineSpec, StoreError> {
        let plain = self.seal.open(place, bytes)?;
        MachineSpec::decode(plain.as_slice()).map_err(|e| corrupt("machine spec")(e.to_string()))
    }

    fn kv_get<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let v: Option<String> = self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql("reading kv"))?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what)(e.to_string())))
            .transpose()
    }

    fn kv_put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let s = serde_json::to_string(value).map_err(|e| corrupt("kv value")(e.to_string()))?;
        self.conn
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
            .conn
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
        self.conn
            .execute("DELETE FROM tokens", [])
            .map_err(sql("clearing tokens"))?;
        for r in registry.records() {
            let body = serde_json::to_string(r).map_err(|e| corrupt("token")(e.to_string()))?;
            self.conn
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
            .conn
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
        self.conn
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
        self.spec_table("specs")
    }

    /// Every spec of `table` (`specs` or `baseline`), by machine.
    fn spec_table(&self, table: &str) -> Result<Vec<MachineSpec>, StoreError> {
        let query = format!("SELECT spec FROM {table} ORDER BY machine");
        let mut stmt = self.conn.prepare(&query).map_err(sql("reading specs"))?;
        let rows = stmt
            .query_map([], |r| bytes_at(r, 0))
            .map_err(sql("reading specs"))?;
        let mut out = Vec::new();
        for row in rows {
            let bytes = row.map_err(sql("reading specs"))?;
            out.push(self.decode_spec(&format!("{table}.spec"), &bytes)?);
        }
        Ok(out)
    }

    /// Stores the last pushed spec of `spec.machine`, and which plan generation its machine
    /// spec generation came from (for status: agents report the spec generation).
    pub fn save_spec(&self, spec: &MachineSpec) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO specs(machine, generation, spec) VALUES (?1, ?2, ?3)
                 ON CONFLICT(machine) DO UPDATE SET generation = excluded.generation,
                 spec = excluded.spec",
                params![
                    spec.machine,
                    spec.generation as i64,
                    self.encode_spec("specs.spec", spec)?
                ],
            )
            .map_err(sql("writing a spec"))?;
        self.conn
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
        self.conn
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
            .spec_table("baseline")?
            .into_iter()
            .map(|s| (s.machine.clone(), s))
            .collect())
    }

    /// Replaces the baseline with `specs`.
    pub fn set_baseline(&self, specs: &[MachineSpec]) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM baseline", [])
            .map_err(sql("clearing the baseline"))?;
        for s in specs {
            self.conn
                .execute(
                    "INSERT INTO baseline(machine, spec) VALUES (?1, ?2)",
                    params![s.machine, self.encode_spec("baseline.spec", s)?],
                )
                .map_err(sql("writing the baseline"))?;
        }
        Ok(())
    }

    // ---- artifacts -----------------------------------------------------------------------

    /// Records a stored artifact (idempotent).
    pub fn record_artifact(&self, row: &ArtifactRow) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO artifacts(sha256, size, name, stored_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(sha256) DO NOTHING",
                params![row.sha256, row.size as i64, row.name, now_s()],
            )
            .map_err(sql("recording an artifact"))?;
        Ok(())
    }

    /// Forgets an artifact of the index (its file was removed).
    pub fn forget_artifact(&self, sha256: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM artifacts WHERE sha256 = ?1", params![sha256])
            .map_err(sql("forgetting an artifact"))?;
        Ok(())
    }

    /// The artifact index.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRow>, StoreError> {
        let mut stmt = self
            .conn
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
            .conn
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
            serde_json::to_vec(secrets).map_err(|e| corrupt("plan secrets")(e.to_string()))?;
        let secrets = self.seal.seal("plans.secrets", &secrets)?;
        let plan_toml = self.seal.seal("plans.plan_toml", plan_toml.as_bytes())?;
        self.conn
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
        self.prune_secrets(generation)?;
        Ok(generation)
    }

    /// Forgets the secrets of plan generations more than `retention` behind `latest` (their
    /// resolved secrets and the rollout target specs rendered with them), except the
    /// generation the baseline runs: a rollback to it must still be possible.
    fn prune_secrets(&self, latest: u64) -> Result<(), StoreError> {
        let Some(oldest_kept) = latest.checked_sub(self.retention) else {
            return Ok(());
        };
        let keep = self
            .baseline()?
            .values()
            .map(|s| s.plan_generation as i64)
            .max()
            .unwrap_or(0);
        let empty = self.seal.seal("plans.secrets", b"{}")?;
        self.conn
            .execute(
                "UPDATE plans SET secrets = ?1 WHERE generation <= ?2 AND generation != ?3",
                params![empty, oldest_kept as i64, keep],
            )
            .map_err(sql("pruning plan secrets"))?;
        self.conn
            .execute(
                "DELETE FROM rollout_targets WHERE rollout_id IN
                 (SELECT id FROM rollouts WHERE generation <= ?1 AND generation != ?2)",
                params![oldest_kept as i64, keep],
            )
            .map_err(sql("pruning rollout targets"))?;
        Ok(())
    }

    /// Records what the operator asked of nodes at `generation` ([`RunState`]).
    pub fn set_run_state(&self, generation: u64, run: &RunState) -> Result<(), StoreError> {
        let body = serde_json::to_string(run).map_err(|e| corrupt("run state")(e.to_string()))?;
        self.conn
            .execute(
                "UPDATE plans SET run_state = ?1 WHERE generation = ?2",
                params![body, generation as i64],
            )
            .map_err(sql("storing a run state"))?;
        Ok(())
    }

    /// The [`RunState`] of `generation` (empty before the first, or for an unknown one).
    pub fn run_state(&self, generation: u64) -> Result<RunState, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT run_state FROM plans WHERE generation = ?1",
                [generation as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading a run state"))?;
        body.map_or(Ok(RunState::default()), |b| {
            serde_json::from_str(&b).map_err(|e| corrupt("run state")(e.to_string()))
        })
    }

    /// One plan generation.
    pub fn plan(&self, generation: u64) -> Result<Option<StoredPlan>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT author, created_at, plan_path, plan_toml, secrets FROM plans
                 WHERE generation = ?1",
                [generation as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        bytes_at(r, 3)?,
                        bytes_at(r, 4)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("reading a plan"))?;
        row.map(|(author, created_at, plan_path, plan_toml, secrets)| {
            let plan_toml = self.seal.open("plans.plan_toml", &plan_toml)?;
            let secrets = self.seal.open("plans.secrets", &secrets)?;
            Ok(StoredPlan {
                generation,
                author,
                created_at,
                plan_path,
                plan_toml: String::from_utf8(plan_toml)
                    .map_err(|e| corrupt("plan text")(e.to_string()))?,
                secrets: serde_json::from_slice(&secrets)
                    .map_err(|e| corrupt("plan secrets")(e.to_string()))?,
            })
        })
        .transpose()
    }

    // ---- rollouts ------------------------------------------------------------------------

    /// Stores (inserts or updates) a rollout.
    pub fn save_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(r).map_err(|e| corrupt("rollout")(e.to_string()))?;
        self.conn
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

    /// Every rollout, by its plan generation (a generation has at most one).
    pub fn rollouts_by_generation(&self) -> Result<BTreeMap<u64, RolloutRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM rollouts")
            .map_err(sql("reading rollouts"))?;
        let bodies = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql("reading rollouts"))?;
        let mut out = BTreeMap::new();
        for b in bodies {
            let b = b.map_err(sql("reading rollouts"))?;
            let r: RolloutRecord =
                serde_json::from_str(&b).map_err(|e| corrupt("rollout")(e.to_string()))?;
            out.insert(r.generation, r);
        }
        Ok(out)
    }

    /// The newest rollout (by generation), if any.
    pub fn latest_rollout(&self) -> Result<Option<RolloutRecord>, StoreError> {
        let body: Option<String> = self
            .conn
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
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO rollout_targets(rollout_id, machine, spec)
                     VALUES (?1, ?2, ?3)",
                    params![
                        rollout_id,
                        s.machine,
                        self.encode_spec("rollout_targets.spec", s)?
                    ],
                )
                .map_err(sql("writing rollout targets"))?;
        }
        Ok(())
    }

    /// The target specs of a rollout, by machine.
    pub fn targets(&self, rollout_id: &str) -> Result<BTreeMap<String, MachineSpec>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT spec FROM rollout_targets WHERE rollout_id = ?1")
            .map_err(sql("reading rollout targets"))?;
        let rows = stmt
            .query_map([rollout_id], |r| bytes_at(r, 0))
            .map_err(sql("reading rollout targets"))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let bytes = row.map_err(sql("reading rollout targets"))?;
            let spec = self.decode_spec("rollout_targets.spec", &bytes)?;
            out.insert(spec.machine.clone(), spec);
        }
        Ok(out)
    }

    // ---- drift ----------------------------------------------------------------------------

    /// Whether drift is repaired: `[rollout] drift = "repair"` in the plan last applied (also an
    /// apply that changed no node); `false` before any.
    pub fn drift_repair(&self) -> Result<bool, StoreError> {
        Ok(self.kv_get("drift_repair", "drift mode")?.unwrap_or(false))
    }

    /// Records the applied plan's `[rollout] drift`.
    pub fn set_drift_repair(&self, repair: bool) -> Result<(), StoreError> {
        self.kv_put("drift_repair", &repair)
    }
}
