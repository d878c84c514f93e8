//! Artifacts several controllers serve: the controller that received an upload also stores it
//! in the PostgreSQL store in 1 MiB chunks, then indexes it (the index row marks it complete);
//! another controller asked for it materializes it into its own artifact directory first,
//! through the same checks as an upload (size, sha256, archive guards).

use std::io::Read;

use super::ControllerState;
use crate::artifacts::ArtifactError;
use crate::store::{Engine, StoreError};

/// The chunk size in the store.
const CHUNK: usize = 1 << 20;

fn store_err(e: StoreError) -> ArtifactError {
    ArtifactError::Io {
        action: "sharing through the store",
        path: std::path::PathBuf::from("store"),
        source: std::io::Error::other(e.to_string()),
    }
}

impl ControllerState {
    /// Stores a just-uploaded artifact's bytes for the other controllers (several controllers;
    /// a no-op on the embedded store). Call before indexing it.
    pub async fn share_artifact(&self, sha256: &str) -> Result<(), ArtifactError> {
        if self.store.engine() != Engine::Postgres {
            return Ok(());
        }
        let path = self.artifacts.path_for(sha256)?;
        let mut file = std::fs::File::open(&path).map_err(|source| ArtifactError::Io {
            action: "opening",
            path: path.clone(),
            source,
        })?;
        let mut buf = vec![0u8; CHUNK];
        let mut idx = 0u64;
        loop {
            let mut filled = 0;
            while filled < CHUNK {
                let n = file
                    .read(&mut buf[filled..])
                    .map_err(|source| ArtifactError::Io {
                        action: "reading",
                        path: path.clone(),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            let data = &buf[..filled];
            self.store
                .write(|tx| tx.put_artifact_chunk(sha256, idx, data))
                .map_err(store_err)?;
            idx += 1;
            if filled < CHUNK {
                break;
            }
        }
        Ok(())
    }

    /// Makes sure artifact `sha256` is in this controller's artifact directory if any
    /// controller has it (several controllers; a no-op on the embedded store). Absent
    /// everywhere is not an error here: the caller's lookup says NotFound.
    pub async fn ensure_artifact(&self, sha256: &str) -> Result<(), ArtifactError> {
        if self.store.engine() != Engine::Postgres || self.artifacts.size(sha256).await.is_ok() {
            return Ok(());
        }
        crate::artifacts::validate_sha256(sha256)?;
        let _one_at_a_time = self.materializing.lock().await;
        if self.artifacts.size(sha256).await.is_ok() {
            return Ok(());
        }
        let Some(size) = self
            .store
            .read(|tx| tx.artifact_size(sha256))
            .map_err(store_err)?
        else {
            return Ok(());
        };
        let mut upload = self.artifacts.begin_upload(sha256, size)?;
        let mut idx = 0;
        let mut got = 0u64;
        while got < size {
            let chunk = self
                .store
                .read(|tx| tx.artifact_chunk(sha256, idx))
                .map_err(store_err)?
                .ok_or_else(|| ArtifactError::Mismatch {
                    reason: format!("chunk {idx} of {sha256} is missing from the store"),
                })?;
            got += chunk.len() as u64;
            upload.push(chunk).await?;
            idx += 1;
        }
        upload.finish().await?;
        tracing::info!(%sha256, size, "artifact taken from the store");
        Ok(())
    }
}
