//! The operator's connection to the controller: mTLS with an operator certificate, pinned to
//! the controller's CA.
//!
//! Settings come from flags, then the environment (`APIMCTL_CONTROLLER`, `APIMCTL_CA`,
//! `APIMCTL_CERT`, `APIMCTL_KEY`), then a config file (`$APIMCTL_CONFIG`, else
//! `~/.config/apimctl/client.toml`) with the keys `controller`, `ca`, `cert`, `key`.
//! `controller` may list several controllers (`a:7443,b:7443`): the first that connects is used.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apim_certs::tls;
use apim_proto::v1::artifact_service_client::ArtifactServiceClient;
use apim_proto::v1::operator_service_client::OperatorServiceClient;
use apim_proto::v1::{StatRequest, UploadChunk, UploadHeader};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tonic::transport::Channel;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A setting is missing everywhere it could come from.
    #[error("no {what}: pass --{flag}, set {env}, or put `{key}` in the client config file")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Its flag.
        flag: &'static str,
        /// Its environment variable.
        env: &'static str,
        /// Its key in the config file.
        key: &'static str,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Connecting failed (TLS configuration, address, TCP or the handshake).
    #[error("{source}")]
    Connect {
        /// The controller.
        address: String,
        /// What failed, with its causes.
        source: tls::TlsError,
    },
    /// The controller could not be reached: nothing listens, no answer, or the TLS handshake
    /// failed (see [`crate::reach`] for what is found out and said).
    #[error("{}", .0.message())]
    Unreachable(Box<crate::reach::Unreachable>),
    /// The controller refused the operator certificate on a call (unknown CA, expired,
    /// revoked, not an operator's).
    #[error("{}", status.message())]
    Rejected {
        /// The status.
        status: tonic::Status,
        /// The files the connection used.
        files: crate::reach::Files,
    },
    /// A call failed.
    #[error("{}", status.message())]
    Rpc {
        /// The status.
        status: tonic::Status,
    },
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Rpc { status }
    }
}

/// Where and how to reach the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The controller's address, host:port; several, comma-separated, are tried in order.
    #[arg(
        long,
        env = "APIMCTL_CONTROLLER",
        global = true,
        hide_env_values = true
    )]
    pub controller: Option<String>,
    /// The controller's CA certificate (PEM).
    #[arg(long, env = "APIMCTL_CA", global = true, hide_env_values = true)]
    pub ca: Option<PathBuf>,
    /// The operator certificate (PEM).
    #[arg(long, env = "APIMCTL_CERT", global = true, hide_env_values = true)]
    pub cert: Option<PathBuf>,
    /// The operator key (PEM).
    #[arg(long, env = "APIMCTL_KEY", global = true, hide_env_values = true)]
    pub key: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Settings {
    /// Fills what flags and environment left unset from the config file, if there is one.
    pub fn with_file(mut self) -> Result<Self, ClientError> {
        let path = std::env::var_os("APIMCTL_CONFIG")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".config/apimctl/client.toml"))
            });
        if let Some(path) = path.filter(|p| p.exists()) {
            let file: Settings =
                toml::from_str(&read(&path)?).map_err(|e| ClientError::Config {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            self.controller = self.controller.or(file.controller);
            self.ca = self.ca.or(file.ca);
            self.cert = self.cert.or(file.cert);
            self.key = self.key.or(file.key);
        }
        Ok(self)
    }

    /// The operator certificate and key files, as the settings name them.
    pub fn identity_files(&self) -> Result<(PathBuf, PathBuf), ClientError> {
        let cert = self.cert.clone().ok_or(ClientError::Missing {
            what: "operator certificate",
            flag: "cert",
            env: "APIMCTL_CERT",
            key: "cert",
        })?;
        let key = self.key.clone().ok_or(ClientError::Missing {
            what: "operator key",
            flag: "key",
            env: "APIMCTL_KEY",
            key: "key",
        })?;
        Ok((cert, key))
    }

    /// Opens an mTLS channel to the controller.
    pub async fn connect(&self) -> Result<Channel, ClientError> {
        let missing = |what, flag, env, key| ClientError::Missing {
            what,
            flag,
            env,
            key,
        };
        let address = self.controller.clone().ok_or_else(|| {
            missing(
                "controller address",
                "controller",
                "APIMCTL_CONTROLLER",
                "controller",
            )
        })?;
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| missing("CA certificate", "ca", "APIMCTL_CA", "ca"))?;
        let cert = self
            .cert
            .as_ref()
            .ok_or_else(|| missing("operator certificate", "cert", "APIMCTL_CERT", "cert"))?;
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| missing("operator key", "key", "APIMCTL_KEY", "key"))?;
        let pem_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls_pki_types::pem::Error| ClientError::Config {
                path,
                reason: e.to_string(),
            }
        };
        let chain = CertificateDer::pem_slice_iter(read(cert)?.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(cert))?;
        let key = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes()).map_err(pem_err(key))?;
        let tls_err = |source| ClientError::Connect {
            address: address.clone(),
            source,
        };
        let config = Arc::new(tls::client_config(&read(ca)?, Some((chain, key))).map_err(tls_err)?);
        // Several controllers: tried in order, each with the connect timeout; the first that
        // connects wins. A malformed address is a configuration error, not a failover.
        let endpoints = addresses(&address)
            .into_iter()
            .map(|a| tls::ControllerEndpoint::parse(a).map(|e| (a, e)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls_err)?;
        let mut tried: Vec<crate::reach::Unreachable> = Vec::new();
        for (address, endpoint) in endpoints {
            match tls::connect(&endpoint, Arc::clone(&config), Duration::from_secs(10)).await {
                Ok(channel) => return Ok(channel),
                Err(tls::TlsError::Connect { reason, .. }) => {
                    let files = crate::reach::Files::of(self);
                    tried.push(crate::reach::Unreachable::diagnose(address, &reason, files).await);
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        address: address.to_owned(),
                        source,
                    });
                }
            }
        }
        match crate::reach::Unreachable::all(tried) {
            Some(found) => Err(ClientError::Unreachable(Box::new(found))),
            None => Err(missing(
                "controller address",
                "controller",
                "APIMCTL_CONTROLLER",
                "controller",
            )),
        }
    }
}

/// The addresses of a comma-separated `host:port` list, in order, blanks skipped.
pub fn addresses(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}

/// The operator API over `channel`.
pub fn operator(channel: Channel) -> OperatorServiceClient<Channel> {
    OperatorServiceClient::new(channel)
}

/// Upload chunks read ahead of the network.
const UPLOAD_READ_AHEAD: usize = 4;
/// The size of an upload chunk.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// Reads `file` into upload messages (the first carries `header`) until its end or the
/// receiver's going away, hashing what it reads; returns the file's sha256 when it was read
/// to its end. A read error ends the stream early: the controller checks size and sha256, so
/// the upload fails there.
fn read_chunks(
    mut file: std::fs::File,
    header: UploadHeader,
    ready: &tokio::sync::mpsc::Sender<UploadChunk>,
) -> Option<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut header = Some(header);
    let mut hasher = sha2::Sha256::new();
    loop {
        let mut data = Vec::with_capacity(UPLOAD_CHUNK);
        (&mut file)
            .take(UPLOAD_CHUNK as u64)
            .read_to_end(&mut data)
            .ok()?;
        // The header goes even with an empty file, so the controller sees a whole request.
        if data.is_empty() && header.is_none() {
            return Some(hex::encode(hasher.finalize()));
        }
        hasher.update(&data);
        let last = data.len() < UPLOAD_CHUNK;
        let chunk = UploadChunk {
            header: header.take(),
            data,
        };
        ready.blocking_send(chunk).ok()?;
        if last {
            return Some(hex::encode(hasher.finalize()));
        }
    }
}

/// What [`upload_if_missing`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The controller lacked the pack and now has it.
    pub sent: bool,
    /// The file's sha256 when it was read whole on the way (it was sent), else `None`.
    pub read_sha256: Option<String>,
}

/// Uploads the file at `path` (sha256 `sha256`); the controller keeps what it already has,
/// and refuses a file whose sha256 is not `sha256`.
pub async fn upload_if_missing(
    channel: Channel,
    path: &Path,
    sha256: &str,
) -> Result<Uploaded, ClientError> {
    let mut client = ArtifactServiceClient::new(channel);
    let read_err = |source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    // A pack the controller holds is not read or sent again (no-op applies stay cheap).
    match client
        .stat(StatRequest {
            sha256: sha256.to_string(),
        })
        .await
    {
        Ok(r) if r.get_ref().size == size => {
            return Ok(Uploaded {
                sent: false,
                read_sha256: None,
            });
        }
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(s.into()),
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Streamed from the file in 1 MiB chunks: a pack is never held in memory whole. A reader
    // thread keeps up to UPLOAD_READ_AHEAD chunks ready, so reading overlaps sending, and
    // hashes them on the way.
    let file = std::fs::File::open(path).map_err(read_err)?;
    let header = UploadHeader {
        sha256: sha256.to_string(),
        size,
        name,
    };
    let (ready, chunks) = tokio::sync::mpsc::channel(UPLOAD_READ_AHEAD);
    let reading = tokio::task::spawn_blocking(move || read_chunks(file, header, &ready));
    let chunks = tokio_stream::wrappers::ReceiverStream::new(chunks);
    let r = client.upload(chunks).await?.into_inner();
    Ok(Uploaded {
        sent: !r.already_present,
        read_sha256: reading.await.ok().flatten(),
    })
}
