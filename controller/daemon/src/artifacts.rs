//! Content-addressed artifacts (distribution packs) on disk.
//!
//! Files are named by their lowercase hex sha256 in one directory. An [`Upload`] streams into a
//! temp file in the same directory (a writer thread hashes and writes while the next chunks
//! arrive), is checked against the announced size and digest and its zip central directory
//! against `apim_plan::pack`'s guards, fsynced, and only then renamed into place: a name in
//! the store always holds exactly the bytes its name promises, and a pack apimctl would unpack. The gRPC
//! side (`ArtifactService`) is in [`crate::server`].

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apim_plan::pack::PackConfig;

use sha2::{Digest, Sha256};

/// Mode of stored artifacts: distribution packs are not secret, but nobody else needs them.
const ARTIFACT_MODE: u32 = 0o640;
/// Upload chunks (1 MiB each from `apimctl`) received but not yet hashed and written.
const UPLOAD_QUEUE: usize = 8;
/// The size of the writes an upload is stored in: small writes get small page-cache folios,
/// made of recently freed pages; 1 MiB writes get large folios, often memory a VM guest handed
/// back to its hypervisor, which faults on first touch (see the agent's unpacker).
const WRITE_PIECE: usize = 8 * 1024;

/// What the artifact store can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The digest is not 64 lowercase hex characters.
    #[error("invalid sha256: must be 64 lowercase hex characters")]
    InvalidDigest,
    /// No artifact with this digest is stored.
    #[error("artifact {sha256} is not stored")]
    NotFound {
        /// The requested digest.
        sha256: String,
    },
    /// An upload's content does not match what it announced (size or sha256).
    #[error("uploaded artifact does not match its header: {reason}")]
    Mismatch {
        /// Which check failed, with expected and actual values.
        reason: String,
    },
    /// The upload is not a pack apimctl would unpack (see `apim_plan::pack`).
    #[error("the pack is refused: {problem}")]
    BadPack {
        /// What is wrong with it.
        problem: apim_plan::pack::PackProblem,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the store was doing.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArtifactError {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io {
        action,
        path,
        source,
    }
}

/// Checks that `sha256` is 64 lowercase hex characters (so it is also a safe file name).
pub fn validate_sha256(sha256: &str) -> Result<(), ArtifactError> {
    let ok = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::InvalidDigest)
    }
}

/// The directory of stored artifacts.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    /// Configuration files read out of stored packs (content-addressed, so never stale).
    configs: Arc<std::sync::Mutex<HashMap<String, Arc<PackConfig>>>>,
}

impl ArtifactStore {
    /// Opens (creating it 0750 if missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ArtifactError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err("creating artifact directory", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(io_err("restricting artifact directory", dir))?;
        }
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
            configs: Default::default(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact with this digest lives (validated first).
    pub fn path_for(&self, sha256: &str) -> Result<PathBuf, ArtifactError> {
        validate_sha256(sha256)?;
        Ok(self.dir.join(sha256))
    }

    /// The stored size; [`ArtifactError::NotFound`] when absent.
    pub async fn size(&self, sha256: &str) -> Result<u64, ArtifactError> {
        let path = self.path_for(sha256)?;
        let not_found = || ArtifactError::NotFound {
            sha256: sha256.to_owned(),
        };
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(meta.len()),
            Ok(_) => Err(not_found()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found()),
            Err(source) => Err(ArtifactError::Io {
                action: "reading metadata of",
                path,
                source,
            }),
        }
    }

    /// A stored pack's configuration files, after its central directory passed the pack guards
    /// again; read once per digest.
    pub async fn pack_config(&self, sha256: &str) -> Result<Arc<PackConfig>, ArtifactError> {
        if let Some(c) = self.cached(sha256) {
            return Ok(c);
        }
        self.size(sha256).await?;
        let path = self.path_for(sha256)?;
        let read = tokio::task::spawn_blocking(move || {
            apim_plan::pack::inspect_file(&path, &apim_plan::pack::PackLimits::default())
                .and_then(|_| apim_plan::pack::config::read_file(&path))
        })
        .await
        .map_err(|e| ArtifactError::Io {
            action: "reading",
            path: self.dir.join(sha256),
            source: io::Error::other(e.to_string()),
        })?;
        let config = Arc::new(read.map_err(|problem| ArtifactError::BadPack { problem })?);
        self.configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sha256.to_string(), config.clone());
        Ok(config)
    }

    fn cached(&self, sha256: &str) -> Option<Arc<PackConfig>> {
        let cache = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(sha256).cloned()
    }

    /// Every stored artifact: (sha256, size), by sha256. Files whose name is not a digest
    /// (uploads in progress) are not artifacts.
    pub fn list(&self) -> Result<Vec<(String, u64)>, ArtifactError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_sha256(&name).is_err() {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(io_err("reading metadata of", &entry.path()))?;
            if meta.is_file() {
                out.push((name, meta.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a stored artifact (gone already: nothing to do).
    pub fn remove(&self, sha256: &str) -> Result<(), ArtifactError> {
        let path = self.path_for(sha256)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &path)(e)),
        }
        self.configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha256);
        Ok(())
    }

    /// Starts storing an artifact of `size` bytes whose sha256 should be `sha256`.
    pub fn begin_upload(&self, sha256: &str, size: u64) -> Result<Upload, ArtifactError> {
        let final_path = self.path_for(sha256)?;
        let tmp = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&self.dir)
            .map_err(io_err("creating upload temp file in", &self.dir))?;
        let tmp_path = tmp.path().to_path_buf();
        let mut file = tmp
            .as_file()
            .try_clone()
            .map_err(io_err("opening", &tmp_path))?;
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(UPLOAD_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<Sha256> {
            let mut hasher = Sha256::new();
            while let Some(data) = queued.blocking_recv() {
                hasher.update(&data);
                for piece in data.chunks(WRITE_PIECE) {
                    file.write_all(piece)?;
                }
            }
            file.sync_all()?;
            Ok(hasher)
        });
        Ok(Upload {
            dir: self.dir.clone(),
            final_path,
            tmp,
            sha256: sha256.to_owned(),
            size,
            received: 0,
            queue: Some(queue),
            writer,
        })
    }
}

/// An artifact being stored: [`Upload::push`] its bytes in order, then [`Upload::finish`]. A
/// dropped upload leaves nothing behind.
pub struct Upload {
    dir: PathBuf,
    final_path: PathBuf,
    tmp: tempfile::NamedTempFile,
    sha256: String,
    size: u64,
    received: u64,
    queue: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    writer: tokio::task::JoinHandle<io::Result<Sha256>>,
}

impl Upload {
    /// Hands the next bytes to the writer thread (waits while it is [`UPLOAD_QUEUE`] behind).
    pub async fn push(&mut self, data: Vec<u8>) -> Result<(), ArtifactError> {
        self.received += data.len() as u64;
        if self.received > self.size {
            return Err(ArtifactError::Mismatch {
                reason: format!("more than the announced {} bytes", self.size),
            });
        }
        // A closed queue means the writer stopped: `finish` reports its error.
        if let Some(q) = &self.queue
            && q.send(data).await.is_err()
        {
            self.queue = None;
        }
        Ok(())
    }

    /// Checks size and digest, and moves the synced file into place (mode 0640).
    pub async fn finish(mut self) -> Result<(), ArtifactError> {
        self.queue = None;
        let tmp_path = self.tmp.path().to_path_buf();
        let hasher = (&mut self.writer)
            .await
            .map_err(|e| io_err("writing", &tmp_path)(io::Error::other(e)))?
            .map_err(io_err("writing", &tmp_path))?;
        if self.received != self.size {
            return Err(ArtifactError::Mismatch {
                reason: format!("size {}, announced {}", self.received, self.size),
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != self.sha256 {
            return Err(ArtifactError::Mismatch {
                reason: format!("sha256 {actual}, announced {}", self.sha256),
            });
        }
        // An unsafe archive never enters the store: its central directory is read before the
        // rename (a pack's one top directory is checked where the pack is used).
        let file = self.tmp.reopen().map_err(io_err("reopening", &tmp_path))?;
        let limits = apim_plan::pack::PackLimits::default();
        tokio::task::spawn_blocking(move || {
            apim_plan::pack::inspect_archive(std::io::BufReader::new(file), &limits)
        })
        .await
        .map_err(|e| io_err("inspecting", &tmp_path)(io::Error::other(e)))?
        .map_err(|problem| ArtifactError::BadPack { problem })?;
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(ARTIFACT_MODE))
            .map_err(io_err("setting mode of", &tmp_path))?;
        let final_path = self.final_path.clone();
        self.tmp
            .persist(&final_path)
            .map_err(|e| io_err("renaming upload into", &final_path)(e.error))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &self.dir))
    }
}
