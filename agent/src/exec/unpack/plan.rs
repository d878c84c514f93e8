//! Planning an extraction from the central directory alone, before anything is written: safe
//! names under the top directory, the final modes, the zip-bomb limits.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use super::UnpackLimits;
use crate::exec::error::{ExecError, Result};

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

#[derive(Debug)]
pub(super) struct PlannedFile {
    pub(super) index: usize,
    /// Where the entry's local header sits in the zip.
    pub(super) offset: u64,
    pub(super) rel: PathBuf,
    pub(super) mode: u32,
    pub(super) size: u64,
    pub(super) weight: u64,
}

#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) files: Vec<PlannedFile>,
    /// Relative dir path → explicit mode from the zip, if it had a dir entry with one.
    pub(super) dirs: BTreeMap<PathBuf, Option<u32>>,
    pub(super) total: u64,
}

/// Split an entry name into safe components, or say why it is unsafe.
pub(super) fn sanitize_name(name: &str) -> std::result::Result<Vec<&str>, &'static str> {
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

pub(super) fn dir_mode(zip_mode: Option<u32>) -> u32 {
    zip_mode.map_or(0o755, |m| (m & 0o777) | 0o700)
}

pub(super) fn plan<R: Read + Seek>(
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
}
