//! Atomic file replacement: a reader sees the old bytes or the new bytes, never a torn file.
//!
//! The recipe is the classic one: create a temp file *in the same directory* (so the rename
//! cannot cross a filesystem), write, apply the final mode (and owner) while the file is still
//! private, `fsync` the file, `rename` it over the target, then `fsync` the directory so the
//! rename itself survives a power cut.
//!
//! The temp file has a fixed, predictable name (`.<name>.apimctl-tmp`), created with `O_EXCL`
//! (so a planted symlink is never followed). A crash between write and rename leaves that file
//! behind; the next write of the same target removes it first, so leftovers never accumulate.
//! The flip side: two writers of the *same* target must not run concurrently; the agent
//! serialises its work per node, and the ledger/hosts/config files each have one writer.
//!
//! [`AtomicWriter`] also offers an in-place fallback for files that cannot be replaced by
//! rename (an `/etc/hosts` bind-mounted into a container fails with `EBUSY`/`EXDEV`), an owner
//! to apply, a [`FileOps`] seam so tests can make `rename` fail, and a [`FaultPoint`] hook that
//! stops the write as if the process had crashed.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// Suffix of the temp file next to the target; public so tests and tools can recognise it.
pub const TEMP_SUFFIX: &str = ".apimctl-tmp";

/// Write `bytes` to `path` atomically with permission bits `mode` (e.g. `0o600` for a
/// `deployment.toml` that holds passwords). The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    AtomicWriter::new(mode).write(path, bytes).map(drop)
}

/// The temp file used for `path`: `.<file name>.apimctl-tmp` in the same directory.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

/// Where a simulated crash stops the write (test seam; see [`AtomicWriter::simulate_crash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// After half of the bytes reached the temp file: a torn temp file is left behind.
    MidWrite,
    /// After the temp file is complete and synced, just before the rename.
    BeforeRename,
}

/// How the new content reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    /// Temp file renamed over the target (atomic).
    Renamed,
    /// Rename was impossible (`EBUSY`/`EXDEV`, e.g. a bind-mounted file) and the target was
    /// rewritten in place (not atomic; only used when the fallback was enabled).
    InPlace,
}

/// The filesystem calls the writer makes that tests may want to fail.
pub trait FileOps: Send + Sync {
    /// Rename `from` over `to` (same semantics as `rename(2)`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// The production [`FileOps`]: plain `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFileOps;

impl FileOps for RealFileOps {
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
}

/// A configurable atomic write; [`write_atomic`] is the common case.
pub struct AtomicWriter<'a> {
    mode: u32,
    owner: Option<(u32, u32)>,
    in_place_fallback: bool,
    ops: &'a dyn FileOps,
    fault: Option<FaultPoint>,
}

impl std::fmt::Debug for AtomicWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicWriter")
            .field("mode", &format_args!("{:o}", self.mode))
            .field("owner", &self.owner)
            .field("in_place_fallback", &self.in_place_fallback)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl<'a> AtomicWriter<'a> {
    /// A writer producing files with permission bits `mode` (only the low 12 bits are used).
    pub fn new(mode: u32) -> AtomicWriter<'static> {
        AtomicWriter {
            mode: mode & 0o7777,
            owner: None,
            in_place_fallback: false,
            ops: &RealFileOps,
            fault: None,
        }
    }

    /// Give the new file this owner (uid, gid) before it becomes visible; needs root unless
    /// the ids are the writer's own.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    /// When rename fails with `EBUSY` or `EXDEV`, rewrite the target in place instead of
    /// failing (for bind-mounted files such as a container's `/etc/hosts`).
    pub fn in_place_fallback(mut self, enabled: bool) -> Self {
        self.in_place_fallback = enabled;
        self
    }

    /// Use these filesystem calls instead of the real ones (test seam).
    pub fn file_ops<'b>(self, ops: &'b dyn FileOps) -> AtomicWriter<'b>
    where
        'a: 'b,
    {
        AtomicWriter {
            mode: self.mode,
            owner: self.owner,
            in_place_fallback: self.in_place_fallback,
            ops,
            fault: self.fault,
        }
    }

    /// Stop at `point` as a crash would: return [`AgentError::SimulatedCrash`] *without*
    /// cleaning up, so tests can check what a real crash leaves behind.
    pub fn simulate_crash(mut self, point: FaultPoint) -> Self {
        self.fault = Some(point);
        self
    }

    /// Replace `path` with `bytes`.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<WriteMethod> {
        let dir = parent_dir(path);
        let tmp = temp_path_for(path);
        // A leftover from a crashed earlier write: remove it, it was never visible.
        match std::fs::remove_file(&tmp) {
            Ok(()) => tracing::debug!(path = %tmp.display(), "removed leftover temp file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::io("remove leftover temp file", &tmp, e)),
        }
        let mut guard = TempGuard(Some(tmp.clone()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| AgentError::io("create temp file", &tmp, e))?;

        if self.fault == Some(FaultPoint::MidWrite) {
            let half = &bytes[..bytes.len() / 2];
            file.write_all(half)
                .map_err(|e| AgentError::io("write temp file", &tmp, e))?;
            guard.0 = None;
            return Err(self.crash(FaultPoint::MidWrite, path));
        }
        file.write_all(bytes)
            .map_err(|e| AgentError::io("write temp file", &tmp, e))?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::fchown(
                &file,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| AgentError::io("set owner of temp file", &tmp, e.into()))?;
        }
        // After chown (which clears set-id bits), and explicitly (the umask must not matter).
        file.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| AgentError::io("set mode of temp file", &tmp, e))?;
        file.sync_all()
            .map_err(|e| AgentError::io("fsync temp file", &tmp, e))?;
        drop(file);

        if self.fault == Some(FaultPoint::BeforeRename) {
            guard.0 = None;
            return Err(self.crash(FaultPoint::BeforeRename, path));
        }

        let method = match self.ops.rename(&tmp, path) {
            Ok(()) => {
                guard.0 = None;
                WriteMethod::Renamed
            }
            Err(e) if self.in_place_fallback && is_busy_or_cross_device(&e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot replace file by rename (bind mount?); rewriting it in place"
                );
                write_in_place(path, bytes)?;
                // The guard removes the temp file.
                WriteMethod::InPlace
            }
            Err(e) => return Err(AgentError::io("rename temp file over", path, e)),
        };
        drop(guard);
        fsync_dir(dir)?;
        Ok(method)
    }

    fn crash(&self, point: FaultPoint, path: &Path) -> AgentError {
        AgentError::SimulatedCrash {
            point,
            path: path.to_path_buf(),
        }
    }
}

/// Removes the temp file on early return unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn is_busy_or_cross_device(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EBUSY) | Some(nix::libc::EXDEV)
    )
}

/// Overwrite an existing file's bytes without replacing its inode (keeps mode and owner).
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| AgentError::io("open for in-place write", path, e))?;
    f.write_all(bytes)
        .map_err(|e| AgentError::io("write in place", path, e))?;
    f.sync_all()
        .map_err(|e| AgentError::io("fsync in-place write", path, e))
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `fsync` a directory so a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_is_hidden_sibling() {
        assert_eq!(
            temp_path_for(Path::new("/a/b/deployment.toml")),
            PathBuf::from("/a/b/.deployment.toml.apimctl-tmp")
        );
    }

    #[test]
    fn parent_of_bare_name_is_dot() {
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/etc/hosts")), Path::new("/etc"));
    }
}
