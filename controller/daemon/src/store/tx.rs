//! [`Tx`]: every query of the store, inside one transaction (or one read).

use std::collections::BTreeMap;

use apim_certs::{RevocationList, TokenRegistry};
use apim_proto::prost::Message;
use apim_proto::v1::MachineSpec;
use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use super::db::{Db, Row, Val, params};
use super::seal::Sealer;
use super::{
    ArtifactRow, Engine, RolloutRecord, RunState, StoreError, StoredAgent, StoredPlan, corrupt,
    now_s,
};

/// Operations inside one transaction (or one read).
pub struct Tx<'a> {
    pub(super) db: RefCell<&'a mut dyn Db>,
    pub(super) seal: &'a Sealer,
    /// Plan generations whose secrets are kept (older ones are pruned by `insert_plan`).
    pub(super) retention: u64,
    pub(super) engine: Engine,
}

impl Tx<'_> {
    /// Runs a statement, saying what it was for if it fails.
    pub(super) fn exec(
        &self,
        action: &'static str,
        sql: &str,
        params: &[Val],
    ) -> Result<u64, StoreError> {
        self.db
            .borrow_mut()
            .exec(sql, params)
            .map_err(|e| e.during(action))
    }

    /// Runs a query, saying what it was for if it fails.
    pub(super) fn query(
        &self,
        action: &'static str,
        sql: &str,
        params: &[Val],
    ) -> Result<Vec<Row>, StoreError> {
        self.db
            .borrow_mut()
            .query(sql, params)
            .map_err(|e| e.during(action))
    }

    /// The first row of a query, if any.
    pub(super) fn query_opt(
        &self,
        action: &'static str,
        sql: &str,
        params: &[Val],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(action, sql, params)?.into_iter().next())
    }

    /// The engine under this transaction.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Bumps the store's revision (every write does, first, so other controllers notice it).
    pub(super) fn bump_revision(&self) -> Result<(), StoreError> {
        self.exec(
            "bumping the revision",
            "UPDATE revision SET n = n + 1 WHERE id = 1",
            &[],
        )?;
        Ok(())
    }

    /// The store's revision: it changes on every write, by any controller.
    pub fn revision(&self) -> Result<i64, StoreError> {
        self.query_opt(
            "reading the revision",
            "SELECT n FROM revision WHERE id = 1",
            &[],
        )?
        .map_or(Ok(0), |r| r.int(0))
    }

    pub(super) fn kv_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_opt(
            "reading kv",
            "SELECT value FROM kv WHERE key = ?1",
            params![key],
        )?
        .map(|r| hex::decode(r.text(0)?).map_err(|e| corrupt("kv bytes")(e.to_string())))
        .transpose()
    }

    pub(super) fn put_kv_bytes(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put_kv_text(key, hex::encode(value))
    }

    fn put_kv_text(&self, key: &str, value: String) -> Result<(), StoreError> {
        self.exec(
            "writing kv",
            "INSERT INTO kv(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn encode_spec(&self, place: &str, spec: &MachineSpec) -> Result<Vec<u8>, StoreError> {
        self.seal.seal(place, &spec.encode_to_vec())
    }

    pub(super) fn decode_spec(&self, place: &str, bytes: &[u8]) -> Result<MachineSpec, StoreError> {
        let plain = self.seal.open(place, bytes)?;
        MachineSpec::decode(plain.as_slice()).map_err(|e| corrupt("machine spec")(e.to_string()))
    }

    fn kv_get<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let v = self
            .query_opt(
                "reading kv",
                "SELECT value FROM kv WHERE key = ?1",
                params![key],
            )?
            .map(|r| r.text(0))
            .transpose()?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what)(e.to_string())))
            .transpose()
    }

    fn kv_put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let s = serde_json::to_string(value).map_err(|e| corrupt("kv value")(e.to_string()))?;
        self.put_kv_text(key, s)
    }

    // ---- tokens and revocations --------------------------------------------------------

    /// Every stored join-token record.
    pub fn tokens(&self) -> Result<TokenRegistry, StoreError> {
        let mut records = Vec::new();
        for row in self.query("reading tokens", "SELECT body FROM tokens", &[])? {
            let body = row.text(0)?;
            records.push(serde_json::from_str(&body).map_err(|e| corrupt("token")(e.to_string()))?);
        }
        Ok(TokenRegistry::from(records))
    }

    /// Replaces the stored token records with `registry`.
    pub fn save_tokens(&self, registry: &TokenRegistry) -> Result<(), StoreError> {
        self.exec("clearing tokens", "DELETE FROM tokens", &[])?;
        for r in registry.records() {
            let body = serde_json::to_string(r).map_err(|e| corrupt("token")(e.to_string()))?;
            self.exec(
                "writing a token",
                "INSERT INTO tokens(id, body) VALUES (?1, ?2)",
                params![&r.id, body],
            )?;
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
        let mut out = BTreeMap::new();
        for row in self.query("reading agents", "SELECT machine, body FROM agents", &[])? {
            let body = row.text(1)?;
            out.insert(
                row.text(0)?,
                serde_json::from_str(&body).map_err(|e| corrupt("agent")(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Stores one agent.
    pub fn save_agent(&self, machine: &str, agent: &StoredAgent) -> Result<(), StoreError> {
        let body = serde_json::to_string(agent).map_err(|e| corrupt("agent")(e.to_string()))?;
        self.exec(
            "writing an agent",
            "INSERT INTO agents(machine, body, revision)
             VALUES (?1, ?2, (SELECT n FROM revision WHERE id = 1))
             ON CONFLICT(machine) DO UPDATE SET body = excluded.body,
             revision = excluded.revision",
            params![machine, body],
        )?;
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
        let place = format!("{table}.spec");
        self.query("reading specs", &query, &[])?
            .iter()
            .map(|r| self.decode_spec(&place, &r.bytes(0)?))
            .collect()
    }

    /// Stores the last pushed spec of `spec.machine`, and which plan generation its machine
    /// spec generation came from (for status: agents report the spec generation).
    pub fn save_spec(&self, spec: &MachineSpec) -> Result<(), StoreError> {
        self.exec(
            "writing a spec",
            "INSERT INTO specs(machine, generation, spec, revision)
             VALUES (?1, ?2, ?3, (SELECT n FROM revision WHERE id = 1))
             ON CONFLICT(machine) DO UPDATE SET generation = excluded.generation,
             spec = excluded.spec, revision = excluded.revision",
            params![
                &spec.machine,
                spec.generation,
                self.encode_spec("specs.spec", spec)?
            ],
        )?;
        self.exec(
            "writing spec history",
            "INSERT INTO spec_history(machine, generation, plan_generation)
             VALUES (?1, ?2, ?3)
             ON CONFLICT(machine, generation) DO UPDATE SET
             plan_generation = excluded.plan_generation",
            params![&spec.machine, spec.generation, spec.plan_generation],
        )?;
        Ok(())
    }

    /// The plan generation machine spec `generation` of `machine` was rendered from (`None`:
    /// unknown, e.g. pushed before the history was kept).
    pub fn plan_generation_of(
        &self,
        machine: &str,
        generation: u64,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self
            .query_opt(
                "reading spec history",
                "SELECT plan_generation FROM spec_history WHERE machine = ?1 AND generation = ?2",
                params![machine, generation],
            )?
            .map(|r| r.int(0))
            .transpose()?
            .map(|g| g as u64)
            .filter(|g| *g > 0))
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
        self.exec("clearing the baseline", "DELETE FROM baseline", &[])?;
        for s in specs {
            self.exec(
                "writing the baseline",
                "INSERT INTO baseline(machine, spec) VALUES (?1, ?2)",
                params![&s.machine, self.encode_spec("baseline.spec", s)?],
            )?;
        }
        Ok(())
    }

    // ---- artifacts -----------------------------------------------------------------------

    /// Records a stored artifact (idempotent).
    pub fn record_artifact(&self, row: &ArtifactRow) -> Result<(), StoreError> {
        self.exec(
            "recording an artifact",
            "INSERT INTO artifacts(sha256, size, name, stored_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(sha256) DO NOTHING",
            params![&row.sha256, row.size, &row.name, now_s()],
        )?;
        Ok(())
    }

    /// Forgets an artifact of the index (its file was removed).
    pub fn forget_artifact(&self, sha256: &str) -> Result<(), StoreError> {
        self.exec(
            "forgetting an artifact",
            "DELETE FROM artifacts WHERE sha256 = ?1",
            params![sha256],
        )?;
        self.exec(
            "forgetting an artifact's chunks",
            "DELETE FROM artifact_chunks WHERE sha256 = ?1",
            params![sha256],
        )?;
        Ok(())
    }

    /// The artifact index.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRow>, StoreError> {
        self.query(
            "reading artifacts",
            "SELECT sha256, size, name FROM artifacts ORDER BY sha256",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(ArtifactRow {
                sha256: r.text(0)?,
                size: r.int(1)? as u64,
                name: r.text(2)?,
            })
        })
        .collect()
    }

    // ---- plans ---------------------------------------------------------------------------

    /// The newest plan generation, 0 when none.
    pub fn latest_generation(&self) -> Result<u64, StoreError> {
        let g = self
            .query_opt("reading plans", "SELECT MAX(generation) FROM plans", &[])?
            .map(|r| r.opt_int(0))
            .transpose()?
            .flatten();
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
        self.exec(
            "storing a plan",
            "INSERT INTO plans(generation, author, created_at, plan_path, plan_toml, secrets)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![generation, author, now_s(), plan_path, plan_toml, secrets],
        )?;
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
            .map(|s| s.plan_generation)
            .max()
            .unwrap_or(0);
        let empty = self.seal.seal("plans.secrets", b"{}")?;
        self.exec(
            "pruning plan secrets",
            "UPDATE plans SET secrets = ?1 WHERE generation <= ?2 AND generation != ?3",
            params![empty, oldest_kept, keep],
        )?;
        self.exec(
            "pruning rollout targets",
            "DELETE FROM rollout_targets WHERE rollout_id IN
             (SELECT id FROM rollouts WHERE generation <= ?1 AND generation != ?2)",
            params![oldest_kept, keep],
        )?;
        Ok(())
    }

    /// Records what the operator asked of nodes at `generation` ([`RunState`]).
    pub fn set_run_state(&self, generation: u64, run: &RunState) -> Result<(), StoreError> {
        let body = serde_json::to_string(run).map_err(|e| corrupt("run state")(e.to_string()))?;
        self.exec(
            "storing a run state",
            "UPDATE plans SET run_state = ?1 WHERE generation = ?2",
            params![body, generation],
        )?;
        Ok(())
    }

    /// The [`RunState`] of `generation` (empty before the first, or for an unknown one).
    pub fn run_state(&self, generation: u64) -> Result<RunState, StoreError> {
        let body = self
            .query_opt(
                "reading a run state",
                "SELECT run_state FROM plans WHERE generation = ?1",
                params![generation],
            )?
            .map(|r| r.text(0))
            .transpose()?;
        body.map_or(Ok(RunState::default()), |b| {
            serde_json::from_str(&b).map_err(|e| corrupt("run state")(e.to_string()))
        })
    }

    /// One plan generation.
    pub fn plan(&self, generation: u64) -> Result<Option<StoredPlan>, StoreError> {
        let Some(row) = self.query_opt(
            "reading a plan",
            "SELECT author, created_at, plan_path, plan_toml, secrets FROM plans
             WHERE generation = ?1",
            params![generation],
        )?
        else {
            return Ok(None);
        };
        let plan_toml = self.seal.open("plans.plan_toml", &row.bytes(3)?)?;
        let secrets = self.seal.open("plans.secrets", &row.bytes(4)?)?;
        Ok(Some(StoredPlan {
            generation,
            author: row.text(0)?,
            created_at: row.int(1)?,
            plan_path: row.text(2)?,
            plan_toml: String::from_utf8(plan_toml)
                .map_err(|e| corrupt("plan text")(e.to_string()))?,
            secrets: serde_json::from_slice(&secrets)
                .map_err(|e| corrupt("plan secrets")(e.to_string()))?,
        }))
    }

    // ---- rollouts ------------------------------------------------------------------------

    /// Stores (inserts or updates) a rollout.
    pub fn save_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(r).map_err(|e| corrupt("rollout")(e.to_string()))?;
        self.exec(
            "writing a rollout",
            "INSERT INTO rollouts(id, generation, state, updated_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state,
             updated_at = excluded.updated_at, body = excluded.body",
            params![&r.id, r.generation, format!("{:?}", r.state), now_s(), body],
        )?;
        Ok(())
    }

    /// Every rollout, by its plan generation (a generation has at most one).
    pub fn rollouts_by_generation(&self) -> Result<BTreeMap<u64, RolloutRecord>, StoreError> {
        let mut out = BTreeMap::new();
        for row in self.query("reading rollouts", "SELECT body FROM rollouts", &[])? {
            let r: RolloutRecord = serde_json::from_str(&row.text(0)?)
                .map_err(|e| corrupt("rollout")(e.to_string()))?;
            out.insert(r.generation, r);
        }
        Ok(out)
    }

    /// The newest rollout (by generation), if any.
    pub fn latest_rollout(&self) -> Result<Option<RolloutRecord>, StoreError> {
        self.query_opt(
            "reading rollouts",
            "SELECT body FROM rollouts ORDER BY generation DESC LIMIT 1",
            &[],
        )?
        .map(|r| serde_json::from_str(&r.text(0)?).map_err(|e| corrupt("rollout")(e.to_string())))
        .transpose()
    }

    /// Stores the target spec of every machine of a rollout (all nodes desired RUNNING).
    pub fn save_targets(&self, rollout_id: &str, specs: &[MachineSpec]) -> Result<(), StoreError> {
        for s in specs {
            self.exec(
                "writing rollout targets",
                "INSERT INTO rollout_targets(rollout_id, machine, spec) VALUES (?1, ?2, ?3)
                 ON CONFLICT(rollout_id, machine) DO UPDATE SET spec = excluded.spec",
                params![
                    rollout_id,
                    &s.machine,
                    self.encode_spec("rollout_targets.spec", s)?
                ],
            )?;
        }
        Ok(())
    }

    /// The target specs of a rollout, by machine.
    pub fn targets(&self, rollout_id: &str) -> Result<BTreeMap<String, MachineSpec>, StoreError> {
        let mut out = BTreeMap::new();
        for row in self.query(
            "reading rollout targets",
            "SELECT spec FROM rollout_targets WHERE rollout_id = ?1",
            params![rollout_id],
        )? {
            let spec = self.decode_spec("rollout_targets.spec", &row.bytes(0)?)?;
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
