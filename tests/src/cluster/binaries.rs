//! Finding (and building, once per process) the binaries a cluster runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{ClusterError, Result};

/// The three binaries a cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `apimctl` CLI (and controller daemon).
    pub apimctl: PathBuf,
    /// The `apim-agent` daemon.
    pub agent: PathBuf,
    /// `apim-simjava`, the simulated JVM behind each fake JDK.
    pub simjava: PathBuf,
}

/// The profile dir (`target/debug`) the running executable was built into.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| ClusterError::Build(e.to_string()))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| ClusterError::Build("executable has no parent dir".into()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The workspace root (this crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo_build(profile: &Path) -> Result<()> {
    let target = profile
        .parent()
        .ok_or_else(|| ClusterError::Build("profile dir has no parent".into()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bins", "-p", "apimctl", "-p", "apim-agent"])
        .args(["-p", "apim-e2e"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(workspace_root());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| ClusterError::Build(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(ClusterError::Build(format!(
            "cargo build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

impl Binaries {
    /// Finds the binaries next to the running executable, building them first (once per
    /// process) unless `APIM_E2E_NO_BUILD` is set.
    pub fn locate() -> Result<Binaries> {
        static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
        let profile = profile_dir()?;
        if std::env::var_os("APIM_E2E_NO_BUILD").is_none() {
            BUILT
                .get_or_init(|| cargo_build(&profile).map_err(|e| e.to_string()))
                .clone()
                .map_err(ClusterError::Build)?;
        }
        let pick = |env: &str, name: &str| {
            std::env::var_os(env).map_or_else(|| profile.join(name), PathBuf::from)
        };
        let bins = Binaries {
            apimctl: pick("APIMCTL_BIN", "apimctl"),
            agent: pick("APIM_AGENT_BIN", "apim-agent"),
            simjava: pick("APIM_SIMJAVA", "apim-simjava"),
        };
        for b in [&bins.apimctl, &bins.agent, &bins.simjava] {
            if !b.is_file() {
                return Err(ClusterError::Build(format!(
                    "{} is missing (run `cargo build --bins`)",
                    b.display()
                )));
            }
        }
        Ok(bins)
    }
}
