//! The `/etc/hosts` managed block.
//!
//! The agent owns exactly the lines between [`BEGIN_MARKER`] and [`END_MARKER`]; every other
//! byte of the file is someone else's (cloud-init, the operator, a container runtime) and is
//! kept as it was: comments, foreign lines, CRLF line endings, a missing trailing newline,
//! even bytes that are not UTF-8.
//!
//! * [`render_block`] renders the block for a list of entries (what `apimctl render` shows).
//! * [`splice`] is the pure edit: old file bytes + entries → new file bytes.
//! * [`apply`] / [`HostsFile::apply`] read the file, splice, and write only when the bytes
//!   differ ([`HostsChange::Unchanged`] means no write happened at all). The write is atomic
//!   (temp file + rename, keeping the file's mode and owner), falling back to an in-place
//!   rewrite when the rename fails with `EBUSY`/`EXDEV` — the case of a bind-mounted
//!   `/etc/hosts` in a container (moby#28187). The rename goes through
//!   [`apim_atomic::FileOps`] so tests can force that path.
//!
//! Placement rules, chosen so that "apply then remove" gives back the original bytes:
//! a new block is appended at the end; if the file did not end with a newline, one line
//! terminator is inserted before the block and the block itself then ends without one
//! (the file still "has no trailing newline"). Removing a block that ends the file without a
//! terminator removes that inserted terminator too. An existing block is replaced where it
//! stands, keeping its own line-ending style and the terminator after its END line.
//! A damaged block (BEGIN without END, END first, two blocks) is an error: the agent never
//! guesses which lines are its own.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exec::drift::KeyDiff;
use crate::exec::error::{ExecError, Result};
use apim_atomic::{AtomicWriter, FileOps, RealFileOps, WriteMethod};

/// First line of the managed block.
pub const BEGIN_MARKER: &str = "# BEGIN apimctl managed block (do not edit)";
/// Last line of the managed block.
pub const END_MARKER: &str = "# END apimctl managed block";

/// The production hosts file.
pub const DEFAULT_HOSTS_PATH: &str = "/etc/hosts";

/// One line of the block: an address and the names that resolve to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsEntry {
    /// The address.
    pub ip: IpAddr,
    /// Host names for it, first one canonical (as in `hosts(5)`).
    pub names: Vec<String>,
}

impl HostsEntry {
    /// Convenience constructor.
    pub fn new(ip: IpAddr, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        HostsEntry {
            ip,
            names: names.into_iter().map(Into::into).collect(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| ExecError::InvalidHostsEntry {
            entry: format!("{} {}", self.ip, self.names.join(" ")),
            reason,
        };
        if self.names.is_empty() {
            return Err(bad("no host names".into()));
        }
        for n in &self.names {
            if n.is_empty() || n.len() > 253 {
                return Err(bad(format!("host name {n:?} must be 1..=253 characters")));
            }
            if n.starts_with(['-', '.']) {
                return Err(bad(format!(
                    "host name {n:?} must not start with '-' or '.'"
                )));
            }
            if let Some(c) = n
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
            {
                return Err(bad(format!("host name {n:?} contains {c:?}")));
            }
        }
        Ok(())
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostsChange {
    /// The file already had exactly this block; nothing was written.
    Unchanged,
    /// The file was rewritten, by rename or in place.
    Changed(WriteMethod),
}

/// Render the managed block with `\n` line endings, markers included, ending with a newline.
/// No entries render as the empty string: an empty block is never written, it is removed.
pub fn render_block(entries: &[HostsEntry]) -> Result<String> {
    Ok(block_lines(entries)?
        .iter()
        .map(|l| format!("{l}\n"))
        .collect())
}

fn block_lines(entries: &[HostsEntry]) -> Result<Vec<String>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut lines = Vec::with_capacity(entries.len() + 2);
    lines.push(BEGIN_MARKER.to_string());
    for e in entries {
        e.validate()?;
        lines.push(format!("{} {}", e.ip, e.names.join(" ")));
    }
    lines.push(END_MARKER.to_string());
    Ok(lines)
}

/// One physical line: `[start, content_end)` is the text, `[content_end, end)` its terminator
/// (`""`, `"\n"` or `"\r\n"`).
struct Line {
    start: usize,
    content_end: usize,
    end: usize,
}

fn split_lines(b: &[u8]) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < b.len() {
        match b[start..].iter().position(|&c| c == b'\n') {
            Some(i) => {
                let nl = start + i;
                let content_end = if nl > start && b[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                out.push(Line {
                    start,
                    content_end,
                    end: nl + 1,
                });
                start = nl + 1;
            }
            None => {
                out.push(Line {
                    start,
                    content_end: b.len(),
                    end: b.len(),
                });
                start = b.len();
            }
        }
    }
    out
}

fn is_marker(content: &[u8], marker: &str) -> bool {
    content.trim_ascii_end() == marker.as_bytes()
}

/// Where the current block sits: `(begin line, end line)` indices.
fn find_block(lines: &[Line], b: &[u8]) -> std::result::Result<Option<(usize, usize)>, String> {
    let begins: Vec<usize> = (0..lines.len())
        .filter(|&i| is_marker(&b[lines[i].start..lines[i].content_end], BEGIN_MARKER))
        .collect();
    let ends: Vec<usize> = (0..lines.len())
        .filter(|&i| is_marker(&b[lines[i].start..lines[i].content_end], END_MARKER))
        .collect();
    match (begins.as_slice(), ends.as_slice()) {
        ([], []) => Ok(None),
        ([b], [e]) if b < e => Ok(Some((*b, *e))),
        ([_], [_]) => Err("the END marker comes before the BEGIN marker".into()),
        ([], _) => Err("END marker without a BEGIN marker".into()),
        (_, []) => Err("BEGIN marker without an END marker".into()),
        _ => Err(format!(
            "{} BEGIN and {} END markers; expected one block",
            begins.len(),
            ends.len()
        )),
    }
}

/// The pure edit: `existing` file bytes with the block set to `entries` (removed when empty).
pub fn splice(existing: &[u8], entries: &[HostsEntry]) -> Result<Vec<u8>, SpliceError> {
    let new_lines = block_lines(entries).map_err(SpliceError::Entry)?;
    let lines = split_lines(existing);
    let block = find_block(&lines, existing).map_err(SpliceError::Corrupt)?;

    let render = |eol: &[u8], last_term: &[u8]| -> Vec<u8> {
        let mut v = Vec::new();
        for (i, l) in new_lines.iter().enumerate() {
            v.extend_from_slice(l.as_bytes());
            v.extend_from_slice(if i + 1 == new_lines.len() {
                last_term
            } else {
                eol
            });
        }
        v
    };

    let mut out = Vec::with_capacity(existing.len() + 256);
    match block {
        Some((bi, ei)) => {
            let begin = &lines[bi];
            let end = &lines[ei];
            let eol = &existing[begin.content_end..begin.end];
            let end_term = &existing[end.content_end..end.end];
            let mut prefix_end = begin.start;
            if new_lines.is_empty() && end_term.is_empty() && begin.start > 0 {
                // The block ends the file without a terminator: the terminator before it was
                // inserted when the block was appended; take it away again.
                if eol == b"\r\n" && existing[..begin.start].ends_with(b"\r\n") {
                    prefix_end -= 2;
                } else if existing[..begin.start].ends_with(b"\n") {
                    prefix_end -= 1;
                }
            }
            out.extend_from_slice(&existing[..prefix_end]);
            out.extend_from_slice(&render(eol, end_term));
            out.extend_from_slice(&existing[end.end..]);
        }
        None => {
            out.extend_from_slice(existing);
            if new_lines.is_empty() {
                return Ok(out);
            }
            let eol: &[u8] = match lines.first() {
                Some(l) if l.end - l.content_end == 2 => b"\r\n",
                _ => b"\n",
            };
            if existing.is_empty() || existing.ends_with(b"\n") {
                out.extend_from_slice(&render(eol, eol));
            } else {
                out.extend_from_slice(eol);
                out.extend_from_slice(&render(eol, b""));
            }
        }
    }
    Ok(out)
}

/// How the managed block on disk differs from the one the entries render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockDrift {
    /// The entries want a block and the file has none.
    Missing,
    /// The markers are damaged; the text says how.
    Damaged(String),
    /// The block differs: host names on disk and not in the entries (added), in the entries
    /// and not on disk (removed), on both with another address (changed). No names: only
    /// spacing, order or comments differ.
    Changed(KeyDiff),
}

/// The managed block of `existing` against `entries`: `None` when it is exactly what
/// [`splice`] writes (nothing outside the block counts).
pub fn block_drift(existing: &[u8], entries: &[HostsEntry]) -> Option<BlockDrift> {
    match splice(existing, entries) {
        Ok(same) if same == existing => return None,
        Ok(_) => {}
        Err(SpliceError::Corrupt(reason)) => return Some(BlockDrift::Damaged(reason)),
        // Entries are checked when the spec is accepted; one that is not valid cannot be
        // compared either.
        Err(SpliceError::Entry(e)) => return Some(BlockDrift::Damaged(e.to_string())),
    }
    let lines = split_lines(existing);
    // No block where the entries want one (no entries and no block is no drift: see above).
    let Ok(Some((begin, end))) = find_block(&lines, existing) else {
        return Some(BlockDrift::Missing);
    };
    let mut on_disk: BTreeMap<String, String> = BTreeMap::new();
    for l in &lines[begin + 1..end] {
        let text = String::from_utf8_lossy(&existing[l.start..l.content_end]);
        let text = text.split('#').next().unwrap_or_default();
        let mut words = text.split_whitespace();
        if let Some(ip) = words.next() {
            for name in words {
                on_disk
                    .entry(name.to_owned())
                    .or_insert_with(|| ip.to_owned());
            }
        }
    }
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for e in entries {
        for n in &e.names {
            wanted.entry(n.clone()).or_insert_with(|| e.ip.to_string());
        }
    }
    let added = on_disk
        .keys()
        .filter(|n| !wanted.contains_key(*n))
        .cloned()
        .collect();
    let removed = wanted
        .keys()
        .filter(|n| !on_disk.contains_key(*n))
        .cloned()
        .collect();
    let changed = wanted
        .iter()
        .filter(|(n, ip)| on_disk.get(*n).is_some_and(|d| d != *ip))
        .map(|(n, _)| n.clone())
        .collect();
    Some(BlockDrift::Changed(KeyDiff::capped(
        added, removed, changed,
    )))
}

/// Why [`splice`] refused.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The existing block is damaged; the text says how.
    #[error("damaged apimctl block: {0}")]
    Corrupt(String),
    /// An entry is invalid.
    #[error(transparent)]
    Entry(ExecError),
}

/// A hosts file with its filesystem seam.
pub struct HostsFile<'a> {
    path: PathBuf,
    ops: &'a dyn FileOps,
}

impl std::fmt::Debug for HostsFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostsFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HostsFile<'static> {
    /// The hosts file at `path` (production: [`DEFAULT_HOSTS_PATH`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        HostsFile {
            path: path.into(),
            ops: &RealFileOps,
        }
    }
}

impl<'a> HostsFile<'a> {
    /// Use these filesystem calls (test seam: make `rename` fail with `EBUSY`).
    pub fn with_file_ops<'b>(self, ops: &'b dyn FileOps) -> HostsFile<'b> {
        HostsFile {
            path: self.path,
            ops,
        }
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make the managed block list exactly `entries` (none: remove the block).
    pub fn apply(&self, entries: &[HostsEntry]) -> Result<HostsChange> {
        let (existing, mode, owner) = match std::fs::read(&self.path) {
            Ok(b) => {
                let md = std::fs::metadata(&self.path)
                    .map_err(|e| ExecError::io("stat hosts file", &self.path, e))?;
                (b, md.mode() & 0o7777, Some((md.uid(), md.gid())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), 0o644, None),
            Err(e) => return Err(ExecError::io("read hosts file", &self.path, e)),
        };
        let new = splice(&existing, entries).map_err(|e| match e {
            SpliceError::Corrupt(reason) => ExecError::HostsCorrupt {
                path: self.path.clone(),
                reason,
            },
            SpliceError::Entry(e) => e,
        })?;
        if new == existing {
            return Ok(HostsChange::Unchanged);
        }
        let mut w = AtomicWriter::new(mode)
            .in_place_fallback(true)
            .file_ops(self.ops);
        if let Some((uid, gid)) = owner {
            w = w.owner(uid, gid);
        }
        let method = w.write(&self.path, &new)?;
        tracing::info!(path = %self.path.display(), entries = entries.len(), ?method, "hosts block updated");
        Ok(HostsChange::Changed(method))
    }
}

/// Make the managed block of the hosts file at `path` list exactly `entries`.
pub fn apply(path: &Path, entries: &[HostsEntry]) -> Result<HostsChange> {
    HostsFile::new(path).apply(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(ip: &str, names: &[&str]) -> HostsEntry {
        HostsEntry::new(ip.parse().unwrap(), names.iter().copied())
    }

    #[test]
    fn render_lists_entries_between_markers() {
        let s =
            render_block(&[e("10.0.0.11", &["km.example.com"]), e("::1", &["a", "b"])]).unwrap();
        assert_eq!(
            s,
            format!("{BEGIN_MARKER}\n10.0.0.11 km.example.com\n::1 a b\n{END_MARKER}\n")
        );
        assert_eq!(render_block(&[]).unwrap(), "");
    }

    #[test]
    fn injection_is_refused() {
        for bad in ["a\nb", "a b", "-x", "a#b", ""] {
            assert!(
                render_block(&[e("10.0.0.1", &[bad])]).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(render_block(&[e("10.0.0.1", &[])]).is_err());
    }

    #[test]
    fn crlf_file_gets_crlf_block_and_keeps_missing_newline() {
        let orig = b"127.0.0.1 localhost\r\n# c\r\nlast";
        let out = splice(orig, &[e("10.0.0.5", &["db"])]).unwrap();
        let expect = format!(
            "127.0.0.1 localhost\r\n# c\r\nlast\r\n{BEGIN_MARKER}\r\n10.0.0.5 db\r\n{END_MARKER}"
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expect);
        assert_eq!(splice(&out, &[]).unwrap(), orig);
    }

    #[test]
    fn block_in_the_middle_is_replaced_in_place() {
        let orig = format!("a\n{BEGIN_MARKER}\n1.2.3.4 old\n{END_MARKER}\nz\n");
        let out = splice(orig.as_bytes(), &[e("5.6.7.8", &["new"])]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("a\n{BEGIN_MARKER}\n5.6.7.8 new\n{END_MARKER}\nz\n")
        );
        let removed = splice(orig.as_bytes(), &[]).unwrap();
        assert_eq!(removed, b"a\nz\n");
    }

    #[test]
    fn block_drift_names_hosts_never_touches_foreign_lines() {
        let want = [e("10.0.0.1", &["km-1", "km"]), e("10.0.0.2", &["gw-1"])];
        let good = splice(b"127.0.0.1 localhost\n", &want).unwrap();
        assert_eq!(block_drift(&good, &want), None);
        // A foreign line added outside the block is not drift.
        let mut foreign = good.clone();
        foreign.extend_from_slice(b"10.9.9.9 mine\n");
        assert_eq!(block_drift(&foreign, &want), None);
        // Inside the block: a name moved, one added, one gone.
        let edited = String::from_utf8(good.clone())
            .unwrap()
            .replace("10.0.0.2 gw-1", "10.0.0.3 gw-1 extra");
        let edited = edited.replace(" km\n", "\n");
        match block_drift(edited.as_bytes(), &want) {
            Some(BlockDrift::Changed(k)) => {
                assert_eq!(k.added, vec!["extra"]);
                assert_eq!(k.removed, vec!["km"]);
                assert_eq!(k.changed, vec!["gw-1"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            block_drift(b"127.0.0.1 localhost\n", &want),
            Some(BlockDrift::Missing)
        );
        assert!(matches!(
            block_drift(format!("{BEGIN_MARKER}\n").as_bytes(), &want),
            Some(BlockDrift::Damaged(_))
        ));
        // A block left though the spec wants none: its names are extra.
        match block_drift(&good, &[]) {
            Some(BlockDrift::Changed(k)) => assert_eq!(k.added, vec!["gw-1", "km", "km-1"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damaged_blocks_are_refused() {
        let cases = [
            format!("{BEGIN_MARKER}\nx\n"),
            format!("{END_MARKER}\n{BEGIN_MARKER}\n"),
            format!("{END_MARKER}\n"),
            format!("{BEGIN_MARKER}\n{END_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n"),
        ];
        for c in cases {
            assert!(
                matches!(splice(c.as_bytes(), &[]), Err(SpliceError::Corrupt(_))),
                "{c:?}"
            );
        }
    }
}

/// The address `name` has in the hosts file at `path` (the first line naming it), if any. The
/// agent connects to a plan's hosts by the file it keeps, which is what the servers on the
/// machine resolve too (its own process may run with another resolver configuration).
pub fn lookup(path: &Path, name: &str) -> Option<IpAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let ip: IpAddr = words.next()?.parse().ok()?;
        words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
    })
}

#[cfg(test)]
mod lookup_tests {
    use super::*;

    #[test]
    fn names_resolve_by_the_first_line_that_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        std::fs::write(
            &p,
            "127.0.0.1 localhost\n# 10.0.0.9 db.example.com\n10.0.0.5 km db.example.com # x\n10.0.0.6 db.example.com\n",
        )
        .unwrap();
        assert_eq!(
            lookup(&p, "DB.example.com"),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(lookup(&p, "gw"), None);
        assert_eq!(lookup(&dir.path().join("none"), "km"), None);
    }
}
