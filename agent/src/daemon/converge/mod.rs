//! Converging one node to its `NodeSpec`: named, idempotent steps, each skipped when done.
//!
//! [`NodeExecutor::converge`] reads as its steps:
//!
//! 1. **observe** — where the node lives, whether its server runs (the spec's
//!    `ServerProcess` says how to recognise it), and whether this pack is installed there (a
//!    tree recorded as unsynced in an earlier boot may be torn: it counts as not installed);
//!    and whether a server of an *earlier install* (another home: a pack of another version)
//!    still runs, found through what the record says about it ([`ServerRecord`]).
//! 2. **stop_requested** — `desired = STOPPED`: stop a running node gracefully (and any server
//!    of an earlier install); done.
//! 3. **machine_memory** — before anything is fetched, installed or started: the machine's
//!    total memory against what every node of its spec that must run needs together
//!    ([`MachineMemory`]); every such node fails here alike when it is short.
//! 4. **preflight** — before anything is fetched for a new pack: the machine's facts against the
//!    spec's requirements (JDK range, free space).
//! 5. **stage_only** — `STAGED` while the node runs: fetch and verify the pack only; the node
//!    keeps running on its old tree until it is released.
//! 6. **switch_back** or **install** — the spec's pack is the recorded previous install, its
//!    tree still there: switch the record back to it, nothing is unpacked. Otherwise fetch the
//!    pack and unpack it *as it arrives*, verify it, hand the tree to the run-as user, stop the
//!    node only now when it runs from this very home (it served while the tree was staged),
//!    swap the tree in, record it; a pack with another home installs *beside* the running
//!    tree, which keeps serving. The record keeps the current and the previous install; an
//!    older tree the agent installed is removed, and the pack cache keeps only what the records
//!    and the held spec name (see `upgrade.rs`). The tree is left unsynced (see
//!    [`NodeExecutor::sync_installed_tree`]).
//! 7. **optimize_once** — the spec's optimizer, once per fresh tree (a marker file says it ran:
//!    such scripts are not idempotent).
//! 8. **staged** — `STAGED`: stop here.
//! 9. **configure** — the rendered configuration file, written (0600, the run-as user's) only
//!    when its bytes differ.
//! 10. **certificates** — the keystores, only when their spec's digest changed or a store on
//!     disk is not the one written (its sha256 is recorded).
//! 11. **earlier_installs** — a server still running from an earlier install is stopped with
//!     its own recorded stop command (then signals): never two servers on one node's ports.
//! 12. **adopt_or_restart** — a node running this `config_digest` is kept (checked once when
//!     this agent has not seen it healthy: it was started by an earlier agent run); one running
//!     another configuration is stopped.
//! 13. **shared_folder** — a folder the spec shares on the operator's file system
//!     (`NodeSpec.shared`, a mount): mounted from its source (the pack's own copy set aside,
//!     seeded into it once) and checked to be that mount before every start (see `shared.rs`).
//! 14. **start** — record the digest and how to find and stop the server *before* starting
//!     (an agent killed right after the start must not restart a healthy server), start, wait
//!     until ready.
//!
//! What it did is persisted per node in `<state>/nodes/<name>.json` ([`NodeRecord`]), so an
//! agent restart adopts a live node instead of restarting it. A converge of a converged node
//! writes nothing and restarts nothing.
//!
//! A node settled on its target (healthy on it) is checked for drift ([`NodeExecutor::drift`]):
//! the files steps 9 and 10 wrote and the installed tree, against what was written. Steps 9 and
//! 10 write again whatever differs, so the next converge (a repair's restart) restores it. A
//! shared folder's content is never checked: it belongs to every node sharing it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::{DesiredRun, MachineSpec, NodePhase, NodeSpec};
use serde::{Deserialize, Serialize};

use crate::daemon::config::AgentConfig;
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::fetch::Fetcher;
use crate::daemon::report::{StatusBoard, Update};
use crate::exec::hosts::HostsEntry;
use crate::exec::process::{self, PidFileState, RunAs, Server};
use crate::exec::unpack::{self, UnpackLimits};

pub use upgrade::{InstallRecord, ServerRecord, prune_pack_cache};

mod configure;
mod databases;
mod drift;
mod install;
mod run;
mod shared;
#[cfg(test)]
mod tests;
mod upgrade;

/// Marker written in the node's home after the optimizer succeeded on a fresh unpack.
pub const OPTIMIZED_MARKER: &str = ".apimctl-optimized";
/// Default limit for scripts whose `timeout_s` is 0.
const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default readiness deadline when the spec says 0.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// What the agent did to a node, persisted across agent restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// sha256 of the pack installed at `home` (empty: nothing installed).
    pub pack_sha256: String,
    /// The node's home, where the pack is installed (`carbon_home` in records of earlier
    /// agents).
    #[serde(alias = "carbon_home")]
    pub home: PathBuf,
    /// The `config_digest` the running process was started with.
    pub applied_digest: Option<String>,
    /// Digest of the keystore spec last written
    /// ([`crate::exec::keystores::keystores_digest`]).
    pub keystores_digest: Option<String>,
    /// The sha256 of each store file as the agent wrote it (path relative to the home), so a
    /// store changed on disk is seen (drift) and written again. Empty in records of earlier
    /// agents until the stores are next written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, String>,
    /// Set while the installed tree is not yet known to be on disk: the boot id it was
    /// installed in. The tree goes live without a `syncfs` on the rollout's critical path and
    /// is synced once the node is serving; a tree still unsynced from an EARLIER boot (a power
    /// loss or kernel crash in between) may be torn and is installed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_since_boot: Option<String>,
    /// Folders of the home the agent placed the spec's jars in (each lists its jars in a file),
    /// so the jars a later spec drops are taken away.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lib_dirs: Vec<String>,
    /// How to find and stop the server started from `home` (recorded before each start), so
    /// a later spec with another home still reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerRecord>,
    /// The install before this one, in another home: its server is found and stopped through
    /// it, and a spec naming its pack again switches back to its tree without unpacking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<InstallRecord>,
    /// Trees of older installs the agent could not remove yet (retried at the next install).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<PathBuf>,
}

impl NodeRecord {
    /// Every tree this record says the agent installed: the current one, the previous one kept
    /// for a rollback, and older ones still to remove.
    pub fn installed_trees(&self) -> Vec<PathBuf> {
        let mut trees: Vec<PathBuf> = std::iter::once(self.home.clone())
            .chain(self.previous.iter().map(|p| p.home.clone()))
            .chain(self.retired.iter().cloned())
            .filter(|t| !t.as_os_str().is_empty())
            .collect();
        trees.dedup();
        trees
    }
}

/// One node's desired state at one machine spec generation.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTarget {
    /// The machine spec generation.
    pub generation: u64,
    /// The node's spec.
    pub spec: NodeSpec,
    /// What every node of the machine's spec it must run needs of the machine's memory.
    pub machine_memory: MachineMemory,
    /// The machine's managed hosts block (what its drift is checked against).
    pub hosts: Vec<HostsEntry>,
}

/// What the nodes of a machine spec need of the machine's memory: each node's
/// `NodeSpec.memory_bytes`, for every node the spec wants running or staged (a STOPPED node
/// needs none). The controller's catalogue decides each figure; the agent only adds them up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineMemory {
    /// The sum, bytes (0: nothing to check).
    pub needed: u64,
    /// Each node's need, bytes, in spec order.
    pub nodes: Vec<(String, u64)>,
}

impl MachineMemory {
    /// The need of `spec`'s nodes that must run.
    pub fn of(spec: &MachineSpec) -> Self {
        let nodes: Vec<(String, u64)> = spec
            .nodes
            .iter()
            .filter(|n| DesiredRun::try_from(n.desired).ok() != Some(DesiredRun::Stopped))
            .filter(|n| n.memory_bytes > 0)
            .map(|n| (n.name.clone(), n.memory_bytes))
            .collect();
        MachineMemory {
            needed: nodes.iter().fold(0u64, |s, (_, b)| s.saturating_add(*b)),
            nodes,
        }
    }

    /// `gw-1 1639 MiB + tm-1 1639 MiB`.
    pub fn breakdown(&self) -> String {
        self.nodes
            .iter()
            .map(|(n, b)| format!("{n} {} MiB", b.div_ceil(1 << 20)))
            .collect::<Vec<_>>()
            .join(" + ")
    }
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

/// The node as a converge finds it (step 1).
#[derive(Debug)]
struct Observed {
    desired: DesiredRun,
    home: PathBuf,
    /// How to find its server; `None` when the spec does not say (only a RUNNING node needs it).
    server: Option<Server>,
    /// Its server's pid, when it runs.
    pid: Option<i32>,
    /// This pack is installed at `home`, whole.
    installed: bool,
    /// Servers of earlier installs (other homes) that still run.
    earlier: Vec<upgrade::EarlierServer>,
}

impl Observed {
    /// `STAGED` while the node runs from this very home: the install waits for the release
    /// (a pack with another home installs beside the running tree at once).
    fn keeps_old_tree(&self) -> bool {
        self.desired == DesiredRun::Staged && self.pid.is_some()
    }

    /// The server, which a node that runs or must run has.
    fn server(&self) -> &Server {
        self.server
            .as_ref()
            .expect("observe requires a server for a node that runs or must run")
    }
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

/// A spec path that must stay inside the node's home.
pub(crate) fn rel_path(node: &str, field: &str, p: &str) -> DaemonResult<PathBuf> {
    let path = Path::new(p);
    if p.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(DaemonError::BadSpec {
            node: node.to_owned(),
            reason: format!("{field} {p:?} must be a plain relative path inside the node's home"),
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

    /// Converge the node to `t`, step by step (see the module docs). `cancel` ends a readiness
    /// wait early (a newer target). A freshly installed tree is left unsynced; the node loop
    /// calls [`NodeExecutor::sync_installed_tree`] once the node has served for a while.
    pub async fn converge(
        &mut self,
        t: &NodeTarget,
        cancel: impl Future<Output = ()>,
    ) -> DaemonResult<Outcome> {
        let mut node = self.observe(t)?;
        if node.desired == DesiredRun::Stopped {
            return self.stop_requested(t, &mut node).await;
        }
        self.machine_memory(t)?;
        if !node.installed && !self.switch_back(t, &mut node)? {
            self.preflight(t, &node).await?;
            if node.keeps_old_tree() {
                return self.stage_only(t).await;
            }
            self.install(t, &mut node).await?;
        }
        self.optimize_once(t, &node).await?;
        self.databases(t, &node).await?;
        if node.desired == DesiredRun::Staged {
            return Ok(self.staged(t, &node));
        }
        self.configure(t, &node)?;
        self.write_config_files(t, &node)?;
        self.libs(t, &node).await?;
        self.certificates(t, &node).await?;
        self.stop_earlier_installs(t, &mut node).await?;
        let mut cancel = pin!(cancel);
        if let Some(kept) = self.adopt_or_restart(t, &mut node, cancel.as_mut()).await? {
            return Ok(kept);
        }
        self.shared_folder(t, &node).await?;
        self.start(t, &node, cancel).await
    }

    /// Step 1: the node as it is now; reports its process.
    fn observe(&self, t: &NodeTarget) -> DaemonResult<Observed> {
        let spec = &t.spec;
        let desired = DesiredRun::try_from(spec.desired).unwrap_or(DesiredRun::Staged);
        let home = self.home(spec)?;
        let server = self.server(spec, &home)?;
        if server.is_none() && desired == DesiredRun::Running {
            return Err(DaemonError::BadSpec {
                node: self.name.clone(),
                reason: "no process.pid_file: the spec does not say how to find the server".into(),
            });
        }
        let sha256 = spec.pack.as_ref().map_or("", |p| p.sha256.as_str());
        let torn = self
            .rec
            .unsynced_since_boot
            .as_deref()
            .is_some_and(|b| unpack::boot_id().as_deref() != Some(b));
        if torn {
            tracing::warn!(node = %self.name, "the installed tree was not synced before the machine restarted; installing it again");
        }
        let installed = self.rec.pack_sha256.eq_ignore_ascii_case(sha256)
            && self.rec.home == home
            && home.is_dir()
            && !torn;
        let pid = server.as_ref().and_then(live_pid);
        let earlier = self.earlier_servers(spec, &home);
        // What runs is reported, also when it is an earlier install's server (an upgrade being
        // staged beside it).
        let (reported, running_digest) = match (pid, earlier.first()) {
            (Some(p), _) => (Some(p), self.rec.applied_digest.clone().unwrap_or_default()),
            (None, Some(e)) => (Some(e.pid), e.applied_digest.clone().unwrap_or_default()),
            (None, None) => (None, String::new()),
        };
        self.report_process(reported, &running_digest);
        Ok(Observed {
            desired,
            home,
            server,
            pid,
            installed,
            earlier,
        })
    }

    /// Step 8: `STAGED` — installed and optimized, not (re)started.
    fn staged(&self, t: &NodeTarget, node: &Observed) -> Outcome {
        let step = if node.pid.is_some() || !node.earlier.is_empty() {
            "staged; the node keeps running its previous configuration"
        } else {
            "staged; waiting for release"
        };
        self.report(t.generation, NodePhase::Staged, step);
        Outcome::Staged
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

    /// The node's home for `spec`: `<install_dir>/<pack.top_dir>` under the install root.
    pub fn home(&self, spec: &NodeSpec) -> DaemonResult<PathBuf> {
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

    /// How to find the node's server (`None`: the spec has no `process.pid_file`).
    fn server(&self, spec: &NodeSpec, home: &Path) -> DaemonResult<Option<Server>> {
        let Some(p) = spec.process.as_ref().filter(|p| !p.pid_file.is_empty()) else {
            return Ok(None);
        };
        let pid_file = rel_path(&self.name, "process.pid_file", &p.pid_file)?;
        Ok(Some(Server::new(
            home,
            pid_file,
            &p.main_class,
            &p.home_arg_prefix,
        )))
    }

    /// The live pid of the node's server for `spec`, if any (none running, a stale pid file,
    /// or a spec that does not say how to find it: `None`).
    pub fn live_pid(&self, spec: &NodeSpec) -> Option<i32> {
        let home = self.home(spec).ok()?;
        self.server(spec, &home)
            .ok()
            .flatten()
            .as_ref()
            .and_then(live_pid)
    }

    /// Forget that the node was healthy (the supervisor saw it die).
    pub fn mark_unhealthy(&mut self) {
        self.healthy_digest = None;
    }

    /// The environment of the node's commands: the spec's, and `process.home_env` (e.g. the
    /// product's `..._HOME`) set to the node's home as this agent installed it (the controller
    /// cannot know it: an agent may install under a root other than `/`).
    fn env(spec: &NodeSpec, home: &Path) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = spec
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        if let Some(p) = spec.process.as_ref().filter(|p| !p.home_env.is_empty()) {
            env.insert(p.home_env.clone(), home.display().to_string());
        }
        env
    }

    fn run_as_user(spec: &NodeSpec) -> Option<String> {
        (!spec.run_as_user.is_empty()).then(|| spec.run_as_user.clone())
    }

    /// Who the node's commands and files belong to ([`process::resolve_run_as`]).
    fn run_as(&self, spec: &NodeSpec) -> DaemonResult<RunAs> {
        process::resolve_run_as(Self::run_as_user(spec).as_deref()).on(&self.name)
    }

    /// Creates `dir` and its missing parents inside the node's tree, each new folder given to
    /// the run-as user like the rest of the tree.
    fn create_dir_owned(&self, spec: &NodeSpec, dir: &Path) -> DaemonResult<()> {
        if dir.exists() {
            return Ok(());
        }
        let owner = self.run_as(spec)?.switch_to.map(|c| (c.uid, c.gid));
        crate::exec::folders::create_dirs_owned(dir, owner)
            .map_err(|e| DaemonError::io("create", dir, e))
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
        self.sync_tree(&self.rec.home.clone()).await?;
        let mut rec = self.rec.clone();
        rec.unsynced_since_boot = None;
        self.set_record(rec)
    }

    /// Makes everything written under `home` durable (one `syncfs` of its filesystem).
    async fn sync_tree(&self, home: &Path) -> DaemonResult<()> {
        let home = home.to_path_buf();
        tokio::task::spawn_blocking(move || unpack::sync_filesystem(&home))
            .await
            .map_err(|source| DaemonError::Join { op: "sync", source })?
            .on(&self.name)
    }
}

/// The live pid of `server`, if any (no pid file or a stale one: `None`).
fn live_pid(server: &Server) -> Option<i32> {
    if !server.home.is_dir() {
        return None;
    }
    match process::pid_file_state(server) {
        Ok(PidFileState::Alive(pid)) => Some(pid),
        _ => None,
    }
}
