//! Extraction: the planned directories, then the files on a few threads in zip order (right
//! behind a download in progress), then a walk of the staged tree against the plan.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use zip::ZipArchive;

use super::plan::{Plan, PlannedFile, dir_mode, plan, sanitize_name};
use super::reader::PreadReader;
use super::{STAGE_PREFIX, StagedTree, UnpackLimits, ZipSource};
use crate::exec::error::{ExecError, Result};

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

/// Removes the staging wrapper on early return unless disarmed.
struct WrapperGuard(Option<PathBuf>);

impl Drop for WrapperGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Runs every guard of the central directory (names, kinds, top directory, limits) on the
/// zip at `zip` and writes nothing: a pack staged for later is known to unpack now.
pub fn check_blocking(zip: &Path, expected_top_dir: &str, limits: &UnpackLimits) -> Result<()> {
    let source = ZipSource::File(zip.to_path_buf());
    check_top(zip, expected_top_dir)?;
    let archive = ZipArchive::new(source.reader()?).map_err(|source| ExecError::Zip {
        zip: zip.to_path_buf(),
        entry: None,
        source,
    })?;
    plan(&archive, zip, expected_top_dir, limits).map(drop)
}

fn check_top(zip: &Path, expected_top_dir: &str) -> Result<()> {
    let top_ok = sanitize_name(expected_top_dir).is_ok_and(|c| c.len() == 1)
        && !expected_top_dir.contains('/');
    if top_ok {
        Ok(())
    } else {
        Err(ExecError::UnexpectedTopDir {
            zip: zip.to_path_buf(),
            entry: "(expected top directory is not a plain name)".into(),
            expected: expected_top_dir.to_string(),
        })
    }
}

/// Blocking body of [`super::stage`].
pub fn stage_blocking(
    source: &ZipSource,
    staging_root: &Path,
    expected_top_dir: &str,
    limits: &UnpackLimits,
) -> Result<StagedTree> {
    let zip = source.path();
    check_top(zip, expected_top_dir)?;
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
                Err(e) => return Err(corrupt(zip, f, &e)),
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

/// A read error while inflating an entry, said plainly: the zip reader's own words ("File is
/// larger than its declared uncompressed size") point at the wrong thing.
fn corrupt(zip: &Path, f: &PlannedFile, e: &io::Error) -> ExecError {
    let text = e.to_string();
    let reason = if text.contains("larger than its declared") {
        format!(
            "inflates to more than the {} bytes the archive declares (damaged or forged data)",
            f.size
        )
    } else if text.to_lowercase().contains("checksum") || text.to_lowercase().contains("crc") {
        "fails its CRC-32 check (damaged data)".to_owned()
    } else {
        format!("cannot be inflated (damaged data: {text})")
    };
    ExecError::CorruptEntry {
        zip: zip.to_path_buf(),
        entry: f.rel.to_string_lossy().into_owned(),
        reason,
    }
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
