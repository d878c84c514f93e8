//! Seeding a shared folder (a file system several machines mount) from a node's own copy of
//! it, once: every file and folder the shared one lacks is copied in, nothing there is ever
//! overwritten (another machine may be seeding it at the same moment, and an operator's share
//! keeps its own files), and a marker says it was done.
//!
//! Each file is written under a temporary name and linked to its name with `link(2)`, which
//! fails when the name exists: a file appears whole or not at all, and the first writer wins.

use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::exec::error::{ExecError, Result};

/// The marker in a seeded folder.
pub const SEED_MARKER: &str = ".apimctl-seeded";
/// Prefix of the temporary files of a seeding.
const TEMP_PREFIX: &str = ".apimctl-seed-";

/// What a seeding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Files (and symlinks) copied in.
    pub copied: u64,
    /// Entries already there, kept as they were.
    pub kept: u64,
}

/// Whether `folder` was seeded (its marker is there).
pub fn is_seeded(folder: &Path) -> bool {
    folder.join(SEED_MARKER).exists()
}

/// Copies what `into` lacks of `from` (when `from` exists), each new entry given to `owner`
/// (uid, gid) when set, then writes the marker. Blocking.
pub fn seed(from: &Path, into: &Path, owner: Option<(u32, u32)>) -> Result<Seeded> {
    let mut done = Seeded::default();
    if let Some((uid, gid)) = owner {
        chown(into, uid, gid)?;
    }
    match std::fs::symlink_metadata(from) {
        Ok(m) if m.is_dir() => copy_dir(from, into, owner, &mut done)?,
        Ok(_) => {
            return Err(ExecError::io(
                "seed from",
                from,
                std::io::Error::other("not a directory"),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(ExecError::io("stat", from, e)),
    }
    let marker = into.join(SEED_MARKER);
    let _ = link_new(&marker, b"seeded by apimctl\n", 0o644, owner)?;
    Ok(done)
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| ExecError::io("chown", path, e))
}

fn copy_dir(from: &Path, into: &Path, owner: Option<(u32, u32)>, done: &mut Seeded) -> Result<()> {
    let rd = std::fs::read_dir(from).map_err(|e| ExecError::io("list", from, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| ExecError::io("list", from, e))?;
        let src = entry.path();
        let dst = into.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src).map_err(|e| ExecError::io("stat", &src, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            match std::fs::create_dir(&dst) {
                Ok(()) => {
                    std::fs::set_permissions(
                        &dst,
                        std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                    )
                    .map_err(|e| ExecError::io("chmod", &dst, e))?;
                    if let Some((uid, gid)) = owner {
                        chown(&dst, uid, gid)?;
                    }
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if !dst.is_dir() {
                        // Something else of that name is there: it stays, and so does its absence
                        // of this folder's content.
                        done.kept += 1;
                        continue;
                    }
                }
                Err(e) => return Err(ExecError::io("create", &dst, e)),
            }
            copy_dir(&src, &dst, owner, done)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(|e| ExecError::io("read link", &src, e))?;
            match std::os::unix::fs::symlink(&target, &dst) {
                Ok(()) => {
                    if let Some((uid, gid)) = owner {
                        chown(&dst, uid, gid)?;
                    }
                    done.copied += 1;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => done.kept += 1,
                Err(e) => return Err(ExecError::io("create link", &dst, e)),
            }
        } else if ft.is_file() {
            if dst.symlink_metadata().is_ok() {
                done.kept += 1;
                continue;
            }
            let bytes = std::fs::read(&src).map_err(|e| ExecError::io("read", &src, e))?;
            if link_new(&dst, &bytes, meta.mode() & 0o7777, owner)? {
                done.copied += 1;
            } else {
                done.kept += 1;
            }
        }
        // Devices, sockets, fifos: never part of a pack's folder; not copied.
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `dst` and links it to `dst` unless `dst` exists.
/// `Ok(false)`: it existed and was kept.
fn link_new(dst: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dst.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()
    };
    let result = write()
        .map_err(|e| ExecError::io("write", &tmp, e))
        .and_then(|()| match owner {
            Some((uid, gid)) => chown(&tmp, uid, gid),
            None => Ok(()),
        })
        .and_then(|()| match std::fs::hard_link(&tmp, dst) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(ExecError::io("link", dst, e)),
        });
    if let Err(e) = std::fs::remove_file(&tmp)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a temporary file of a seeding");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (p, c) in files {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
    }

    #[test]
    fn copies_what_is_missing_keeps_what_is_there_and_marks_it() {
        let d = tempfile::tempdir().unwrap();
        let (from, into) = (d.path().join("pack"), d.path().join("share"));
        tree(
            &from,
            &[
                ("conf/main.xml", "pack"),
                ("conf/items/a.xml", "pack a"),
                ("webapps/x.war", "war"),
            ],
        );
        std::fs::set_permissions(
            from.join("webapps/x.war"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        // The share already holds an operator's version of one file, and one of its own.
        tree(
            &into,
            &[
                ("conf/items/a.xml", "operator's a"),
                ("conf/items/b.xml", "operator's b"),
            ],
        );
        assert!(!is_seeded(&into));
        let done = seed(&from, &into, None).unwrap();
        assert_eq!(done, Seeded { copied: 2, kept: 1 });
        let read = |p: &str| std::fs::read_to_string(into.join(p)).unwrap();
        assert_eq!(read("conf/main.xml"), "pack");
        assert_eq!(read("conf/items/a.xml"), "operator's a");
        assert_eq!(read("conf/items/b.xml"), "operator's b");
        let mode = std::fs::metadata(into.join("webapps/x.war"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "the pack's mode");
        assert!(is_seeded(&into));
        let left: Vec<_> = walk(&into)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(TEMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
        // A second seeding (another machine's) changes nothing.
        std::fs::remove_file(into.join(SEED_MARKER)).unwrap();
        assert_eq!(
            seed(&from, &into, None).unwrap(),
            Seeded { copied: 0, kept: 3 }
        );
    }

    #[test]
    fn a_missing_pack_folder_seeds_nothing_but_the_marker() {
        let d = tempfile::tempdir().unwrap();
        let into = d.path().join("share");
        std::fs::create_dir(&into).unwrap();
        assert_eq!(
            seed(&d.path().join("none"), &into, None).unwrap(),
            Seeded::default()
        );
        assert!(is_seeded(&into));
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                v.extend(walk(&path));
            }
            v.push(path);
        }
        v
    }
}
