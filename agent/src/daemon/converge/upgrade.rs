//! Upgrades: a pack whose home differs from the running tree's (another version) installs
//! beside it; the node record keeps the current and the previous install, each with what it
//! takes to find and stop the server started from it ([`ServerRecord`]).
//!
//! * The server of an earlier install is stopped with *its* recorded stop command (then
//!   signals, as [`process::stop`] does) before any server of the node starts: never two
//!   servers on one node's ports.
//! * A spec naming the previous install's pack again switches back to its tree: nothing is
//!   unpacked (the configure step rewrites the configuration; the optimizer's marker in that
//!   tree still holds).
//! * Trees older than the previous one are removed — only homes from this agent's own records,
//!   under its install root — and the pack cache keeps only what the records and the held spec
//!   name ([`prune_pack_cache`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use apim_proto::v1::{NodePhase, NodeSpec};
use serde::{Deserialize, Serialize};

use super::{ExecContext, NodeExecutor, NodeRecord, NodeTarget, Observed, live_pid, rel_path};
use crate::daemon::error::{DaemonResult, OnNode};
use crate::exec::process::{self, Server, StopSpec, TokioRunner};
use crate::exec::unpack;

/// How to find and stop a server the agent started: what the spec said at its start, so a
/// later spec (another version, another home, maybe another script) still reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The pid file, relative to the install's home.
    pub pid_file: PathBuf,
    /// The server's main class ([`Server::main_class`]).
    #[serde(default)]
    pub main_class: String,
    /// The command-line prefix naming a server's home ([`Server::home_arg_prefix`]).
    #[serde(default)]
    pub home_arg_prefix: String,
    /// The stop command (relative to the home); empty: signals only.
    #[serde(default)]
    pub stop_argv: Vec<String>,
    /// How long the stop command may take, seconds (0: the default).
    #[serde(default)]
    pub stop_timeout_s: u32,
    /// The JDK the server ran with.
    #[serde(default)]
    pub java_home: String,
    /// The stop command's environment: the spec's variables that are not secret, and the home
    /// variable naming this install's home.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The user the server ran as.
    #[serde(default)]
    pub run_as: Option<String>,
}

/// One install of a pack for a node, as recorded: the same fields as the current install of
/// [`NodeRecord`], kept for the install before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// sha256 of the pack installed at `home`.
    pub pack_sha256: String,
    /// Where it is installed.
    pub home: PathBuf,
    /// The `config_digest` its server was last started with.
    #[serde(default)]
    pub applied_digest: Option<String>,
    /// Digest of the keystores last written into this tree.
    #[serde(default)]
    pub keystores_digest: Option<String>,
    /// The sha256 of each store file as written into this tree (see [`NodeRecord`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stores: std::collections::BTreeMap<String, String>,
    /// The boot it was installed in while not yet synced (see [`NodeRecord`]).
    #[serde(default)]
    pub unsynced_since_boot: Option<String>,
    /// Folders of this tree the agent placed jars in.
    #[serde(default)]
    pub lib_dirs: Vec<String>,
    /// How to find and stop the server started from it.
    #[serde(default)]
    pub server: Option<ServerRecord>,
}

/// A server of an earlier install (another home) that still runs.
#[derive(Debug)]
pub(super) struct EarlierServer {
    /// Its install's home.
    pub home: PathBuf,
    /// Its pid.
    pub pid: i32,
    /// The configuration it was started with.
    pub applied_digest: Option<String>,
    /// How to stop it: its own recorded command.
    pub stop: StopSpec,
}

impl NodeRecord {
    /// The current install (`None`: nothing installed).
    pub fn current(&self) -> Option<InstallRecord> {
        (!self.pack_sha256.is_empty() && !self.home.as_os_str().is_empty()).then(|| InstallRecord {
            pack_sha256: self.pack_sha256.clone(),
            home: self.home.clone(),
            applied_digest: self.applied_digest.clone(),
            keystores_digest: self.keystores_digest.clone(),
            stores: self.stores.clone(),
            unsynced_since_boot: self.unsynced_since_boot.clone(),
            lib_dirs: self.lib_dirs.clone(),
            server: self.server.clone(),
        })
    }

    /// A record whose current install is `current`.
    fn of(current: InstallRecord, previous: Option<InstallRecord>, retired: Vec<PathBuf>) -> Self {
        NodeRecord {
            pack_sha256: current.pack_sha256,
            home: current.home,
            applied_digest: current.applied_digest,
            keystores_digest: current.keystores_digest,
            stores: current.stores,
            unsynced_since_boot: current.unsynced_since_boot,
            lib_dirs: current.lib_dirs,
            server: current.server,
            previous,
            retired,
        }
    }

    /// Every pack the record names (current and previous).
    fn packs(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.pack_sha256.as_str())
            .chain(self.previous.iter().map(|p| p.pack_sha256.as_str()))
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
    }
}

/// Whether a tree recorded as unsynced since `boot` may have been torn by a machine crash.
fn torn(boot: Option<&str>) -> bool {
    boot.is_some_and(|b| unpack::boot_id().as_deref() != Some(b))
}

impl NodeExecutor {
    /// What to record about the server `spec` starts from `home` (`None`: the spec does not
    /// say how to find it). Secret variables are left out: a stop command does not need them.
    pub(super) fn server_record(spec: &NodeSpec, home: &Path) -> Option<ServerRecord> {
        let p = spec.process.as_ref().filter(|p| !p.pid_file.is_empty())?;
        let mut env = Self::env(spec, home);
        for e in spec.env.iter().filter(|e| e.secret) {
            env.remove(&e.name);
        }
        let stop = spec.stop.clone().unwrap_or_default();
        Some(ServerRecord {
            pid_file: PathBuf::from(&p.pid_file),
            main_class: p.main_class.clone(),
            home_arg_prefix: p.home_arg_prefix.clone(),
            stop_argv: stop.argv,
            stop_timeout_s: stop.timeout_s,
            java_home: spec.java_home.clone(),
            env,
            run_as: Self::run_as_user(spec),
        })
    }

    /// How to stop the server of `install`: its recorded command, or for a record written
    /// before servers were recorded, the spec's own process identity and command at its home.
    fn stop_spec_of(&self, spec: &NodeSpec, install: &InstallRecord) -> Option<StopSpec> {
        let Some(r) = &install.server else {
            let server = self.server(spec, &install.home).ok()??;
            return Some(self.stop_spec(spec, &server));
        };
        let pid_file = rel_path(
            &self.name,
            "recorded pid_file",
            &r.pid_file.to_string_lossy(),
        )
        .map_err(|e| tracing::warn!(node = %self.name, error = %e, "ignoring a recorded server"))
        .ok()?;
        let server = Server::new(&install.home, pid_file, &r.main_class, &r.home_arg_prefix);
        let mut s = StopSpec::new(
            server,
            r.stop_argv.clone(),
            &r.java_home,
            self.ctx.config.timings.stop_grace,
        );
        s.env = r.env.clone();
        s.run_as = r.run_as.clone();
        if r.stop_timeout_s > 0 {
            s.script_timeout = Duration::from_secs(u64::from(r.stop_timeout_s));
        }
        Some(s)
    }

    /// The servers of recorded installs in homes other than `home` that still run.
    pub(super) fn earlier_servers(&self, spec: &NodeSpec, home: &Path) -> Vec<EarlierServer> {
        [self.rec.current(), self.rec.previous.clone()]
            .into_iter()
            .flatten()
            .filter(|i| i.home != home)
            .filter_map(|i| {
                let stop = self.stop_spec_of(spec, &i)?;
                let pid = live_pid(&stop.server)?;
                Some(EarlierServer {
                    home: i.home,
                    pid,
                    applied_digest: i.applied_digest,
                    stop,
                })
            })
            .collect()
    }

    /// Step 11: the servers of earlier installs still running are stopped, each with its own
    /// recorded command: the node's ports are free before its server starts.
    pub(super) async fn stop_earlier_installs(
        &mut self,
        t: &NodeTarget,
        node: &mut Observed,
    ) -> DaemonResult<()> {
        for e in std::mem::take(&mut node.earlier) {
            self.report(
                t.generation,
                NodePhase::Stopping,
                format!(
                    "stopping the server of the earlier install at {} (pid {})",
                    e.home.display(),
                    e.pid
                ),
            );
            self.healthy_digest = None;
            let out = process::stop(&TokioRunner, &e.stop).await.on(&self.name)?;
            tracing::info!(node = %self.name, home = %e.home.display(), outcome = ?out,
                "stopped the server of an earlier install");
        }
        Ok(())
    }

    /// Step 6, a rollback: the spec's pack is the previous install's and its tree is still
    /// there, whole: the record switches back to it and nothing is unpacked. The running server
    /// (of the install switched away from) stays until step 11.
    pub(super) fn switch_back(
        &mut self,
        t: &NodeTarget,
        node: &mut Observed,
    ) -> DaemonResult<bool> {
        let Some(prev) = self.rec.previous.clone() else {
            return Ok(false);
        };
        let sha = t.spec.pack.as_ref().map_or("", |p| p.sha256.as_str());
        if !prev.pack_sha256.eq_ignore_ascii_case(sha)
            || prev.home != node.home
            || !node.home.is_dir()
            || torn(prev.unsynced_since_boot.as_deref())
        {
            return Ok(false);
        }
        let current = self.rec.current().filter(|c| c.home != node.home);
        let from = current.as_ref().map(|c| c.home.display().to_string());
        self.set_record(NodeRecord::of(prev, current, self.rec.retired.clone()))?;
        self.healthy_digest = None;
        node.installed = true;
        let msg = format!(
            "switched back to the previous install at {} (not unpacked again)",
            node.home.display()
        );
        tracing::info!(node = %self.name, from = ?from, "{msg}");
        self.step(msg);
        Ok(true)
    }

    /// Records `new` as the current install (step 6). The install it replaces becomes the
    /// previous one when it lives in another home; an install displaced from the record has
    /// its server stopped and its tree removed; the pack cache is pruned.
    pub(super) async fn record_install(
        &mut self,
        spec: &NodeSpec,
        new: InstallRecord,
    ) -> DaemonResult<()> {
        let known: Vec<InstallRecord> = [self.rec.current(), self.rec.previous.clone()]
            .into_iter()
            .flatten()
            .collect();
        let previous = known.iter().find(|i| i.home != new.home).cloned();
        let kept: Vec<&Path> = std::iter::once(new.home.as_path())
            .chain(previous.as_ref().map(|p| p.home.as_path()))
            .collect();
        let mut retired = self.rec.retired.clone();
        for old in known.iter().filter(|i| !kept.contains(&i.home.as_path())) {
            // Its server must be gone before its tree goes; one that will not stop keeps it.
            if let Some(stop) = self.stop_spec_of(spec, old)
                && live_pid(&stop.server).is_some()
                && let Err(e) = process::stop(&TokioRunner, &stop).await
            {
                tracing::error!(node = %self.name, home = %old.home.display(), error = %e,
                    "the server of an older install did not stop; its tree is kept");
                continue;
            }
            if !retired.contains(&old.home) {
                retired.push(old.home.clone());
            }
        }
        // Recorded first: a crash while removing leaves the trees listed, to remove later.
        self.set_record(NodeRecord::of(new, previous, retired))?;
        self.remove_retired().await?;
        prune_pack_cache(&self.ctx);
        Ok(())
    }

    /// Removes the retired trees: only homes this agent recorded, strictly inside its install
    /// root and never the current or previous home, never through a mount; those that cannot be
    /// removed stay listed.
    async fn remove_retired(&mut self) -> DaemonResult<()> {
        if self.rec.retired.is_empty() {
            return Ok(());
        }
        let live: Vec<PathBuf> = [self.rec.current(), self.rec.previous.clone()]
            .into_iter()
            .flatten()
            .map(|i| i.home)
            .collect();
        let mut left = Vec::new();
        for home in self.rec.retired.clone() {
            if live
                .iter()
                .any(|l| l.starts_with(&home) || home.starts_with(l))
            {
                continue;
            }
            if !self.inside_install_root(&home) {
                tracing::warn!(node = %self.name, home = %home.display(),
                    "not removing a recorded tree outside the install root");
                continue;
            }
            match std::fs::symlink_metadata(&home) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Ok(m) if !m.is_dir() => {
                    tracing::warn!(node = %self.name, home = %home.display(), "a recorded tree is not a directory; left alone");
                    continue;
                }
                _ => {}
            }
            // A shared folder mounted in it is unmounted first; nothing is deleted through it.
            let removed = match crate::exec::mount::unmount_under(&home).await {
                Ok(()) => crate::exec::mount::refuse_if_mounted(&home)
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|()| std::fs::remove_dir_all(&home)),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            match removed {
                Ok(()) => {
                    tracing::info!(node = %self.name, home = %home.display(), "removed the tree of an older install")
                }
                Err(e) => {
                    tracing::warn!(node = %self.name, home = %home.display(), error = %e, "cannot remove the tree of an older install; will retry");
                    left.push(home);
                }
            }
        }
        let mut rec = self.rec.clone();
        rec.retired = left;
        self.set_record(rec)
    }

    /// Whether `path` lies at least two plain components below the install root.
    fn inside_install_root(&self, path: &Path) -> bool {
        path.strip_prefix(&self.ctx.config.install_root)
            .is_ok_and(|rel| {
                rel.components().count() >= 2
                    && rel.components().all(|c| matches!(c, Component::Normal(_)))
            })
    }
}

/// Prunes the pack cache: keeps the packs every node's record names (current and previous)
/// and the held spec's artifacts (pinned by the machine), removes the rest.
pub fn prune_pack_cache(ctx: &ExecContext) {
    let mut keep = BTreeSet::new();
    let dir = ctx.config.nodes_dir();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok())
        {
            Some(rec) => keep.extend(rec.packs()),
            None => {
                // A record it cannot read may name a pack in use: prune nothing this time.
                tracing::warn!(record = %path.display(), "unreadable node record; the pack cache is not pruned");
                return;
            }
        }
    }
    for sha in ctx.fetcher.prune(&keep) {
        tracing::info!(sha256 = %sha, "removed a pack no node needs from the cache");
    }
}
