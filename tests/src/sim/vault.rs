//! The secure vault at server start (see `docs/secure-vault.md` for the facts and sources):
//! Carbon's `SecretManagerInitializer` reads `repository/conf/security/secret-conf.properties`
//! (written by `ciphertool.sh -Dconfigure`); without it the secret manager stays uninitialised
//! and every `$secret{alias}` resolves to the alias text itself. With it, the keystore password
//! comes from `DefaultSecretCallbackHandler`:
//!
//! - `<home>/password`: read, then renamed to `password-tmp` (unless `-Dpersist.password=true`);
//! - else `<home>/password-tmp`: read, overwritten and deleted (unless `-Dpersist.password=true`);
//! - else `<home>/password-persist`: read and kept;
//! - else the console: `[Enter KeyStore and Private Key Password :]` — only when there is one
//!   (`System.console()`, i.e. stdin and stdout both terminals); the start script's daemon mode
//!   has none, so then no password is read and the secret manager stays uninitialised.
//!
//! The first line is the keystore password; the key password is the same unless
//! `-Dkey.password=true`, when it is the second line. The `keystore.identity.*` keystore's
//! private key then decrypts every `[secrets]` value (base64 of RSA ciphertext) with the
//! transformation `org.wso2.CipherTransformation` (a `-D` option, else `system.parameter` from
//! the toml or `default.json`), overridden by `keystore.identity.CipherTransformation` in
//! secret-conf.properties, `RSA` if none. A value that does not decrypt is logged by the file
//! repository (`Error decrypting secret for the alias : <alias>`) and resolves to the alias.
//!
//! Simplification: the real file repository reads its ciphertexts from the
//! `secretRepositories.file.location` file; the simulator reads them from `[secrets]`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::cipher::{self, Transformation};
use super::config::NodeConfig;
use super::keystore::load_identity;
use super::log::CarbonLog;
use super::props;

const REPOSITORY: &str = "org.wso2.securevault.secret.repository.FileBaseSecretRepository";
const KEYSTORE_WRAPPER: &str = "org.wso2.securevault.keystore.IdentityKeyStoreWrapper";
const CALLBACK: &str = "org.wso2.carbon.securevault.DefaultSecretCallbackHandler";
const JUNK: &str = "!@#$%^&*()SDFGHJZXCVBNM!@#$%^&*";

/// The secrets as the running server sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vault {
    /// Decrypted values by alias (only those that decrypted).
    values: BTreeMap<String, String>,
    /// Whether the secret manager initialised (secret-conf.properties, a password, a keystore).
    pub initialized: bool,
}

impl Vault {
    /// What `$secret{alias}` resolves to: the decrypted value, else the alias itself (the secret
    /// manager's answer when it has no secret for an alias).
    pub fn secret(&self, alias: &str) -> String {
        self.values
            .get(alias)
            .cloned()
            .unwrap_or_else(|| alias.to_string())
    }
}

fn read_lines(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().map(str::to_string).collect())
}

/// The keystore and key passwords, as `DefaultSecretCallbackHandler` finds them.
async fn passwords(
    carbon_home: &Path,
    sysprops: &BTreeMap<String, String>,
    log: &CarbonLog,
) -> Option<(String, String)> {
    let flag = |k: &str| sysprops.get(k).is_some_and(|v| v.trim() == "true");
    let separate_key = flag("key.password");
    let persist = flag("persist.password");
    let pick = |lines: Vec<String>| {
        let store = lines.first().cloned().unwrap_or_default();
        let key = if separate_key {
            lines.get(1).cloned().unwrap_or_default()
        } else {
            store.clone()
        };
        (store, key)
    };
    let plain = carbon_home.join("password");
    let tmp = carbon_home.join("password-tmp");
    let kept = carbon_home.join("password-persist");
    if let Some(lines) = read_lines(&plain) {
        if !persist && std::fs::rename(&plain, &tmp).is_err() {
            log.error(CALLBACK, "Error renaming Password config File");
        }
        return Some(pick(lines));
    }
    if let Some(lines) = read_lines(&tmp) {
        if !persist {
            let _ = std::fs::write(&tmp, JUNK);
            if std::fs::remove_file(&tmp).is_err() {
                log.error(CALLBACK, "Error deleting Password config File");
            }
        }
        return Some(pick(lines));
    }
    if let Some(lines) = read_lines(&kept) {
        return Some(pick(lines));
    }
    if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return None;
    }
    let prompts: Vec<&str> = if separate_key {
        vec!["Enter KeyStore Password :", "Enter Private Key Password : "]
    } else {
        vec!["Enter KeyStore and Private Key Password :"]
    };
    let mut answers = Vec::new();
    for prompt in prompts {
        let prompt = prompt.to_string();
        let line = tokio::task::spawn_blocking(move || {
            print!("[{prompt}]");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await
        .ok()?
        .ok()?;
        answers.push(line.trim_end_matches(['\r', '\n']).to_string());
    }
    Some(pick(answers))
}

/// The transformation the vault decrypts with.
fn transformation(
    cfg: &NodeConfig,
    sysprops: &BTreeMap<String, String>,
    defaults: &BTreeMap<String, String>,
    conf: &BTreeMap<String, String>,
) -> String {
    const NAME: &str = "org.wso2.CipherTransformation";
    let from_toml = || {
        cfg.table
            .get("system")?
            .get("parameter")?
            .get(NAME)?
            .as_str()
            .map(str::to_string)
    };
    let system = sysprops
        .get(NAME)
        .cloned()
        .or_else(from_toml)
        .or_else(|| defaults.get(&format!("system.parameter.'{NAME}'")).cloned());
    conf.get("keystore.identity.CipherTransformation")
        .cloned()
        .or(system)
        .unwrap_or_else(|| "RSA".to_string())
}

/// Initialises the secure vault as Carbon does at start; never fails the start by itself.
pub async fn open(
    carbon_home: &Path,
    cfg: &NodeConfig,
    sysprops: &BTreeMap<String, String>,
    defaults: &BTreeMap<String, String>,
    log: &CarbonLog,
) -> Vault {
    let conf_path = carbon_home.join("repository/conf/security/secret-conf.properties");
    let Ok(text) = std::fs::read_to_string(&conf_path) else {
        return Vault::default();
    };
    let conf = props::parse(&text);
    let enabled = conf
        .get("secVault.enabled")
        .is_none_or(|v| v.trim() == "true");
    if !enabled
        || conf
            .get("secretRepositories")
            .is_none_or(|v| v.trim().is_empty())
    {
        return Vault::default();
    }
    let Some((store_pw, key_pw)) = passwords(carbon_home, sysprops, log).await else {
        return Vault::default();
    };
    if store_pw.is_empty() || key_pw.is_empty() {
        return Vault::default();
    }
    let location = conf
        .get("keystore.identity.location")
        .cloned()
        .unwrap_or_default();
    let path = if Path::new(&location).is_absolute() {
        PathBuf::from(&location)
    } else {
        carbon_home.join(&location)
    };
    let alias = conf
        .get("keystore.identity.alias")
        .cloned()
        .unwrap_or_default();
    let identity = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|d| load_identity(&d, &store_pw, &alias, &key_pw).map_err(|e| e.to_string()))
    {
        Ok(id) => id,
        Err(e) => {
            // Closest factual wording: the JDK's own keystore errors, under the wrapper that
            // loads the identity keystore.
            log.error(
                KEYSTORE_WRAPPER,
                &format!("Error loading a KeyStore from : {} ({e})", path.display()),
            );
            return Vault::default();
        }
    };
    let name = transformation(cfg, sysprops, defaults, &conf);
    let t = Transformation::parse(&name);
    if t.is_none() {
        log.error(
            "org.wso2.securevault.BaseCipher",
            &format!("There is no algorithm support for '{name}' in the operation mode 'DECRYPT'"),
        );
    }
    let mut values = BTreeMap::new();
    for (alias, encrypted) in cfg.secrets() {
        match t.map(|t| cipher::decrypt(&identity.key_pkcs8, t, &encrypted)) {
            Some(Ok(plain)) if !plain.is_empty() => {
                values.insert(alias, plain);
            }
            _ => log.warn(
                REPOSITORY,
                &format!("Error decrypting secret for the alias : {alias}"),
            ),
        }
    }
    Vault {
        values,
        initialized: true,
    }
}
