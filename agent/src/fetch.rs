//! Packs from the controller: streamed, resumable, sha256-verified, cached by digest.
//!
//! `<cache>/<sha>.partial` grows with each chunk of `ArtifactService.Fetch`; after a cut the
//! next attempt asks for `offset = <its length>`. Every chunk is hashed as it is written (a
//! resumed download first hashes what the partial file already holds), so the digest is ready
//! when the stream ends with the announced size, without reading the pack again. The file is
//! fsynced; only a matching digest is renamed to `<cache>/<sha>.zip` (the only name the
//! unpacker is ever given). A mismatch deletes the partial file and is an error: a corrupt or
//! short download is never unpacked. One download per digest at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apim_proto::v1::FetchRequest;
use apim_proto::v1::artifact_service_client::ArtifactServiceClient;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::AgentError;
use crate::control::Control;
use crate::daemon_error::{DaemonError, DaemonResult};

/// Fetches and caches packs. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Fetcher {
    cache_dir: PathBuf,
    control: Option<Control>,
    attempts: u32,
    retry_pause: Duration,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
        }
    }

    /// The cached, verified pack for `sha256`.
    pub fn cached_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha256}.zip"))
    }

    /// The in-progress download for `sha256`.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha256}.partial"))
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
        let sha = sha256.trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DaemonError::agent(
                "pack",
                AgentError::BadDigest {
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
        if done.is_file() {
            return Ok(done);
        }
        create_private_dir(&self.cache_dir)?;
        let partial = self.partial_path(&sha);
        let started = std::time::Instant::now();
        // The digest of the partial file's first `hashed` bytes.
        let mut hasher = Sha256::new();
        let mut hashed = 0u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let have = file_len(&partial);
            if size > 0 && have > size {
                // More than the artifact: not ours to resume; start over.
                remove_if_exists(&partial)?;
                continue;
            }
            if hashed != have {
                // A resumed download (or a write that failed mid-chunk): hash what is there.
                (hasher, hashed) = if have == 0 {
                    (Sha256::new(), 0)
                } else {
                    hash_prefix(&partial).await?
                };
            }
            let complete = if size > 0 && have == size {
                true
            } else {
                match self
                    .download(
                        &sha,
                        &partial,
                        have,
                        size,
                        progress,
                        &mut hasher,
                        &mut hashed,
                    )
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
            if !complete {
                if attempt < self.attempts {
                    tracing::warn!(sha256 = %sha, have = file_len(&partial), size, "stream ended early; will resume");
                    continue;
                }
                return Err(DaemonError::FetchIncomplete {
                    sha256: sha,
                    have: file_len(&partial),
                    size,
                    attempts: attempt,
                });
            }
            break;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != sha {
            remove_if_exists(&partial)?;
            return Err(DaemonError::PackDigestMismatch {
                expected: sha,
                actual,
            });
        }
        std::fs::rename(&partial, &done)
            .map_err(|e| DaemonError::io("rename verified pack to", &done, e))?;
        crate::atomic::fsync_dir(&self.cache_dir)
            .map_err(|e| DaemonError::agent("pack cache", e))?;
        tracing::info!(sha256 = %sha, path = %done.display(), seconds = started.elapsed().as_secs_f64(), "pack downloaded and verified");
        Ok(done)
    }

    /// One Fetch stream from `offset`, appended to `partial` and fed to `hasher` (which holds
    /// the digest of the first `hashed` bytes); returns where the file ends.
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        sha: &str,
        partial: &Path,
        offset: u64,
        size: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
        hasher: &mut Sha256,
        hashed: &mut u64,
    ) -> DaemonResult<u64> {
        let control = self.control.as_ref().ok_or_else(|| DaemonError::Stream {
            reason: format!("pack {sha} is not cached and this agent has no controller"),
        })?;
        let mut client = ArtifactServiceClient::new(control.channel());
        let mut stream = client
            .fetch(FetchRequest {
                sha256: sha.to_owned(),
                offset,
            })
            .await
            .map_err(|s| DaemonError::rpc("Fetch", &s))?
            .into_inner();
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(partial)
            .await
            .map_err(|e| DaemonError::io("open download", partial, e))?;
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
                    if let Err(e) = file.write_all(&chunk.data).await {
                        break Err(DaemonError::io("write download", partial, e));
                    }
                    hasher.update(&chunk.data);
                    at += chunk.data.len() as u64;
                    *hashed = at;
                    progress(at, size);
                }
                Ok(None) => break Ok(at),
                Err(s) => break Err(DaemonError::rpc("Fetch", &s)),
            }
        };
        // Keep what arrived (flushed and synced) so the next attempt resumes from it.
        file.flush()
            .await
            .map_err(|e| DaemonError::io("flush download", partial, e))?;
        file.sync_all()
            .await
            .map_err(|e| DaemonError::io("sync download", partial, e))?;
        result
    }
}

/// The digest state of `path`'s current content, and its length.
async fn hash_prefix(path: &Path) -> DaemonResult<(Sha256, u64)> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::unpack::sha256_state(&p))
        .await
        .map_err(|source| DaemonError::Join {
            op: "hash download",
            source,
        })?
        .map_err(|e| DaemonError::agent("pack", e))
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
