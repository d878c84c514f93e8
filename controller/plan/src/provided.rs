//! `[tls] issuer = "provided"`: the operator's own keystore (and truststore), shipped whole to
//! every node. [`load`] reads both files (from the file system on the operator's machine, from
//! what the CLI sent on the controller: [`EnvSource::provided_file`]) and checks them with
//! [`apim_certs::inspect_store`] before anything is stored or pushed: each opens with its
//! password, the keystore's alias is a private key that decrypts with the same password (WSO2
//! requires key password = store password). [`name_findings`] warns about each node whose
//! hostname (or its role's load balancer hostname) the certificate does not name.
//!
//! Errors and warnings name files, aliases and certificate names, never a password or a byte of
//! a store.

use apim_certs::{CertsError, KeyEntryInfo};

use crate::diag::Diagnostic;
use crate::lint::Finding;
use crate::plan::{At, Issuer, Plan};
use crate::secrets::{self, EnvSource};

/// Code of a problem with `provided_keystore`.
pub const KEYSTORE_CODE: &str = "plan.provided_keystore";
/// Code of a problem with `provided_truststore`.
pub const TRUSTSTORE_CODE: &str = "plan.provided_truststore";
/// Code of the warning for a node the provided certificate does not name.
pub const NAME_CODE: &str = "render.provided_cert_name";

/// One provided file: its path as written in the plan, its bytes and their sha256.
#[derive(Clone, PartialEq, Eq)]
pub struct ProvidedFile {
    /// The path as written in the plan (the key it travels and is kept under).
    pub written: String,
    /// The file's bytes. SECRET: a keystore holds private keys.
    pub bytes: Vec<u8>,
    /// Lowercase hex sha256 of `bytes`: what logs and diffs may show.
    pub sha256: String,
}

impl std::fmt::Debug for ProvidedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvidedFile")
            .field("written", &self.written)
            .field(
                "bytes",
                &format_args!("<redacted {} bytes>", self.bytes.len()),
            )
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// The provided stores of a plan, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvidedStores {
    /// `provided_keystore`.
    pub keystore: ProvidedFile,
    /// `provided_truststore`, when the plan names one (else the pack's truststore stays).
    pub truststore: Option<ProvidedFile>,
    /// The keystore's `keystore_alias` entry: the names its certificate carries.
    pub key: KeyEntryInfo,
}

impl ProvidedStores {
    /// The files as the CLI sends them (`ApplyRequest.provided_files`): path as written →
    /// bytes.
    pub fn files(&self) -> impl Iterator<Item = &ProvidedFile> {
        std::iter::once(&self.keystore).chain(&self.truststore)
    }
}

/// Reads and checks the plan's provided stores; `Ok(None)` unless `issuer = "provided"`.
/// Problems are errors at `provided_keystore` / `provided_truststore` (codes
/// [`KEYSTORE_CODE`], [`TRUSTSTORE_CODE`]).
pub fn load(plan: &Plan, env: &dyn EnvSource) -> Result<Option<ProvidedStores>, Vec<Finding>> {
    let tls = &plan.tls;
    if tls.issuer.value != Issuer::Provided {
        return Ok(None);
    }
    let Some(keystore_at) = &tls.provided_keystore else {
        // Unreachable for a validated plan: the parser reports it missing.
        return Err(Vec::new());
    };
    let keystore = read(plan, env, keystore_at, KEYSTORE_CODE).and_then(|file| {
        let password = password(
            plan,
            env,
            &tls.keystore_password,
            keystore_at,
            KEYSTORE_CODE,
        )?;
        match apim_certs::inspect_store(&file.bytes, &password, Some(&tls.keystore_alias)) {
            Ok(found) => Ok((file, found.key.expect("an alias was asked for"))),
            Err(e) => Err(refused(keystore_at, KEYSTORE_CODE, "keystore_password", &e)),
        }
    });
    let truststore = match &tls.provided_truststore {
        None => Ok(None),
        Some(at) => read(plan, env, at, TRUSTSTORE_CODE).and_then(|file| {
            let password = password(plan, env, &tls.truststore_password, at, TRUSTSTORE_CODE)?;
            match apim_certs::inspect_store(&file.bytes, &password, None) {
                Ok(_) => Ok(Some(file)),
                Err(e) => Err(refused(at, TRUSTSTORE_CODE, "truststore_password", &e)),
            }
        }),
    };
    let (keystore, truststore) = match (keystore, truststore) {
        (Ok(k), Ok(t)) => (k, t),
        (k, t) => return Err(k.err().into_iter().chain(t.err()).collect()),
    };
    Ok(Some(ProvidedStores {
        keystore: keystore.0,
        truststore,
        key: keystore.1,
    }))
}

fn finding(code: &'static str, diagnostic: Diagnostic) -> Finding {
    Finding { code, diagnostic }
}

fn read(
    plan: &Plan,
    env: &dyn EnvSource,
    at: &At<String>,
    code: &'static str,
) -> Result<ProvidedFile, Finding> {
    let bytes = env
        .provided_file(&at.value, &plan.base_dir)
        .map_err(|e| finding(code, Diagnostic::error(at.span.clone(), e)))?;
    Ok(ProvidedFile {
        written: at.value.clone(),
        sha256: crate::digest(&bytes),
        bytes,
    })
}

fn password(
    plan: &Plan,
    env: &dyn EnvSource,
    secret: &crate::plan::Secret,
    at: &At<String>,
    code: &'static str,
) -> Result<String, Finding> {
    secrets::resolve(&secret.value, &plan.base_dir, env).map_err(|e| {
        finding(
            code,
            Diagnostic::error(at.span.clone(), format!("its password: {e}")),
        )
    })
}

/// The error for a store at `at` that `inspect_store` refused, with what to do about it.
fn refused(at: &At<String>, code: &'static str, password: &str, e: &CertsError) -> Finding {
    let file = &at.value;
    let same_password = "WSO2 requires the key password to equal the store password \
                         (keytool -keypasswd, or export and re-import the key)";
    let (message, hint) = match e {
        CertsError::WrongKeystorePassword => (
            format!("`{file}` does not open with {password}: {e}"),
            format!("{password} must be the store's password"),
        ),
        CertsError::AliasNotFound { .. } => (
            format!("`{file}`: {e}"),
            "keystore_alias must name the key WSO2 serves (keytool -list shows the aliases)"
                .to_string(),
        ),
        CertsError::NotAKeyEntry { .. } => (
            format!("`{file}`: {e}"),
            "keystore_alias must name a PrivateKeyEntry, with its certificate chain".to_string(),
        ),
        CertsError::WrongKeyPassword { alias } => (
            format!("`{file}`: the key of alias {alias:?} does not decrypt with {password}"),
            same_password.to_string(),
        ),
        CertsError::StoreContentsUndecryptable => (
            format!(
                "`{file}` opens with {password}, but a key or certificate in it does not \
                 decrypt with it"
            ),
            same_password.to_string(),
        ),
        _ => (
            format!("`{file}` cannot be read as a keystore: {e}"),
            "provide a JKS or PKCS#12 file".to_string(),
        ),
    };
    finding(
        code,
        Diagnostic::error(at.span.clone(), message).with_hint(hint),
    )
}

/// A warning (code [`NAME_CODE`]) at each node's hostname whose hostname or role's load
/// balancer hostname the provided certificate does not name.
pub fn name_findings(plan: &Plan, stores: &ProvidedStores) -> Vec<Finding> {
    let key = &stores.key;
    plan.nodes
        .iter()
        .filter_map(|node| {
            let missing: Vec<String> = crate::render::cert_names(plan, node)
                .into_iter()
                .filter(|name| !key.covers(name))
                .collect();
            if missing.is_empty() {
                return None;
            }
            let has = if key.names.is_empty() {
                "no DNS name".to_string()
            } else {
                key.names.join(", ")
            };
            Some(finding(
                NAME_CODE,
                Diagnostic::warning(
                    node.hostname.span.clone(),
                    format!(
                        "node `{}`: the provided certificate (`{}` alias `{}`) does not name {}; \
                         it names {has}",
                        node.name.value,
                        stores.keystore.written,
                        key.alias,
                        missing.join(", ")
                    ),
                )
                .with_hint(
                    "peers and clients that check hostnames will refuse it; add the names (or a \
                     wildcard) to its subject alternative names",
                ),
            ))
        })
        .collect()
}
