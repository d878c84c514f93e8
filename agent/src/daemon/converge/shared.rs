//! The shared_mount step: a folder of the node's home that every node of its group shares,
//! on a file system the operator provides (`NodeSpec.shared`, `SharedMount`), mounted before
//! each start of the node.
//!
//! * The pack's own copy of the folder is set aside once, as `<folder>.pack` beside it; an
//!   empty folder takes its place and the source is mounted there.
//! * The mounted folder is seeded once from that copy ([`crate::exec::seed`]): what it lacks is
//!   copied in, nothing there is overwritten, and a marker says it was done.
//! * Before every start the folder must be a mount point of that very source; otherwise the
//!   node is not started and reported failed, naming the folder and the source (the converge
//!   loop retries with backoff: a file server that was down is mounted when it returns).
//! * A mount of another source there (the plan's source changed) is taken off first: the node
//!   is stopped by then.
//!
//! Whatever removes a tree unmounts first and never deletes through a mount
//! ([`crate::exec::mount::refuse_if_mounted`]).

use std::path::{Path, PathBuf};

use apim_proto::v1::shared_folders::How;
use apim_proto::v1::{NodeSpec, SharedMount};

use super::{NodeExecutor, NodeTarget, Observed, rel_path};
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::exec::ExecError;
use crate::exec::mount::{self, MountSpec};
use crate::exec::seed;

/// The suffix of the pack's own copy of a shared folder, kept beside it.
pub const PACK_COPY_SUFFIX: &str = ".pack";

/// The spec's shared mount, if it has one.
pub(crate) fn shared_mount(spec: &NodeSpec) -> Option<&SharedMount> {
    match spec.shared.as_ref()?.how.as_ref()? {
        How::Mount(m) => Some(m),
        How::Sync(_) => None,
    }
}

/// `<folder>.pack`, beside `folder`.
fn pack_copy(folder: &Path) -> PathBuf {
    let mut name = folder.file_name().unwrap_or_default().to_os_string();
    name.push(PACK_COPY_SUFFIX);
    folder.with_file_name(name)
}

impl NodeExecutor {
    /// The shared folder and what to mount there, for a spec with a shared mount.
    pub(crate) fn mount_spec(
        &self,
        spec: &NodeSpec,
        home: &Path,
    ) -> DaemonResult<Option<MountSpec>> {
        let Some(m) = shared_mount(spec) else {
            return Ok(None);
        };
        let dir = rel_path(&self.name, "shared.mount.dir", &m.dir)?;
        // Each is one argument of mount(8): none may read as an option.
        let arg_ok = |v: &str, may_be_empty: bool| {
            (may_be_empty || !v.is_empty()) && !v.starts_with('-') && !v.contains('\0')
        };
        let bind_ok = m.fstype != mount::BIND || m.source.starts_with('/');
        if !arg_ok(&m.source, false)
            || !arg_ok(&m.fstype, false)
            || !arg_ok(&m.options, true)
            || !bind_ok
        {
            return Err(DaemonError::BadSpec {
                node: self.name.clone(),
                reason: "shared.mount needs a source and an fstype, none starting with '-' \
                         (a bind source: an absolute path)"
                    .into(),
            });
        }
        Ok(Some(MountSpec {
            source: m.source.clone(),
            target: home.join(dir),
            fstype: m.fstype.clone(),
            options: m.options.clone(),
        }))
    }

    /// Step 12b (right before every start): the shared folder mounted from its source and
    /// seeded (see the module docs).
    pub(super) async fn shared_folder(&self, t: &NodeTarget, node: &Observed) -> DaemonResult<()> {
        let Some(spec) = self.mount_spec(&t.spec, &node.home)? else {
            return self.release_shared_folder(&node.home).await;
        };
        let folder = spec.target.clone();
        let fail = |reason: String| DaemonError::SharedMount {
            node: self.name.clone(),
            folder: folder.clone(),
            source_fs: spec.source.clone(),
            reason,
        };
        let words = |e: ExecError| match e {
            ExecError::Mount { reason, .. } | ExecError::Unmount { reason, .. } => reason,
            e => e.to_string(),
        };
        let table = mount::mounts().on(&self.name)?;
        if let Err(why) = mount::check_mounted(&table, &spec) {
            if mount::mounted_at(&table, &folder).on(&self.name)?.is_some() {
                self.step(format!("unmounting {} ({why})", folder.display()));
                mount::unmount(&folder).await.map_err(|e| fail(words(e)))?;
            }
            self.set_pack_copy_aside(&t.spec, &folder)?;
            self.step(format!(
                "mounting {} on {}",
                apim_proto::text::printable(&spec.source),
                folder.display()
            ));
            mount::mount(&spec).await.map_err(|e| fail(words(e)))?;
            tracing::info!(node = %self.name, folder = %folder.display(), source = %spec.source, "shared folder mounted");
        }
        // Checked again, also after a mount: `mount` succeeding is not proof of what is there.
        let table = mount::mounts().on(&self.name)?;
        mount::check_mounted(&table, &spec).map_err(fail)?;
        if !seed::is_seeded(&folder) {
            self.step(format!("seeding the shared folder {}", folder.display()));
            let from = pack_copy(&folder);
            let owner = self.run_as(&t.spec)?.switch_to.map(|c| (c.uid, c.gid));
            let into = folder.clone();
            let done = tokio::task::spawn_blocking(move || seed::seed(&from, &into, owner))
                .await
                .map_err(|source| DaemonError::Join { op: "seed", source })?
                .map_err(|e| fail(format!("seeding it failed: {e}")))?;
            tracing::info!(node = %self.name, folder = %folder.display(),
                "shared folder seeded: {} file(s) copied, {} already there", done.copied, done.kept);
        }
        Ok(())
    }

    /// A spec that shares no folder by mount (any more): a shared mount an earlier spec made in
    /// the home (a mount point with the pack's copy beside it) is taken off and the pack's copy
    /// put back, so the node runs on its own folder again (a synchronised group then brings it
    /// the group's files). Anything else mounted there is not ours and is left alone.
    async fn release_shared_folder(&self, home: &Path) -> DaemonResult<()> {
        let table = mount::mounts().on(&self.name)?;
        for folder in mount::mounts_under(&table, home).on(&self.name)? {
            let aside = pack_copy(&folder);
            if !std::fs::symlink_metadata(&aside).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            self.step(format!(
                "unmounting {} (the plan no longer mounts it)",
                folder.display()
            ));
            mount::unmount(&folder).await.on(&self.name)?;
            // The folder made for the mount is empty once the share is off it; anything else
            // is kept and named.
            std::fs::remove_dir(&folder)
                .map_err(|e| DaemonError::io("remove the emptied mount folder", &folder, e))?;
            std::fs::rename(&aside, &folder)
                .map_err(|e| DaemonError::io("put the pack's copy back", &aside, e))?;
            tracing::info!(node = %self.name, folder = %folder.display(), "shared mount released; the pack's copy is back");
        }
        Ok(())
    }

    /// The pack's own copy of the folder goes aside once (`<folder>.pack`), and an empty folder
    /// (the run-as user's) takes its place for the mount.
    fn set_pack_copy_aside(&self, spec: &NodeSpec, folder: &Path) -> DaemonResult<()> {
        let aside = pack_copy(folder);
        let is_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
        if !aside.exists() && is_dir(folder) {
            std::fs::rename(folder, &aside)
                .map_err(|e| DaemonError::io("set the pack's copy aside", folder, e))?;
        }
        self.create_dir_owned(spec, folder)
    }
}
