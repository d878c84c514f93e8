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

use std::collections::{BTreeMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use zip::ZipArchive;

use crate::exec::arriving::{ArrivingPack, ArrivingReader};
use crate::exec::error::{ExecError, Result};
use apim_atomic::parent_dir;

/// Prefix of the private staging directories under the staging root.
pub const STAGE_PREFIX: &str = ".apimctl-stage-";

const COPY_BUF: usize = 256 * 1024;
/// Extracted data goes to the page cache in writes of this size, as `unzip` and
/// `std::io::copy` do. Linux (6.x, ext4 with large folios) sizes the page cache's folios after
/// the writes: a 256 KiB write takes 256 KiB folios, cut from large free blocks, which on a VM
/// are often memory the guest handed back to the hypervisor, so each page costs a fault on its
/// first touch; small folios reuse pages freed a moment ago. Measured on a KVM guest with `dd`
/// (1 GiB to a fresh file after `drop_caches`): 0.6–0.9 s of system time in 8 KiB writes,
/// 0.8–2.4 s in 256 KiB ones. Whole pages each, so no write ends inside a page.
const WRITE_PIECE: usize = 8 * 1024;
/// Compressed bytes (plus a per-file allowance) an extraction thread takes at a time.
const BATCH_WEIGHT: u64 = 1 << 20;
const READ_WINDOW: usize = 128 * 1024;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

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
            std::fs::remove_dir_all(&p)
                .map_err(|e| ExecError::io("remove stale staging directory", &p, e))?;
            tracing::info!(path = %p.display(), "removed stale staging directory");
            n += 1;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// planning

#[derive(Debug)]
struct PlannedFile {
    index: usize,
    /// Where the entry's local header sits in the zip.
    offset: u64,
    rel: PathBuf,
    mode: u32,
    size: u64,
    weight: u64,
}

#[derive(Debug, Default)]
struct Plan {
    files: Vec<PlannedFile>,
    /// Relative dir path → explicit mode from the zip, if it had a dir entry with one.
    dirs: BTreeMap<PathBuf, Option<u32>>,
    total: u64,
}

/// Split an entry name into safe components, or say why it is unsafe.
fn sanitize_name(name: &str) -> std::result::Result<Vec<&str>, &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('\0') {
        return Err("NUL byte in name");
    }
    if name.contains('\\') {
        return Err("backslash in name (a Windows path separator)");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    let mut comps = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("parent-directory (..) component"),
            c => comps.push(c),
        }
    }
    if comps.is_empty() {
        return Err("name has no components");
    }
    Ok(comps)
}

fn file_mode(rel: &Path, zip_mode: Option<u32>) -> u32 {
    let mut m = zip_mode.map_or(0o644, |m| m & 0o777);
    let in_bin = rel
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "bin");
    let is_sh = rel.extension().is_some_and(|e| e == "sh");
    if in_bin && is_sh {
        m |= 0o111;
    }
    m
}

fn dir_mode(zip_mode: Option<u32>) -> u32 {
    zip_mode.map_or(0o755, |m| (m & 0o777) | 0o700)
}

fn plan<R: Read + Seek>(
    archive: &ZipArchive<R>,
    zip: &Path,
    top: &str,
    limits: &UnpackLimits,
) -> Result<Plan> {
    let count = archive.len() as u64;
    if count > limits.max_entries {
        return Err(ExecError::ZipLimit {
            zip: zip.to_path_buf(),
            what: "entry count",
            limit: limits.max_entries,
            actual: count,
        });
    }
    let unsafe_entry = |entry: &str, reason: &str| ExecError::UnsafeEntry {
        zip: zip.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    if archive.has_duplicate_names() {
        // The zip reader keeps one of them; `unzip` would write both, the last one winning.
        return Err(ExecError::UnsafeEntry {
            zip: zip.to_path_buf(),
            entry: "(several)".into(),
            reason: "the central directory names one path twice".into(),
        });
    }
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    for index in 0..archive.len() {
        let e = archive
            .by_index_data(index)
            .map_err(|source| ExecError::Zip {
                zip: zip.to_path_buf(),
                entry: None,
                source,
            })?;
        let name = e.name().map_err(|source| ExecError::Zip {
            zip: zip.to_path_buf(),
            entry: Some(String::from_utf8_lossy(e.name_raw()).into_owned()),
            source,
        })?;
        let comps = sanitize_name(&name).map_err(|r| unsafe_entry(&name, r))?;
        if comps[0] != top {
            return Err(ExecError::UnexpectedTopDir {
                zip: zip.to_path_buf(),
                entry: name.into_owned(),
                expected: top.to_string(),
            });
        }
        if e.encrypted() {
            return Err(unsafe_entry(&name, "encrypted entry"));
        }
        if e.is_symlink() {
            return Err(unsafe_entry(
                &name,
                "symbolic link (symlink entries are always refused)",
            ));
        }
        // Only trust modes a unix zipper wrote; for DOS/Windows entries the zip crate makes
        // up 0664/0775, the rules below choose better defaults.
        let mode = if e.system() == zip::System::Unix {
            e.unix_mode()
        } else {
            None
        };
        let ftype = mode.map_or(0, |m| m & S_IFMT);
        if ftype != 0 && ftype != S_IFREG && ftype != S_IFDIR {
            return Err(unsafe_entry(&name, "special file (device, fifo or socket)"));
        }
        let rel: PathBuf = comps.iter().collect();
        if !seen.insert(rel.clone()) {
            return Err(unsafe_entry(&name, "duplicate entry"));
        }
        // Every ancestor is a directory.
        for k in 1..comps.len() {
            plan.dirs.entry(comps[..k].iter().collect()).or_insert(None);
        }
        if e.is_dir() || ftype == S_IFDIR {
            plan.dirs.insert(rel, mode);
            continue;
        }
        if comps.len() == 1 {
            return Err(unsafe_entry(&name, "the top directory is stored as a file"));
        }
        let size = e.size();
        if size > limits.max_entry_size {
            return Err(ExecError::ZipLimit {
                zip: zip.to_path_buf(),
                what: "entry size",
                limit: limits.max_entry_size,
                actual: size,
            });
        }
        plan.total = plan.total.saturating_add(size);
        if plan.total > limits.max_total_size {
            return Err(ExecError::ZipLimit {
                zip: zip.to_path_buf(),
                what: "total size",
                limit: limits.max_total_size,
                actual: plan.total,
            });
        }
        plan.files.push(PlannedFile {
            index,
            offset: e.header_start(),
            mode: file_mode(&rel, mode),
            rel,
            size,
            // Per-file syscalls cost about as much as a few KiB of data.
            weight: e.compressed_size() + 8192,
        });
    }
    // Extraction follows the zip's layout (and a download in progress).
    plan.files.sort_by_key(|f| f.offset);
    if plan.files.is_empty() && plan.dirs.is_empty() {
        return Err(ExecError::UnexpectedTopDir {
            zip: zip.to_path_buf(),
            entry: "(empty archive)".into(),
            expected: top.to_string(),
        });
    }
    for f in &plan.files {
        if plan.dirs.contains_key(&f.rel) {
            return Err(unsafe_entry(
                &f.rel.to_string_lossy(),
                "both a file and a directory",
            ));
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// extraction

/// Removes the staging wrapper on early return unless disarmed.
struct WrapperGuard(Option<PathBuf>);

impl Drop for WrapperGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Blocking body of [`stage`].
pub fn stage_blocking(
    source: &ZipSource,
    staging_root: &Path,
    expected_top_dir: &str,
    limits: &UnpackLimits,
) -> Result<StagedTree> {
    let zip = source.path();
    let top_ok = sanitize_name(expected_top_dir).is_ok_and(|c| c.len() == 1)
        && !expected_top_dir.contains('/');
    if !top_ok {
        return Err(ExecError::UnexpectedTopDir {
            zip: zip.to_path_buf(),
            entry: "(expected top directory is not a plain name)".into(),
            expected: expected_top_dir.to_string(),
        });
    }
    let reader = source.reader()?;
    let archive = ZipArchive::new(reader).map_err(|source| ExecError::Zip {
        zip: zip.to_path_buf(),
        entry: None,
        source,
    })?;
    let plan = plan(&archive, zip, expected_top_dir, limits)?;

    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(staging_root)
        .map_err(|e| ExecError::io("create staging root", staging_root, e))?;
    let wrapper = staging_root.join(format!("{STAGE_PREFIX}{:016x}", rand::random::<u64>()));
    DirBuilder::new()
        .mode(0o700)
        .create(&wrapper)
        .map_err(|e| ExecError::io("create staging directory", &wrapper, e))?;
    let mut guard = WrapperGuard(Some(wrapper.clone()));

    // Directories first (sorted, so parents precede children), then files in parallel.
    let mut plan = plan;
    plan.dirs
        .entry(PathBuf::from(expected_top_dir))
        .or_insert(None);
    // Final directory modes always include u+rwx, so directories can be created with them
    // (no chmod pass) unless the umask would strip some of their bits.
    let umask = current_umask();
    let mut chmod_dirs = Vec::new();
    for (d, zip_mode) in &plan.dirs {
        let p = wrapper.join(d);
        let mode = dir_mode(*zip_mode);
        DirBuilder::new()
            .mode(mode)
            .create(&p)
            .map_err(|e| ExecError::io("create directory", &p, e))?;
        if umask.is_none_or(|u| mode & u != 0) {
            chmod_dirs.push((p, mode));
        }
    }

    let bytes = extract_files(&archive, zip, &wrapper, &plan.files, limits.threads, umask)?;

    for (p, mode) in chmod_dirs {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ExecError::io("set directory mode", &p, e))?;
    }

    verify_tree(&wrapper, expected_top_dir, &plan)?;

    guard.0 = None;
    Ok(StagedTree {
        top: wrapper.join(expected_top_dir),
        wrapper,
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        bytes,
    })
}

fn extract_files(
    archive: &ZipArchive<PreadReader>,
    zip: &Path,
    wrapper: &Path,
    files: &[PlannedFile],
    threads: usize,
    umask: Option<u32>,
) -> Result<u64> {
    // Batches of neighbouring entries, taken in zip order by whichever thread is free.
    let mut batches = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (i, f) in files.iter().enumerate() {
        acc += f.weight;
        if acc >= BATCH_WEIGHT {
            batches.push(&files[start..=i]);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < files.len() {
        batches.push(&files[start..]);
    }
    let threads = threads.clamp(1, 16).min(batches.len().max(1));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let work = Work {
        zip,
        wrapper,
        batches: &batches,
        next: &next,
        stop: &stop,
        umask,
    };
    if threads == 1 {
        return work.run(archive.clone());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let ar = archive.clone();
                let work = &work;
                s.spawn(move || work.run(ar))
            })
            .collect();
        let mut bytes = 0;
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(b)) => bytes += b,
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(bytes),
        }
    })
}

/// The extraction threads' shared queue: batches in zip order, the next one to take, and a
/// flag that stops everyone after the first error.
struct Work<'a> {
    zip: &'a Path,
    wrapper: &'a Path,
    batches: &'a [&'a [PlannedFile]],
    next: &'a AtomicUsize,
    stop: &'a AtomicBool,
    umask: Option<u32>,
}

impl Work<'_> {
    fn run(&self, mut archive: ZipArchive<PreadReader>) -> Result<u64> {
        let mut buf = vec![0u8; COPY_BUF];
        let mut bytes = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(batch) = self.batches.get(self.next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            for f in *batch {
                match extract_one(
                    &mut archive,
                    self.zip,
                    self.wrapper,
                    f,
                    self.umask,
                    &mut buf,
                ) {
                    Ok(n) => bytes += n,
                    Err(e) => {
                        self.stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }
        Ok(bytes)
    }
}

fn extract_one(
    archive: &mut ZipArchive<PreadReader>,
    zip: &Path,
    wrapper: &Path,
    f: &PlannedFile,
    umask: Option<u32>,
    buf: &mut [u8],
) -> Result<u64> {
    let zip_err = |source| ExecError::Zip {
        zip: zip.to_path_buf(),
        entry: Some(f.rel.to_string_lossy().into_owned()),
        source,
    };
    let mut entry = archive.by_index(f.index).map_err(zip_err)?;
    let out_path = wrapper.join(&f.rel);
    // Created with its final mode when the umask cannot strip any of its bits (the common
    // case), which saves an fchmod per file. O_EXCL|O_NOFOLLOW: never through a link.
    let needs_chmod = umask.is_none_or(|u| f.mode & u != 0);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if needs_chmod { 0o600 } else { f.mode })
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&out_path)
        .map_err(|e| ExecError::io("create file", &out_path, e))?;
    let mut written = 0u64;
    loop {
        // The buffer is filled before it is written: the inflater hands out pieces of any
        // length, and a write that ends inside a page makes the kernel zero the rest of it
        // only for the next write to fill it again. It is written in WRITE_PIECEs.
        let mut n = 0;
        while n < buf.len() {
            match entry.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(got) => n += got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(zip_err(zip::result::ZipError::Io(e))),
            }
        }
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > f.size {
            return Err(ExecError::ZipLimit {
                zip: zip.to_path_buf(),
                what: "declared entry size",
                limit: f.size,
                actual: written,
            });
        }
        for piece in buf[..n].chunks(WRITE_PIECE) {
            out.write_all(piece)
                .map_err(|e| ExecError::io("write file", &out_path, e))?;
        }
        if n < buf.len() {
            break; // the entry ended
        }
    }
    if needs_chmod {
        out.set_permissions(std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| ExecError::io("set file mode", &out_path, e))?;
    }
    Ok(written)
}

/// The process umask, read without changing it (Linux ≥ 4.7 reports it in /proc).
fn current_umask() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
}

/// Walk the staged tree: exactly the planned dirs and files, nothing else, no links.
fn verify_tree(wrapper: &Path, top: &str, plan: &Plan) -> Result<()> {
    let mismatch = |reason: String| ExecError::StagedTreeMismatch {
        path: wrapper.to_path_buf(),
        reason,
    };
    let names: Vec<_> = std::fs::read_dir(wrapper)
        .map_err(|e| ExecError::io("list", wrapper, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| ExecError::io("list", wrapper, e))?;
    if names.len() != 1 || names[0] != top {
        return Err(mismatch(format!("expected only {top:?}, found {names:?}")));
    }
    let (mut files, mut dirs) = (0usize, 0usize);
    let mut stack = vec![wrapper.join(top)];
    while let Some(dir) = stack.pop() {
        dirs += 1;
        for ent in std::fs::read_dir(&dir).map_err(|e| ExecError::io("list", &dir, e))? {
            let ent = ent.map_err(|e| ExecError::io("list", &dir, e))?;
            let ft = ent
                .file_type()
                .map_err(|e| ExecError::io("stat", ent.path(), e))?;
            if ft.is_dir() {
                stack.push(ent.path());
            } else if ft.is_file() {
                files += 1;
            } else {
                return Err(mismatch(format!(
                    "{} is neither a file nor a directory",
                    ent.path().display()
                )));
            }
        }
    }
    if files != plan.files.len() || dirs != plan.dirs.len() {
        return Err(mismatch(format!(
            "found {files} files and {dirs} directories, planned {} and {}",
            plan.files.len(),
            plan.dirs.len()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// install

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

/// Blocking body of [`install_staged`].
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
    // The wrapper now holds the old tree (or nothing).
    let leftover = match std::fs::remove_dir_all(&staged.wrapper) {
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

// ---------------------------------------------------------------------------------------------
// reader

/// What a [`PreadReader`] reads from.
#[derive(Clone)]
enum Source {
    File(Arc<File>),
    /// Each clone is a reader of its own, so the download knows how far each thread is.
    Arriving(ArrivingReader),
}

impl Source {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        match self {
            Source::File(f) => f.read_at(buf, pos),
            Source::Arriving(a) => a.read_at(buf, pos),
        }
    }
}

/// A cloneable `Read + Seek` over a shared file (or a pack still arriving) using positioned
/// reads (`pread`), with a small read window. Clones have their own position and window, so
/// several threads can read one archive, sharing its parsed central directory.
struct PreadReader {
    source: Source,
    len: u64,
    pos: u64,
    window: Box<[u8]>,
    window_start: u64,
    window_len: usize,
}

impl PreadReader {
    fn new(source: Source, len: u64) -> Self {
        PreadReader {
            source,
            len,
            pos: 0,
            window: vec![0u8; READ_WINDOW].into_boxed_slice(),
            window_start: 0,
            window_len: 0,
        }
    }
}

impl Clone for PreadReader {
    fn clone(&self) -> Self {
        let mut c = PreadReader::new(self.source.clone(), self.len);
        c.pos = self.pos;
        c
    }
}

impl Read for PreadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let in_window =
            self.pos >= self.window_start && self.pos < self.window_start + self.window_len as u64;
        if !in_window {
            if out.len() >= self.window.len() {
                let n = self.source.read_at(out, self.pos)?;
                self.pos += n as u64;
                return Ok(n);
            }
            let n = self.source.read_at(&mut self.window, self.pos)?;
            self.window_start = self.pos;
            self.window_len = n;
            if n == 0 {
                return Ok(0);
            }
        }
        let off = (self.pos - self.window_start) as usize;
        let n = out.len().min(self.window_len - off);
        out[..n].copy_from_slice(&self.window[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PreadReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start of file",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("a/b/c.txt").unwrap(), vec!["a", "b", "c.txt"]);
        assert_eq!(sanitize_name("./a//b/").unwrap(), vec!["a", "b"]);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/..",
            "a\\b",
            "a\0b",
            ".",
            "./",
        ] {
            assert!(sanitize_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn modes_follow_the_rules() {
        assert_eq!(file_mode(Path::new("t/bin/x.sh"), None), 0o755);
        assert_eq!(file_mode(Path::new("t/bin/x.sh"), Some(0o100640)), 0o751);
        assert_eq!(file_mode(Path::new("t/x.sh"), None), 0o644);
        assert_eq!(file_mode(Path::new("t/bin/x.bat"), None), 0o644);
        assert_eq!(file_mode(Path::new("t/a"), Some(0o104755)), 0o755);
        assert_eq!(dir_mode(None), 0o755);
        assert_eq!(dir_mode(Some(0o040500)), 0o700);
    }

    #[test]
    fn digest_must_be_hex() {
        assert!(normalise_digest("zz").is_err());
        assert_eq!(normalise_digest(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    }

    #[test]
    fn pread_reader_reads_and_seeks_like_a_file() {
        let mut t = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        t.write_all(&data).unwrap();
        let len = t.metadata().unwrap().len();
        let mut r = PreadReader::new(Source::File(Arc::new(t)), len);
        let mut small = [0u8; 10];
        r.seek(SeekFrom::Start(1000)).unwrap();
        r.read_exact(&mut small).unwrap();
        assert_eq!(&small, &data[1000..1010]);
        let mut c = r.clone();
        let mut big = vec![0u8; 300_000];
        c.read_exact(&mut big).unwrap();
        assert_eq!(&big[..], &data[1010..301_010]);
        r.seek(SeekFrom::End(-5)).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(&rest[..], &data[data.len() - 5..]);
        assert!(r.seek(SeekFrom::Current(-1_000_000)).is_err());
    }
}
