//! `apimctl controller run`: the controller daemon (store, gRPC server, rollout engine).
//!
//! Configuration is a small TOML file (`/etc/apimctl/controller.toml` by default):
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! server_names = ["controller.example.com", "10.0.0.2"]
//! data_dir = "/var/lib/apimctl"
//! ```
//!
//! The data directory (0700) holds `controller.db` (0600), the control-plane CA (`ca/`), the
//! product PKIs (`pki/`) and the artifacts (`artifacts/`). READY is sent to systemd once the
//! listener is bound; SIGTERM/SIGINT stop the server gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::server::{self, ControllerState, ServerConfig};
use crate::store::Store;

/// The production configuration path.
pub const DEFAULT_CONFIG: &str = "/etc/apimctl/controller.toml";
/// The production data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/apimctl";
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";

/// The daemon's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address and port to serve on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Names and addresses agents and operators dial (the server certificate's SANs).
    #[serde(default = "default_names")]
    pub server_names: Vec<String>,
    /// Where the store, CA, PKIs and artifacts live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default")
}

fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration file could not be read.
    #[error("{}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error("{}: {source}", path.display())]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: toml::de::Error,
    },
    /// The control-plane CA could not be loaded or created.
    #[error("control-plane CA: {0}")]
    Ca(#[from] apim_certs::CertsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The server failed.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    /// Binding the listener failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl DaemonConfig {
    /// Reads the configuration file.
    pub fn load(path: &Path) -> Result<Self, DaemonError> {
        let text = std::fs::read_to_string(path).map_err(|source| DaemonError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| DaemonError::ParseConfig {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Initialises tracing: human-readable in a terminal, JSON with `json` (one object per line,
/// journald-friendly). `RUST_LOG` overrides the `info` default.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The control-plane CA directory inside the data directory.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ca")
}

/// Opens the controller's state over `data_dir` (CA, store, artifacts, PKIs).
pub fn open_state(data_dir: &Path) -> Result<ControllerState, DaemonError> {
    let store = Store::open(data_dir)?;
    let ca = apim_certs::ControlPlaneCa::load_or_create(&ca_dir(data_dir))?;
    Ok(ControllerState::open(
        ca,
        &data_dir.join("artifacts"),
        &data_dir.join("pki"),
        store,
    )?)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let state = Arc::new(open_state(&config.data_dir)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "controller serving");
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY not sent");
    }
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    };
    server::serve(
        ServerConfig::new(config.server_names.clone()),
        state,
        listener,
        shutdown,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_refuses_unknown_keys() {
        let c: DaemonConfig = toml::from_str("listen = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.listen.port(), 9000);
        assert!(toml::from_str::<DaemonConfig>("lisen = \"x\"").is_err());
    }
}
