//! The operator side's cache of pack digests, so `apimctl apply` and `apimctl plan` do not hash
//! a 200–500 MB pack on every run (hashing one is most of a no-op apply's time).
//!
//! An entry is keyed by the pack's canonical path and trusted only while the file's device,
//! inode, size, modification time and change time (both to the nanosecond) are all what they
//! were when it was hashed. The change time cannot be set back by anyone but the kernel, so any
//! write to the file invalidates its entry, as in git's index. A file changed within the last
//! two seconds is hashed but not cached (it may still be being written).
//!
//! Nothing depends on the cache for safety: the plan's sha256 is what the controller deploys
//! (artifacts are content-addressed and the controller hashes every upload itself); the local
//! check only catches a plan that names the wrong file. The cache lives in
//! `$APIMCTL_CACHE_DIR`, else `$XDG_CACHE_HOME/apimctl`, else `~/.cache/apimctl` (0700, the
//! file 0600); without any of them, or when it cannot be read or written, packs are simply
//! hashed every time.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The cache file's name inside the cache directory.
pub const CACHE_FILE: &str = "pack-digests.json";
/// How many packs the cache remembers (the most recently hashed win).
const MAX_ENTRIES: usize = 64;
/// A file modified more recently than this is not cached.
const SETTLE: Duration = Duration::from_secs(2);

/// What identifies a file's content without reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file has not been touched for [`SETTLE`].
    fn settled(&self, now: SystemTime) -> bool {
        let now_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let settle = SETTLE.as_nanos() as i128;
        now_ns - self.mtime_ns.max(self.ctime_ns) >= settle
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    sha256: String,
    /// Seconds since the epoch when it was hashed (to keep the newest entries).
    hashed_at: u64,
}

/// The cache directory the environment `var` names (see the module docs), if any.
pub fn default_dir(var: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let var = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("APIMCTL_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("apimctl")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("apimctl")))
}

/// sha256 of `path` (lowercase hex), from the cache in `cache_dir` when the file is unchanged
/// since it was last hashed; hashes and records it otherwise.
pub fn sha256_cached(path: &Path, cache_dir: Option<&Path>) -> std::io::Result<String> {
    match lookup(path, cache_dir)? {
        Lookup::Known(sha256) => Ok(sha256),
        Lookup::New(pending) => {
            let sha256 = sha256_file(&pending.key)?;
            pending.remember(&sha256);
            Ok(sha256)
        }
    }
}

/// What the cache knows of a pack.
#[derive(Debug)]
pub enum Lookup {
    /// Its sha256, the file unchanged since it was hashed.
    Known(String),
    /// Nothing: hash it (once, however suits) and [`Pending::remember`] the digest.
    New(Pending),
}

/// A pack the cache does not know yet, as it was when it was looked up.
#[derive(Debug)]
pub struct Pending {
    key: PathBuf,
    stamp: Stamp,
    dir: Option<PathBuf>,
}

impl Pending {
    /// The pack's canonical path (the one to hash).
    pub fn path(&self) -> &Path {
        &self.key
    }

    /// Records `sha256` (what the file held when it was read) if the file is still as it was
    /// looked up and has settled; otherwise nothing is cached.
    pub fn remember(self, sha256: &str) {
        let Some(dir) = self.dir else { return };
        let now = SystemTime::now();
        let unchanged = std::fs::metadata(&self.key)
            .map(|m| Stamp::of(&m))
            .ok()
            .as_ref()
            == Some(&self.stamp);
        if !unchanged || !self.stamp.settled(now) {
            return;
        }
        let file = dir.join(CACHE_FILE);
        let mut entries = load(&file);
        let hashed_at = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        entries.insert(
            self.key.display().to_string(),
            Entry {
                stamp: self.stamp,
                sha256: sha256.to_owned(),
                hashed_at,
            },
        );
        if let Err(e) = store(&dir, &file, entries) {
            tracing::debug!(path = %file.display(), error = %e, "pack digest cache not written");
        }
    }
}

/// What the cache in `cache_dir` knows of `path`, without reading the pack. An error means
/// the pack cannot be found or examined.
pub fn lookup(path: &Path, cache_dir: Option<&Path>) -> std::io::Result<Lookup> {
    let key = path.canonicalize()?;
    let stamp = Stamp::of(&std::fs::metadata(&key)?);
    if let Some(dir) = cache_dir
        && let Some(e) = load(&dir.join(CACHE_FILE)).get(&key.display().to_string())
        && e.stamp == stamp
    {
        return Ok(Lookup::Known(e.sha256.clone()));
    }
    Ok(Lookup::New(Pending {
        key,
        stamp,
        dir: cache_dir.map(Path::to_path_buf),
    }))
}

/// sha256 of a file, lowercase hex, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The cache's entries; an unreadable or damaged cache is an empty one.
fn load(file: &Path) -> BTreeMap<String, Entry> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn store(dir: &Path, file: &Path, mut entries: BTreeMap<String, Entry>) -> std::io::Result<()> {
    if entries.len() > MAX_ENTRIES {
        let mut by_age: Vec<(u64, String)> = entries
            .iter()
            .map(|(k, e)| (e.hashed_at, k.clone()))
            .collect();
        by_age.sort();
        for (_, k) in by_age.iter().take(entries.len() - MAX_ENTRIES) {
            entries.remove(k);
        }
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(&entries).map_err(std::io::Error::other)?;
    apim_atomic::write_atomic(file, &bytes, 0o600).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets a file's times to `secs` seconds ago (mtime; the change time moves to now).
    fn age(path: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    fn cached(dir: &Path) -> BTreeMap<String, Entry> {
        load(&dir.join(CACHE_FILE))
    }

    #[test]
    fn an_unchanged_pack_is_served_from_the_cache_and_any_change_rehashes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let pack = tmp.path().join("pack.zip");
        std::fs::write(&pack, b"first content").unwrap();
        let first = sha256_file(&pack).unwrap();

        // Just written: hashed, not cached (it may still be being written).
        assert_eq!(sha256_cached(&pack, Some(&cache)).unwrap(), first);
        assert!(cached(&cache).is_empty());

        // The change time moved too (set_modified is a change), so wait for it to settle by
        // testing the rule directly on a stamp instead of sleeping.
        let meta = std::fs::metadata(&pack).unwrap();
        let stamp = Stamp::of(&meta);
        assert!(!stamp.settled(SystemTime::now()));
        assert!(stamp.settled(SystemTime::now() + SETTLE));

        // Put an entry with the file's real stamp but a digest the file does not have: a hit
        // returns it without reading the file, which shows the cache was used.
        let key = pack.canonicalize().unwrap().display().to_string();
        let mut entries = BTreeMap::new();
        entries.insert(
            key.clone(),
            Entry {
                stamp: stamp.clone(),
                sha256: "cafe".repeat(16),
                hashed_at: 1,
            },
        );
        store(&cache, &cache.join(CACHE_FILE), entries).unwrap();
        assert_eq!(
            sha256_cached(&pack, Some(&cache)).unwrap(),
            "cafe".repeat(16)
        );

        // Any write changes the stamp (size, mtime or at least ctime): hashed again.
        std::fs::write(&pack, b"other content").unwrap();
        age(&pack, 3600);
        let second = sha256_file(&pack).unwrap();
        assert_ne!(second, first);
        assert_eq!(sha256_cached(&pack, Some(&cache)).unwrap(), second);

        // Same size, same mtime put back by hand: the change time still gives it away.
        let before = Stamp::of(&std::fs::metadata(&pack).unwrap());
        std::fs::write(&pack, b"OTHER content").unwrap();
        let f = std::fs::File::options().write(true).open(&pack).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_nanos(before.mtime_ns as u64))
            .unwrap();
        let after = Stamp::of(&std::fs::metadata(&pack).unwrap());
        assert_eq!((after.size, after.mtime_ns), (before.size, before.mtime_ns));
        assert_ne!(after, before);
        assert_eq!(
            sha256_cached(&pack, Some(&cache)).unwrap(),
            sha256_file(&pack).unwrap()
        );
    }

    #[test]
    fn no_cache_dir_or_a_damaged_cache_just_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let pack = tmp.path().join("pack.zip");
        std::fs::write(&pack, b"content").unwrap();
        let want = sha256_file(&pack).unwrap();
        assert_eq!(sha256_cached(&pack, None).unwrap(), want);
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::write(cache.join(CACHE_FILE), b"{ not json").unwrap();
        assert_eq!(sha256_cached(&pack, Some(&cache)).unwrap(), want);
        assert!(sha256_cached(&tmp.path().join("missing.zip"), Some(&cache)).is_err());
    }

    #[test]
    fn the_cache_keeps_the_newest_entries_only_and_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let stamp = Stamp {
            dev: 1,
            ino: 1,
            size: 1,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        let entries: BTreeMap<String, Entry> = (0..(MAX_ENTRIES as u64 + 5))
            .map(|i| {
                (
                    format!("/p/{i}"),
                    Entry {
                        stamp: stamp.clone(),
                        sha256: String::new(),
                        hashed_at: i,
                    },
                )
            })
            .collect();
        store(&cache, &cache.join(CACHE_FILE), entries).unwrap();
        let kept = cached(&cache);
        assert_eq!(kept.len(), MAX_ENTRIES);
        assert!(
            !kept.contains_key("/p/0") && kept.contains_key(&format!("/p/{}", MAX_ENTRIES + 4))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&cache.join(CACHE_FILE)), 0o600);
    }
}
