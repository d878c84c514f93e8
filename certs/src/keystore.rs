//! Java keystores for WSO2: PKCS#12 written natively (p12-keystore), JKS produced by the node's
//! own `keytool`, and idempotent trusted-certificate import into an existing truststore.
//!
//! Passwords never appear on a child's argv (where `ps` would show them): keytool gets them
//! through `-storepass:env VAR` with `VAR` set on that one child process only. Every command
//! is built by a public function returning a [`KeytoolCommand`], so tests can assert on it.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use sha2::{Digest, Sha256};

use crate::error::{CertsError, Result};
use crate::files::{self, PRIVATE_FILE_MODE};
use crate::pki::cert_der_to_pem;

/// Conventional alias of the cluster CA in every node's truststore.
pub const CLUSTER_CA_ALIAS: &str = "apimctl-cluster-ca";
/// The truststore alias WSO2 gateways use to verify JWTs when no `kid` matches: it must hold
/// the primary key's public certificate.
pub const GATEWAY_CERT_ALIAS: &str = "gateway_certificate_alias";
/// keytool's minimum password length.
const MIN_PASSWORD_LEN: usize = 6;
/// Env var carrying the source store password to keytool.
pub const ENV_SRC_PASS: &str = "APIMCTL_KEYTOOL_SRC_PASS";
/// Env var carrying the destination store password to keytool.
pub const ENV_DEST_PASS: &str = "APIMCTL_KEYTOOL_DEST_PASS";
/// Env var carrying the store password for single-store commands.
pub const ENV_STORE_PASS: &str = "APIMCTL_KEYTOOL_STORE_PASS";
/// Forces keytool's messages to English, so "does not exist" can be recognised whatever the
/// node's locale.
const JAVA_LOCALE_ARGS: [&str; 2] = ["-J-Duser.language=en", "-J-Duser.country=US"];

/// On-disk keystore format, as the JDK understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreFormat {
    /// Sun's proprietary JKS (magic `FEEDFEED`).
    Jks,
    /// PKCS#12 (a DER SEQUENCE, first byte `0x30`).
    Pkcs12,
}

impl StoreFormat {
    /// Detects the format from the first bytes. WSO2 4.4+ ships PKCS#12 bytes in files named
    /// `.jks`, so the file name is never trusted.
    pub fn detect(bytes: &[u8]) -> Option<StoreFormat> {
        match bytes {
            [0xFE, 0xED, 0xFE, 0xED, ..] => Some(StoreFormat::Jks),
            [0x30, ..] => Some(StoreFormat::Pkcs12),
            _ => None,
        }
    }

    /// Reads `path` and detects its format.
    pub fn detect_file(path: &Path) -> Result<StoreFormat> {
        let bytes = fs::read(path).map_err(CertsError::io("reading keystore", path))?;
        Self::detect(&bytes).ok_or_else(|| CertsError::UnknownStoreFormat {
            path: path.to_path_buf(),
            magic: hex::encode(&bytes[..bytes.len().min(4)]),
        })
    }

    /// The `-storetype` value keytool expects.
    pub fn keytool_name(self) -> &'static str {
        match self {
            StoreFormat::Jks => "JKS",
            StoreFormat::Pkcs12 => "PKCS12",
        }
    }
}

#[derive(Clone)]
enum Entry {
    PrivateKey {
        alias: String,
        key_der: Vec<u8>,
        chain: Vec<Vec<u8>>,
    },
    Trusted {
        alias: String,
        cert_der: Vec<u8>,
    },
}

impl Entry {
    fn alias(&self) -> &str {
        match self {
            Entry::PrivateKey { alias, .. } | Entry::Trusted { alias, .. } => alias,
        }
    }
}

/// The contents of a keystore to write: private-key entries (key + chain) and trusted
/// certificate entries. One password protects the store and the keys, as WSO2 requires.
#[derive(Clone, Default)]
pub struct KeystoreBuilder {
    entries: Vec<Entry>,
}

impl fmt::Debug for KeystoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let aliases: Vec<&str> = self.entries.iter().map(Entry::alias).collect();
        f.debug_struct("KeystoreBuilder")
            .field("aliases", &aliases)
            .finish()
    }
}

impl KeystoreBuilder {
    /// An empty keystore.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a PrivateKeyEntry: PKCS#8 DER key and its chain, leaf first (leaf + CA).
    pub fn private_key(mut self, alias: &str, key_pkcs8_der: &[u8], chain_der: &[Vec<u8>]) -> Self {
        self.entries.push(Entry::PrivateKey {
            alias: alias.to_owned(),
            key_der: key_pkcs8_der.to_vec(),
            chain: chain_der.to_vec(),
        });
        self
    }

    /// Adds a trustedCertEntry.
    pub fn trusted_cert(mut self, alias: &str, cert_der: &[u8]) -> Self {
        self.entries.push(Entry::Trusted {
            alias: alias.to_owned(),
            cert_der: cert_der.to_vec(),
        });
        self
    }

    /// Encodes the store as PKCS#12 (PBES2/AES-256, HMAC-SHA256 MAC) under `password`.
    /// Aliases must be non-empty and unique ignoring case (JKS lowercases them).
    pub fn to_pkcs12(&self, password: &str) -> Result<Vec<u8>> {
        check_password(password)?;
        let mut seen: Vec<String> = Vec::new();
        let mut store = KeyStore::new();
        for entry in &self.entries {
            let alias = entry.alias();
            validate_alias(alias)?;
            let lower = alias.to_ascii_lowercase();
            if seen.contains(&lower) {
                return Err(CertsError::InvalidName {
                    kind: "keystore alias",
                    name: alias.to_owned(),
                    reason: "used twice (aliases are case-insensitive in JKS)",
                });
            }
            seen.push(lower);
            let value = match entry {
                Entry::PrivateKey { key_der, chain, .. } => {
                    let leaf = chain.first().ok_or(CertsError::InvalidName {
                        kind: "keystore alias",
                        name: alias.to_owned(),
                        reason: "a private key entry needs at least its own certificate",
                    })?;
                    let key =
                        PrivateKey::from_der(key_der).map_err(|source| CertsError::Pkcs12 {
                            context: "reading private key",
                            source,
                        })?;
                    let certs = chain
                        .iter()
                        .map(|c| Certificate::from_der(c))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|source| CertsError::Pkcs12 {
                            context: "reading certificate chain",
                            source,
                        })?;
                    // Local key id ties the key bag to its certificate bag.
                    let local_key_id = Sha256::digest(leaf)[..20].to_vec();
                    KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs))
                }
                Entry::Trusted { cert_der, .. } => KeyStoreEntry::Certificate(
                    Certificate::from_der(cert_der).map_err(|source| CertsError::Pkcs12 {
                        context: "reading trusted certificate",
                        source,
                    })?,
                ),
            };
            store.add_entry(alias, value);
        }
        store
            .writer(password)
            .write()
            .map_err(|source| CertsError::Pkcs12 {
                context: "encoding keystore",
                source,
            })
    }

    /// Writes the store as PKCS#12 to `path`, atomically, mode 0600.
    pub fn write_pkcs12(&self, path: &Path, password: &str) -> Result<()> {
        let bytes = self.to_pkcs12(password)?;
        files::write_private_file(path, &bytes, false)
    }
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(CertsError::PasswordTooShort);
    }
    Ok(())
}

fn validate_alias(alias: &str) -> Result<()> {
    if alias.is_empty() || alias.len() > 255 || alias.chars().any(char::is_control) {
        return Err(CertsError::InvalidName {
            kind: "keystore alias",
            name: alias.to_owned(),
            reason: "must be 1–255 printable characters",
        });
    }
    Ok(())
}

/// One keytool invocation: program, argv (no secrets), and environment variables set on that
/// child only (the secrets). `Debug` shows the variable names, never their values.
#[derive(Clone, PartialEq, Eq)]
pub struct KeytoolCommand {
    /// The keytool binary.
    pub program: PathBuf,
    /// Arguments, as an array (never a shell string).
    pub args: Vec<OsString>,
    /// Environment for this child only: (name, secret value).
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for KeytoolCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KeytoolCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &names)
            .finish()
    }
}

impl KeytoolCommand {
    fn new(program: &Path) -> Self {
        KeytoolCommand {
            program: program.to_path_buf(),
            args: JAVA_LOCALE_ARGS.iter().map(OsString::from).collect(),
            env: Vec::new(),
        }
    }

    fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    fn secret_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Runs keytool commands; a seam so tests can record argv and production can run the real
/// process.
pub trait CommandRunner: Send + Sync {
    /// Runs the command to completion and returns its output.
    fn run(&self, cmd: &KeytoolCommand) -> std::io::Result<Output>;
}

/// Runs commands as real child processes (stdin closed, output captured).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, cmd: &KeytoolCommand) -> std::io::Result<Output> {
        Command::new(&cmd.program)
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
    }
}

/// The node's `keytool`, plus the runner that executes it.
#[derive(Clone)]
pub struct Keytool {
    path: PathBuf,
    runner: Arc<dyn CommandRunner>,
}

impl fmt::Debug for Keytool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keytool").field("path", &self.path).finish()
    }
}

impl Keytool {
    /// keytool at `path`, run as a real process.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_runner(path, Arc::new(SystemRunner))
    }

    /// `$JAVA_HOME/bin/keytool` of the node, so the JKS written matches the JDK that reads it.
    pub fn from_java_home(java_home: &Path) -> Self {
        Self::new(java_home.join("bin").join("keytool"))
    }

    /// keytool at `path` with a custom runner (tests, or a sandboxing wrapper).
    pub fn with_runner(path: impl Into<PathBuf>, runner: Arc<dyn CommandRunner>) -> Self {
        Keytool {
            path: path.into(),
            runner,
        }
    }

    /// The keytool binary path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `-importkeystore` from a PKCS#12 file into a new store of `dest_format`; both passwords
    /// via env vars (store and key password are the same, as WSO2 requires).
    pub fn importkeystore_command(
        &self,
        src_pkcs12: &Path,
        dest: &Path,
        dest_format: StoreFormat,
        password: &str,
    ) -> KeytoolCommand {
        KeytoolCommand::new(&self.path)
            .arg("-importkeystore")
            .arg("-noprompt")
            .arg("-srckeystore")
            .arg(src_pkcs12)
            .arg("-srcstoretype")
            .arg("PKCS12")
            .arg("-srcstorepass:env")
            .arg(ENV_SRC_PASS)
            .arg("-destkeystore")
            .arg(dest)
            .arg("-deststoretype")
            .arg(dest_format.keytool_name())
            .arg("-deststorepass:env")
            .arg(ENV_DEST_PASS)
            .secret_env(ENV_SRC_PASS, password)
            .secret_env(ENV_DEST_PASS, password)
    }

    /// `-delete -alias A` on an existing store.
    pub fn delete_command(
        &self,
        store: &Path,
        format: StoreFormat,
        password: &str,
        alias: &str,
    ) -> KeytoolCommand {
        KeytoolCommand::new(&self.path)
            .arg("-delete")
            .arg("-alias")
            .arg(alias)
            .arg("-keystore")
            .arg(store)
            .arg("-storetype")
            .arg(format.keytool_name())
            .arg("-storepass:env")
            .arg(ENV_STORE_PASS)
            .secret_env(ENV_STORE_PASS, password)
    }

    /// `-importcert -noprompt -alias A -file F` into an existing store.
    pub fn importcert_command(
        &self,
        store: &Path,
        format: StoreFormat,
        password: &str,
        alias: &str,
        cert_file: &Path,
    ) -> KeytoolCommand {
        KeytoolCommand::new(&self.path)
            .arg("-importcert")
            .arg("-noprompt")
            .arg("-alias")
            .arg(alias)
            .arg("-file")
            .arg(cert_file)
            .arg("-keystore")
            .arg(store)
            .arg("-storetype")
            .arg(format.keytool_name())
            .arg("-storepass:env")
            .arg(ENV_STORE_PASS)
            .secret_env(ENV_STORE_PASS, password)
    }

    /// `-list -v` of a store (format auto-detected by keytool).
    pub fn list_command(&self, store: &Path, password: &str) -> KeytoolCommand {
        KeytoolCommand::new(&self.path)
            .arg("-list")
            .arg("-v")
            .arg("-keystore")
            .arg(store)
            .arg("-storepass:env")
            .arg(ENV_STORE_PASS)
            .secret_env(ENV_STORE_PASS, password)
    }

    /// Runs `keytool -list -v` and returns its text (for inspection and drift checks).
    pub fn list_verbose(&self, store: &Path, password: &str) -> Result<String> {
        let out = self.run(&self.list_command(store, password))?;
        if !out.status.success() {
            return Err(self.failed("-list", store, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `contents` as a JKS store at `path` via this keytool: PKCS#12 to a 0600 temp
    /// file, `-importkeystore -deststoretype JKS` into a temp destination in the same
    /// directory, then chmod 0600 and rename over `path` (atomic; a failure leaves the old
    /// store untouched).
    pub fn write_jks(&self, contents: &KeystoreBuilder, path: &Path, password: &str) -> Result<()> {
        let p12 = contents.to_pkcs12(password)?;
        let dir = files::parent_dir(path);
        let tmp = tempfile::Builder::new()
            .prefix(".apimctl-ks")
            .tempdir_in(dir)
            .map_err(CertsError::io("creating temporary directory in", dir))?;
        let src = tmp.path().join("src.p12");
        files::write_private_file(&src, &p12, true)?;
        let out_path = tmp.path().join("out.jks");
        let cmd = self.importkeystore_command(&src, &out_path, StoreFormat::Jks, password);
        let out = self.run(&cmd)?;
        if !out.status.success() {
            return Err(self.failed("-importkeystore", path, &out));
        }
        fs::set_permissions(&out_path, fs::Permissions::from_mode(PRIVATE_FILE_MODE))
            .map_err(CertsError::io("setting permissions on", &out_path))?;
        fs::rename(&out_path, path).map_err(CertsError::io("renaming new keystore to", path))?;
        files::sync_dir(dir);
        Ok(())
    }

    /// Writes `contents` at `path` in `format`: PKCS#12 natively, JKS through keytool.
    pub fn write_keystore(
        &self,
        contents: &KeystoreBuilder,
        path: &Path,
        format: StoreFormat,
        password: &str,
    ) -> Result<()> {
        match format {
            StoreFormat::Pkcs12 => contents.write_pkcs12(path, password),
            StoreFormat::Jks => self.write_jks(contents, path, password),
        }
    }

    /// Imports `cert_der` as trustedCertEntry `alias` into the EXISTING store at `store`
    /// (e.g. the shipped `client-truststore.jks`), keeping its format as detected from its
    /// magic bytes. Idempotent: `-delete` (a missing alias is fine) then `-importcert`, so a
    /// re-run leaves exactly one entry per alias. Works on a copy in the same directory that
    /// is renamed over the original (same mode and owner), so a failure never leaves a
    /// half-edited truststore.
    pub fn import_trusted_cert(
        &self,
        store: &Path,
        password: &str,
        alias: &str,
        cert_der: &[u8],
    ) -> Result<()> {
        validate_alias(alias)?;
        let format = StoreFormat::detect_file(store)?;
        let meta = fs::metadata(store).map_err(CertsError::io("reading metadata of", store))?;
        let dir = files::parent_dir(store);
        let tmp = tempfile::Builder::new()
            .prefix(".apimctl-ts")
            .tempdir_in(dir)
            .map_err(CertsError::io("creating temporary directory in", dir))?;
        let work = tmp.path().join("store");
        fs::copy(store, &work).map_err(CertsError::io("copying keystore", store))?;
        let cert_file = tmp.path().join("cert.pem");
        fs::write(&cert_file, cert_der_to_pem(cert_der))
            .map_err(CertsError::io("writing certificate", &cert_file))?;

        let out = self.run(&self.delete_command(&work, format, password, alias))?;
        if !out.status.success() && !combined_output(&out).contains("does not exist") {
            return Err(self.failed("-delete", store, &out));
        }
        let out = self.run(&self.importcert_command(&work, format, password, alias, &cert_file))?;
        if !out.status.success() {
            return Err(self.failed("-importcert", store, &out));
        }

        fs::set_permissions(&work, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(CertsError::io("setting permissions on", &work))?;
        let new_meta = fs::metadata(&work).map_err(CertsError::io("reading metadata of", &work))?;
        if new_meta.uid() != meta.uid() || new_meta.gid() != meta.gid() {
            std::os::unix::fs::chown(&work, Some(meta.uid()), Some(meta.gid()))
                .map_err(CertsError::io("restoring owner of", &work))?;
        }
        fs::rename(&work, store).map_err(CertsError::io("replacing keystore", store))?;
        files::sync_dir(dir);
        tracing::info!(store = %store.display(), %alias, format = format.keytool_name(), "imported trusted certificate");
        Ok(())
    }

    fn run(&self, cmd: &KeytoolCommand) -> Result<Output> {
        self.runner
            .run(cmd)
            .map_err(|source| CertsError::KeytoolSpawn {
                path: self.path.clone(),
                source,
            })
    }

    fn failed(&self, action: &'static str, store: &Path, out: &Output) -> CertsError {
        CertsError::KeytoolFailed {
            action,
            store: store.to_path_buf(),
            status: out.status.to_string(),
            output: combined_output(out).trim().to_owned(),
        }
    }
}

fn combined_output(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}
