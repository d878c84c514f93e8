//! Folders kept alike on several machines: what is in them now (regular files by sha256), and
//! writing or deleting one file in them as the group says. Generic: the spec names the folders.
//!
//! Paths are relative to a base folder (the node's home), `/`-separated, and must lie inside one
//! of the synchronised folders; nothing is followed through a symlink (a symlink in the tree is
//! neither read nor replaced), and our own atomic-write temp files are never taken for content.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The largest file synchronised; larger ones stay local (and are logged).
pub const MAX_FILE_BYTES: u64 = 2 << 20;

/// What identifies a file's content without reading it: size, mtime (ns) and inode.
type Stamp = (u64, i128, u64);

/// The files under a set of folders, by relative path, with their sha256; hashes are reused
/// while a file's size, mtime and inode stay the same.
#[derive(Debug, Default)]
pub struct Scanner {
    seen: BTreeMap<String, (Stamp, String)>,
    /// Files over [`MAX_FILE_BYTES`] found in the last scan (not synchronised).
    pub too_big: Vec<String>,
}

impl Scanner {
    /// Every regular file under `dirs` (relative to `base`; a missing folder holds nothing), by
    /// path relative to `base`, with its sha256.
    pub fn scan(&mut self, base: &Path, dirs: &[String]) -> io::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut seen = BTreeMap::new();
        self.too_big.clear();
        for d in dirs {
            let mut stack = vec![d.clone()];
            while let Some(rel) = stack.pop() {
                let entries = match std::fs::read_dir(base.join(&rel)) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                        continue; // not UTF-8: cannot travel as a path
                    };
                    if name.contains(".apimctl-tmp.") {
                        continue;
                    }
                    let path = format!("{rel}/{name}");
                    let meta = match std::fs::symlink_metadata(entry.path()) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    if meta.is_dir() {
                        stack.push(path);
                    } else if meta.is_file() {
                        if meta.len() > MAX_FILE_BYTES {
                            self.too_big.push(path);
                            continue;
                        }
                        let stamp: Stamp = (
                            meta.len(),
                            i128::from(meta.mtime()) * 1_000_000_000
                                + i128::from(meta.mtime_nsec()),
                            meta.ino(),
                        );
                        let sha = match self.seen.get(&path) {
                            Some((s, sha)) if *s == stamp => sha.clone(),
                            _ => match std::fs::read(entry.path()) {
                                Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
                                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                                Err(e) => return Err(e),
                            },
                        };
                        seen.insert(path.clone(), (stamp, sha.clone()));
                        out.insert(path, sha);
                    }
                }
            }
        }
        self.seen = seen;
        Ok(out)
    }
}

/// Whether `path` is a plain relative path inside one of `dirs` (the contract's rule).
pub use apim_proto::shared_paths::inside;

/// The file at `rel` under `base`, its bytes, when it is a regular file (not through a
/// symlink).
pub fn read(base: &Path, rel: &str) -> io::Result<Option<Vec<u8>>> {
    let path = base.join(rel);
    no_symlink_on_the_way(base, rel)?;
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => std::fs::read(&path).map(Some),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` at `rel` under `base` atomically (0644, `owner` when given), creating missing
/// folders (0755, the same owner).
pub fn write(base: &Path, rel: &str, bytes: &[u8], owner: Option<(u32, u32)>) -> io::Result<()> {
    no_symlink_on_the_way(base, rel)?;
    let path = base.join(rel);
    create_dirs_owned(apim_atomic::parent_dir(&path), owner)?;
    let mut w = apim_atomic::AtomicWriter::new(0o644);
    if let Some((uid, gid)) = owner {
        w = w.owner(uid, gid);
    }
    w.write(&path, bytes).map(|_| ()).map_err(io::Error::other)
}

/// Deletes the regular file at `rel` under `base` (nothing when it is not there).
pub fn delete(base: &Path, rel: &str) -> io::Result<()> {
    no_symlink_on_the_way(base, rel)?;
    let path = base.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => Err(io::Error::other(format!(
            "{} is a folder, not a file",
            path.display()
        ))),
        Ok(_) => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Refuses a path whose folders (below `base`) include a symlink: a planted link must not
/// carry a write or delete out of the tree.
fn no_symlink_on_the_way(base: &Path, rel: &str) -> io::Result<()> {
    let mut p = base.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is a symlink: not followed",
                    p.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents, each new folder given to `owner` (when set).
pub fn create_dirs_owned(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut missing: Vec<&Path> = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.exists()) {
        missing.push(p);
        d = p.parent();
    }
    for p in missing.iter().rev() {
        match std::fs::create_dir(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Vec<String> {
        vec!["r/syn".into(), "r/plans".into()]
    }

    #[test]
    fn a_scan_lists_regular_files_only_and_rehashes_only_what_changed() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path();
        write(b, "r/syn/default/api/a.xml", b"a", None).unwrap();
        write(b, "r/plans/p.siddhiql", b"p", None).unwrap();
        std::fs::create_dir_all(b.join("r/other")).unwrap();
        std::fs::write(b.join("r/other/x"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", b.join("r/syn/link")).unwrap();
        std::fs::write(b.join("r/syn/.a.apimctl-tmp.0011223344556677"), b"t").unwrap();
        let mut s = Scanner::default();
        let got = s.scan(b, &dirs()).unwrap();
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(names, ["r/plans/p.siddhiql", "r/syn/default/api/a.xml"]);
        assert_eq!(
            got["r/syn/default/api/a.xml"],
            hex::encode(Sha256::digest(b"a"))
        );
        write(b, "r/syn/default/api/a.xml", b"changed", None).unwrap();
        let again = s.scan(b, &dirs()).unwrap();
        assert_eq!(
            again["r/syn/default/api/a.xml"],
            hex::encode(Sha256::digest(b"changed"))
        );
        std::fs::write(b.join("r/syn/big"), vec![0u8; MAX_FILE_BYTES as usize + 1]).unwrap();
        let with_big = s.scan(b, &dirs()).unwrap();
        assert!(!with_big.contains_key("r/syn/big"));
        assert_eq!(s.too_big, ["r/syn/big"]);
    }

    #[test]
    fn paths_must_be_plain_and_inside_and_no_symlink_is_followed() {
        assert!(inside(&dirs(), "r/syn/a"));
        for bad in [
            "r/syn",
            "r/synx/a",
            "r/syn/../x",
            "/r/syn/a",
            "r/syn//a",
            "r/plans/\n",
        ] {
            assert!(!inside(&dirs(), bad), "{bad:?}");
        }
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("r")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("r/syn")).unwrap();
        assert!(write(t.path(), "r/syn/a", b"x", None).is_err());
        assert!(delete(t.path(), "r/syn/a").is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        write(t.path(), "r/plans/a", b"x", None).unwrap();
        delete(t.path(), "r/plans/a").unwrap();
        delete(t.path(), "r/plans/a").unwrap();
        assert_eq!(read(t.path(), "r/plans/a").unwrap(), None);
    }
}
