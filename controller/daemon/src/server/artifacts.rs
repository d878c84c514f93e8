//! Content-addressed artifacts (distribution packs): [`ArtifactStore`] on disk, and the
//! `ArtifactService` (agents `Fetch`/`Stat`, operators `Upload`).
//!
//! Files are named by their lowercase hex sha256 in one directory. An upload streams into a
//! temp file in the same directory (a writer thread hashes and writes while the next chunks
//! arrive), is checked against the header's size and digest, fsynced, and only then renamed
//! into place: a name in the store always holds exactly the bytes its name promises.

use std::io::{self, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use apim_certs::PeerCert;
use apim_proto::v1::artifact_service_server::ArtifactService;
use apim_proto::v1::{
    Chunk, FetchRequest, StatRequest, StatResponse, UploadChunk, UploadHeader, UploadResponse,
};
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::{Request, Response, Status, Streaming};

use super::Ctx;
use super::auth::caller;
use super::error::ServerError;

/// Mode of stored artifacts: distribution packs are not secret, but nobody else needs them.
const ARTIFACT_MODE: u32 = 0o640;

/// Upload chunks (1 MiB each from `apimctl`) received but not yet hashed and written.
const UPLOAD_QUEUE: usize = 8;
/// The size of the writes an upload is stored in (see the store's writer thread).
const WRITE_PIECE: usize = 8 * 1024;

/// Checks that `sha256` is 64 lowercase hex characters (so it is also a safe file name).
pub fn validate_sha256(sha256: &str) -> Result<(), ServerError> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(ServerError::InvalidArgument {
            field: "sha256",
            reason: "must be 64 lowercase hex characters".into(),
        })
    }
}

/// The directory of stored artifacts.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
    /// Opens (creating it 0750 if missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ServerError> {
        let io = |action| {
            move |source| ServerError::Io {
                action,
                path: dir.to_path_buf(),
                source,
            }
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("creating artifact directory"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(io("restricting artifact directory"))?;
        }
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact with this digest lives (validated first).
    pub fn path_for(&self, sha256: &str) -> Result<PathBuf, ServerError> {
        validate_sha256(sha256)?;
        Ok(self.dir.join(sha256))
    }

    /// The stored size; `ArtifactNotFound` when absent.
    pub async fn size(&self, sha256: &str) -> Result<u64, ServerError> {
        let path = self.path_for(sha256)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(meta.len()),
            Ok(_) => Err(ServerError::ArtifactNotFound {
                sha256: sha256.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ServerError::ArtifactNotFound {
                sha256: sha256.to_owned(),
            }),
            Err(source) => Err(ServerError::Io {
                action: "reading metadata of",
                path,
                source,
            }),
        }
    }

    /// Stores `chunks` (the rest of an upload stream) as the artifact `header` describes.
    ///
    /// A writer thread hashes and writes while this task receives the next chunks (at most
    /// [`UPLOAD_QUEUE`] in between), so the network, the digest and the disk overlap.
    async fn store(
        &self,
        header: &UploadHeader,
        first_data: Vec<u8>,
        chunks: &mut Streaming<UploadChunk>,
    ) -> Result<(), ServerError> {
        let final_path = self.path_for(&header.sha256)?;
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ServerError::Io {
                action,
                path,
                source,
            }
        };
        let tmp = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&self.dir)
            .map_err(io("creating upload temp file in", &self.dir))?;
        let tmp_path = tmp.path().to_path_buf();
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(io("opening", &tmp_path))?;
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(UPLOAD_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<(Sha256, std::fs::File)> {
            let mut file = file;
            let mut hasher = Sha256::new();
            while let Some(data) = queued.blocking_recv() {
                hasher.update(&data);
                // Small writes get small page-cache folios, made of recently freed pages;
                // 1 MiB writes get large folios, often memory a VM guest handed back to its
                // hypervisor, which faults on first touch (see apim_agent::unpack).
                for piece in data.chunks(WRITE_PIECE) {
                    file.write_all(piece)?;
                }
            }
            Ok((hasher, file))
        });
        let mut received: u64 = 0;
        let mut data = first_data;
        let received_all = loop {
            received += data.len() as u64;
            if received > header.size {
                break Err(ServerError::ArtifactMismatch {
                    reason: format!("more than the announced {} bytes", header.size),
                });
            }
            if queue.send(data).await.is_err() {
                // The writer stopped: its error is reported below.
                break Ok(());
            }
            match chunks.message().await {
                Ok(Some(chunk)) => {
                    if chunk.header.is_some() {
                        break Err(ServerError::Protocol {
                            reason: "only the first upload message may carry a header".into(),
                        });
                    }
                    data = chunk.data;
                }
                Ok(None) => break Ok(()),
                Err(status) => {
                    break Err(ServerError::Protocol {
                        reason: format!("upload stream broke: {}", status.message()),
                    });
                }
            }
        };
        drop(queue);
        let written = writer.await.map_err(|e| ServerError::Io {
            action: "writing",
            path: tmp_path.clone(),
            source: io::Error::other(e),
        })?;
        received_all?;
        let (hasher, file) = written.map_err(io("writing", &tmp_path))?;
        if received != header.size {
            return Err(ServerError::ArtifactMismatch {
                reason: format!("size {received}, announced {}", header.size),
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != header.sha256 {
            return Err(ServerError::ArtifactMismatch {
                reason: format!("sha256 {actual}, announced {}", header.sha256),
            });
        }
        let synced = tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        synced.map_err(io("syncing", &tmp_path))?;
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(ARTIFACT_MODE))
            .map_err(io("setting mode of", &tmp_path))?;
        tmp.persist(&final_path).map_err(|e| ServerError::Io {
            action: "renaming upload into",
            path: final_path.clone(),
            source: e.error,
        })?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.dir))?;
        Ok(())
    }
}

/// The `ArtifactService` implementation.
#[derive(Debug, Clone)]
pub struct ArtifactSvc {
    ctx: Ctx,
}

impl ArtifactSvc {
    /// Serves artifacts from `ctx.state`'s store.
    pub(crate) fn new(ctx: Ctx) -> Self {
        ArtifactSvc { ctx }
    }

    async fn fetch_inner(&self, req: Request<FetchRequest>) -> Result<FetchStream, ServerError> {
        let peer = caller(&req)?.peer;
        let FetchRequest {
            sha256,
            offset,
            limit,
        } = req.into_inner();
        let store = self.ctx.state.artifacts();
        let size = store.size(&sha256).await?;
        if offset > size {
            return Err(ServerError::OffsetOutOfRange {
                sha256,
                offset,
                size,
            });
        }
        let path = store.path_for(&sha256)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| ServerError::Io {
                action: "opening",
                path: path.clone(),
                source,
            })?;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|source| ServerError::Io {
                action: "seeking in",
                path: path.clone(),
                source,
            })?;
        let reader = ChunkReader {
            file,
            path,
            offset,
            // The stream ends at `offset + limit` when a range was asked for.
            size: match limit {
                0 => size,
                n => offset.saturating_add(n).min(size),
            },
            chunk_size: self.ctx.config.chunk_size.max(1),
            peer,
            state: self.ctx.state.clone(),
        };
        Ok(Box::pin(futures::stream::unfold(
            reader,
            |mut r| async move {
                match r.next_chunk().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), r)),
                    Ok(None) => None,
                    // Report the error, then end the stream (size 0 makes the next poll finish).
                    Err(e) => {
                        r.size = r.offset;
                        Some((Err(e.to_status()), r))
                    }
                }
            },
        )))
    }

    async fn upload_inner(
        &self,
        req: Request<Streaming<UploadChunk>>,
    ) -> Result<UploadResponse, ServerError> {
        let who = caller(&req)?.who();
        let started = std::time::Instant::now();
        let mut chunks = req.into_inner();
        let first = match chunks.message().await {
            Ok(Some(first)) => first,
            Ok(None) => {
                return Err(ServerError::Protocol {
                    reason: "empty upload".into(),
                });
            }
            Err(status) => {
                return Err(ServerError::Protocol {
                    reason: format!("upload stream broke: {}", status.message()),
                });
            }
        };
        let Some(header) = first.header else {
            return Err(ServerError::Protocol {
                reason: "the first upload message must carry the header".into(),
            });
        };
        validate_sha256(&header.sha256)?;
        if header.size > self.ctx.config.max_artifact_size {
            return Err(ServerError::InvalidArgument {
                field: "size",
                reason: format!(
                    "{} bytes is over the controller's limit of {}",
                    header.size, self.ctx.config.max_artifact_size
                ),
            });
        }
        let store = self.ctx.state.artifacts();
        match store.size(&header.sha256).await {
            Ok(size) if size == header.size => {
                tracing::info!(sha256 = %header.sha256, %who, "upload skipped: already stored");
                return Ok(UploadResponse {
                    sha256: header.sha256,
                    size,
                    already_present: true,
                });
            }
            Ok(_) | Err(ServerError::ArtifactNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        store.store(&header, first.data, &mut chunks).await?;
        self.ctx.state.record_artifact(&header);
        tracing::info!(sha256 = %header.sha256, size = header.size, name = %header.name, %who, seconds = started.elapsed().as_secs_f64(), "artifact stored");
        Ok(UploadResponse {
            sha256: header.sha256,
            size: header.size,
            already_present: false,
        })
    }
}

/// The response stream of `Fetch`.
pub type FetchStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

/// Reads an artifact chunk by chunk, re-checking the caller's revocation before each chunk so
/// a revoked agent's download stops mid-way.
struct ChunkReader {
    file: tokio::fs::File,
    path: PathBuf,
    offset: u64,
    size: u64,
    chunk_size: usize,
    peer: Option<PeerCert>,
    state: std::sync::Arc<crate::state::ControllerState>,
}

impl ChunkReader {
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, ServerError> {
        if self.offset >= self.size {
            return Ok(None);
        }
        if let Some(peer) = &self.peer
            && self.state.is_revoked(peer)
        {
            return Err(ServerError::Revoked {
                identity: peer.identity.uri(),
            });
        }
        let want = usize::try_from(self.size - self.offset)
            .unwrap_or(usize::MAX)
            .min(self.chunk_size);
        let mut data = vec![0u8; want];
        self.file
            .read_exact(&mut data)
            .await
            .map_err(|source| ServerError::Io {
                action: "reading",
                path: self.path.clone(),
                source,
            })?;
        let chunk = Chunk {
            offset: self.offset,
            data,
        };
        self.offset += want as u64;
        Ok(Some(chunk))
    }
}

#[tonic::async_trait]
impl ArtifactService for ArtifactSvc {
    type FetchStream = FetchStream;

    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<FetchStream>, Status> {
        Ok(Response::new(self.fetch_inner(req).await?))
    }

    async fn stat(&self, req: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        caller(&req)?;
        let size = self
            .ctx
            .state
            .artifacts()
            .size(&req.get_ref().sha256)
            .await?;
        Ok(Response::new(StatResponse { size }))
    }

    async fn upload(
        &self,
        req: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<UploadResponse>, Status> {
        Ok(Response::new(self.upload_inner(req).await?))
    }
}
