//! Fetch-side safety for distribution packs: checksum, guarded extraction, atomic install.
//!
//! The flow is [`stage`] → [`install_staged`]:
//!
//! 1. The pack's digest is checked: the fetcher hashes it as it arrives ([`verify_sha256`] does
//!    it for a file at rest). A pack still arriving ([`ZipSource::Arriving`], see
//!    [`crate::exec::arriving`]) is staged *while* it arrives, and the staged tree is discarded
//!    unless the digest matches in the end; it is never installed before.
//! 2. [`stage`] extracts into a fresh private directory
//!    `<staging_root>/.apimctl-stage-<random>/` (mode 0700) on the same filesystem as the
//!    install dir, and returns the staged top directory (e.g. `…/product-1.0`).
//! 3. [`install_staged`] moves the staged tree into place with one `renameat2(RENAME_EXCHANGE)`
//!    (there is never a moment without a tree at the destination), then removes the old tree.
//!
//! Durability is the caller's: [`install_staged`] does not sync the tree (a `syncfs` of a
//! whole pack costs as much as a good part of the unzip and would sit on every rollout's
//! critical path). The agent records the [`boot_id`] the tree was installed in, calls
//! [`sync_filesystem`] once the node is serving, and installs again a tree that was still
//! unsynced when the machine went down (a different boot id).
//!
//! # Guards (all checked on the central directory *before* anything is written)
//!
//! * Entry names: no absolute paths, no `..` component at all (even `a/../b`), no backslash, no
//!   NUL; every entry must sit under `expected_top_dir/`.
//! * **Symlinks: every symlink entry is refused**, whatever its target. The packs contain none,
//!   and refusing them outright removes the whole class of "link then write through it"
//!   attacks instead of reasoning about where a link leads. Device, FIFO and socket entries are
//!   refused too; encrypted entries are refused.
//! * Duplicate names (after normalisation) and a path that is both a file and a directory are
//!   refused, so no entry can overwrite another.
//! * Zip-bomb limits ([`UnpackLimits`]): entry count, declared size per entry, total declared
//!   size. The declared size is also enforced while inflating (an entry that inflates to more
//!   than it declares fails), and every entry's CRC-32 is checked by the zip reader.
//! * Writes use `O_CREAT|O_EXCL|O_NOFOLLOW` inside a directory tree the agent created itself and
//!   that contains no symlinks, so nothing can be written outside the staging dir; after
//!   extraction the staged tree is walked and must contain exactly the planned files and
//!   directories, and nothing else (no symlink, no special file).
//!
//! # Modes
//!
//! A file gets its unix mode from the zip with the set-id and sticky bits removed (as `unzip`
//! does), or 0644 when the zip has no unix modes (zips made on Windows); directories get their
//! mode or 0755, always with `u+rwx` so the agent can replace and delete the tree. Any
//! `bin/*.sh` (at any depth, e.g. `diagnostics-tool/bin/diagnostics.sh`) always gets the exec
//! bits. Timestamps are not restored: nothing in the packs depends on them.
//!
//! # Speed
//!
//! Extraction runs in `spawn_blocking`, on `threads` OS threads (default 2) that share one parse
//! of the central directory and take batches of entries (about 1 MiB of compressed data each)
//! in the order the entries sit in the zip, so together they read it front to back, right
//! behind a download in progress. The zip is read through a `pread`-based reader with a
//! 128 KiB window (one syscall serves a small entry's local header and data), data is copied
//! through a 256 KiB buffer and written in 8 KiB pieces (`WRITE_PIECE` says why), files and
//! directories are created with their final modes (no chmod pass unless the umask is unusual),
//! and no file is `fsync`ed individually (see above for when the tree is made durable).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::exec::arriving::ArrivingPack;
use crate::exec::error::{ExecError, Result};

mod extract;
mod install;
mod plan;
mod reader;

pub use extract::stage_blocking;
pub use install::{boot_id, install_staged_blocking, sync_filesystem};
use reader::{PreadReader, Source};

/// Prefix of the private staging directories under the staging root.
pub const STAGE_PREFIX: &str = ".apimctl-stage-";

/// The archive [`stage`] reads: a verified file at rest, or a download still arriving.
#[derive(Debug, Clone)]
pub enum ZipSource {
    /// A complete pack (the verified cache entry).
    File(PathBuf),
    /// A pack still being downloaded; reads wait for the bytes (see [`crate::exec::arriving`]).
    Arriving(Arc<ArrivingPack>),
}

impl ZipSource {
    /// The file behind the source, for messages.
    pub fn path(&self) -> &Path {
        match self {
            ZipSource::File(p) => p,
            ZipSource::Arriving(a) => a.path(),
        }
    }

    fn reader(&self) -> Result<PreadReader> {
        match self {
            ZipSource::File(p) => {
                let file = File::open(p).map_err(|e| ExecError::io("open zip", p, e))?;
                let len = file
                    .metadata()
                    .map_err(|e| ExecError::io("stat zip", p, e))?
                    .len();
                Ok(PreadReader::new(Source::File(Arc::new(file)), len))
            }
            ZipSource::Arriving(a) => Ok(PreadReader::new(Source::Arriving(a.reader()), a.size())),
        }
    }
}

/// Zip-bomb guards and parallelism for [`stage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most entries (files + directories) an archive may have.
    pub max_entries: u64,
    /// Largest uncompressed size of one entry, in bytes.
    pub max_entry_size: u64,
    /// Largest total uncompressed size, in bytes.
    pub max_total_size: u64,
    /// Extraction threads (not a limit, but it lives with the other knobs; min 1).
    pub threads: usize,
}

impl Default for UnpackLimits {
    /// Generous for any product pack (the largest known is ~25k entries and ~1 GiB unpacked).
    fn default() -> Self {
        UnpackLimits {
            max_entries: 200_000,
            max_entry_size: 2 << 30,
            max_total_size: 8 << 30,
            threads: 2,
        }
    }
}

/// A tree extracted by [`stage_zip`], not yet installed. Dropping it leaves the staging dir
/// on disk (a crash would too); call [`StagedTree::discard`] or [`clean_stale_staging`].
#[derive(Debug)]
pub struct StagedTree {
    wrapper: PathBuf,
    top: PathBuf,
    /// Regular files extracted.
    pub files: u64,
    /// Directories created (including the top directory).
    pub dirs: u64,
    /// Bytes written.
    pub bytes: u64,
}

impl StagedTree {
    /// The staged top directory (e.g. `<staging_root>/.apimctl-stage-…/product-1.0`).
    pub fn path(&self) -> &Path {
        &self.top
    }

    /// Remove the staged tree without installing it.
    pub fn discard(self) -> Result<()> {
        std::fs::remove_dir_all(&self.wrapper)
            .map_err(|e| ExecError::io("remove staging directory", &self.wrapper, e))
    }

    /// Give the whole staged tree to `uid:gid` (the node's `run_as` user must own its
    /// home: the server writes logs, `tmp/`, the pid file and its databases there).
    /// Blocking; symlinks are not followed (a staged tree has none anyway).
    pub fn chown_blocking(&self, uid: u32, gid: u32) -> Result<()> {
        let uid = nix::unistd::Uid::from_raw(uid);
        let gid = nix::unistd::Gid::from_raw(gid);
        let mut stack = vec![self.top.clone()];
        while let Some(p) = stack.pop() {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &p,
                Some(uid),
                Some(gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ExecError::io("chown", &p, e.into()))?;
            let md = std::fs::symlink_metadata(&p).map_err(|e| ExecError::io("stat", &p, e))?;
            if md.is_dir() {
                for ent in std::fs::read_dir(&p).map_err(|e| ExecError::io("list", &p, e))? {
                    stack.push(ent.map_err(|e| ExecError::io("list", &p, e))?.path());
                }
            }
        }
        Ok(())
    }
}

/// What [`install_staged`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    /// A previous tree was at the destination and has been swapped out.
    pub replaced_previous: bool,
    /// Set when removing the old tree or the staging dir failed; the new tree is installed
    /// regardless, and [`clean_stale_staging`] will retry.
    pub leftover: Option<PathBuf>,
}

/// Check that `file` has the sha256 `expected` (64 hex digits, any case). Streamed.
pub async fn verify_sha256(file: &Path, expected: &str) -> Result<()> {
    let expected = normalise_digest(expected)?;
    let path = file.to_path_buf();
    let actual = tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(|source| ExecError::Join {
            op: "sha256",
            source,
        })??;
    if actual == expected {
        Ok(())
    } else {
        Err(ExecError::ShaMismatch {
            path: file.to_path_buf(),
            expected,
            actual,
        })
    }
}

fn normalise_digest(d: &str) -> Result<String> {
    let d = d.trim().to_ascii_lowercase();
    if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(d)
    } else {
        Err(ExecError::BadDigest { value: d })
    }
}

/// The sha256 of a file as lowercase hex (blocking, 1 MiB reads).
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(hex::encode(sha256_state(path)?.0.finalize()))
}

/// The sha256 state of `path`'s content (streamed, 1 MiB reads) and its length, so a caller
/// can go on hashing what it appends (a resumed download).
pub fn sha256_state(path: &Path) -> Result<(Sha256, u64)> {
    let mut f = File::open(path).map_err(|e| ExecError::io("open for hashing", path, e))?;
    let mut h = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExecError::io("read for hashing", path, e)),
        };
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((h, len))
}

/// Extract `zip` into a new private directory under `staging_root`, refusing anything unsafe
/// (see the module docs). Every entry must be under `expected_top_dir`; the returned tree's
/// [`StagedTree::path`] is that directory. On error nothing is left behind.
pub async fn stage_zip(
    zip: &Path,
    staging_root: &Path,
    expected_top_dir: &str,
    limits: &UnpackLimits,
) -> Result<StagedTree> {
    stage(
        ZipSource::File(zip.to_path_buf()),
        staging_root,
        expected_top_dir,
        limits,
    )
    .await
}

/// [`stage_zip`] for any [`ZipSource`]: a pack still arriving is extracted as it arrives.
pub async fn stage(
    source: ZipSource,
    staging_root: &Path,
    expected_top_dir: &str,
    limits: &UnpackLimits,
) -> Result<StagedTree> {
    let (root, top, limits) = (
        staging_root.to_path_buf(),
        expected_top_dir.to_string(),
        limits.clone(),
    );
    tokio::task::spawn_blocking(move || stage_blocking(&source, &root, &top, &limits))
        .await
        .map_err(|source| ExecError::Join {
            op: "zip extraction",
            source,
        })?
}

/// Checks a fetched pack the way [`stage_zip`] would before writing anything (see the module
/// docs' guards), without extracting it.
pub async fn check_zip(zip: &Path, expected_top_dir: &str, limits: &UnpackLimits) -> Result<()> {
    let (zip, top, limits) = (
        zip.to_path_buf(),
        expected_top_dir.to_string(),
        limits.clone(),
    );
    tokio::task::spawn_blocking(move || extract::check_blocking(&zip, &top, &limits))
        .await
        .map_err(|source| ExecError::Join {
            op: "zip check",
            source,
        })?
}

/// Move `staged` to `dest` (atomically swapping out any existing tree), then delete the old
/// tree. `dest`'s parent is created if missing and must be on the staging root's filesystem.
pub async fn install_staged(staged: StagedTree, dest: &Path) -> Result<InstallOutcome> {
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || install_staged_blocking(staged, &dest))
        .await
        .map_err(|source| ExecError::Join {
            op: "install staged tree",
            source,
        })?
}

/// Remove staging directories left by a crash (call once at agent start, before staging).
/// Returns how many were removed.
pub fn clean_stale_staging(staging_root: &Path) -> Result<usize> {
    let rd = match std::fs::read_dir(staging_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ExecError::io("list staging root", staging_root, e)),
    };
    let mut n = 0;
    for ent in rd {
        let ent = ent.map_err(|e| ExecError::io("list staging root", staging_root, e))?;
        if ent.file_name().to_string_lossy().starts_with(STAGE_PREFIX) {
            let p = ent.path();
            // An old tree swapped out with a file system still mounted in it: never deleted
            // through the mount (refused, naming it).
            crate::exec::mount::refuse_if_mounted(&p)?;
            std::fs::remove_dir_all(&p)
                .map_err(|e| ExecError::io("remove stale staging directory", &p, e))?;
            tracing::info!(path = %p.display(), "removed stale staging directory");
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_must_be_hex() {
        assert!(normalise_digest("zz").is_err());
        assert_eq!(normalise_digest(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    }
}
