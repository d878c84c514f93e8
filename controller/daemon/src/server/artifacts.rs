//! The `ArtifactService`: agents `Fetch`/`Stat` packs, operators `Upload` them into the
//! [`crate::artifacts::ArtifactStore`].

use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;

use apim_certs::{PeerCert, PeerIdentity};
use apim_proto::v1::artifact_service_server::ArtifactService;
use apim_proto::v1::{Chunk, FetchRequest, StatRequest, StatResponse, UploadChunk, UploadResponse};
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::{Request, Response, Status, Streaming};

use super::Ctx;
use super::auth::caller;
use super::error::ServerError;
use crate::artifacts::{ArtifactError, validate_sha256};

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

    /// An agent may read only the packs its own specs name (see
    /// [`crate::state::ControllerState::may_fetch`]); operators may read any.
    fn check_scope(&self, peer: Option<&PeerCert>, sha256: &str) -> Result<(), ServerError> {
        validate_sha256(sha256)?;
        let Some(PeerCert {
            identity: PeerIdentity::Agent { machine },
            ..
        }) = peer
        else {
            return Ok(());
        };
        if self.ctx.state.may_fetch(machine, sha256)? {
            Ok(())
        } else {
            Err(ServerError::ArtifactNotInSpec {
                machine: machine.clone(),
                sha256: sha256.to_owned(),
            })
        }
    }

    async fn fetch_inner(&self, req: Request<FetchRequest>) -> Result<FetchStream, ServerError> {
        let peer = caller(&req)?.peer;
        let FetchRequest {
            sha256,
            offset,
            limit,
        } = req.into_inner();
        self.check_scope(peer.as_ref(), &sha256)?;
        self.ctx.state.ensure_artifact(&sha256).await?;
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
        validate_sha256(&header.sha256).map_err(ServerError::from)?;
        if header.size > self.ctx.config.max_artifact_size {
            return Err(ServerError::InvalidArgument {
                field: "size",
                reason: format!(
                    "{} bytes is over the controller's limit of {}",
                    header.size, self.ctx.config.max_artifact_size
                ),
            });
        }
        self.ctx.state.ensure_artifact(&header.sha256).await?;
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
            Ok(_) | Err(ArtifactError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let mut upload = store.begin_upload(&header.sha256, header.size)?;
        let mut data = first.data;
        loop {
            upload.push(data).await?;
            match chunks.message().await {
                Ok(Some(chunk)) if chunk.header.is_some() => {
                    return Err(ServerError::Protocol {
                        reason: "only the first upload message may carry a header".into(),
                    });
                }
                Ok(Some(chunk)) => data = chunk.data,
                Ok(None) => break,
                Err(status) => {
                    return Err(ServerError::Protocol {
                        reason: format!("upload stream broke: {}", status.message()),
                    });
                }
            }
        }
        upload.finish().await?;
        self.ctx.state.share_artifact(&header.sha256).await?;
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
        self.ctx
            .state
            .ensure_artifact(&req.get_ref().sha256)
            .await
            .map_err(ServerError::from)?;
        let size = self
            .ctx
            .state
            .artifacts()
            .size(&req.get_ref().sha256)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(StatResponse { size }))
    }

    async fn upload(
        &self,
        req: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<UploadResponse>, Status> {
        Ok(Response::new(self.upload_inner(req).await?))
    }
}
