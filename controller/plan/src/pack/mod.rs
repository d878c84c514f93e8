//! A pack checked before anything is sent anywhere: [`inspect`] reads only a zip's central
//! directory and refuses what no product pack looks like — entries outside one top directory,
//! absolute paths, `..`, backslashes, symlinks and special files, encrypted or duplicate
//! entries, and more entries or bytes than [`PackLimits`] allow. `validate` runs it on local
//! packs, the controller on every upload and before a rollout; the agent keeps its own guards
//! (and enforces the declared sizes while inflating). [`config`] reads the configuration files
//! the renderer builds on.

pub mod config;

use std::collections::HashSet;
use std::io::{Read, Seek};

/// How big a pack may be (declared sizes, from the central directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Most entries (files and directories).
    pub max_entries: u64,
    /// Largest uncompressed size of one entry, bytes.
    pub max_entry_size: u64,
    /// Largest total uncompressed size, bytes.
    pub max_total_size: u64,
}

impl Default for PackLimits {
    /// The agent's own limits: generous for any product pack (the largest known has ~25k
    /// entries and ~1 GiB unpacked).
    fn default() -> Self {
        PackLimits {
            max_entries: 200_000,
            max_entry_size: 2 << 30,
            max_total_size: 8 << 30,
        }
    }
}

/// What a good pack holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// The one top directory every entry is under, e.g. `wso2am-3.2.0`.
    pub top_dir: String,
    /// Entries, files and directories.
    pub entries: u64,
    /// Total uncompressed size, bytes.
    pub total_size: u64,
}

pub use config::PackConfig;

use crate::catalogue::PackKind;

/// The configuration of the packs a render builds on, by kind. A kind missing here renders
/// without its base file, and the render says so ([`crate::render::NodeRender::base_file`]).
#[derive(Clone, Debug, Default)]
pub struct PackSet {
    packs: std::collections::BTreeMap<PackKind, std::sync::Arc<PackConfig>>,
}

impl PackSet {
    /// No packs: every node renders without its base file.
    pub fn none() -> Self {
        PackSet::default()
    }

    /// Adds (or replaces) a pack's configuration.
    pub fn insert(&mut self, kind: PackKind, config: std::sync::Arc<PackConfig>) {
        self.packs.insert(kind, config);
    }

    /// A pack's configuration, if read.
    pub fn get(&self, kind: PackKind) -> Option<&PackConfig> {
        self.packs.get(&kind).map(|c| c.as_ref())
    }
}

/// Why a pack is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackProblem {
    /// The central directory cannot be read (not a zip, truncated, corrupt).
    #[error("not a readable zip archive: {0}")]
    NotAZip(String),
    /// The archive has no entries.
    #[error("the archive is empty")]
    Empty,
    /// An entry's name or kind is unsafe to unpack.
    #[error("entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The entry's name as stored (escaped when shown).
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// Entries do not share one top directory.
    #[error("entry {entry:?} is outside the top directory {top:?}")]
    OutsideTop {
        /// The entry.
        entry: String,
        /// The first entry's top directory.
        top: String,
    },
    /// A limit is exceeded.
    #[error("{what} {actual} is over the limit of {limit}")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// What the pack declares.
        actual: u64,
    },
}

/// File-type bits of a unix mode.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// The components of a safe entry name, or why it is unsafe.
fn components(name: &str) -> Result<Vec<&str>, &'static str> {
    if name.contains('\0') {
        return Err("NUL byte in the name");
    }
    if name.contains('\\') {
        return Err("backslash in the name (a Windows path separator)");
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
        return Err("empty name");
    }
    Ok(comps)
}

/// Checks a pack's central directory against `limits` (see the module docs).
pub fn inspect<R: Read + Seek>(reader: R, limits: &PackLimits) -> Result<PackSummary, PackProblem> {
    inspect_with(reader, limits, true)
}

/// The guards of [`inspect`] without its one-top-directory rule: what the controller takes for
/// any artifact (a pack, or a jar such as a JDBC driver, which the agents never unpack). A pack
/// is held to [`inspect`] where it is used. `top_dir` is empty.
pub fn inspect_archive<R: Read + Seek>(
    reader: R,
    limits: &PackLimits,
) -> Result<PackSummary, PackProblem> {
    inspect_with(reader, limits, false)
}

fn inspect_with<R: Read + Seek>(
    reader: R,
    limits: &PackLimits,
    single_top: bool,
) -> Result<PackSummary, PackProblem> {
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| PackProblem::NotAZip(e.to_string()))?;
    let entries = archive.len() as u64;
    if entries == 0 {
        return Err(PackProblem::Empty);
    }
    if entries > limits.max_entries {
        return Err(PackProblem::Limit {
            what: "entry count",
            limit: limits.max_entries,
            actual: entries,
        });
    }
    let mut top: Option<String> = None;
    let mut seen = HashSet::new();
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let e = archive
            .by_index_raw(i)
            .map_err(|e| PackProblem::NotAZip(e.to_string()))?;
        let name = String::from_utf8_lossy(e.name_raw()).into_owned();
        let unsafe_entry = |reason| PackProblem::UnsafeEntry {
            entry: name.clone(),
            reason,
        };
        let comps = components(&name).map_err(unsafe_entry)?;
        match &top {
            _ if !single_top => {}
            None => top = Some(comps[0].to_string()),
            Some(t) if t != comps[0] => {
                return Err(PackProblem::OutsideTop {
                    entry: name,
                    top: t.clone(),
                });
            }
            Some(_) => {}
        }
        if e.encrypted() {
            return Err(unsafe_entry("encrypted entry"));
        }
        if e.is_symlink() {
            return Err(unsafe_entry("symbolic link"));
        }
        let kind = e.unix_mode().map_or(0, |m| m & S_IFMT);
        if e.system() == zip::System::Unix && kind != 0 && kind != S_IFREG && kind != S_IFDIR {
            return Err(unsafe_entry("special file (device, fifo or socket)"));
        }
        if !seen.insert(comps.join("/")) {
            return Err(unsafe_entry("duplicate entry"));
        }
        if e.size() > limits.max_entry_size {
            return Err(PackProblem::Limit {
                what: "entry size",
                limit: limits.max_entry_size,
                actual: e.size(),
            });
        }
        total = total.saturating_add(e.size());
        if total > limits.max_total_size {
            return Err(PackProblem::Limit {
                what: "total size",
                limit: limits.max_total_size,
                actual: total,
            });
        }
    }
    Ok(PackSummary {
        top_dir: top.unwrap_or_default(),
        entries,
        total_size: total,
    })
}

/// Checks the pack file at `path`.
pub fn inspect_file(
    path: &std::path::Path,
    limits: &PackLimits,
) -> Result<PackSummary, PackProblem> {
    let f = std::fs::File::open(path).map_err(|e| PackProblem::NotAZip(e.to_string()))?;
    inspect(std::io::BufReader::new(f), limits)
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use zip::write::SimpleFileOptions;

    use super::*;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn check(bytes: Vec<u8>) -> Result<PackSummary, PackProblem> {
        inspect(Cursor::new(bytes), &PackLimits::default())
    }

    #[test]
    fn a_good_pack_has_one_top_directory() {
        let s = check(zip_of(&[
            ("wso2am-3.2.0/bin/wso2server.sh", b"#!/bin/sh"),
            ("wso2am-3.2.0/repository/conf/deployment.toml", b"[server]"),
        ]))
        .unwrap();
        assert_eq!(
            (s.top_dir.as_str(), s.entries, s.total_size),
            ("wso2am-3.2.0", 2, 17)
        );
    }

    #[test]
    fn unsafe_entries_are_refused_by_name() {
        for (name, why) in [
            ("../etc/passwd", "parent-directory"),
            ("/etc/passwd", "absolute"),
            ("top/..\\..\\x", "backslash"),
            ("top/a/../../x", "parent-directory"),
        ] {
            let e = check(zip_of(&[(name, b"x")])).unwrap_err();
            assert!(e.to_string().contains(why), "{name}: {e}");
        }
        let e = check(zip_of(&[("a/x", b"1"), ("b/y", b"2")])).unwrap_err();
        assert!(matches!(e, PackProblem::OutsideTop { .. }), "{e}");
        let e = check(b"this is not a zip".to_vec()).unwrap_err();
        assert!(matches!(e, PackProblem::NotAZip(_)), "{e}");
    }

    #[test]
    fn symlinks_and_limits_are_refused() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.add_symlink("top/link", "/etc/shadow", SimpleFileOptions::default())
            .unwrap();
        let e = check(w.finish().unwrap().into_inner()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let limits = PackLimits {
            max_entries: 1,
            ..PackLimits::default()
        };
        let two = zip_of(&[("top/a", b"1"), ("top/b", b"2")]);
        let e = inspect(Cursor::new(two), &limits).unwrap_err();
        assert_eq!(e.to_string(), "entry count 2 is over the limit of 1");
        let limits = PackLimits {
            max_total_size: 3,
            ..PackLimits::default()
        };
        let e = inspect(Cursor::new(zip_of(&[("top/a", b"1234")])), &limits).unwrap_err();
        assert!(
            matches!(
                e,
                PackProblem::Limit {
                    what: "entry size" | "total size",
                    ..
                }
            ),
            "{e}"
        );
    }
}
