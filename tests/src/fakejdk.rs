//! A fake JDK per simulated machine: `bin/java` is `apim-simjava`, `bin/keytool` the real one.
//!
//! Tests give every simulated machine its own JDK directory; `apimsim.toml` in it carries the
//! machine-level facts the simulated server needs (its address, its hosts file), so several
//! "machines" share one loopback interface without sharing ports or name resolution.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the machine settings inside the fake JDK home.
pub const MACHINE_SETTINGS_FILE: &str = "apimsim.toml";

/// Machine-level settings of a simulated VM, read by `apim-simjava` from `<jdk>/apimsim.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSettings {
    /// The address every server port of this machine binds to (a 127.0.0.0/8 address).
    pub bind_address: IpAddr,
    /// The hosts file this machine resolves peer names with, instead of `/etc/hosts`.
    pub hosts_file: PathBuf,
    /// Delay between start and the "WSO2 Carbon started" line (a node may override it).
    #[serde(default = "default_startup_delay_ms")]
    pub startup_delay_ms: u64,
    /// Interval between attempts to reach an unreachable peer.
    #[serde(default = "default_peer_retry_ms")]
    pub peer_retry_ms: u64,
}

fn default_startup_delay_ms() -> u64 {
    300
}

fn default_peer_retry_ms() -> u64 {
    250
}

impl MachineSettings {
    /// Settings with default timings for a machine at `bind_address` using `hosts_file`.
    pub fn new(bind_address: IpAddr, hosts_file: impl Into<PathBuf>) -> MachineSettings {
        MachineSettings {
            bind_address,
            hosts_file: hosts_file.into(),
            startup_delay_ms: default_startup_delay_ms(),
            peer_retry_ms: default_peer_retry_ms(),
        }
    }

    /// Reads `<jdk_home>/apimsim.toml`.
    pub fn load(jdk_home: &Path) -> Result<MachineSettings, FakeJdkError> {
        let path = jdk_home.join(MACHINE_SETTINGS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| FakeJdkError::Io {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| FakeJdkError::Settings {
            path,
            message: e.to_string(),
        })
    }
}

/// Everything needed to lay out a fake JDK.
#[derive(Clone, Debug)]
pub struct JdkSettings {
    /// The machine this JDK belongs to.
    pub machine: MachineSettings,
    /// The `apim-simjava` binary (`env!("CARGO_BIN_EXE_apim-simjava")` in this crate's tests).
    pub simjava: PathBuf,
    /// Version written to `release` and printed by `java -version`.
    pub java_version: String,
    /// The real keytool to link; default: [`crate::simpack::find_keytool`].
    pub keytool: Option<PathBuf>,
}

impl JdkSettings {
    /// A JDK 17 for `machine` that runs `simjava`.
    pub fn new(machine: MachineSettings, simjava: impl Into<PathBuf>) -> JdkSettings {
        JdkSettings {
            machine,
            simjava: simjava.into(),
            java_version: "17.0.9".to_string(),
            keytool: None,
        }
    }
}

/// Paths of a fake JDK that was laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeJdk {
    /// The JAVA_HOME to give the start scripts.
    pub home: PathBuf,
    /// `<home>/bin/java` (a symlink to `apim-simjava`).
    pub java: PathBuf,
    /// `<home>/bin/keytool` (a symlink to the real keytool).
    pub keytool: PathBuf,
}

/// Errors from laying out or reading a fake JDK.
#[derive(Debug, thiserror::Error)]
pub enum FakeJdkError {
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `apimsim.toml` is not valid.
    #[error("{path}: invalid machine settings: {message}")]
    Settings {
        /// The settings file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No real keytool was found to link.
    #[error("no keytool found to link into the fake JDK")]
    KeytoolNotFound,
    /// The simjava binary does not exist.
    #[error("apim-simjava binary not found at {0}")]
    SimjavaMissing(PathBuf),
}

/// Lays out a fake JDK in `dir` (created if missing) and returns its paths.
pub fn make_fake_jdk(dir: &Path, settings: &JdkSettings) -> Result<FakeJdk, FakeJdkError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FakeJdkError::Io { path, source }
    };
    if !settings.simjava.is_file() {
        return Err(FakeJdkError::SimjavaMissing(settings.simjava.clone()));
    }
    let keytool_src = match &settings.keytool {
        Some(k) => k.clone(),
        None => crate::simpack::find_keytool().ok_or(FakeJdkError::KeytoolNotFound)?,
    };
    // Link to the real file so the JDK launcher finds its libraries next to it.
    let keytool_src = keytool_src.canonicalize().map_err(io(&keytool_src))?;
    let simjava = settings
        .simjava
        .canonicalize()
        .map_err(io(&settings.simjava))?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    let java = bin.join("java");
    let keytool = bin.join("keytool");
    for (link, target) in [(&java, &simjava), (&keytool, &keytool_src)] {
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(link).map_err(io(link))?;
        }
        std::os::unix::fs::symlink(target, link).map_err(io(link))?;
    }
    let release = dir.join("release");
    std::fs::write(
        &release,
        format!(
            "IMPLEMENTOR=\"Eclipse Adoptium\"\nJAVA_VERSION=\"{v}\"\nJAVA_VERSION_DATE=\"2023-10-17\"\nOS_ARCH=\"x86_64\"\nOS_NAME=\"Linux\"\n",
            v = settings.java_version
        ),
    )
    .map_err(io(&release))?;
    let settings_path = dir.join(MACHINE_SETTINGS_FILE);
    let text = toml::to_string(&settings.machine).map_err(|e| FakeJdkError::Settings {
        path: settings_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&settings_path, text).map_err(io(&settings_path))?;
    Ok(FakeJdk {
        home: dir.to_path_buf(),
        java,
        keytool,
    })
}

/// Finds the `apim-simjava` binary for tests outside this crate: `$APIM_SIMJAVA`, else next to
/// the running test executable's directory (`target/<profile>/deps/..`). Tests inside this
/// crate should prefer `env!("CARGO_BIN_EXE_apim-simjava")`.
pub fn locate_simjava() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("APIM_SIMJAVA") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    for _ in 0..2 {
        let candidate = dir.join("apim-simjava");
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = dir.parent()?;
    }
    None
}

/// Reads `JAVA_VERSION` from a JDK's `release` file.
pub fn java_version(jdk_home: &Path) -> Option<String> {
    let text = std::fs::read_to_string(jdk_home.join("release")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("JAVA_VERSION=")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_settings_round_trip_and_reject_typos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = MachineSettings::new("127.0.0.9".parse().expect("ip"), "/tmp/hosts");
        std::fs::write(
            dir.path().join(MACHINE_SETTINGS_FILE),
            toml::to_string(&s).expect("ser"),
        )
        .expect("write");
        assert_eq!(MachineSettings::load(dir.path()).expect("load"), s);
        std::fs::write(
            dir.path().join(MACHINE_SETTINGS_FILE),
            "bind_adress = \"127.0.0.1\"\nhosts_file = \"/x\"\n",
        )
        .expect("write");
        assert!(matches!(
            MachineSettings::load(dir.path()),
            Err(FakeJdkError::Settings { .. })
        ));
    }
}
