//! What Carbon's `Main` does around the config mapper before OSGi starts, as far as an agent can
//! see it: the config mapper's own log lines and change detection, and the launch of Equinox
//! from the OSGi profile folder `-Dprofile` names.
//!
//! **A missing profile folder hangs the server.** carbon-kernel's `Main.main` sets the
//! `profile` system property (default `default`), runs the config mapper, then
//! `CarbonLauncher.launch()` points Equinox's install and configuration areas at
//! `repository/components/<profile>/` and `<profile>/configuration` without checking that they
//! exist. With no `bundles.info` there Equinox installs no bundle: nothing of Carbon starts,
//! nothing is logged after the mapper, no port opens, and the JVM stays up. The kernel's own
//! comment on the one profile it does check (`workerprofile` in `Main.main`): "Better check
//! profile directory is present or not otherwise osgi will hang". The same hang is reported for
//! API-M 4.5 ACP in wso2/api-manager#3747 ("the server hangs without starting. It does not go
//! beyond config parser stage"), with "a key-manager folder getting created without a
//! bundles.info file" in `repository/components`. No launcher message names the missing
//! profile, and the process does not exit; a SIGTERM ends it like any JVM without Carbon's
//! shutdown hook (status 143).
//!
//! The config mapper's lines (`org.wso2.config.mapper.ConfigParser` in kernel 4.6+, text from
//! its `parse`/`deployAndStoreMetadata`): a first start warns `Metadata File doesn't exist at
//! <conf>/.metadata Consider as first startup`, then `Backed up the configurations into
//! <home>/backup` and `Writing Metadata Entries...`; an unchanged `deployment.toml` gives `No new
//! configuration to apply`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::log::CarbonLog;

/// The config mapper's logger.
pub const CONFIG_PARSER: &str = "org.wso2.config.mapper.ConfigParser";

/// The OSGi profile used without `-Dprofile` (`LauncherConstants.DEFAULT_CARBON_PROFILE`).
pub const DEFAULT_PROFILE: &str = "default";

/// Logs the config mapper's lines for this start and records the toml's digest in
/// `<resources>/.metadata/metadata_config.properties` (the real mapper stores MD5s there).
pub fn config_parser_lines(
    log: &CarbonLog,
    carbon_home: &Path,
    resources_dir: &Path,
    toml_text: &str,
) {
    let meta_dir = resources_dir.join(".metadata");
    let meta = meta_dir.join("metadata_config.properties");
    let digest = hex::encode(Sha256::digest(toml_text.as_bytes()));
    let line = format!("deployment.toml={digest}\n");
    match std::fs::read_to_string(&meta) {
        Ok(old) if old == line => {
            log.info(CONFIG_PARSER, "No new configuration to apply");
            return;
        }
        Ok(_) => {}
        Err(_) => log.warn(
            CONFIG_PARSER,
            &format!(
                "Metadata File doesn't exist at {} Consider as first startup",
                meta_dir.display()
            ),
        ),
    }
    let backup = carbon_home.join("backup");
    let _ = std::fs::create_dir_all(&backup);
    log.info(
        CONFIG_PARSER,
        &format!("Backed up the configurations into {}", backup.display()),
    );
    log.info(CONFIG_PARSER, "Writing Metadata Entries...");
    let _ = std::fs::create_dir_all(&meta_dir);
    let _ = std::fs::write(&meta, line);
}

/// The OSGi profile folder of `profile`.
pub fn profile_dir(carbon_home: &Path, profile: &str) -> PathBuf {
    carbon_home.join("repository/components").join(profile)
}

/// Whether Equinox would find bundles for `profile`; when it would not, creates the empty
/// configuration area it leaves behind (as reported in api-manager#3747).
pub fn profile_launches(carbon_home: &Path, profile: &str) -> bool {
    let config = profile_dir(carbon_home, profile).join("configuration");
    let bundles = config.join("org.eclipse.equinox.simpleconfigurator/bundles.info");
    if bundles.is_file() {
        return true;
    }
    let _ = std::fs::create_dir_all(&config);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_profiles_leave_an_empty_configuration_area() {
        let dir = tempfile::tempdir().expect("tmp");
        let home = dir.path();
        let ok = profile_dir(home, "default")
            .join("configuration/org.eclipse.equinox.simpleconfigurator");
        std::fs::create_dir_all(&ok).expect("dir");
        std::fs::write(ok.join("bundles.info"), "#version=1\n").expect("bundles");
        assert!(profile_launches(home, "default"));
        assert!(!profile_launches(home, "key-manager"));
        assert!(
            profile_dir(home, "key-manager")
                .join("configuration")
                .is_dir()
        );
        assert!(!profile_launches(home, "key-manager"), "still no bundles");
    }
}
