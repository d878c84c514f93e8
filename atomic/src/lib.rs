//! One atomic file write for the whole workspace: a reader sees the old bytes or the new bytes,
//! never a torn file, and a crash never leaves a half-written file in place.
//!
//! The recipe ([`AtomicWriter::write`]):
//!
//! 1. Remove the target's stale temp files: those a crashed earlier write left behind. A temp
//!    file is locked (`flock`) by its writer for as long as it is being written, so one that a
//!    live writer holds is left alone and concurrent writes of one target do not disturb each
//!    other (the last rename wins).
//! 2. Create a temp file with a unique name *in the target's directory* (so the rename cannot
//!    cross a filesystem), `.<name>.apimctl-tmp.<16 hex digits>`, mode 0600 with
//!    `O_CREAT|O_EXCL|O_NOFOLLOW`: a planted symlink is never followed, and the content is
//!    never readable by others on the way.
//! 3. Write the bytes, give the file its owner and then its final mode (explicitly: the umask
//!    does not matter) while it is still private, and `fsync` it.
//! 4. Rename it over the target; with [`AtomicWriter::no_clobber`], only if the target does
//!    not exist yet (`renameat2(RENAME_NOREPLACE)`, or a hard link where that is missing).
//! 5. `fsync` the directory, so the rename itself survives a power cut.
//!
//! Options: an owner, no-clobber, an in-place fallback for files that cannot be replaced by
//! rename (a bind-mounted `/etc/hosts` fails with `EBUSY`/`EXDEV`), a [`FileOps`] seam so tests
//! can make the rename fail, and [`FaultPoint`]s that stop the write as a crash would.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// What marks a temp file of this crate: `.<name>` + this + `.<16 hex digits>`.
pub const TEMP_MARKER: &str = ".apimctl-tmp";

/// Hex digits of the random part of a temp file name.
const RANDOM_DIGITS: usize = 16;
/// Longest part of the target's name kept in a temp file name (names are at most 255 bytes).
const MAX_NAME_PART: usize = 200;
/// Temp names tried before giving up (a collision needs an attacker or a 2^64 coincidence).
const CREATE_ATTEMPTS: u32 = 8;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// A filesystem call failed; `op` says what the writer was doing, in words.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the writer was doing, e.g. "create temp file".
        op: &'static str,
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A [`FaultPoint`] stopped the write as if the process had crashed (tests only).
    #[error("simulated crash at {point:?} while writing {}", path.display())]
    SimulatedCrash {
        /// Where the simulated crash happened.
        point: FaultPoint,
        /// The file that was being written.
        path: PathBuf,
    },
}

/// For callers whose errors carry an `io::Error`: the same kind, the whole message.
impl From<AtomicError> for io::Error {
    fn from(e: AtomicError) -> Self {
        let kind = match &e {
            AtomicError::Io { source, .. } => source.kind(),
            AtomicError::SimulatedCrash { .. } => io::ErrorKind::Interrupted,
        };
        io::Error::new(kind, e)
    }
}

impl AtomicError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        AtomicError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result of this crate.
pub type Result<T, E = AtomicError> = std::result::Result<T, E>;

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
    /// rewritten in place (not atomic; only with [`AtomicWriter::in_place_fallback`]).
    InPlace,
}

/// The filesystem calls the writer makes that tests may want to fail.
pub trait FileOps: Send + Sync {
    /// Rename `from` over `to` (same semantics as `rename(2)`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Rename `from` to `to` unless `to` exists (then `EEXIST`); see [`rename_no_clobber`].
    fn rename_no_clobber(&self, from: &Path, to: &Path) -> io::Result<()> {
        rename_no_clobber(from, to)
    }
}

/// The production [`FileOps`]: plain `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFileOps;

impl FileOps for RealFileOps {
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
}

/// Renames `from` to `to` only if `to` does not exist (`EEXIST` otherwise), atomically:
/// `renameat2(RENAME_NOREPLACE)`, or a hard link and an unlink where the filesystem lacks it.
pub fn rename_no_clobber(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL | Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::hard_link(from, to)?;
    // The target is in place; a temp name left behind is removed by the next write.
    let _ = std::fs::remove_file(from);
    Ok(())
}

/// Writes `bytes` to `path` atomically with permission bits `mode` (e.g. `0o600` for a file
/// that holds passwords). The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    AtomicWriter::new(mode).write(path, bytes).map(drop)
}

/// A new, unused temp file name for `path`: `.<name>.apimctl-tmp.<16 hex>` next to it.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let mut name = temp_prefix(path);
    name.extend_from_slice(format!(".{:016x}", rand::random::<u64>()).as_bytes());
    path.with_file_name(OsString::from_vec(name))
}

/// The temp files of `path` that exist now (left by crashed writes, or being written), sorted.
pub fn temp_files_of(path: &Path) -> io::Result<Vec<PathBuf>> {
    let prefix = temp_prefix(path);
    let mut found = Vec::new();
    for ent in std::fs::read_dir(parent_dir(path))? {
        let ent = ent?;
        if is_temp_of(&prefix, ent.file_name().as_bytes()) {
            found.push(ent.path());
        }
    }
    found.sort();
    Ok(found)
}

/// `.<name>.apimctl-tmp`, the part every temp file of `path` starts with.
fn temp_prefix(path: &Path) -> Vec<u8> {
    let name = path.file_name().unwrap_or_default().as_bytes();
    let mut prefix = Vec::with_capacity(MAX_NAME_PART + TEMP_MARKER.len() + 1);
    prefix.push(b'.');
    prefix.extend_from_slice(&name[..name.len().min(MAX_NAME_PART)]);
    prefix.extend_from_slice(TEMP_MARKER.as_bytes());
    prefix
}

/// Whether `name` is a temp file of the target whose [`temp_prefix`] is `prefix`: the prefix
/// and the random part, or the prefix alone (the fixed name earlier agents used).
fn is_temp_of(prefix: &[u8], name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    rest.is_empty()
        || (rest.len() == RANDOM_DIGITS + 1
            && rest[0] == b'.'
            && rest[1..].iter().all(u8::is_ascii_hexdigit))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `fsync` a directory so a rename or create inside it is durable. A filesystem that cannot
/// sync directories (`EINVAL`) is not an error: the rename itself already happened.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => Ok(()),
        r => r.map_err(|e| AtomicError::io("fsync directory", dir, e)),
    }
}

/// A configurable atomic write; [`write_atomic`] is the common case.
pub struct AtomicWriter<'a> {
    mode: u32,
    owner: Option<(u32, u32)>,
    no_clobber: bool,
    in_place_fallback: bool,
    ops: &'a dyn FileOps,
    fault: Option<FaultPoint>,
}

impl std::fmt::Debug for AtomicWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicWriter")
            .field("mode", &format_args!("{:o}", self.mode))
            .field("owner", &self.owner)
            .field("no_clobber", &self.no_clobber)
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
            no_clobber: false,
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

    /// Refuse to replace an existing target (`EEXIST`): the first of two concurrent creators
    /// wins and the other fails, instead of silently overwriting it.
    pub fn no_clobber(mut self, enabled: bool) -> Self {
        self.no_clobber = enabled;
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
            no_clobber: self.no_clobber,
            in_place_fallback: self.in_place_fallback,
            ops,
            fault: self.fault,
        }
    }

    /// Stop at `point` as a crash would: return [`AtomicError::SimulatedCrash`] *without*
    /// cleaning up, so tests can check what a real crash leaves behind.
    pub fn simulate_crash(mut self, point: FaultPoint) -> Self {
        self.fault = Some(point);
        self
    }

    /// Replace `path` with `bytes` (see the crate docs for the recipe).
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<WriteMethod> {
        if path.file_name().is_none() {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "not a file name");
            return Err(AtomicError::io("write", path, e));
        }
        let dir = parent_dir(path);
        remove_stale_temps(path)?;
        let (tmp, held) = create_temp(path)?;
        let mut guard = TempGuard(Some(tmp.clone()));
        let mut file: &File = &held;

        if self.fault == Some(FaultPoint::MidWrite) {
            file.write_all(&bytes[..bytes.len() / 2])
                .map_err(|e| AtomicError::io("write temp file", &tmp, e))?;
            guard.0 = None;
            return Err(self.crash(FaultPoint::MidWrite, path));
        }
        file.write_all(bytes)
            .map_err(|e| AtomicError::io("write temp file", &tmp, e))?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::fchown(
                file,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| AtomicError::io("set owner of temp file", &tmp, e.into()))?;
        }
        // After chown (which clears set-id bits), and explicitly (the umask must not matter).
        file.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| AtomicError::io("set mode of temp file", &tmp, e))?;
        file.sync_all()
            .map_err(|e| AtomicError::io("fsync temp file", &tmp, e))?;

        if self.fault == Some(FaultPoint::BeforeRename) {
            guard.0 = None;
            return Err(self.crash(FaultPoint::BeforeRename, path));
        }

        let renamed = if self.no_clobber {
            self.ops.rename_no_clobber(&tmp, path)
        } else {
            self.ops.rename(&tmp, path)
        };
        let method = match renamed {
            Ok(()) => {
                guard.0 = None;
                WriteMethod::Renamed
            }
            Err(e) if self.in_place_fallback && !self.no_clobber && is_busy_or_cross_device(&e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot replace file by rename (bind mount?); rewriting it in place"
                );
                write_in_place(path, bytes)?;
                // The guard removes the temp file.
                WriteMethod::InPlace
            }
            Err(e) if self.no_clobber => return Err(AtomicError::io("create", path, e)),
            Err(e) => return Err(AtomicError::io("rename temp file over", path, e)),
        };
        drop(guard);
        drop(held);
        fsync_dir(dir)?;
        Ok(method)
    }

    fn crash(&self, point: FaultPoint, path: &Path) -> AtomicError {
        AtomicError::SimulatedCrash {
            point,
            path: path.to_path_buf(),
        }
    }
}

/// A temp file being written: locked while the filesystem supports `flock`.
enum Held {
    Locked(Flock<File>),
    Unlocked(File),
}

impl std::ops::Deref for Held {
    type Target = File;

    fn deref(&self) -> &File {
        match self {
            Held::Locked(l) => l,
            Held::Unlocked(f) => f,
        }
    }
}

/// Creates and locks a fresh temp file for `path` (see the crate docs). A name that a
/// concurrent write removed as stale before it was locked is given up for another.
fn create_temp(path: &Path) -> Result<(PathBuf, Held)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tmp = temp_path_for(path);
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < CREATE_ATTEMPTS => {
                continue;
            }
            Err(e) => return Err(AtomicError::io("create temp file", &tmp, e)),
        };
        let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Held::Locked(l),
            // Held by a writer cleaning up stale temp files, which will remove it.
            Err((_, Errno::EWOULDBLOCK)) if attempt < CREATE_ATTEMPTS => continue,
            // No flock here (some network filesystems): write without it.
            Err((f, Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::EINVAL)) => Held::Unlocked(f),
            Err((_, e)) => return Err(AtomicError::io("lock temp file", &tmp, e.into())),
        };
        match still_at(&held, &tmp) {
            Ok(true) => return Ok((tmp, held)),
            Ok(false) if attempt < CREATE_ATTEMPTS => {}
            Ok(false) => {
                let e = io::Error::new(io::ErrorKind::NotFound, "removed while being created");
                return Err(AtomicError::io("create temp file", &tmp, e));
            }
            Err(e) => return Err(AtomicError::io("stat temp file", &tmp, e)),
        }
    }
}

/// Whether `path` still names the file open as `file`.
fn still_at(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(at) => Ok(at.dev() == open.dev() && at.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the temp files of `path` that no live writer holds.
fn remove_stale_temps(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    let prefix = temp_prefix(path);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No directory, no leftovers: creating the temp file says what is wrong.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AtomicError::io("list directory", dir, e)),
    };
    for ent in entries {
        let ent = ent.map_err(|e| AtomicError::io("list directory", dir, e))?;
        if !is_temp_of(&prefix, ent.file_name().as_bytes()) {
            continue;
        }
        let stale = ent.path();
        match remove_if_abandoned(&stale) {
            Ok(true) => tracing::debug!(path = %stale.display(), "removed leftover temp file"),
            Ok(false) => {}
            Err(e) => return Err(AtomicError::io("remove leftover temp file", &stale, e)),
        }
    }
    Ok(())
}

/// Removes `p` unless a live writer holds its lock. Anything but a regular file (a planted
/// symlink, say) is removed without being opened; directories are left alone.
fn remove_if_abandoned(p: &Path) -> io::Result<bool> {
    let md = match std::fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if md.is_dir() {
        return Ok(false);
    }
    // Kept until the file is removed, so no writer can take it in between.
    let mut _lock = None;
    if md.is_file() {
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
            .open(p);
        match opened {
            Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => {
                    if !still_at(&l, p)? {
                        return Ok(false);
                    }
                    _lock = Some(l);
                }
                Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
                // No flock here: as before locks, a leftover is removed.
                Err((_, Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::EINVAL)) => {}
                Err((_, e)) => return Err(e.into()),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            // Another user's file, which it cannot be asked about: a leftover all the same.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
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
        .map_err(|e| AtomicError::io("open for in-place write", path, e))?;
    f.write_all(bytes)
        .map_err(|e| AtomicError::io("write in place", path, e))?;
    f.sync_all()
        .map_err(|e| AtomicError::io("fsync in-place write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_is_hidden_sibling() {
        let t = temp_path_for(Path::new("/a/b/deployment.toml"));
        assert_eq!(t.parent(), Some(Path::new("/a/b")));
        let name = t.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".deployment.toml.apimctl-tmp."), "{name}");
        assert_eq!(
            name.len(),
            ".deployment.toml.apimctl-tmp.".len() + RANDOM_DIGITS
        );
        assert_ne!(t, temp_path_for(Path::new("/a/b/deployment.toml")));
    }

    #[test]
    fn parent_of_bare_name_is_dot() {
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/etc/hosts")), Path::new("/etc"));
    }

    #[test]
    fn only_the_targets_own_temp_names_count() {
        let prefix = temp_prefix(Path::new("/d/a"));
        assert!(is_temp_of(&prefix, b".a.apimctl-tmp.0123456789abcdef"));
        assert!(
            is_temp_of(&prefix, b".a.apimctl-tmp"),
            "the fixed name of earlier agents"
        );
        for other in [
            &b"a"[..],
            b".a.apimctl-tmp.0123",
            b".a.apimctl-tmp.0123456789abcdeg",
            b".a.apimctl-tmp.x.apimctl-tmp.0123456789abcdef",
            b".ab.apimctl-tmp.0123456789abcdef",
        ] {
            assert!(
                !is_temp_of(&prefix, other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn long_names_keep_temp_names_within_limits() {
        let long = "n".repeat(255);
        let t = temp_path_for(&Path::new("/d").join(&long));
        assert!(t.file_name().unwrap().len() <= 255);
    }
}
