//! Real keystores for the simulated packs, made with the JDK's `keytool` at build time.
//!
//! Like the shipped ones: `wso2carbon.jks` holds the `wso2carbon` key pair, and
//! `client-truststore.jks` trusts its certificate as `wso2carbon` and as
//! `gateway_certificate_alias`; password `wso2carbon` everywhere; JKS up to 4.3 and PKCS12
//! bytes from 4.4 on (still named `.jks`).

use std::collections::HashMap;
use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::SimPackError;
use super::layout::StoreFormat;

/// The default store and key password of every WSO2 keystore (public knowledge, not a secret).
pub const DEFAULT_STORE_PASSWORD: &str = "wso2carbon";

/// Environment variable keytool reads the password from, so it never appears on argv.
const PASS_ENV: &str = "APIM_SIM_STOREPASS";

/// Finds a real `keytool`: `$JAVA_HOME/bin/keytool` when present, else the first on `PATH`.
pub fn find_keytool() -> Option<PathBuf> {
    if let Some(home) = env::var_os("JAVA_HOME") {
        let candidate = Path::new(&home).join("bin").join("keytool");
        if is_executable(&candidate) && !is_fake_jdk(Path::new(&home)) {
            return Some(candidate);
        }
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("keytool"))
        .find(|c| is_executable(c))
}

fn is_fake_jdk(home: &Path) -> bool {
    home.join(crate::fakejdk::MACHINE_SETTINGS_FILE).exists()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The two keystore files of a pack, as bytes.
#[derive(Clone)]
pub(crate) struct Keystores {
    pub keystore: Vec<u8>,
    pub truststore: Vec<u8>,
}

fn keytool_run(keytool: &Path, args: &[&OsStr]) -> Result<(), SimPackError> {
    let out = Command::new(keytool)
        .args(args)
        .env(PASS_ENV, DEFAULT_STORE_PASSWORD)
        .output()
        .map_err(|source| SimPackError::KeytoolSpawn {
            keytool: keytool.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(SimPackError::Keytool {
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            status: out.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

/// Keystores already made in this process, per keytool and format. A real release ships the
/// same default keystores in every download, so packs built in one process share theirs; this
/// also keeps the slow keytool runs to one set per format.
static CACHE: OnceLock<Mutex<HashMap<(PathBuf, StoreFormat), Keystores>>> = OnceLock::new();

/// The keystores for `format`, made in `work` with keytool unless this process already has them.
pub(crate) fn keystores_for(
    keytool: &Path,
    format: StoreFormat,
    work: &Path,
) -> Result<Keystores, SimPackError> {
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (keytool.to_path_buf(), format);
    // Holding the lock while keytool runs makes concurrent builders wait instead of duplicating.
    let mut guard = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = guard.get(&key) {
        return Ok(found.clone());
    }
    let made = make_keystores(keytool, format, work)?;
    guard.insert(key, made.clone());
    Ok(made)
}

/// Generates the primary keystore and the truststore in `work` and returns their bytes.
fn make_keystores(
    keytool: &Path,
    format: StoreFormat,
    work: &Path,
) -> Result<Keystores, SimPackError> {
    let ks = work.join("wso2carbon.jks");
    let ts = work.join("client-truststore.jks");
    let cert = work.join("wso2carbon.pem");
    let storetype = OsStr::new(format.keytool_type());
    let pass = OsStr::new("-storepass:env");
    let pass_env = OsStr::new(PASS_ENV);
    keytool_run(
        keytool,
        &[
            "-genkeypair".as_ref(),
            "-alias".as_ref(),
            "wso2carbon".as_ref(),
            "-keyalg".as_ref(),
            "RSA".as_ref(),
            "-keysize".as_ref(),
            "2048".as_ref(),
            "-validity".as_ref(),
            "3650".as_ref(),
            "-dname".as_ref(),
            "CN=localhost, OU=WSO2, O=WSO2, L=Mountain View, ST=CA, C=US".as_ref(),
            "-ext".as_ref(),
            "SAN=dns:localhost,ip:127.0.0.1".as_ref(),
            "-keystore".as_ref(),
            ks.as_os_str(),
            "-storetype".as_ref(),
            storetype,
            pass,
            pass_env,
            "-keypass:env".as_ref(),
            pass_env,
        ],
    )?;
    keytool_run(
        keytool,
        &[
            "-exportcert".as_ref(),
            "-rfc".as_ref(),
            "-alias".as_ref(),
            "wso2carbon".as_ref(),
            "-keystore".as_ref(),
            ks.as_os_str(),
            pass,
            pass_env,
            "-file".as_ref(),
            cert.as_os_str(),
        ],
    )?;
    for alias in ["wso2carbon", "gateway_certificate_alias"] {
        keytool_run(
            keytool,
            &[
                "-importcert".as_ref(),
                "-noprompt".as_ref(),
                "-alias".as_ref(),
                alias.as_ref(),
                "-file".as_ref(),
                cert.as_os_str(),
                "-keystore".as_ref(),
                ts.as_os_str(),
                "-storetype".as_ref(),
                storetype,
                pass,
                pass_env,
            ],
        )?;
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| SimPackError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok(Keystores {
        keystore: read(&ks)?,
        truststore: read(&ts)?,
    })
}
