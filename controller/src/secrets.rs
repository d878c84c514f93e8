//! Resolving the plan's secret references on the operator's machine.
//!
//! The environment is injected ([`EnvSource`]) so tests never mutate the process environment.

use std::collections::BTreeMap;
use std::path::Path;

use crate::plan::{SecretSource, resolve_path};

/// Where `{ env = "VAR" }` secrets are looked up.
pub trait EnvSource {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
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
        SecretSource::File(p) => {
            let path = resolve_path(base_dir, &p.to_string_lossy());
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
        SecretSource::Literal(v) => Ok(v.clone()),
        SecretSource::Default(v) => Ok((*v).to_string()),
    }
}
