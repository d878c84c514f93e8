//! The node's databases and jars: each database its server opens must answer before the node is
//! staged (a bounded TCP connect), the one node the controller names creates a database's schema
//! from its pack's scripts, and the spec's jars (JDBC drivers) are placed in the tree.
//!
//! The agent knows SQL engines and files here, not the product: which scripts, which folder and
//! which node come from the spec.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use apim_dbinit::{DbError, Engine, Options, Outcome, Script, Secret, Target};
use apim_proto::v1::{DatabaseUse, DbEngine, NodePhase, NodeSpec};
use sha2::{Digest, Sha256};

use super::{NodeExecutor, NodeTarget, Observed, rel_path};
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};

/// How long a database's server may take to accept a TCP connection.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Lists the jars the agent placed in a folder, so a later spec can take them away.
const PLACED_LIST: &str = ".apimctl-libs";

impl NodeExecutor {
    /// Whether the node already runs this spec's configuration (nothing to check again).
    fn runs_target(&self, t: &NodeTarget, node: &Observed) -> bool {
        node.pid.is_some()
            && self.rec.applied_digest.as_deref() == Some(t.spec.config_digest.as_str())
    }

    /// Each database answers; the schema is created where the spec says (before the node is
    /// staged, so a failure halts the rollout before anything starts).
    pub(super) async fn databases(&self, t: &NodeTarget, node: &Observed) -> DaemonResult<()> {
        if t.spec.databases.is_empty() || self.runs_target(t, node) {
            return Ok(());
        }
        for db in &t.spec.databases {
            let port = u16::try_from(db.port).map_err(|_| self.db_error(db, "bad port".into()))?;
            apim_dbinit::reachable(&self.db_address(db), port, REACH_TIMEOUT)
                .await
                .map_err(|e| self.db_error(db, unreachable_text(&e)))?;
        }
        for db in &t.spec.databases {
            if let Some(init) = &db.init {
                self.initialise(t, node, db, init).await?;
            }
        }
        Ok(())
    }

    async fn initialise(
        &self,
        t: &NodeTarget,
        node: &Observed,
        db: &DatabaseUse,
        init: &apim_proto::v1::DatabaseInit,
    ) -> DaemonResult<()> {
        let machine = &self.ctx.config.machine;
        self.report(
            t.generation,
            NodePhase::Initialising,
            format!(
                "initialising {} on {machine} ({}:{}/{})",
                db.id, db.host, db.port, init.database
            ),
        );
        let engine = match DbEngine::try_from(init.engine) {
            Ok(DbEngine::Mysql) => Engine::Mysql,
            Ok(DbEngine::Postgres) => Engine::Postgres,
            _ => return Err(self.db_error(db, "the spec names no database engine".into())),
        };
        let mut scripts = Vec::new();
        for name in &init.scripts {
            let path = node
                .home
                .join(rel_path(&self.name, "databases.init.scripts", name)?);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| self.db_error(db, format!("the pack's script {name}: {e}")))?;
            scripts.push(Script {
                name: name.clone(),
                text,
            });
        }
        let target = Target {
            engine,
            host: self.db_address(db),
            port: u16::try_from(db.port).unwrap_or(0),
            database: init.database.clone(),
            username: init.username.clone(),
            password: Secret(init.password.clone()),
        };
        match apim_dbinit::init_if_empty(&target, &scripts, &Options::default()).await {
            Ok(Outcome::Created { tables, statements }) => {
                tracing::info!(node = %self.name, database = %db.id, tables = tables.len(),
                    statements, "database schema created from the pack's scripts");
                Ok(())
            }
            Ok(Outcome::AlreadyPresent { tables }) => {
                tracing::info!(node = %self.name, database = %db.id, tables,
                    "database schema already present; left as it is");
                Ok(())
            }
            Err(e) => Err(self.db_error(db, e.to_string())),
        }
    }

    /// Where to connect for `db`: its address in the hosts file the agent keeps, else its name.
    fn db_address(&self, db: &DatabaseUse) -> String {
        crate::exec::hosts::lookup(&self.ctx.config.hosts_file, &db.host)
            .map_or_else(|| db.host.clone(), |ip| ip.to_string())
    }

    fn db_error(&self, db: &DatabaseUse, reason: String) -> DaemonError {
        DaemonError::Database {
            node: self.name.clone(),
            id: db.id.clone(),
            addr: format!("{}:{}", db.host, db.port),
            reason,
        }
    }

    /// The spec's jars, fetched by digest and placed (0644, the run-as user's) where it says;
    /// jars the agent placed before that the spec no longer names are removed.
    pub(super) async fn libs(&mut self, t: &NodeTarget, node: &Observed) -> DaemonResult<()> {
        let (plan, now) = self.lib_plan(&t.spec, &node.home)?;
        for (dir, jars) in plan {
            self.place_jars(&t.spec, dir, jars).await?;
        }
        if now != self.rec.lib_dirs {
            let mut rec = self.rec.clone();
            rec.lib_dirs = now;
            self.rec = self.save_record(rec)?;
        }
        Ok(())
    }

    /// Each folder to put jars in (or take old ones from) with its jars, and the folders the
    /// spec names.
    fn lib_plan(&self, spec: &NodeSpec, home: &Path) -> DaemonResult<(Vec<JarDir>, Vec<String>)> {
        let mut wanted: BTreeMap<String, Vec<Jar>> = BTreeMap::new();
        for lib in &spec.libs {
            let a = lib.artifact.clone().unwrap_or_default();
            if a.file_name.contains('/') || !a.file_name.ends_with(".jar") {
                return Err(DaemonError::BadSpec {
                    node: self.name.clone(),
                    reason: format!("lib {:?} must be a plain .jar file name", a.file_name),
                });
            }
            rel_path(&self.name, "libs.dir", &lib.dir)?;
            wanted.entry(lib.dir.clone()).or_default().push(Jar {
                name: a.file_name,
                sha256: a.sha256,
                size: a.size,
            });
        }
        let now: Vec<String> = wanted.keys().cloned().collect();
        for old in &self.rec.lib_dirs {
            rel_path(&self.name, "libs.dir", old)?;
            wanted.entry(old.clone()).or_default();
        }
        let plan = wanted
            .into_iter()
            .map(|(dir, jars)| (home.join(dir), jars))
            .collect();
        Ok((plan, now))
    }

    async fn place_jars(&self, spec: &NodeSpec, dir: PathBuf, jars: Vec<Jar>) -> DaemonResult<()> {
        let list = dir.join(PLACED_LIST);
        let placed: BTreeSet<String> = std::fs::read_to_string(&list)
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        let names: BTreeSet<String> = jars.iter().map(|j| j.name.clone()).collect();
        if jars.is_empty() && placed.is_empty() {
            return Ok(());
        }
        self.create_dir_owned(spec, &dir)?;
        for stale in placed.difference(&names) {
            let path = dir.join(stale);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(node = %self.name, jar = %path.display(), "removed a jar the spec no longer names")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DaemonError::io("remove", &path, e)),
            }
        }
        let owner = self.run_as(spec)?.switch_to;
        for Jar { name, sha256, size } in jars {
            let path = dir.join(&name);
            let current = std::fs::read(&path)
                .ok()
                .map(|b| hex::encode(Sha256::digest(&b)));
            if current.as_deref() == Some(sha256.as_str()) {
                continue;
            }
            let cached = self.ctx.fetcher.ensure(&sha256, size, &no_progress).await?;
            let bytes = std::fs::read(&cached).map_err(|e| DaemonError::io("read", &cached, e))?;
            let mut writer = apim_atomic::AtomicWriter::new(0o644);
            if let Some(c) = &owner {
                writer = writer.owner(c.uid, c.gid);
            }
            writer.write(&path, &bytes).on(&self.name)?;
            tracing::info!(node = %self.name, jar = %path.display(), "placed jar");
        }
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        let mut writer = apim_atomic::AtomicWriter::new(0o644);
        if let Some(c) = &owner {
            writer = writer.owner(c.uid, c.gid);
        }
        writer.write(&list, text.as_bytes()).on(&self.name)?;
        Ok(())
    }
}

/// A folder of the home and the jars it must hold (none: take the agent's old ones away).
type JarDir = (PathBuf, Vec<Jar>);

/// A jar to place: its file name, digest and size.
#[derive(Debug, Clone)]
struct Jar {
    name: String,
    sha256: String,
    size: u64,
}

/// Jars are small: their download is not reported.
fn no_progress(_: u64, _: u64) {}

/// The reason an unreachable database gives: the connect error, without the address twice.
fn unreachable_text(e: &DbError) -> String {
    match e {
        DbError::Unreachable { reason, .. } => format!("unreachable: {reason}"),
        other => other.to_string(),
    }
}
