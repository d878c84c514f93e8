//! Installing a staged tree: one exchange of directories, the old tree removed after; and the
//! boot id and `syncfs` the caller makes the tree durable with.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use apim_atomic::parent_dir;

use super::{InstallOutcome, StagedTree};
use crate::exec::error::{ExecError, Result};

/// This boot's id (`/proc/sys/kernel/random/boot_id`): a tree recorded as unsynced in another
/// boot may have been torn by the crash in between. `None` where the kernel does not say. Read
/// once per process (it cannot change while the process lives).
pub fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .clone()
}

/// Makes every write on the filesystem holding `path` durable (one `syncfs`, instead of an
/// fsync per unpacked file).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| ExecError::io("open", path, e))?;
    nix::unistd::syncfs(&f).map_err(|e| ExecError::io("syncfs", path, e.into()))
}

/// Blocking body of [`super::install_staged`].
pub fn install_staged_blocking(staged: StagedTree, dest: &Path) -> Result<InstallOutcome> {
    let parent = parent_dir(dest);
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| ExecError::io("create install directory", parent, e))?;
    let replaced_previous = match std::fs::symlink_metadata(dest) {
        Ok(_) => {
            swap_into_place(&staged, dest)?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::rename(&staged.top, dest).map_err(|e| {
                ExecError::io(
                    "move staged tree into place (staging root and destination must share a filesystem)",
                    dest,
                    e,
                )
            })?;
            false
        }
        Err(e) => return Err(ExecError::io("stat install destination", dest, e)),
    };
    apim_atomic::fsync_dir(parent)?;
    // The wrapper now holds the old tree (or nothing); never deleted through a mount in it.
    let removed = crate::exec::mount::refuse_if_mounted(&staged.wrapper)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|()| std::fs::remove_dir_all(&staged.wrapper));
    let leftover = match removed {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(path = %staged.wrapper.display(), error = %e, "cannot remove old tree; will retry at next start");
            Some(staged.wrapper.clone())
        }
    };
    tracing::info!(dest = %dest.display(), files = staged.files, replaced_previous, "installed staged tree");
    Ok(InstallOutcome {
        replaced_previous,
        leftover,
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn swap_into_place(staged: &StagedTree, dest: &Path) -> Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(
        AT_FDCWD,
        &staged.top,
        AT_FDCWD,
        dest,
        RenameFlags::RENAME_EXCHANGE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
            swap_by_two_renames(staged, dest)
        }
        Err(e) => Err(ExecError::io(
            "swap staged tree into place (staging root and destination must share a filesystem)",
            dest,
            e.into(),
        )),
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn swap_into_place(staged: &StagedTree, dest: &Path) -> Result<()> {
    swap_by_two_renames(staged, dest)
}

/// For filesystems without `RENAME_EXCHANGE`: old aside into the wrapper, new in, and the old
/// one put back if the second rename fails.
fn swap_by_two_renames(staged: &StagedTree, dest: &Path) -> Result<()> {
    let aside = staged.wrapper.join(".previous");
    std::fs::rename(dest, &aside)
        .map_err(|e| ExecError::io("move previous tree aside", dest, e))?;
    if let Err(e) = std::fs::rename(&staged.top, dest) {
        let _ = std::fs::rename(&aside, dest);
        return Err(ExecError::io("move staged tree into place", dest, e));
    }
    Ok(())
}
