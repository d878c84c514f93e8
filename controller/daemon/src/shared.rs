//! Files several controllers must hold alike (the control-plane CA, the product PKIs), kept in
//! the PostgreSQL store sealed with the store key ([`crate::store::KEY_FILE`]): whoever reads
//! the database without that file gets no private key.
//!
//! A controller pulls them into its data directory before it uses them and pushes what it
//! created; the first to create a file wins ([`adopt`]), so two controllers started together
//! end with one CA.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use crate::store::{Engine, Store, StoreError};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

/// A stored relative path, refused if it could leave `root` (the store is trusted, but a file
/// written outside the data directory would be a disaster worth a check).
fn inside(root: &Path, rel: &str) -> Result<std::path::PathBuf, StoreError> {
    let p = Path::new(rel);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(root.join(p))
    } else {
        Err(StoreError::Corrupt {
            what: "shared file path",
            reason: rel.to_owned(),
        })
    }
}

/// What a controller last took from and gave to the store under one prefix, so an apply
/// moves only what changed (a thousand node certificates are not re-read or re-written each
/// time).
#[derive(Debug, Default)]
pub struct Synced {
    /// The newest store revision of the files pulled so far.
    pulled: i64,
    /// Per relative path, the (size, mtime) of the local file when last pulled or pushed.
    known: BTreeMap<String, (u64, std::time::SystemTime)>,
}

fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Writes every stored file under `prefix/` into `root` (0600, directories 0700) where the
/// local copy differs. Returns how many were written.
pub fn pull(store: &Store, root: &Path, prefix: &str) -> Result<usize, StoreError> {
    pull_since(store, root, prefix, &mut Synced::default())
}

/// [`pull`], of the files stored since `synced` last looked.
pub fn pull_since(
    store: &Store,
    root: &Path,
    prefix: &str,
    synced: &mut Synced,
) -> Result<usize, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if store.engine() != Engine::Postgres {
        return Ok(0);
    }
    let (files, newest) = store.read(|tx| tx.shared_files(prefix, synced.pulled))?;
    synced.pulled = newest;
    let mut written = 0;
    for (rel, data) in files {
        let path = inside(root, &rel)?;
        if std::fs::read(&path).is_ok_and(|local| local == data) {
            if let Some(st) = stamp(&path) {
                synced.known.insert(rel, st);
            }
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        let tmp = path.with_extension("pulling");
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(&data).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        if let Some(st) = stamp(&path) {
            synced.known.insert(rel, st);
        }
        written += 1;
    }
    Ok(written)
}

/// Stores every file under `root/prefix` (replacing stored ones when `replace`).
pub fn push(store: &Store, root: &Path, prefix: &str, replace: bool) -> Result<(), StoreError> {
    push_changed(store, root, prefix, replace, &mut Synced::default())
}

/// [`push`], of the files whose size or mtime changed since `synced` last saw them.
pub fn push_changed(
    store: &Store,
    root: &Path,
    prefix: &str,
    replace: bool,
    synced: &mut Synced,
) -> Result<(), StoreError> {
    if store.engine() != Engine::Postgres {
        return Ok(());
    }
    let mut files = Vec::new();
    collect(root, &root.join(prefix), &mut files)?;
    files.retain(|(rel, _)| {
        let now = stamp(&root.join(rel));
        now.is_none() || synced.known.get(rel) != now.as_ref()
    });
    if files.is_empty() {
        return Ok(());
    }
    for (rel, _) in &files {
        if let Some(st) = stamp(&root.join(rel)) {
            synced.known.insert(rel.clone(), st);
        }
    }
    store.write(|tx| {
        for (rel, data) in &files {
            tx.put_shared_file(rel, data, replace)?;
        }
        Ok(())
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let kind = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(root)
                .map_err(|_| StoreError::Corrupt {
                    what: "shared file path",
                    reason: path.display().to_string(),
                })?
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read(&path).map_err(io(&path))?));
        }
    }
    Ok(())
}

/// The files under `prefix/` everybody must share: pulled from the store if a controller
/// stored them; otherwise made here by `create` and offered; if another controller's offer
/// landed first, theirs replace ours. Returns `create`'s value over the final files.
pub fn adopt<T, E: From<StoreError>>(
    store: &Store,
    root: &Path,
    prefix: &str,
    create: impl Fn(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let dir = root.join(prefix);
    if store.engine() != Engine::Postgres {
        return create(&dir);
    }
    pull(store, root, prefix)?;
    let ours = create(&dir)?;
    push(store, root, prefix, false)?;
    if pull(store, root, prefix)? == 0 {
        return Ok(ours);
    }
    tracing::info!(
        prefix,
        "another controller's files were stored first: using them"
    );
    create(&dir)
}
