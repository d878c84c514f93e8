//! Converging one node to its `NodeSpec`: idempotent, each step skipped when already done.
//!
//! [`NodeExecutor::converge`] walks the steps of the crate docs for one node:
//! pre-flight → fetch (cached) → stage + install (only when the pack changed or the tree is
//! missing) → optimizer (once per fresh unpack, marker file) → [STAGED stops here] →
//! `deployment.toml` (only when the bytes differ) → keystores (only when their digest
//! changed) → start unless the node already runs this `config_digest` (restart when it runs
//! another) → wait ready. `desired = STOPPED` stops the node gracefully.
//!
//! What it did is persisted per node in `<state>/nodes/<name>.json` ([`NodeRecord`]: the
//! installed pack, the digest the running process was started with, the keystores written),
//! so an agent restart adopts a live node that runs the spec's digest instead of restarting
//! it. A converge of an already converged node writes nothing and restarts nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apim_proto::v1::{DesiredRun, NodePhase, NodeSpec};
use serde::{Deserialize, Serialize};

use crate::daemon::config::AgentConfig;
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::fetch::Fetcher;
use crate::daemon::report::{StatusBoard, Update};
use crate::exec::facts::{self, Requirements};
use crate::exec::health::{
    self, LogProbe, ProcessProbe, ReadinessOutcome, ReadinessSpec, TcpProbe,
};
use crate::exec::keystores;
use crate::exec::process::{
    self, CommandSpec, Credentials, PidFileState, ProcessRunner, SAFE_PATH, StartOutcome,
    StartSpec, StopSpec, TokioRunner,
};
use crate::exec::unpack::{self, UnpackLimits};

/// Marker written in CARBON_HOME after the optimizer succeeded on a fresh unpack.
pub const OPTIMIZED_MARKER: &str = ".apimctl-optimized";
/// Default limit for scripts whose `timeout_s` is 0.
const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default readiness deadline when the spec says 0.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// What the agent did to a node, persisted across agent restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// sha256 of the pack installed at `carbon_home` (empty: nothing installed).
    pub pack_sha256: String,
    /// The CARBON_HOME the pack is installed at.
    pub carbon_home: PathBuf,
    /// The `config_digest` the running process was started with.
    pub applied_digest: Option<String>,
    /// Digest of the keystore spec last written ([`keystores::keystores_digest`]).
    pub keystores_digest: Option<String>,
    /// Set while the installed tree is not yet known to be on disk: the boot id it was
    /// installed in. The tree goes live without a `syncfs` on the rollout's critical path and
    /// is synced once the node is serving; a tree still unsynced from an EARLIER boot (a power
    /// loss or kernel crash in between) may be torn and is installed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_since_boot: Option<String>,
}

/// One node's desired state at one machine spec generation.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTarget {
    /// The machine spec generation.
    pub generation: u64,
    /// The node's spec.
    pub spec: NodeSpec,
}

/// How a converge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Running this config and ready.
    Healthy {
        /// Its pid.
        pid: i32,
    },
    /// Fetched, installed, optimized; not (re)started.
    Staged,
    /// Not running, on purpose.
    Stopped,
    /// A newer target arrived while waiting for readiness.
    Superseded,
}

/// What every node executor shares.
#[derive(Debug)]
pub struct ExecContext {
    /// Paths and timings.
    pub config: AgentConfig,
    /// The pack cache.
    pub fetcher: Arc<Fetcher>,
    /// Where statuses go.
    pub board: Arc<StatusBoard>,
    /// Unpack limits and threads.
    pub limits: UnpackLimits,
}

/// Converges one node; holds its persisted record and in-memory health.
#[derive(Debug)]
pub struct NodeExecutor {
    name: String,
    ctx: Arc<ExecContext>,
    rec: NodeRecord,
    /// The digest this process last saw the node healthy with (cleared on any doubt).
    healthy_digest: Option<String>,
    /// Restarts after unexpected exits (reported).
    pub restarts: u32,
}

/// Node names become file names: keep them plain.
pub fn validate_node_name(name: &str) -> DaemonResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DaemonError::BadSpec {
            node: name.to_owned(),
            reason: "node names must be 1-128 of [A-Za-z0-9._-], not starting with '.'".into(),
        })
    }
}

fn rel_path(node: &str, field: &str, p: &str) -> DaemonResult<PathBuf> {
    let path = Path::new(p);
    if p.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(DaemonError::BadSpec {
            node: node.to_owned(),
            reason: format!("{field} {p:?} must be a plain relative path inside CARBON_HOME"),
        });
    }
    Ok(path.to_path_buf())
}

fn timeout_of(s: u32, default: Duration) -> Duration {
    if s == 0 {
        default
    } else {
        Duration::from_secs(u64::from(s))
    }
}

impl NodeExecutor {
    /// An executor for `name`, loading its record from the state dir.
    pub fn load(name: &str, ctx: Arc<ExecContext>) -> DaemonResult<Self> {
        validate_node_name(name)?;
        let path = ctx.config.nodes_dir().join(format!("{name}.json"));
        let rec = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(node = name, error = %e, "node record unreadable; treating the node as not installed");
                NodeRecord::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeRecord::default(),
            Err(e) => return Err(DaemonError::io("read node record", path, e)),
        };
        Ok(NodeExecutor {
            name: name.to_owned(),
            ctx,
            rec,
            healthy_digest: None,
            restarts: 0,
        })
    }

    /// The status board this executor reports to.
    pub fn board(&self) -> Arc<StatusBoard> {
        Arc::clone(&self.ctx.board)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The persisted record.
    pub fn record(&self) -> &NodeRecord {
        &self.rec
    }

    fn save_record(&self, new: NodeRecord) -> DaemonResult<NodeRecord> {
        if new == self.rec {
            return Ok(new);
        }
        let dir = self.ctx.config.nodes_dir();
        crate::daemon::fetch::create_private_dir(&dir)?;
        let path = dir.join(format!("{}.json", self.name));
        let bytes = serde_json::to_vec_pretty(&new).map_err(|e| DaemonError::Config {
            reason: format!("serialising node record: {e}"),
        })?;
        apim_atomic::write_atomic(&path, &bytes, 0o600).on(&self.name)?;
        Ok(new)
    }

    fn set_record(&mut self, new: NodeRecord) -> DaemonResult<()> {
        self.rec = self.save_record(new)?;
        Ok(())
    }

    fn report(&self, generation: u64, phase: NodePhase, step: impl Into<String>) {
        self.ctx.board.update(
            &self.name,
            Update {
                phase: Some(phase),
                step: Some(step.into()),
                generation: Some(generation),
                restarts: Some(self.restarts),
                ..Update::default()
            },
        );
    }

    fn step(&self, step: impl Into<String>) {
        self.ctx.board.update(
            &self.name,
            Update {
                step: Some(step.into()),
                ..Update::default()
            },
        );
    }

    pub(crate) fn report_process(&self, pid: Option<i32>, digest: &str) {
        self.ctx.board.update(
            &self.name,
            Update {
                pid: Some(pid.and_then(|p| u32::try_from(p).ok())),
                running: Some(pid.is_some()),
                config_digest: Some(digest.to_owned()),
                ..Update::default()
            },
        );
    }

    /// Marks the node FAILED with `error` (the converge loop calls this on any error).
    pub fn report_failed(&self, generation: u64, error: &str) {
        self.ctx.board.update(
            &self.name,
            Update {
                phase: Some(NodePhase::Failed),
                last_error: Some(error.to_owned()),
                generation: Some(generation),
                restarts: Some(self.restarts),
                ..Update::default()
            },
        );
    }

    /// The node's CARBON_HOME for `spec`.
    pub fn carbon_home(&self, spec: &NodeSpec) -> DaemonResult<PathBuf> {
        let pack = spec.pack.as_ref().ok_or_else(|| DaemonError::BadSpec {
            node: self.name.clone(),
            reason: "no pack".into(),
        })?;
        let top = rel_path(&self.name, "pack.top_dir", &pack.top_dir)?;
        Ok(self
            .ctx
            .config
            .rooted(&self.name, &spec.install_dir)?
            .join(top))
    }

    /// The live pid of the node's server, if any (no pid file or a stale one: `None`).
    pub fn live_pid(&self, carbon_home: &Path) -> Option<i32> {
        if !carbon_home.is_dir() {
            return None;
        }
        match process::pid_file_state(carbon_home) {
            Ok(PidFileState::Alive(pid)) => Some(pid),
            _ => None,
        }
    }

    /// Forget that the node was healthy (the supervisor saw it die).
    pub fn mark_unhealthy(&mut self) {
        self.healthy_digest = None;
    }

    fn env(spec: &NodeSpec) -> BTreeMap<String, String> {
        spec.env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    fn run_as(spec: &NodeSpec) -> Option<String> {
        (!spec.run_as_user.is_empty()).then(|| spec.run_as_user.clone())
    }

    fn stop_spec(&self, spec: &NodeSpec, carbon_home: &Path) -> StopSpec {
        let argv = spec
            .stop
            .as_ref()
            .map(|s| s.argv.clone())
            .unwrap_or_default();
        let mut s = StopSpec::new(
            carbon_home,
            argv,
            &spec.java_home,
            self.ctx.config.timings.stop_grace,
        );
        s.env = Self::env(spec);
        s.run_as = Self::run_as(spec);
        if let Some(t) = spec.stop.as_ref().map(|s| s.timeout_s).filter(|t| *t > 0) {
            s.script_timeout = Duration::from_secs(u64::from(t));
        }
        s
    }

    /// Whether the installed tree has not been made durable yet.
    pub fn tree_unsynced(&self) -> bool {
        self.rec.unsynced_since_boot.is_some()
    }

    /// Makes the installed tree durable (one `syncfs`) and records it, so a crash of the
    /// machine no longer means installing it again. A no-op when it is synced already.
    pub async fn sync_installed_tree(&mut self) -> DaemonResult<()> {
        if !self.tree_unsynced() {
            return Ok(());
        }
        self.sync_tree(&self.rec.carbon_home.clone()).await?;
        let mut rec = self.rec.clone();
        rec.unsynced_since_boot = None;
        self.set_record(rec)
    }

    /// Makes everything written under `carbon_home` durable (one `syncfs` of its filesystem).
    async fn sync_tree(&self, carbon_home: &Path) -> DaemonResult<()> {
        let home = carbon_home.to_path_buf();
        tokio::task::spawn_blocking(move || unpack::sync_filesystem(&home))
            .await
            .map_err(|source| DaemonError::Join { op: "sync", source })?
            .on(&self.name)
    }

    /// Converge the node to `t`. `cancel` ends a readiness wait early (a newer target).
    /// A freshly installed tree is left unsynced; the node loop calls
    /// [`NodeExecutor::sync_installed_tree`] once the node has served for a while.
    pub async fn converge(
        &mut self,
        t: &NodeTarget,
        cancel: impl Future<Output = ()>,
    ) -> DaemonResult<Outcome> {
        let spec = &t.spec;
        let gen_ = t.generation;
        let desired = DesiredRun::try_from(spec.desired).unwrap_or(DesiredRun::Staged);
        let carbon_home = self.carbon_home(spec)?;
        let pack = spec.pack.clone().unwrap_or_default();
        let torn = self
            .rec
            .unsynced_since_boot
            .as_deref()
            .is_some_and(|b| unpack::boot_id().as_deref() != Some(b));
        if torn {
            tracing::warn!(node = %self.name, "the installed tree was not synced before the machine restarted; installing it again");
        }
        let installed = self.rec.pack_sha256.eq_ignore_ascii_case(&pack.sha256)
            && self.rec.carbon_home == carbon_home
            && carbon_home.is_dir()
            && !torn;
        let mut pid = self.live_pid(&carbon_home);
        let running_digest = if pid.is_some() {
            self.rec.applied_digest.clone().unwrap_or_default()
        } else {
            String::new()
        };
        self.report_process(pid, &running_digest);

        if desired == DesiredRun::Stopped {
            if pid.is_some() {
                self.report(gen_, NodePhase::Stopping, "stopping");
                self.stop(spec, &carbon_home).await?;
            }
            self.report_process(None, self.rec.applied_digest.as_deref().unwrap_or(""));
            self.report(gen_, NodePhase::Stopped, "stopped on request");
            return Ok(Outcome::Stopped);
        }

        if !installed {
            self.preflight(spec, &carbon_home).await?;
            self.report(
                gen_,
                NodePhase::Fetching,
                "fetching the pack (unpacked as it arrives)",
            );
            let name = self.name.clone();
            let board = Arc::clone(&self.ctx.board);
            let progress = move |have: u64, size: u64| {
                board.update(
                    &name,
                    Update {
                        step: Some(format!("fetched {} of {} MiB", have >> 20, size >> 20)),
                        ..Update::default()
                    },
                );
            };
            if desired == DesiredRun::Staged && pid.is_some() {
                // Keep the running node on its old tree; the install happens on release.
                self.ctx
                    .fetcher
                    .ensure(&pack.sha256, pack.size, &progress)
                    .await?;
                self.report(
                    gen_,
                    NodePhase::Staged,
                    "pack fetched and verified; installs when released (the node keeps running)",
                );
                return Ok(Outcome::Staged);
            }
            let staging_root = carbon_home
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| carbon_home.clone());
            std::fs::create_dir_all(&staging_root)
                .map_err(|e| DaemonError::io("create install dir", &staging_root, e))?;
            unpack::clean_stale_staging(&staging_root).on(&self.name)?;
            let stage_started = Instant::now();
            let staged = self
                .fetch_and_stage(gen_, &pack, &staging_root, &progress)
                .await?;
            let took = stage_started.elapsed().as_secs_f64();
            tracing::info!(node = %self.name, files = staged.files, seconds = took, "pack fetched and unpacked");
            self.step(format!("staged {} files in {took:.1} s", staged.files));
            // The server runs as the plan's user and writes logs, tmp and databases inside
            // its tree: hand the tree over before it goes live.
            let staged = match credentials(&self.name, spec)? {
                Some(c) => tokio::task::spawn_blocking(move || {
                    staged.chown_blocking(c.uid, c.gid).map(|()| staged)
                })
                .await
                .map_err(|source| DaemonError::Join {
                    op: "chown",
                    source,
                })?
                .on(&self.name)?,
                None => staged,
            };
            if pid.is_some() {
                // Stopped only now: the node kept serving while its new tree was staged.
                self.report(gen_, NodePhase::Stopping, "stopping for the new pack");
                self.stop(spec, &carbon_home).await?;
                pid = None;
            }
            unpack::install_staged(staged, &carbon_home)
                .await
                .on(&self.name)?;
            self.healthy_digest = None;
            let boot = unpack::boot_id();
            if boot.is_none() {
                // No boot id to tell a torn tree later: make it durable now.
                self.sync_tree(&carbon_home).await?;
            }
            self.set_record(NodeRecord {
                pack_sha256: pack.sha256.to_ascii_lowercase(),
                carbon_home: carbon_home.clone(),
                applied_digest: None,
                keystores_digest: None,
                unsynced_since_boot: boot,
            })?;
        }

        if let Some(opt) = &spec.optimizer
            && !carbon_home.join(OPTIMIZED_MARKER).exists()
        {
            self.report(gen_, NodePhase::Optimizing, opt.argv.join(" "));
            self.optimize(spec, &carbon_home).await?;
        }

        if desired == DesiredRun::Staged {
            let step = if pid.is_some() {
                "staged; the node keeps running its previous configuration"
            } else {
                "staged; waiting for release"
            };
            self.report(gen_, NodePhase::Staged, step);
            return Ok(Outcome::Staged);
        }

        // RUNNING
        self.configure(gen_, spec, &carbon_home)?;
        self.certificates(gen_, spec, &carbon_home).await?;

        let same_config = self.rec.applied_digest.as_deref() == Some(spec.config_digest.as_str());
        if let Some(p) = pid {
            if same_config {
                if self.healthy_digest.as_deref() == Some(spec.config_digest.as_str()) {
                    self.report_process(Some(p), &spec.config_digest);
                    self.report(gen_, NodePhase::Healthy, "running");
                    return Ok(Outcome::Healthy { pid: p });
                }
                // Adopt a node started by an earlier agent run: check it, do not restart it.
                self.report(gen_, NodePhase::Starting, "adopting the running node");
                return self.wait_ready(t, &carbon_home, None, p, cancel).await;
            }
            self.report(
                gen_,
                NodePhase::Stopping,
                "restarting for a new configuration",
            );
            self.stop(spec, &carbon_home).await?;
        }
        self.start(t, &carbon_home, cancel).await
    }

    /// Fetches the pack and stages it while it arrives ([`crate::exec::arriving`]). The staged tree
    /// is returned only when the download verified (digest, and the tail it was read with);
    /// otherwise it is discarded and the download's error returned.
    async fn fetch_and_stage(
        &self,
        gen_: u64,
        pack: &apim_proto::v1::ArtifactRef,
        staging_root: &Path,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> DaemonResult<unpack::StagedTree> {
        let (ready, source) = tokio::sync::oneshot::channel();
        let fetch = self
            .ctx
            .fetcher
            .fetch(&pack.sha256, pack.size, progress, Some(ready));
        let stage = async {
            // No source: the download failed before the pack could be read.
            let source = source.await.ok()?;
            if matches!(source, unpack::ZipSource::File(_)) {
                self.report(gen_, NodePhase::Unpacking, "unpacking the cached pack");
            }
            Some(unpack::stage(source, staging_root, &pack.top_dir, &self.ctx.limits).await)
        };
        let (fetched, staged) = tokio::join!(fetch, stage);
        match (fetched, staged) {
            (Ok(_), Some(staged)) => staged.on(&self.name),
            (Ok(zip), None) => {
                unpack::stage_zip(&zip, staging_root, &pack.top_dir, &self.ctx.limits)
                    .await
                    .on(&self.name)
            }
            (Err(e), staged) => {
                if let Some(Ok(tree)) = staged
                    && let Err(d) = tree.discard()
                {
                    tracing::warn!(node = %self.name, error = %d, "cannot remove a tree staged from a refused download; removed at the next staging");
                }
                Err(e)
            }
        }
    }

    async fn preflight(&self, spec: &NodeSpec, carbon_home: &Path) -> DaemonResult<()> {
        let root = carbon_home.parent().unwrap_or(carbon_home);
        let f = facts::gather(root, Some(Path::new(&spec.java_home)))
            .await
            .on(&self.name)?;
        // The controller says which JDKs the product supports; 0 means no check.
        let jdk_min = spec.java_min;
        let jdk_max = if spec.java_max == 0 {
            u32::MAX
        } else {
            spec.java_max
        };
        let req = Requirements {
            jdk_min,
            jdk_max,
            pack_size: spec.pack.as_ref().map_or(0, |p| p.size),
            min_memory: 0,
        };
        let problems = facts::preflight(&f, &req);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DaemonError::Preflight {
                node: self.name.clone(),
                problems: problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        }
    }

    async fn optimize(&mut self, spec: &NodeSpec, carbon_home: &Path) -> DaemonResult<()> {
        let opt = spec.optimizer.as_ref().expect("checked by caller");
        let fail = |reason: String| DaemonError::Optimizer {
            node: self.name.clone(),
            reason,
        };
        let (first, rest) = opt
            .argv
            .split_first()
            .ok_or_else(|| fail("empty argv".into()))?;
        let program = carbon_home.join(rel_path(&self.name, "optimizer.argv[0]", first)?);
        let cmd = CommandSpec {
            program,
            args: rest.to_vec(),
            cwd: carbon_home.to_path_buf(),
            env: script_env(carbon_home, spec),
            credentials: credentials(&self.name, spec)?,
            timeout: timeout_of(opt.timeout_s, DEFAULT_SCRIPT_TIMEOUT),
        };
        let out = TokioRunner.run(&cmd).await.on(&self.name)?;
        let tail = |s: &str| {
            s.chars()
                .rev()
                .take(2000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        };
        if !out.status.success() {
            return Err(fail(format!(
                "{}; output: {}",
                out.status,
                tail(&out.output)
            )));
        }
        if let Some(m) = opt
            .failure_markers
            .iter()
            .find(|m| out.output.contains(m.as_str()))
        {
            return Err(fail(format!(
                "its output says {m:?} (it exits 0 on failure); output: {}",
                tail(&out.output)
            )));
        }
        if let Some(m) = &opt.success_marker
            && !out.output.contains(m.as_str())
        {
            return Err(fail(format!(
                "its output lacks {m:?}; output: {}",
                tail(&out.output)
            )));
        }
        apim_atomic::write_atomic(
            &carbon_home.join(OPTIMIZED_MARKER),
            format!("{}\n", opt.argv.join(" ")).as_bytes(),
            0o644,
        )
        .on(&self.name)?;
        Ok(())
    }

    fn configure(&self, gen_: u64, spec: &NodeSpec, carbon_home: &Path) -> DaemonResult<()> {
        use std::os::unix::fs::PermissionsExt;
        let rel = rel_path(
            &self.name,
            "deployment_toml_path",
            &spec.deployment_toml_path,
        )?;
        let path = carbon_home.join(rel);
        let current = std::fs::read(&path).ok();
        if current.as_deref() != Some(spec.deployment_toml.as_bytes()) {
            self.report(gen_, NodePhase::Configuring, "writing deployment.toml");
            // 0600 and owned by the user the server runs as: it holds the cluster's secrets.
            let mut writer = apim_atomic::AtomicWriter::new(0o600);
            if let Some(c) = credentials(&self.name, spec)? {
                writer = writer.owner(c.uid, c.gid);
            }
            writer
                .write(&path, spec.deployment_toml.as_bytes())
                .on(&self.name)?;
        } else {
            let mode = std::fs::metadata(&path)
                .map_err(|e| DaemonError::io("stat", &path, e))?
                .permissions()
                .mode();
            if mode & 0o777 != 0o600 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| DaemonError::io("chmod 0600", &path, e))?;
            }
        }
        Ok(())
    }

    async fn certificates(
        &mut self,
        gen_: u64,
        spec: &NodeSpec,
        carbon_home: &Path,
    ) -> DaemonResult<()> {
        let Some(ks) = spec.keystores.clone() else {
            return Ok(());
        };
        let digest = keystores::keystores_digest(&ks);
        if self.rec.keystores_digest.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        self.report(gen_, NodePhase::Certificates, "writing keystores");
        let (name, home) = (self.name.clone(), carbon_home.to_path_buf());
        let owner = credentials(&self.name, spec)?.map(|c| (c.uid, c.gid));
        tokio::task::spawn_blocking(move || {
            keystores::write_keystores_blocking(&home, &ks)?;
            match owner {
                Some((uid, gid)) => keystores::chown_stores(&home, &ks, uid, gid),
                None => Ok(()),
            }
        })
        .await
        .map_err(|source| DaemonError::Join {
            op: "keystores",
            source,
        })?
        .on(&name)?;
        let mut rec = self.rec.clone();
        rec.keystores_digest = Some(digest);
        self.set_record(rec)
    }

    async fn stop(&mut self, spec: &NodeSpec, carbon_home: &Path) -> DaemonResult<()> {
        self.healthy_digest = None;
        let out = process::stop(&TokioRunner, &self.stop_spec(spec, carbon_home))
            .await
            .on(&self.name)?;
        tracing::info!(node = %self.name, outcome = ?out, "node stopped");
        self.report_process(None, self.rec.applied_digest.as_deref().unwrap_or(""));
        Ok(())
    }

    /// Stops the node (it left the spec); used by the machine worker.
    pub async fn stop_for_removal(&mut self, spec: &NodeSpec) -> DaemonResult<()> {
        let carbon_home = self.carbon_home(spec)?;
        if self.live_pid(&carbon_home).is_some() {
            self.stop(spec, &carbon_home).await?;
        }
        Ok(())
    }

    async fn start(
        &mut self,
        t: &NodeTarget,
        carbon_home: &Path,
        cancel: impl Future<Output = ()>,
    ) -> DaemonResult<Outcome> {
        let spec = &t.spec;
        let start = spec.start.as_ref().ok_or_else(|| DaemonError::BadSpec {
            node: self.name.clone(),
            reason: "no start command".into(),
        })?;
        let log_path = spec
            .readiness
            .as_ref()
            .filter(|r| !r.log_file.is_empty())
            .map(|r| rel_path(&self.name, "readiness.log_file", &r.log_file))
            .transpose()?
            .map(|p| carbon_home.join(p));
        let offset = log_path.as_deref().map(health::log_offset);
        self.report(t.generation, NodePhase::Starting, start.argv.join(" "));
        let mut s = StartSpec::new(carbon_home, start.argv.clone(), &spec.java_home);
        s.env = Self::env(spec);
        s.run_as = Self::run_as(spec);
        if start.timeout_s > 0 {
            s.script_timeout = Duration::from_secs(u64::from(start.timeout_s));
        }
        // Recorded BEFORE the start: an agent killed right after the server started must find
        // the digest it runs, or its successor would restart a healthy server. Recording it
        // first is harmless: with no live process the next converge starts one anyway.
        let mut rec = self.rec.clone();
        rec.applied_digest = Some(spec.config_digest.clone());
        self.set_record(rec)?;
        let outcome = process::start(&TokioRunner, &s).await.on(&self.name)?;
        let pid = match outcome {
            StartOutcome::Started { pid, .. } | StartOutcome::AlreadyRunning { pid } => pid,
        };
        self.report_process(Some(pid), &spec.config_digest);
        self.step(format!("started (pid {pid}); waiting for readiness"));
        self.wait_ready(t, carbon_home, log_path.zip(offset), pid, cancel)
            .await
    }

    async fn wait_ready(
        &mut self,
        t: &NodeTarget,
        carbon_home: &Path,
        log: Option<(PathBuf, u64)>,
        pid: i32,
        cancel: impl Future<Output = ()>,
    ) -> DaemonResult<Outcome> {
        let spec = &t.spec;
        let r = spec.readiness.clone().unwrap_or_default();
        let host = if r.address.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            r.address.clone()
        };
        let mut tcp = Vec::new();
        for p in &r.tcp_ports {
            let port = u16::try_from(*p).map_err(|_| DaemonError::BadSpec {
                node: self.name.clone(),
                reason: format!("readiness port {p} out of range"),
            })?;
            tcp.push(TcpProbe {
                host: host.clone(),
                port,
            });
        }
        let rs = ReadinessSpec {
            log: log.map(|(path, start_offset)| LogProbe {
                path,
                needle: if r.log_line.is_empty() {
                    health::CARBON_STARTED.to_owned()
                } else {
                    r.log_line.clone()
                },
                start_offset,
            }),
            tcp,
            http: r
                .http_urls
                .iter()
                .map(|h| health::HttpProbe {
                    url: h.url.clone(),
                    expect_status: u16::try_from(h.expect_status).unwrap_or(200),
                    expect_body: h.expect_body.clone(),
                })
                .collect(),
            process: Some(ProcessProbe {
                carbon_home: carbon_home.to_path_buf(),
            }),
            attempt_timeout: Duration::ZERO,
        };
        let report =
            health::wait_ready(&rs, timeout_of(r.timeout_s, DEFAULT_READY_TIMEOUT), cancel)
                .await
                .on(&self.name)?;
        match report.outcome {
            ReadinessOutcome::Ready => {
                self.healthy_digest = Some(spec.config_digest.clone());
                self.ctx.board.update(
                    &self.name,
                    Update {
                        last_error: Some(String::new()),
                        ..Update::default()
                    },
                );
                self.report_process(Some(pid), &spec.config_digest);
                self.report(
                    t.generation,
                    NodePhase::Healthy,
                    format!("ready after {:.1} s", report.elapsed.as_secs_f64()),
                );
                Ok(Outcome::Healthy { pid })
            }
            ReadinessOutcome::Cancelled => Ok(Outcome::Superseded),
            _ => {
                let live = self.live_pid(carbon_home);
                self.report_process(live, &spec.config_digest);
                Err(DaemonError::NotReady {
                    node: self.name.clone(),
                    report: report.to_string(),
                })
            }
        }
    }
}

/// The environment of the node's own scripts besides start/stop (the optimizer): minimal,
/// nothing inherited, JAVA_HOME and CARBON_HOME set, the spec's env last.
fn script_env(carbon_home: &Path, spec: &NodeSpec) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_owned(),
        format!("{}/bin:{SAFE_PATH}", spec.java_home.trim_end_matches('/')),
    );
    env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
    env.insert("JAVA_HOME".to_owned(), spec.java_home.clone());
    env.insert("CARBON_HOME".to_owned(), carbon_home.display().to_string());
    env.insert("HOME".to_owned(), carbon_home.display().to_string());
    env.extend(spec.env.iter().map(|e| (e.name.clone(), e.value.clone())));
    env
}

/// The identity to run the optimizer as: `run_as_user` when the agent is root; the agent's
/// own user when it is that user already; an error otherwise.
fn credentials(node: &str, spec: &NodeSpec) -> DaemonResult<Option<Credentials>> {
    if spec.run_as_user.is_empty() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(&spec.run_as_user)
        .ok()
        .flatten()
        .ok_or_else(|| {
            DaemonError::exec(
                node,
                crate::exec::ExecError::UnknownUser {
                    user: spec.run_as_user.clone(),
                },
            )
        })?;
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        Ok(Some(Credentials {
            user: spec.run_as_user.clone(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    } else if user.uid == euid {
        Ok(None)
    } else {
        Err(DaemonError::exec(
            node,
            crate::exec::ExecError::CannotSwitchUser {
                user: spec.run_as_user.clone(),
                euid: euid.as_raw(),
            },
        ))
    }
}
