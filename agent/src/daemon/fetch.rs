//! Packs from the controller: streamed, resumable, sha256-verified, cached by digest, and
//! readable while they arrive.
//!
//! `<cache>/<sha>.partial` grows with each chunk of `ArtifactService.Fetch`; after a cut the
//! next attempt asks for `offset = <its length>`. Every chunk is hashed as it is written (a
//! resumed download first hashes what the partial file already holds), so the digest is ready
//! when the stream ends with the announced size, without reading the pack again. Only a
//! matching digest is renamed to `<cache>/<sha>.zip`; a mismatch deletes the partial file and is
//! an error. One download per digest at a time.
//!
//! **Unpacking while it arrives.** [`Fetcher::fetch`] with a `ready` channel first fetches the
//! zip's tail (its central directory, a ranged `Fetch`), then hands the unpacker an
//! [`ArrivingPack`] that serves reads as the body is written (see [`crate::exec::arriving`]). The
//! download stays the judge: it fails the arriving pack when it fails, and it checks, once the
//! digest matched, that the tail the unpacker read is the verified file's.
//!
//! **Durability without an fsync per pack.** A verified pack is not synced (that would write
//! every pack out while the unpack competes for the same disk). Instead `<cache>/<sha>.boot`
//! records the boot it was verified in: within that boot the page cache holds what was
//! verified; a pack from an earlier boot (it may have been torn by a crash) is hashed again
//! before use and fetched again when it no longer matches. Where the kernel gives no boot id,
//! downloads are synced as they end, as before.
//!
//! **Pruning.** The machine pins the artifacts of the spec it holds; [`Fetcher::prune`] removes
//! every cached pack (and partial download) neither pinned nor named by the caller (the node
//! records' current and previous packs), skipping one being fetched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apim_proto::v1::FetchRequest;
use apim_proto::v1::artifact_service_client::ArtifactServiceClient;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::link::Control;
use crate::exec::ExecError;
use crate::exec::arriving::{ArrivingPack, Block, MAX_TAIL, TAIL_PROBE, central_directory_start};
use crate::exec::packfile::PackFile;
use crate::exec::unpack::{ZipSource, boot_id};

/// Fetches and caches packs. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Fetcher {
    cache_dir: PathBuf,
    control: Option<Control>,
    attempts: u32,
    retry_pause: Duration,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The held spec's artifacts: never pruned.
    pinned: Mutex<BTreeSet<String>>,
}

/// Fails the arriving pack (waking its readers) unless the download completed.
struct ArrivalGuard(Option<Arc<ArrivingPack>>);

impl Drop for ArrivalGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.fail("the download was abandoned");
        }
    }
}

impl Fetcher {
    /// A fetcher caching in `cache_dir`, downloading through `control` (`None`: cache only,
    /// for tools and benchmarks that pre-fill the cache).
    pub fn new(cache_dir: PathBuf, control: Option<Control>, attempts: u32) -> Self {
        Fetcher {
            cache_dir,
            control,
            attempts: attempts.max(1),
            retry_pause: Duration::from_millis(200),
            locks: Mutex::new(HashMap::new()),
            pinned: Mutex::new(BTreeSet::new()),
        }
    }

    /// Pins `digests` (the artifacts of the spec the machine holds) in place of the ones pinned
    /// before: [`Fetcher::prune`] never removes them.
    pub fn pin(&self, digests: impl IntoIterator<Item = String>) {
        let set = digests
            .into_iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();
        *self.pinned.lock().unwrap_or_else(|p| p.into_inner()) = set;
    }

    /// Holds `sha256`'s download lock as a fetch does (tests of [`Fetcher::prune`]).
    #[cfg(test)]
    pub(crate) async fn hold_for_test(&self, sha256: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(m.entry(sha256.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    /// Removes every cached pack, boot stamp and partial download whose digest is neither in
    /// `keep` nor pinned, except one being fetched now; returns the digests removed.
    pub fn prune(&self, keep: &BTreeSet<String>) -> Vec<String> {
        let pinned = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for entry in std::fs::read_dir(&self.cache_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let Some((sha, ext)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            let ours = sha.len() == 64
                && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                && matches!(ext, "zip" | "boot" | "partial");
            if ours && !keep.contains(sha) && !pinned.contains(sha) {
                files.entry(sha.to_owned()).or_default().push(entry.path());
            }
        }
        let mut removed = Vec::new();
        for (sha, paths) in files {
            // A download or unpack in progress holds this lock: leave its files alone.
            let lock = locks.get(&sha).cloned();
            let _busy = match &lock {
                Some(l) => match l.try_lock() {
                    Ok(g) => Some(g),
                    Err(_) => continue,
                },
                None => None,
            };
            let mut all = true;
            for p in &paths {
                if let Err(e) = remove_if_exists(p) {
                    tracing::warn!(error = %e, "cannot prune the pack cache");
                    all = false;
                }
            }
            if all {
                removed.push(sha);
            }
        }
        removed
    }

    /// The cached, verified pack for `sha256`.
    pub fn cached_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha256}.zip"))
    }

    /// The in-progress download for `sha256`.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha256}.partial"))
    }

    /// Forgets a cached pack (its digest verified, but it will never be unpacked: its entries
    /// are refused), so a bad pack does not stay in the cache for ever.
    pub fn discard(&self, sha256: &str) {
        for p in [self.cached_path(sha256), self.boot_stamp_path(sha256)] {
            if let Err(e) = remove_if_exists(&p) {
                tracing::warn!(error = %e, "cannot remove a refused pack from the cache");
            }
        }
    }

    /// Empties the pack cache (`apimctl destroy`): every cached pack, partial download and
    /// stamp. Returns how many files it removed.
    pub fn clear(&self) -> DaemonResult<usize> {
        let rd = match std::fs::read_dir(&self.cache_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(DaemonError::io("list pack cache", &self.cache_dir, e)),
        };
        let mut n = 0;
        for entry in rd {
            let entry =
                entry.map_err(|e| DaemonError::io("list pack cache", &self.cache_dir, e))?;
            let p = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.map_err(|e| DaemonError::io("remove cached pack", &p, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// The boot a cached pack was verified in.
    fn boot_stamp_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha256}.boot"))
    }

    /// Returns the verified pack, downloading (or resuming) it when not cached. `size` is the
    /// spec's size (0: unknown, the stream's end is trusted and the digest decides).
    /// `progress(have, size)` is called after each chunk.
    pub async fn ensure(
        &self,
        sha256: &str,
        size: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> DaemonResult<PathBuf> {
        self.fetch(sha256, size, progress, None).await
    }

    /// [`Fetcher::ensure`], and `ready` receives the pack as soon as it can be read: the
    /// cached file at once, or (size known) the download in progress once its tail is in, or
    /// else the verified file when the download ends. `ready` is dropped unsent when the
    /// download fails first. An error after the pack was handed over means whatever was read
    /// from it must be thrown away.
    pub async fn fetch(
        &self,
        sha256: &str,
        size: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
        mut ready: Option<oneshot::Sender<ZipSource>>,
    ) -> DaemonResult<PathBuf> {
        let sha = sha256.trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DaemonError::exec(
                "pack",
                ExecError::BadDigest {
                    value: sha256.to_owned(),
                },
            ));
        }
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(m.entry(sha.clone()).or_default())
        };
        let _one = lock.lock().await;
        let done = self.cached_path(&sha);
        if done.is_file() && self.cached_pack_is_sound(&sha, &done).await? {
            if let Some(tx) = ready.take() {
                let _ = tx.send(ZipSource::File(done.clone()));
            }
            return Ok(done);
        }
        create_private_dir(&self.cache_dir)?;
        let partial = self.partial_path(&sha);
        if size > 0 && file_len(&partial) > size {
            // More than the artifact: not ours to resume; start over.
            remove_if_exists(&partial)?;
        }
        let mut guard = ArrivalGuard(None);
        if size > 0
            && let Some(tx) = ready.take()
        {
            let pack = Arc::new(self.open_arriving(&sha, &partial, size).await?);
            guard.0 = Some(Arc::clone(&pack));
            let _ = tx.send(ZipSource::Arriving(pack));
        }
        let started = std::time::Instant::now();
        let result = self
            .download_verified(&sha, &partial, size, progress, guard.0.as_ref())
            .await;
        if let Err(e) = &result
            && let Some(pack) = guard.0.take()
        {
            pack.fail(e.to_string());
        }
        result?;
        std::fs::rename(&partial, &done)
            .map_err(|e| DaemonError::io("rename verified pack to", &done, e))?;
        match boot_id() {
            // Unsynced on purpose (see the module docs); the stamp says since when.
            Some(boot) => self.write_boot_stamp(&sha, &boot)?,
            None => apim_atomic::fsync_dir(&self.cache_dir).on("pack cache")?,
        }
        tracing::info!(sha256 = %sha, path = %done.display(), seconds = started.elapsed().as_secs_f64(), "pack downloaded and verified");
        if let Some(pack) = guard.0.take() {
            let verified = read_range(&done, pack.tail_start(), pack.size()).await?;
            if !pack.tail_matches(&verified) {
                return Err(DaemonError::TailMismatch { sha256: sha });
            }
        }
        if let Some(tx) = ready.take() {
            let _ = tx.send(ZipSource::File(done.clone()));
        }
        Ok(done)
    }

    /// Whether the cached pack can be used as it is. A pack verified in this boot can; one from
    /// an earlier boot was never synced and is hashed again (and deleted when it no longer
    /// matches, so it is fetched again).
    async fn cached_pack_is_sound(&self, sha: &str, done: &Path) -> DaemonResult<bool> {
        let Some(boot) = boot_id() else {
            return Ok(true);
        };
        let stamp = self.boot_stamp_path(sha);
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == boot) {
            return Ok(true);
        }
        match crate::exec::unpack::verify_sha256(done, sha).await {
            Ok(()) => {
                self.write_boot_stamp(sha, &boot)?;
                Ok(true)
            }
            Err(ExecError::ShaMismatch { actual, .. }) => {
                tracing::warn!(sha256 = %sha, actual = %actual, path = %done.display(), "a cached pack from an earlier boot no longer matches its digest; fetching it again");
                remove_if_exists(done)?;
                remove_if_exists(&stamp)?;
                Ok(false)
            }
            Err(e) => Err(DaemonError::exec("pack", e)),
        }
    }

    /// Records that the cached pack `sha` was verified in `boot`.
    fn write_boot_stamp(&self, sha: &str, boot: &str) -> DaemonResult<()> {
        let stamp = self.boot_stamp_path(sha);
        std::fs::write(&stamp, boot).map_err(|e| DaemonError::io("write boot stamp", &stamp, e))
    }

    /// The download as the unpacker sees it: the partial file (created if missing) and the
    /// zip's tail in memory. A tail that cannot be fetched is only a slower start (every read
    /// then waits for the body).
    async fn open_arriving(
        &self,
        sha: &str,
        partial: &Path,
        size: u64,
    ) -> DaemonResult<ArrivingPack> {
        // Read with `pread` only, so the append mode does not matter to the readers.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .create(true)
            .append(true)
            .mode(0o600)
            .open(partial)
            .map_err(|e| DaemonError::io("open download", partial, e))?;
        let written = file_len(partial);
        let tail = if written < size {
            match self.fetch_tail(sha, size).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(sha256 = %sha, error = %e, "cannot fetch the pack's tail ahead; unpacking follows the download from its start");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        Ok(ArrivingPack::new(
            partial.to_path_buf(),
            file,
            size,
            written,
            tail,
        ))
    }

    /// The zip's end records and central directory: the last [`TAIL_PROBE`] bytes, and the
    /// rest of the directory (up to [`MAX_TAIL`] in all) when it starts before them.
    async fn fetch_tail(&self, sha: &str, size: u64) -> DaemonResult<Vec<u8>> {
        let probe_start = size - TAIL_PROBE.min(size);
        let mut tail = self
            .fetch_range(sha, probe_start, size - probe_start)
            .await?;
        if let Some(cd) = central_directory_start(&tail, probe_start)
            && cd < probe_start
            && size - cd <= MAX_TAIL
        {
            let mut whole = self.fetch_range(sha, cd, probe_start - cd).await?;
            whole.append(&mut tail);
            tail = whole;
        }
        Ok(tail)
    }

    /// `len` bytes of the artifact from `offset` (one ranged Fetch; a controller that ignores
    /// the range is read only as far as needed).
    async fn fetch_range(&self, sha: &str, offset: u64, len: u64) -> DaemonResult<Vec<u8>> {
        let mut stream = self.open_fetch(sha, offset, len).await?;
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        while (out.len() as u64) < len {
            let at = offset + out.len() as u64;
            match stream.message().await {
                Ok(Some(chunk)) if chunk.offset != at => {
                    return Err(DaemonError::FetchOffset {
                        sha256: sha.to_owned(),
                        expected: at,
                        got: chunk.offset,
                    });
                }
                Ok(Some(chunk)) => {
                    let take = chunk.data.len().min((len - out.len() as u64) as usize);
                    out.extend_from_slice(&chunk.data[..take]);
                }
                Ok(None) => break,
                Err(s) => return Err(DaemonError::rpc("Fetch", &s)),
            }
        }
        if (out.len() as u64) < len {
            return Err(DaemonError::FetchIncomplete {
                sha256: sha.to_owned(),
                have: out.len() as u64,
                size: len,
                attempts: 1,
            });
        }
        Ok(out)
    }

    /// One `Fetch` stream of `limit` bytes (0: to the end) from `offset`.
    async fn open_fetch(
        &self,
        sha: &str,
        offset: u64,
        limit: u64,
    ) -> DaemonResult<tonic::Streaming<apim_proto::v1::Chunk>> {
        let control = self.control.as_ref().ok_or_else(|| DaemonError::Stream {
            reason: format!("pack {sha} is not cached and this agent has no controller"),
        })?;
        Ok(ArtifactServiceClient::new(control.channel())
            .fetch(FetchRequest {
                sha256: sha.to_owned(),
                offset,
                limit,
            })
            .await
            .map_err(|s| DaemonError::rpc("Fetch", &s))?
            .into_inner())
    }

    /// Downloads (resuming, retrying) into `partial` until it holds the whole pack and its
    /// digest matches; a mismatch deletes the file.
    async fn download_verified(
        &self,
        sha: &str,
        partial: &Path,
        size: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
        arriving: Option<&Arc<ArrivingPack>>,
    ) -> DaemonResult<()> {
        // The digest of the partial file's first `hashed` bytes.
        let mut hasher = Sha256::new();
        let mut hashed = 0u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let have = file_len(partial);
            if hashed != have {
                // A resumed download (or a write that failed mid-chunk): hash what is there.
                (hasher, hashed) = if have == 0 {
                    (Sha256::new(), 0)
                } else {
                    hash_prefix(partial).await?
                };
            }
            let complete = if size > 0 && have == size {
                true
            } else {
                let mut sink = Sink {
                    hasher: &mut hasher,
                    hashed: &mut hashed,
                    arriving,
                };
                match self
                    .download(sha, partial, have, size, progress, &mut sink)
                    .await
                {
                    Ok(ended_at) => size == 0 || ended_at == size,
                    Err(e) if attempt < self.attempts && retryable(&e) => {
                        tracing::warn!(sha256 = %sha, error = %e, attempt, "download interrupted; will resume");
                        tokio::time::sleep(self.retry_pause * attempt).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            if complete {
                break;
            }
            if attempt < self.attempts {
                tracing::warn!(sha256 = %sha, have = file_len(partial), size, "stream ended early; will resume");
                continue;
            }
            return Err(DaemonError::FetchIncomplete {
                sha256: sha.to_owned(),
                have: file_len(partial),
                size,
                attempts: attempt,
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != sha {
            remove_if_exists(partial)?;
            return Err(DaemonError::PackDigestMismatch {
                expected: sha.to_owned(),
                actual,
            });
        }
        Ok(())
    }

    /// One Fetch stream from `offset`, appended to `partial` and fed to `sink`; returns where
    /// the file ends.
    ///
    /// A writer thread appends, hashes and hands each chunk to the unpacker while this task
    /// receives the next ones (at most [`DOWNLOAD_QUEUE`] in between): the chunk's buffer
    /// goes to the file as it came off the wire, with no copy on the way.
    async fn download(
        &self,
        sha: &str,
        partial: &Path,
        offset: u64,
        size: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
        sink: &mut Sink<'_>,
    ) -> DaemonResult<u64> {
        let mut stream = self.open_fetch(sha, offset, 0).await?;
        let file =
            PackFile::open(partial).map_err(|e| DaemonError::io("open download", partial, e))?;
        let (queue, queued) = tokio::sync::mpsc::channel::<Vec<u8>>(DOWNLOAD_QUEUE);
        let writer = ChunkWriter {
            file,
            hasher: sink.hasher.clone(),
            hashed: *sink.hashed,
            arriving: sink.arriving.cloned(),
        };
        let writing = tokio::task::spawn_blocking(move || writer.run(queued));
        let mut at = offset;
        let result = loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if chunk.offset != at {
                        break Err(DaemonError::FetchOffset {
                            sha256: sha.to_owned(),
                            expected: at,
                            got: chunk.offset,
                        });
                    }
                    let end = at + chunk.data.len() as u64;
                    if size > 0 && end > size {
                        break Err(DaemonError::FetchOverrun {
                            sha256: sha.to_owned(),
                            size,
                            got: end,
                        });
                    }
                    if queue.send(chunk.data).await.is_err() {
                        // The writer stopped on an error, reported below.
                        break Ok(at);
                    }
                    at = end;
                    progress(at, size);
                }
                Ok(None) => break Ok(at),
                Err(s) => break Err(DaemonError::rpc("Fetch", &s)),
            }
        };
        drop(queue);
        // Keep what arrived so the next attempt resumes from it.
        let written = writing
            .await
            .map_err(|e| DaemonError::io("write download", partial, std::io::Error::other(e)))?;
        *sink.hasher = written.hasher;
        *sink.hashed = written.hashed;
        if let Some(e) = written.error {
            return Err(DaemonError::io("write download", partial, e));
        }
        result
    }
}

/// Download chunks (1 MiB each from the controller) received but not yet written.
const DOWNLOAD_QUEUE: usize = 8;

/// The download's writer thread: gathers chunks into [`Block`]s, writes each to the partial
/// file ([`PackFile`]: whole aligned blocks around the page cache), keeps the running digest,
/// and hands each written block to the unpacker, which reads it from memory.
struct ChunkWriter {
    file: PackFile,
    hasher: Sha256,
    hashed: u64,
    arriving: Option<Arc<ArrivingPack>>,
}

/// What a [`ChunkWriter`] did: the digest of the file's first `hashed` bytes, and the write
/// error that stopped it, if one did.
struct Written {
    hasher: Sha256,
    hashed: u64,
    error: Option<std::io::Error>,
}

impl ChunkWriter {
    fn run(mut self, mut queued: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Written {
        let mut block = self.empty_block(self.hashed);
        let mut error = None;
        'chunks: while let Some(data) = queued.blocking_recv() {
            let mut rest = &data[..];
            while !rest.is_empty() {
                rest = &rest[block.fill(rest)..];
                if block.is_full()
                    && let Err(e) = self.commit(&mut block)
                {
                    error = Some(e);
                    break 'chunks;
                }
            }
        }
        // What arrived of a last (or cut) block: kept, so a next attempt resumes after it.
        if error.is_none()
            && !block.data().is_empty()
            && let Err(e) = self.commit(&mut block)
        {
            error = Some(e);
        }
        if boot_id().is_none()
            && let Err(e) = self.file.sync_all()
        {
            error.get_or_insert(e);
        }
        Written {
            hasher: self.hasher,
            hashed: self.hashed,
            error,
        }
    }

    /// An empty block for the bytes from `start`.
    fn empty_block(&self, start: u64) -> Block {
        match &self.arriving {
            Some(pack) => pack.spare_block(start),
            None => Block::new(start),
        }
    }

    /// Writes `block`, adds it to the digest and gives it to the unpacker (which may make this
    /// wait until it catches up); `block` is then empty, for the bytes after it.
    fn commit(&mut self, block: &mut Block) -> std::io::Result<()> {
        self.file.write_block(block)?;
        self.hasher.update(block.data());
        self.hashed = block.end();
        match &self.arriving {
            // The bytes are in the file: the unpacker may read them, from memory.
            Some(pack) => pack.publish(std::mem::replace(block, pack.spare_block(self.hashed))),
            None => block.reset(self.hashed),
        }
        Ok(())
    }
}

/// Where a download's chunks go besides the file: the running digest, and the unpacker
/// following the download.
struct Sink<'a> {
    hasher: &'a mut Sha256,
    hashed: &'a mut u64,
    arriving: Option<&'a Arc<ArrivingPack>>,
}

/// The bytes `[from, to)` of `path`.
async fn read_range(path: &Path, from: u64, to: u64) -> DaemonResult<Vec<u8>> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&p)?;
        let mut buf = vec![0u8; usize::try_from(to - from).map_err(std::io::Error::other)?];
        f.read_exact_at(&mut buf, from)?;
        Ok(buf)
    })
    .await
    .map_err(|source| DaemonError::Join {
        op: "read pack tail",
        source,
    })?
    .map_err(|e| DaemonError::io("read pack tail", path, e))
}

/// The digest state of `path`'s current content, and its length.
async fn hash_prefix(path: &Path) -> DaemonResult<(Sha256, u64)> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::exec::unpack::sha256_state(&p))
        .await
        .map_err(|source| DaemonError::Join {
            op: "hash download",
            source,
        })?
        .on("pack")
}

fn retryable(e: &DaemonError) -> bool {
    match e {
        DaemonError::Rpc { code, .. } => !matches!(
            code,
            tonic::Code::NotFound
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument
        ),
        DaemonError::FetchOffset { .. } => false,
        _ => false,
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn remove_if_exists(p: &Path) -> DaemonResult<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DaemonError::io("remove", p, e)),
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn create_private_dir(dir: &Path) -> DaemonResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DaemonError::io("create directory", dir, e))
}
