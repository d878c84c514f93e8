//! The daemon's configuration: a TOML file, overridden by flags, with test-friendly seams.
//!
//! Production defaults are the real paths (`/var/lib/apim-agent`, install root `/`,
//! `/etc/hosts`); tests point everything into temp dirs and shorten the timings. The join token
//! is held here only until enrollment and never appears in `Debug` output or logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::daemon::error::{DaemonError, DaemonResult};
use apim_certs::tls::ControllerEndpoint;

/// Default state dir of a production agent.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/apim-agent";
/// Default config file of a production agent.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/apim-agent/agent.toml";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (a terminal, or journald).
    #[default]
    Human,
    /// One JSON object per line (log shippers).
    Json,
}

/// The `agent.toml` file; every field may also come from a flag (flags win).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port` of the controller; several controllers comma-separated (tried in order,
    /// the next on a failed connect or a dropped stream).
    pub controller: Option<String>,
    /// Name every controller certificate must carry (default: the host of each address).
    pub server_name: Option<String>,
    /// This machine's name in the plan.
    pub machine: Option<String>,
    /// Where the identity, ledger, node records and pack cache live.
    pub state_dir: Option<PathBuf>,
    /// Prefix applied to every absolute install dir of the spec (default `/`).
    pub install_root: Option<PathBuf>,
    /// The hosts file whose managed block the agent owns (default `/etc/hosts`).
    pub hosts_file: Option<PathBuf>,
    /// A file holding the one-time join token (first start only).
    pub token_file: Option<PathBuf>,
    /// `human` or `json`.
    pub log_format: Option<LogFormat>,
    /// Seconds between two drift checks of every node (default 60; 0: only on demand, when
    /// `apimctl check` asks).
    pub drift_interval_secs: Option<u64>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> DaemonResult<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DaemonError::io("read config file", path, e))?;
        toml::from_str(&text).map_err(|e| DaemonError::Config {
            reason: format!("{}: {e}", path.display()),
        })
    }
}

/// Timings of the daemon's loops; [`Timings::default`] is production, tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// A full status report is sent at least this often.
    pub report_interval: Duration,
    /// Facts are re-gathered this often (and reported when they changed).
    pub facts_interval: Duration,
    /// How often a node's liveness is checked.
    pub supervise_interval: Duration,
    /// First restart delay of a dead node; doubles per restart up to `restart_backoff_max`.
    pub restart_backoff: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
    /// First retry delay of a failed converge; doubles up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest converge retry delay.
    pub retry_backoff_max: Duration,
    /// First reconnect delay to the controller (jittered), doubling up to `reconnect_max`.
    pub reconnect_base: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// TCP connect + TLS handshake limit.
    pub connect_timeout: Duration,
    /// How long a node gets to exit after its stop script before SIGTERM / SIGKILL.
    pub stop_grace: Duration,
    /// Attempts of one download (each resumes where the last stopped).
    pub fetch_attempts: u32,
    /// How long a node serves before its freshly installed tree is synced. By then the kernel
    /// has written most of it back on its own (`vm.dirty_expire_centisecs`, 30 s by default),
    /// so the sync is cheap and does not compete for the disk with nodes still unpacking or
    /// starting. Until then a crash of the machine means installing the tree again.
    pub tree_sync_delay: Duration,
    /// How often each settled node is checked for drift (its files against what the agent
    /// wrote); zero: only on demand (`CheckDrift`).
    pub drift_interval: Duration,
    /// How often folders shared with other machines (`SharedFolders` sync) are scanned for
    /// local changes while connected.
    pub folder_scan_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            report_interval: Duration::from_secs(10),
            facts_interval: Duration::from_secs(60),
            supervise_interval: Duration::from_secs(2),
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(300),
            retry_backoff: Duration::from_secs(2),
            retry_backoff_max: Duration::from_secs(300),
            reconnect_base: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(60),
            fetch_attempts: 5,
            tree_sync_delay: Duration::from_secs(30),
            drift_interval: Duration::from_secs(60),
            folder_scan_interval: Duration::from_secs(1),
        }
    }
}

/// Everything [`crate::daemon::run`] needs. `Debug` never shows the token.
#[derive(Clone)]
pub struct AgentConfig {
    /// Where the controllers listen, in the order they are tried (at least one).
    pub endpoints: Vec<ControllerEndpoint>,
    /// This machine's name (must match the identity's).
    pub machine: String,
    /// State dir (created 0700).
    pub state_dir: PathBuf,
    /// Prefix for the spec's absolute install dirs.
    pub install_root: PathBuf,
    /// The hosts file.
    pub hosts_file: PathBuf,
    /// The join token, for the first start only. SECRET.
    pub token: Option<String>,
    /// Where the join token is read from (read again to re-admit a revoked machine).
    pub token_file: Option<PathBuf>,
    /// Loop timings.
    pub timings: Timings,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("endpoints", &self.endpoints)
            .field("machine", &self.machine)
            .field("state_dir", &self.state_dir)
            .field("install_root", &self.install_root)
            .field("hosts_file", &self.hosts_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("timings", &self.timings)
            .finish()
    }
}

impl AgentConfig {
    /// A configuration with production paths and timings, for one controller (set
    /// [`AgentConfig::endpoints`] for several).
    pub fn new(endpoint: ControllerEndpoint, machine: impl Into<String>) -> Self {
        AgentConfig {
            endpoints: vec![endpoint],
            machine: machine.into(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            install_root: PathBuf::from("/"),
            hosts_file: PathBuf::from(crate::exec::hosts::DEFAULT_HOSTS_PATH),
            token: None,
            token_file: None,
            timings: Timings::default(),
        }
    }

    /// The join token now: the token file's content when there is one (an operator may have
    /// put a new token there), else the token given at start.
    pub fn current_token(&self) -> Option<String> {
        match &self.token_file {
            Some(p) => read_token_file(p).ok(),
            None => self.token.clone(),
        }
    }

    /// Where verified packs are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }

    /// Where per-node records live.
    pub fn nodes_dir(&self) -> PathBuf {
        self.state_dir.join("nodes")
    }

    /// The on-disk location of a spec's absolute `install_dir` under the install root.
    /// Refuses relative paths and `..` so a spec cannot point outside the root.
    pub fn rooted(&self, node: &str, install_dir: &str) -> DaemonResult<PathBuf> {
        let p = Path::new(install_dir);
        let bad = |reason: &str| DaemonError::BadSpec {
            node: node.to_owned(),
            reason: format!("install_dir {install_dir:?} {reason}"),
        };
        if !p.is_absolute() {
            return Err(bad("is not absolute"));
        }
        let mut out = self.install_root.clone();
        for c in p.components() {
            match c {
                std::path::Component::RootDir | std::path::Component::CurDir => {}
                std::path::Component::Normal(n) => out.push(n),
                _ => return Err(bad("contains '..'")),
            }
        }
        Ok(out)
    }
}

/// The endpoints of a comma-separated `host:port` list, in order (blanks skipped); with
/// `server_name`, every controller's certificate must carry that name, else each address's
/// host.
pub fn parse_endpoints(
    list: &str,
    server_name: Option<&str>,
) -> DaemonResult<Vec<ControllerEndpoint>> {
    let endpoints = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let e = ControllerEndpoint::parse(a)
                .map_err(|e| DaemonError::from(crate::daemon::identity::EnrollError::from(e)))?;
            Ok(match server_name {
                Some(n) => e.with_server_name(n.to_owned()),
                None => e,
            })
        })
        .collect::<DaemonResult<Vec<_>>>()?;
    if endpoints.is_empty() {
        return Err(DaemonError::Config {
            reason: format!("the controller address {list:?} names no host:port"),
        });
    }
    Ok(endpoints)
}

/// Reads a join token from a file (trimmed); an empty file is an error.
pub fn read_token_file(path: &Path) -> DaemonResult<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| DaemonError::io("read token file", path, e))?;
    let t = text.trim().to_owned();
    if t.is_empty() {
        return Err(DaemonError::Config {
            reason: format!("token file {} is empty", path.display()),
        });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_list_keeps_its_order_and_each_host_is_its_server_name() {
        let e = parse_endpoints(" ctl-a.example:7443, ,10.0.0.2:7443 ", None).expect("list");
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.address.as_str(), e.server_name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("ctl-a.example:7443", "ctl-a.example"),
                ("10.0.0.2:7443", "10.0.0.2")
            ]
        );
        let named = parse_endpoints("a:1,b:2", Some("ctl.example")).expect("list");
        assert!(named.iter().all(|e| e.server_name == "ctl.example"));
        assert!(parse_endpoints(" , ", None).is_err());
        assert!(parse_endpoints("a:1,no-port", None).is_err());
    }
}
