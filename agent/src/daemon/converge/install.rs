//! The steps that bring a new pack: preflight, stage_only, install.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use apim_proto::v1::{ArtifactRef, NodePhase};

use super::{InstallRecord, NodeExecutor, NodeTarget, Observed, Outcome};
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::report::Update;
use crate::exec::facts::{self, Requirements};
use crate::exec::unpack;

impl NodeExecutor {
    /// Step 3: the machine's total memory must hold every node of its spec that must run
    /// ([`super::MachineMemory`]), before this node fetches, installs or starts anything.
    pub(super) fn machine_memory(&self, t: &NodeTarget) -> DaemonResult<()> {
        let need = &t.machine_memory;
        if need.needed == 0 {
            return Ok(());
        }
        let total = facts::memory_total().on(&self.name)?;
        match facts::memory_problem(total, need.needed) {
            None => Ok(()),
            Some(problem) => Err(DaemonError::Preflight {
                node: self.name.clone(),
                problems: format!("{problem} ({})", need.breakdown()),
            }),
        }
    }

    /// Step 4: the machine must be able to take the node before anything is fetched: the JDK
    /// at `java_home` within the spec's range (0: no bound), room for the pack.
    pub(super) async fn preflight(&self, t: &NodeTarget, node: &Observed) -> DaemonResult<()> {
        let spec = &t.spec;
        let root = node.home.parent().unwrap_or(&node.home);
        let f = facts::gather(root, Some(Path::new(&spec.java_home)))
            .await
            .on(&self.name)?;
        let req = Requirements {
            jdk_min: spec.java_min,
            jdk_max: if spec.java_max == 0 {
                u32::MAX
            } else {
                spec.java_max
            },
            pack_size: spec.pack.as_ref().map_or(0, |p| p.size),
            // Checked for the whole machine in step 3.
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

    /// Step 5: `STAGED` while the node runs: the pack is fetched and verified, and installed
    /// only when the node is released; the running node keeps its old tree.
    pub(super) async fn stage_only(&self, t: &NodeTarget) -> DaemonResult<Outcome> {
        let pack = t.spec.pack.clone().unwrap_or_default();
        self.report(t.generation, NodePhase::Fetching, FETCHING);
        let zip = self
            .ctx
            .fetcher
            .ensure(&pack.sha256, pack.size, &self.progress())
            .await?;
        // The guards that would fire at install run now, so a bad pack fails its staging
        // (the node keeps serving) instead of its release.
        if let Err(e) = unpack::check_zip(&zip, &pack.top_dir, &self.ctx.limits).await {
            self.ctx.fetcher.discard(&pack.sha256);
            return Err(DaemonError::exec(&self.name, e));
        }
        self.report(
            t.generation,
            NodePhase::Staged,
            "pack fetched, verified and checked; installs when released (the node keeps running)",
        );
        Ok(Outcome::Staged)
    }

    /// Step 6: fetch the pack and unpack it as it arrives, hand the tree to the run-as user,
    /// stop the node when it runs from this home (only now: it served while the tree was
    /// staged), swap the tree in and record it. A pack with another home goes in beside the
    /// running tree, whose server is stopped only before the new one starts (step 11). A
    /// reinstall wipes the node's local state, and the optimizer runs again.
    pub(super) async fn install(
        &mut self,
        t: &NodeTarget,
        node: &mut Observed,
    ) -> DaemonResult<()> {
        let spec = &t.spec;
        let pack = spec.pack.clone().unwrap_or_default();
        self.report(t.generation, NodePhase::Fetching, FETCHING);
        let staging_root = node
            .home
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| node.home.clone());
        std::fs::create_dir_all(&staging_root)
            .map_err(|e| DaemonError::io("create install dir", &staging_root, e))?;
        unpack::clean_stale_staging(&staging_root).on(&self.name)?;
        let stage_started = Instant::now();
        let staged = self
            .fetch_and_stage(t.generation, &pack, &staging_root, &self.progress())
            .await?;
        let took = stage_started.elapsed().as_secs_f64();
        tracing::info!(node = %self.name, files = staged.files, seconds = took, "pack fetched and unpacked");
        self.step(format!("staged {} files in {took:.1} s", staged.files));
        // The server runs as the plan's user and writes logs, tmp and databases inside
        // its tree: hand the tree over before it goes live.
        let staged = match self.run_as(spec)?.switch_to {
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
        if node.pid.is_some() {
            self.report(
                t.generation,
                NodePhase::Stopping,
                "stopping for the new pack",
            );
            self.stop(spec, node.server()).await?;
            node.pid = None;
        }
        // The tree it replaces goes: a shared folder mounted in it is taken off first (the node
        // is stopped), so nothing is deleted through it; the new tree is mounted before it starts.
        crate::exec::mount::unmount_under(&node.home)
            .await
            .on(&self.name)?;
        unpack::install_staged(staged, &node.home)
            .await
            .on(&self.name)?;
        self.healthy_digest = None;
        let boot = unpack::boot_id();
        if boot.is_none() {
            // No boot id to tell a torn tree later: make it durable now.
            self.sync_tree(&node.home).await?;
        }
        self.record_install(
            spec,
            InstallRecord {
                pack_sha256: pack.sha256.to_ascii_lowercase(),
                home: node.home.clone(),
                applied_digest: None,
                keystores_digest: None,
                stores: Default::default(),
                unsynced_since_boot: boot,
                // A fresh tree holds no jar of an earlier spec.
                lib_dirs: Vec::new(),
                server: None,
            },
        )
        .await?;
        node.installed = true;
        Ok(())
    }

    /// Reports how far a download is.
    fn progress(&self) -> impl Fn(u64, u64) + Send + Sync + 'static {
        let name = self.name.clone();
        let board = Arc::clone(&self.ctx.board);
        move |have: u64, size: u64| {
            board.update(
                &name,
                Update {
                    step: Some(format!("fetched {} of {} MiB", have >> 20, size >> 20)),
                    ..Update::default()
                },
            );
        }
    }

    /// Fetches the pack and stages it while it arrives ([`crate::exec::arriving`]). The
    /// staged tree is returned only when the download verified (digest, and the tail it was
    /// read with); otherwise it is discarded and the download's error returned.
    async fn fetch_and_stage(
        &self,
        generation: u64,
        pack: &ArtifactRef,
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
                self.report(
                    generation,
                    NodePhase::Unpacking,
                    "unpacking the cached pack",
                );
            }
            Some(unpack::stage(source, staging_root, &pack.top_dir, &self.ctx.limits).await)
        };
        let (fetched, staged) = tokio::join!(fetch, stage);
        let refused = |e: crate::exec::error::ExecError| {
            // A verified pack whose entries are refused never unpacks: it leaves the cache.
            if e.is_refused_archive() {
                self.ctx.fetcher.discard(&pack.sha256);
            }
            DaemonError::exec(&self.name, e)
        };
        match (fetched, staged) {
            (Ok(_), Some(staged)) => staged.map_err(refused),
            (Ok(zip), None) => {
                unpack::stage_zip(&zip, staging_root, &pack.top_dir, &self.ctx.limits)
                    .await
                    .map_err(refused)
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
}

/// The step shown while a pack is fetched.
const FETCHING: &str = "fetching the pack (unpacked as it arrives)";
