//! Resolving the plan's secret references.
//!
//! On the operator's machine `{ env = … }` and `{ file = … }` are read from the process
//! environment and the file system ([`ProcessEnv`]); [`collect`] gathers the values into a map
//! keyed by the reference as written (`env:NAME`, `file:path`) that the CLI sends with
//! `Apply`/`Plan`. The controller renders from that map only ([`ResolvedSecrets`]): it never
//! reads its own environment or files for a plan's secrets.
//!
//! The environment is injected ([`EnvSource`]) so tests never mutate the process environment.

use std::collections::BTreeMap;
use std::path::Path;

use crate::plan::{Plan, SecretSource, resolve_path};

/// Where `{ env = "VAR" }` and `{ file = "…" }` secrets are looked up.
pub trait EnvSource {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;

    /// The content of the secret file `written` (as written in the plan, relative to
    /// `base_dir`), one trailing newline dropped. Reads the file system unless overridden.
    fn file(&self, written: &Path, base_dir: &Path) -> Result<String, String> {
        let path = resolve_path(base_dir, &written.to_string_lossy());
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let v = s.strip_suffix('\n').unwrap_or(&s);
                let v = v.strip_suffix('\r').unwrap_or(v);
                if v.is_empty() {
                    Err(format!("secret file `{}` is empty", path.display()))
                } else {
                    Ok(v.to_string())
                }
            }
            Err(e) => Err(format!("cannot read secret file `{}`: {e}", path.display())),
        }
    }

    /// The bytes of a file the plan ships whole (`[tls] provided_keystore`,
    /// `provided_truststore`), `written` as in the plan, relative to `base_dir`. Reads the file
    /// system unless overridden.
    fn provided_file(&self, written: &str, base_dir: &Path) -> Result<Vec<u8>, String> {
        let path = resolve_path(base_dir, written);
        std::fs::read(&path).map_err(|e| format!("`{}` cannot be read: {e}", path.display()))
    }
}

/// The prefix of a provided file's key among the resolved secrets: `provided:<path as
/// written>`, its value the file's bytes in base64. Kept with the secrets (sealed, pruned with
/// them), never in the artifact store: keystores hold private keys.
pub const PROVIDED_PREFIX: &str = "provided:";

/// Whether a resolved-secrets key holds a provided file (its value is a file, not a password
/// that could show in a diff line).
pub fn is_provided_key(key: &str) -> bool {
    key.starts_with(PROVIDED_PREFIX)
}

/// Puts the provided file `written` (as in the plan) with `bytes` into a resolved-secrets map.
pub fn insert_provided(secrets: &mut BTreeMap<String, String>, written: &str, bytes: &[u8]) {
    use base64::Engine as _;
    secrets.insert(
        format!("{PROVIDED_PREFIX}{written}"),
        base64::engine::general_purpose::STANDARD.encode(bytes),
    );
}

/// The key of a secret reference in `ApplyRequest.resolved_secrets`: `env:NAME` or
/// `file:path` (as written); `None` for literals and product defaults, which travel in the plan.
pub fn secret_key(source: &SecretSource) -> Option<String> {
    match source {
        SecretSource::Env(name) => Some(format!("env:{name}")),
        SecretSource::File(p) => Some(format!("file:{}", p.to_string_lossy())),
        SecretSource::Literal(_) | SecretSource::Default(_) => None,
    }
}

/// Resolves every `{ env }`/`{ file }` secret of `plan` with `env` into the map the CLI sends.
/// Errors name the secret, never its value.
pub fn collect(plan: &Plan, env: &dyn EnvSource) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (what, s) in plan.secret_refs() {
        if let Some(key) = secret_key(&s.value) {
            let v = resolve(&s.value, &plan.base_dir, env).map_err(|e| format!("{what}: {e}"))?;
            out.insert(key, v);
        }
    }
    Ok(out)
}

/// Secret values sent by the operator's CLI, keyed as by [`secret_key`]: the only source the
/// controller renders from. A reference missing from the map is an error.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResolvedSecrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for ResolvedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ResolvedSecrets")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EnvSource for ResolvedSecrets {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(&format!("env:{name}")).cloned()
    }

    fn file(&self, written: &Path, _base_dir: &Path) -> Result<String, String> {
        let key = format!("file:{}", written.to_string_lossy());
        match self.0.get(&key) {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            Some(_) => Err(format!("secret file `{}` is empty", written.display())),
            None => Err(format!(
                "secret file `{}` was not sent by the client",
                written.display()
            )),
        }
    }

    fn provided_file(&self, written: &str, _base_dir: &Path) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let value = self
            .0
            .get(&format!("{PROVIDED_PREFIX}{written}"))
            .ok_or_else(|| format!("`{written}` was not sent by the client"))?;
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| format!("`{written}` was not sent as base64"))
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map, for tests and for embedding.
impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Resolves a secret, or says why it cannot be read (never including the value).
pub fn resolve(
    source: &SecretSource,
    base_dir: &Path,
    env: &dyn EnvSource,
) -> Result<String, String> {
    match source {
        SecretSource::Env(name) => match env.var(name) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(format!("environment variable `{name}` is empty")),
            None => Err(format!("environment variable `{name}` is not set")),
        },
        SecretSource::File(p) => env.file(p, base_dir),
        SecretSource::Literal(v) => Ok(v.clone()),
        SecretSource::Default(v) => Ok((*v).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_secrets_never_touch_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), "from-disk\n").unwrap();
        let map = ResolvedSecrets([("file:db".to_string(), "sent".to_string())].into());
        let src = SecretSource::File("db".into());
        assert_eq!(resolve(&src, dir.path(), &map).unwrap(), "sent");
        assert_eq!(resolve(&src, dir.path(), &ProcessEnv).unwrap(), "from-disk");
        let missing = SecretSource::File("other".into());
        std::fs::write(dir.path().join("other"), "x").unwrap();
        assert!(resolve(&missing, dir.path(), &map).is_err());
        assert_eq!(format!("{map:?}"), "ResolvedSecrets([\"file:db\"])");
    }

    #[test]
    fn provided_files_travel_as_base64_and_never_touch_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ks.p12"), b"from-disk").unwrap();
        let mut map = BTreeMap::new();
        insert_provided(&mut map, "ks.p12", &[0xFE, 0xED, 0x00, 0xFF]);
        assert!(is_provided_key(map.keys().next().unwrap()));
        let map = ResolvedSecrets(map);
        assert_eq!(
            map.provided_file("ks.p12", dir.path()).unwrap(),
            [0xFE, 0xED, 0x00, 0xFF]
        );
        assert!(map.provided_file("other.p12", dir.path()).is_err());
        assert_eq!(
            ProcessEnv.provided_file("ks.p12", dir.path()).unwrap(),
            b"from-disk"
        );
        assert!(format!("{map:?}").contains("provided:ks.p12"));
    }
}
