//! The simulated JVM for tests outside `apim-e2e` that run simulated WSO2 servers.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `apim-simjava` binary (the fake JDK's `java`): found next to the running test or
/// benchmark ([`apim_e2e::fakejdk::locate_simjava`]), or built once, in the running
/// executable's profile, with the cargo that built it.
pub fn simjava() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = apim_e2e::fakejdk::locate_simjava() {
            return p;
        }
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo
            .args(["build", "-q", "-p", "apim-e2e", "--bin", "apim-simjava"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build for apim-simjava");
        assert!(status.success(), "building apim-simjava failed");
        let p = profile_dir.join("apim-simjava");
        assert!(p.is_file(), "{} missing after build", p.display());
        p
    })
    .clone()
}
