//! Secrets at rest: every store value that can hold a secret (plan secrets, machine specs with
//! their `deployment.toml`, keystore passwords and private keys) is sealed with
//! ChaCha20-Poly1305 (ring) under a 256-bit key kept in its own file (`store.key`, 0600) beside
//! the database, never in it: a copy of `controller.db` alone reveals no secret.
//!
//! A sealed value is `MAGIC || nonce (12) || ciphertext || tag (16)`; the table and column it
//! belongs to are the associated data, so a value moved to another column does not open.
//! Values written before sealing existed (no magic) are read as they are and sealed by the next
//! [`super::Store::open`].

use std::io::Write as _;
use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::StoreError;

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "store.key";
/// What every sealed value starts with.
const MAGIC: &[u8] = b"apimseal1:";
const KEY_LEN: usize = 32;

/// Seals and opens store values with the data directory's key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: "sealed value",
        reason: reason.into(),
    }
}

impl Sealer {
    /// The key in `data_dir/store.key`, made (0600, never overwritten) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Sealer, StoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = data_dir.join(KEY_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_key()?;
                // create_new: two controllers starting at once cannot overwrite each other's key.
                let created = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path);
                match created {
                    Ok(mut f) => {
                        f.write_all(&key).and_then(|()| f.sync_all()).map_err(io)?;
                        std::fs::File::open(data_dir)
                            .and_then(|d| d.sync_all())
                            .map_err(io)?;
                        key.to_vec()
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read(&path).map_err(io)?
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) => return Err(io(e)),
        };
        let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        Self::from_key(&bytes).map_err(|_| {
            bad(format!(
                "{} must hold {KEY_LEN} bytes; restore it from backup",
                path.display()
            ))
        })
    }

    /// A sealer with a fresh random key (in-memory stores).
    pub fn ephemeral() -> Result<Sealer, StoreError> {
        Self::from_key(&random_key()?)
    }

    fn from_key(bytes: &[u8]) -> Result<Sealer, StoreError> {
        if bytes.len() != KEY_LEN {
            return Err(bad("wrong key length"));
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| bad("bad key"))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// `plain` sealed for `(table, column)`.
    pub fn seal(&self, place: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| bad("no randomness for a nonce"))?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut data,
            )
            .map_err(|_| bad("sealing failed"))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// The plain bytes of a value of `(table, column)`: opened when sealed, as stored when it
    /// predates sealing.
    pub fn open(&self, place: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return Ok(stored.to_vec());
        };
        if rest.len() < NONCE_LEN {
            return Err(bad("truncated"));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("bad nonce"))?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut data)
            .map_err(|_| {
                bad(format!(
                    "{place} does not open with this data directory's {KEY_FILE}"
                ))
            })?;
        Ok(plain.to_vec())
    }

    /// Whether `stored` is sealed already.
    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(MAGIC)
    }
}

fn random_key() -> Result<[u8; KEY_LEN], StoreError> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| bad("no randomness for a key"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_place_and_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::load_or_create(dir.path()).unwrap();
        let sealed = s.seal("specs.spec", b"password = \"s3cret\"").unwrap();
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            s.open("specs.spec", &sealed).unwrap(),
            b"password = \"s3cret\""
        );
        assert!(
            s.open("baseline.spec", &sealed).is_err(),
            "bound to its column"
        );
        assert_eq!(s.open("specs.spec", b"legacy").unwrap(), b"legacy");

        // The same key file opens it again; another key does not.
        let again = Sealer::load_or_create(dir.path()).unwrap();
        assert!(again.open("specs.spec", &sealed).is_ok());
        assert!(
            Sealer::ephemeral()
                .unwrap()
                .open("specs.spec", &sealed)
                .is_err()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
