//! The simulated cipher tool (`org.wso2.ciphertool.CipherTool`, run by `bin/ciphertool.sh`),
//! following wso2/cipher-tool's `CipherTool`, `Utils` and `KeyStoreUtil` for a
//! `deployment.toml` product (see `docs/secure-vault.md`):
//!
//! 1. arguments: `-Dconfigure`, `-Dchange`, `-Dpassword=<pw>`,
//!    `-Dorg.wso2.CipherTransformation=<t>`, `-help`; any other `-D` option prints
//!    `This option is not defined!` and exits with `System.exit(-1)` (status 255);
//! 2. the keystore: `[keystore.internal]` when the toml gives it a `file_name`, else
//!    `[keystore.primary]`, each field from the toml, else from `default.json` (`$ref{}`s
//!    followed); a bare file name lives in `repository/resources/security/`;
//! 3. the keystore password: `-Dpassword`, else a console prompt (no console: the tool fails
//!    with `String cannot be null`);
//! 4. the certificate of the key alias and the transformation (`org.wso2.CipherTransformation`,
//!    else `RSA`) make the cipher;
//! 5. `-Dconfigure`: every `[secrets]` value holding exactly one `[plain]` is encrypted
//!    (base64 of the RSA ciphertext of the UTF-8 text); every line after `[secrets]` is then
//!    rewritten as `<key as written> = "<value>"` (a key the `[secrets]` table does not hold
//!    becomes `"null"`: the real tool's reason for `[secrets]` being last); then
//!    `repository/conf/security/secret-conf.properties` is written.
//!
//! Exceptions end the JVM like Java's: `Exception in thread "main" ...` on stderr, status 1.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use toml::Value;

use super::JvmArgs;
use super::cipher::{self, Transformation};
use super::keystore::load_identity;
use super::props;
use crate::simpack::catalogue;

/// The tool's main class.
pub const CIPHERTOOL_CLASS: &str = "org.wso2.ciphertool.CipherTool";

const EXCEPTION: &str = "org.wso2.ciphertool.exception.CipherToolException";

struct Failure(String);

type Step<T> = Result<T, Failure>;

fn fail<T>(msg: impl Into<String>) -> Step<T> {
    Err(Failure(msg.into()))
}

/// The keystore the tool encrypts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultKeystore {
    /// `Primary` or `Internal`.
    pub name: &'static str,
    /// Absolute path.
    pub path: PathBuf,
    /// `type` as configured (JKS or PKCS12; the bytes decide how it is read).
    pub store_type: String,
    /// The key alias.
    pub alias: String,
}

fn toml_str(doc: &toml::Table, table: &str, field: &str) -> Option<String> {
    let mut cur = doc.get(table.split('.').next()?)?;
    for p in table.split('.').skip(1) {
        cur = cur.as_table()?.get(p)?;
    }
    cur.as_table()?
        .get(field)?
        .as_str()
        .map(str::to_string)
        .filter(|s| !s.trim().is_empty())
}

/// Follows `$ref{}`s through `default.json`.
fn default_of(defaults: &BTreeMap<String, String>, key: &str) -> Option<String> {
    let mut value = defaults.get(key)?.clone();
    for _ in 0..8 {
        match value
            .strip_prefix("$ref{")
            .and_then(|r| r.strip_suffix('}'))
        {
            Some(r) => value = defaults.get(r)?.clone(),
            None => return Some(value),
        }
    }
    None
}

/// Which keystore the tool (and so the vault) uses: the internal one if the toml names it,
/// else the primary one.
pub fn vault_keystore(carbon_home: &Path, doc: &toml::Table) -> Option<VaultKeystore> {
    let defaults =
        std::fs::read_to_string(carbon_home.join(catalogue::CONF_DIR).join("default.json"))
            .map(|t| catalogue::defaults_of(&t))
            .unwrap_or_default();
    let (name, table) = if toml_str(doc, "keystore.internal", "file_name").is_some() {
        ("Internal", "keystore.internal")
    } else {
        ("Primary", "keystore.primary")
    };
    let field = |f: &str| {
        toml_str(doc, table, f).or_else(|| default_of(&defaults, &format!("{table}.{f}")))
    };
    let file = field("file_name")?;
    let path = if let Some(rest) = file.split_once('}').map(|(_, r)| r) {
        carbon_home.join(rest.trim_start_matches('/'))
    } else if Path::new(&file).is_absolute() {
        PathBuf::from(&file)
    } else {
        carbon_home
            .join("repository/resources/security")
            .join(&file)
    };
    Some(VaultKeystore {
        name,
        path,
        store_type: field("type").unwrap_or_else(|| "JKS".to_string()),
        alias: field("alias")?,
    })
}

fn console_password(prompt: &str) -> Step<String> {
    if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return fail("String cannot be null");
    }
    print!("[{prompt}]");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        _ => fail("String cannot be null"),
    }
}

/// The `[plain]` inside a `[secrets]` value, if it holds exactly one.
fn unencrypted(value: &str) -> Option<&str> {
    let open = value.find('[')?;
    let close = value[open..].find(']')? + open;
    let rest = &value[close + 1..];
    (!rest.contains('[')).then(|| &value[open + 1..close])
}

/// Rewrites every line after `[secrets]` as the real tool does.
fn rewrite_secrets(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut found = false;
    for line in text.lines() {
        let mut line = line.to_string();
        if found {
            if let Some(key) = line.split('=').next().filter(|k| !k.is_empty()) {
                let value = secrets
                    .get(key.trim().trim_matches('"'))
                    .map_or("null", String::as_str);
                line = format!("{key} = \"{value}\"");
            }
        } else if line.trim() == "[secrets]" {
            found = true;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn configure(jvm: &JvmArgs, home: &Path, password: Option<String>) -> Step<()> {
    if !home.join("repository/conf/carbon.xml").exists() {
        return fail(format!(
            "File, {} does not exist.",
            home.join("conf/cipher-standalone-config.properties")
                .display()
        ));
    }
    let conf_dir = jvm
        .sysprops
        .get("carbon.config.dir.path")
        .map_or_else(|| home.join("repository/conf"), PathBuf::from);
    let toml_path = jvm
        .sysprops
        .get("deployment.config.file.path")
        .map_or_else(|| conf_dir.join("deployment.toml"), PathBuf::from);
    let text = std::fs::read_to_string(&toml_path)
        .or_else(|e| fail(format!("Error parsing file {} {e}", toml_path.display())))?;
    let Ok(doc) = text.parse::<toml::Table>() else {
        return fail("Error while parsing TOML config file");
    };
    let Some(ks) = vault_keystore(home, &doc) else {
        return fail("Key alias cannot be empty");
    };
    println!("\nEncrypting using {} KeyStore.", ks.name);
    println!(
        "{{type: {}, alias: {}, path: {}}}\n",
        ks.store_type,
        ks.alias,
        ks.path.display()
    );
    let password = match password {
        Some(p) => p,
        None => console_password(&format!(
            "Please Enter {} KeyStore Password of Carbon Server : ",
            ks.name
        ))?,
    };
    let data = std::fs::read(&ks.path).or_else(|e| {
        fail(format!(
            "I/O error occurred while reading the KeyStore from '{}': {e}",
            ks.path.display()
        ))
    })?;
    let identity = load_identity(&data, &password, &ks.alias, &password).or_else(|e| {
        fail(format!(
            "I/O error occurred while reading the KeyStore from '{}': java.io.IOException: {e}",
            ks.path.display()
        ))
    })?;
    let name = jvm
        .sysprops
        .get("org.wso2.CipherTransformation")
        .cloned()
        .unwrap_or_else(|| "RSA".to_string());
    let Some(t) = Transformation::parse(&name) else {
        return fail(format!(
            "Required cryptographic algorithm is not available in this environment: Cannot find any provider supporting {name}"
        ));
    };
    println!(
        "\n{} KeyStore of Carbon Server is initialized Successfully\n",
        ks.name
    );

    let mut secrets = BTreeMap::new();
    if let Some(Value::Table(table)) = doc.get("secrets") {
        for (alias, value) in table {
            let value = value.as_str().unwrap_or_default().to_string();
            let stored = match unencrypted(&value) {
                Some(plain) if !plain.is_empty() => {
                    let enc = cipher::encrypt(&identity.chain[0], t, plain)
                        .or_else(|e| fail(format!("Error encrypting password {e}")))?;
                    println!("\nEncryption is done Successfully\n");
                    enc
                }
                _ => value,
            };
            secrets.insert(alias.clone(), stored);
        }
    }
    std::fs::write(&toml_path, rewrite_secrets(&text, &secrets)).or_else(|e| {
        fail(format!(
            "Error while writing encrypted values into deployment file {e}"
        ))
    })?;

    let mut conf = BTreeMap::new();
    for (k, v) in [
        ("secVault.enabled", "true"),
        (
            "carbon.secretProvider",
            "org.wso2.securevault.secret.handler.SecretManagerSecretCallbackHandler",
        ),
        ("secretRepositories", "file"),
        (
            "secretRepositories.file.provider",
            "org.wso2.securevault.secret.repository.FileBaseSecretRepositoryProvider",
        ),
        (
            "secretRepositories.file.location",
            "repository/conf/security/cipher-text.properties",
        ),
        (
            "keystore.identity.store.password",
            "identity.store.password",
        ),
        (
            "keystore.identity.store.secretProvider",
            "org.wso2.carbon.securevault.DefaultSecretCallbackHandler",
        ),
        ("keystore.identity.key.password", "identity.key.password"),
        (
            "keystore.identity.key.secretProvider",
            "org.wso2.carbon.securevault.DefaultSecretCallbackHandler",
        ),
    ] {
        conf.insert(k.to_string(), v.to_string());
    }
    conf.insert(
        "keystore.identity.location".into(),
        ks.path.display().to_string(),
    );
    conf.insert("keystore.identity.type".into(), ks.store_type);
    conf.insert("keystore.identity.alias".into(), ks.alias);
    let conf_path = home.join("repository/conf/security/secret-conf.properties");
    if let Some(parent) = conf_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&conf_path, props::store(&conf)).or_else(|e| {
        fail(format!(
            "Error loading properties from a file at : {} Error : {e}",
            conf_path.display()
        ))
    })?;
    println!("\nSecret Configurations are written to the property file successfully\n");
    Ok(())
}

fn help() {
    println!("\n---------Cipher Tool Help---------\n");
    println!("Options :\n");
    println!(
        "\t-Dconfigure\t\t Encrypts the [secrets] of deployment.toml and writes secret-conf.properties"
    );
    println!("\t-Dchange\t\t Changes a secured password (needs a console)");
    println!("\t-Dpassword=<password>\t The keystore password (not recommended on a command line)");
    println!(
        "\t-Dorg.wso2.CipherTransformation=<Transformation algorithm>\t The transformation to encrypt with"
    );
}

/// Runs the tool; returns the JVM's exit status.
pub fn run(jvm: &JvmArgs) -> i32 {
    let home = jvm
        .sysprops
        .get("carbon.home")
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut mode = None;
    let mut password = None;
    let mut jvm = jvm.clone();
    for arg in &jvm.app_args.clone() {
        if arg == "-help" {
            help();
            return 0;
        }
        let Some(prop) = arg.strip_prefix("-D") else {
            continue;
        };
        let (name, value) = prop.split_once('=').unwrap_or((prop, ""));
        match name {
            "configure" | "change" => mode = Some(name.to_string()),
            "org.wso2.CipherTransformation" if !value.is_empty() => {
                jvm.sysprops.insert(name.to_string(), value.to_string());
            }
            "org.wso2.CipherTransformation" => println!(
                "Invalid transformation algorithm provided. The default transformation algorithm will be used"
            ),
            n if n.starts_with("password") => {
                password = Some(prop.get(9..).unwrap_or_default().to_string());
            }
            _ => {
                println!("This option is not defined!");
                return 255;
            }
        }
    }
    let result = match mode.as_deref() {
        Some("configure") => configure(&jvm, &home, password),
        // Changing a secret and encrypting a typed value both read the console.
        _ => console_password("Enter Plain Text Value : ")
            .and_then(|_| fail("String cannot be null")),
    };
    match result {
        Ok(()) => 0,
        Err(Failure(msg)) => {
            eprintln!("Exception in thread \"main\" {EXCEPTION}: {msg}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_lines_are_rewritten_like_the_real_tool() {
        let text = "[server]\nhostname = \"x\"\n\n[secrets]\nadmin_password = \"[admin]\"\n# note\nks = \"abc\"\n";
        let secrets = BTreeMap::from([
            ("admin_password".to_string(), "ENC1".to_string()),
            ("ks".to_string(), "abc".to_string()),
        ]);
        assert_eq!(
            rewrite_secrets(text, &secrets),
            "[server]\nhostname = \"x\"\n\n[secrets]\nadmin_password  = \"ENC1\"\n# note = \"null\"\nks  = \"abc\"\n"
        );
        assert_eq!(unencrypted("[admin]"), Some("admin"));
        assert_eq!(unencrypted("[a][b]"), None);
        assert_eq!(unencrypted("abc"), None);
    }
}
