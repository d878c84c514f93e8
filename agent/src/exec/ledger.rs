//! A generation-numbered, atomically persisted record of "what the controller last asked for".
//!
//! Modelled on omicron's `common/src/ledger.rs` (the sled agent "ledgers" each
//! generation-numbered config before converging to it), plus the `fsync`s it lacks:
//!
//! * [`Ledger::load`] reads `<state dir>/<name>.json`; a missing file is an empty ledger, an
//!   unreadable one is an error (never silently treated as empty: that would let an old
//!   generation in).
//! * [`Ledger::commit`] refuses a lower generation ([`ExecError::GenerationRegressed`]), treats
//!   the same generation with the same content as a no-op, and refuses the same generation
//!   with different content ([`ExecError::GenerationConflict`]): one generation names one
//!   content.
//! * Writes go through [`apim_atomic`] with mode `0600` (a machine spec carries passwords),
//!   in a state directory created `0700`.
//!
//! The file is JSON in a small envelope (`format`, `generation`, `value`) so a future format
//! change can be detected, and so the generation is visible to an operator running `cat`.
//! Content equality is decided on the serialised form, so `T` need not implement `PartialEq`.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::exec::error::{ExecError, Result};
use apim_atomic::write_atomic;

/// The envelope's format version.
const FORMAT: u32 = 1;

/// A value that carries the generation the controller assigned to it.
pub trait Generational {
    /// The generation number; higher is newer.
    fn generation(&self) -> u64;
}

/// What [`Ledger::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The new value was written; `previous` is the generation it replaced, if any.
    Committed {
        /// The generation held before, if the ledger was not empty.
        previous: Option<u64>,
    },
    /// Same generation, same content: nothing was written.
    Unchanged,
}

#[derive(Serialize, Deserialize)]
struct Envelope<V> {
    format: u32,
    generation: u64,
    value: V,
}

/// The persisted ledger of one kind of value (e.g. the machine spec).
#[derive(Debug)]
pub struct Ledger<T> {
    path: PathBuf,
    current: Option<T>,
}

impl<T> Ledger<T>
where
    T: Serialize + DeserializeOwned + Generational,
{
    /// Open the ledger `<state_dir>/<name>.json`, creating `state_dir` (mode 0700) if needed.
    pub fn load(state_dir: &Path, name: &str) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| ExecError::io("create state directory", state_dir, e))?;
        let path = state_dir.join(format!("{name}.json"));
        let current = match std::fs::read(&path) {
            Ok(bytes) => Some(Self::decode(&path, &bytes)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(ExecError::io("read ledger", &path, e)),
        };
        Ok(Ledger { path, current })
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<T> {
        let env: Envelope<T> =
            serde_json::from_slice(bytes).map_err(|e| ExecError::LedgerCorrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if env.format != FORMAT {
            return Err(ExecError::LedgerCorrupt {
                path: path.to_path_buf(),
                reason: format!("unknown format {} (this agent reads {FORMAT})", env.format),
            });
        }
        if env.generation != env.value.generation() {
            return Err(ExecError::LedgerCorrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "envelope says generation {} but the value says {}",
                    env.generation,
                    env.value.generation()
                ),
            });
        }
        Ok(env.value)
    }

    /// The held value, if any.
    pub fn current(&self) -> Option<&T> {
        self.current.as_ref()
    }

    /// The held generation, if any.
    pub fn generation(&self) -> Option<u64> {
        self.current.as_ref().map(Generational::generation)
    }

    /// The file backing this ledger.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Persist `new` if it is newer than the held value (see the module docs for the rules).
    pub fn commit(&mut self, new: T) -> Result<CommitOutcome> {
        let offered = new.generation();
        let previous = self.generation();
        if let (Some(held), Some(cur)) = (previous, self.current.as_ref()) {
            if offered < held {
                return Err(ExecError::GenerationRegressed {
                    path: self.path.clone(),
                    held,
                    offered,
                });
            }
            if offered == held {
                let a = self.to_value(cur)?;
                let b = self.to_value(&new)?;
                return if a == b {
                    Ok(CommitOutcome::Unchanged)
                } else {
                    Err(ExecError::GenerationConflict {
                        path: self.path.clone(),
                        generation: held,
                    })
                };
            }
        }
        let env = Envelope {
            format: FORMAT,
            generation: offered,
            value: &new,
        };
        let mut bytes =
            serde_json::to_vec_pretty(&env).map_err(|source| ExecError::LedgerSerialize {
                path: self.path.clone(),
                source,
            })?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes, 0o600)?;
        self.current = Some(new);
        Ok(CommitOutcome::Committed { previous })
    }

    fn to_value(&self, v: &T) -> Result<serde_json::Value> {
        serde_json::to_value(v).map_err(|source| ExecError::LedgerSerialize {
            path: self.path.clone(),
            source,
        })
    }
}
