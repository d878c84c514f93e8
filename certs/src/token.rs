//! Join tokens: one-time, host-bound, time-limited, CA-pinning enrollment credentials.
//!
//! `apimctl token create --machine vm-gw-1` mints a token string
//! `apimctl1.<id>.<secret>.<ca-fingerprint>` for the operator and a [`TokenRecord`] for the
//! controller to persist. The record keeps only the SHA-256 of the secret, never the secret.
//! The agent parses the string ([`ParsedToken`]), dials the controller, checks the presented CA
//! against the pin ([`verify_ca_pin`]) before sending anything, and sends id + secret; the
//! controller redeems it once ([`TokenRegistry::redeem_for`]) and learns the machine name to
//! put in the agent's certificate.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::error::{CertsError, Result};
use crate::identity::validate_name;
use crate::pki::{cert_pem_to_der, random_bytes, sha256_fingerprint};

/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Version prefix of the token string format.
pub const TOKEN_PREFIX: &str = "apimctl1";
/// Random bytes in a token id (public, used for lookup).
const ID_BYTES: usize = 8;
/// Random bytes in a token secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Hex characters in a SHA-256 fingerprint.
const FINGERPRINT_HEX_LEN: usize = 64;

/// The token string handed to the operator. It is a secret until redeemed, so `Debug` redacts
/// it and there is no `Display`: printing it must be a deliberate [`JoinToken::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    token: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

impl JoinToken {
    /// Mints a token for `machine`, valid for `ttl` from now (see [`DEFAULT_TOKEN_TTL`]),
    /// pinning the control-plane CA `ca_fingerprint` (hex SHA-256 of its DER).
    pub fn mint(
        machine: &str,
        ttl: Duration,
        ca_fingerprint: &str,
    ) -> Result<(JoinToken, TokenRecord)> {
        Self::mint_at(machine, ttl, ca_fingerprint, OffsetDateTime::now_utc())
    }

    /// [`JoinToken::mint`] with an explicit clock, for tests and replays.
    pub fn mint_at(
        machine: &str,
        ttl: Duration,
        ca_fingerprint: &str,
        now: OffsetDateTime,
    ) -> Result<(JoinToken, TokenRecord)> {
        validate_name("machine", machine)?;
        let fingerprint = normalize_fingerprint(ca_fingerprint)?;
        if ttl.is_zero() {
            return Err(CertsError::InvalidValidity {
                reason: "token lifetime must be longer than zero",
            });
        }
        let ttl = time::Duration::try_from(ttl).map_err(|_| CertsError::InvalidValidity {
            reason: "token lifetime out of range",
        })?;
        let expires_at = now.checked_add(ttl).ok_or(CertsError::InvalidValidity {
            reason: "token lifetime out of range",
        })?;
        let mut id = [0u8; ID_BYTES];
        random_bytes(&mut id)?;
        let mut secret = [0u8; SECRET_BYTES];
        random_bytes(&mut secret)?;
        let id = hex::encode(id);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let record = TokenRecord {
            id: id.clone(),
            machine: machine.to_owned(),
            secret_sha256: hash_secret(&secret),
            created_at: now,
            expires_at,
            used: false,
            used_at: None,
        };
        let token = JoinToken {
            token: format!("{TOKEN_PREFIX}.{id}.{secret}.{fingerprint}"),
        };
        Ok((token, record))
    }

    /// The token string, to show to the operator once.
    pub fn expose(&self) -> &str {
        &self.token
    }
}

/// What the controller persists about a token. Holds a hash of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public token id (lookup key).
    pub id: String,
    /// The machine this token enrolls; the agent's identity comes from here.
    pub machine: String,
    /// Lowercase hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// When it was minted.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// After this instant the token is refused.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Set on first successful redemption; a used token is refused.
    pub used: bool,
    /// When it was redeemed.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub used_at: Option<OffsetDateTime>,
}

/// A token string split into its parts (agent side, and controller side before lookup).
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// Public id.
    pub id: String,
    /// Secret part (base64url). Never log it.
    pub secret: String,
    /// Pinned control-plane CA fingerprint (lowercase hex SHA-256).
    pub ca_fingerprint: String,
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

impl ParsedToken {
    /// Parses `apimctl1.<id>.<secret>.<fp>`, checking every part's shape. Surrounding
    /// whitespace (a pasted newline) is ignored. Errors never include the token.
    pub fn parse(token: &str) -> Result<Self> {
        let mut parts = token.trim().split('.');
        let (Some(prefix), Some(id), Some(secret), Some(fp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CertsError::MalformedToken {
                reason: "expected four '.'-separated parts",
            });
        };
        if prefix != TOKEN_PREFIX {
            return Err(CertsError::MalformedToken {
                reason: "unknown token version prefix",
            });
        }
        if id.len() != ID_BYTES * 2 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(CertsError::MalformedToken {
                reason: "token id must be 16 lowercase hex characters",
            });
        }
        match URL_SAFE_NO_PAD.decode(secret) {
            Ok(bytes) if bytes.len() == SECRET_BYTES => {}
            _ => {
                return Err(CertsError::MalformedToken {
                    reason: "token secret must be 32 bytes of base64url",
                });
            }
        }
        let ca_fingerprint = normalize_fingerprint(fp).map_err(|_| CertsError::MalformedToken {
            reason: "CA fingerprint must be 64 hex characters",
        })?;
        Ok(ParsedToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_fingerprint,
        })
    }
}

/// Checks that the CA certificate the controller presented (PEM) has the pinned fingerprint.
/// The agent calls this before it sends the token secret, so a man in the middle with another
/// CA learns nothing.
pub fn verify_ca_pin(ca_pem: &str, expected_fingerprint: &str) -> Result<()> {
    let expected = normalize_fingerprint(expected_fingerprint)?;
    let actual = sha256_fingerprint(&cert_pem_to_der(ca_pem)?);
    if actual.as_bytes().ct_eq(expected.as_bytes()).into() {
        Ok(())
    } else {
        Err(CertsError::CaPinMismatch { expected, actual })
    }
}

/// Accepts `AB:CD…` or `abcd…` and returns 64 lowercase hex characters.
fn normalize_fingerprint(fp: &str) -> Result<String> {
    let hex: String = fp
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() != FINGERPRINT_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CertsError::parse(
            "CA fingerprint",
            "expected 64 hex characters (SHA-256)",
        ));
    }
    Ok(hex)
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The controller's set of minted tokens. Serialises as a list of [`TokenRecord`]s so the
/// controller's store can persist it as it likes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<TokenRecord>", into = "Vec<TokenRecord>")]
pub struct TokenRegistry {
    records: BTreeMap<String, TokenRecord>,
}

impl From<Vec<TokenRecord>> for TokenRegistry {
    fn from(records: Vec<TokenRecord>) -> Self {
        TokenRegistry {
            records: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }
}

impl From<TokenRegistry> for Vec<TokenRecord> {
    fn from(reg: TokenRegistry) -> Self {
        reg.records.into_values().collect()
    }
}

impl TokenRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a freshly minted record; an id clash (astronomically unlikely) is an error rather
    /// than an overwrite.
    pub fn insert(&mut self, record: TokenRecord) -> Result<()> {
        if self.records.contains_key(&record.id) {
            return Err(CertsError::DuplicateToken { id: record.id });
        }
        self.records.insert(record.id.clone(), record);
        Ok(())
    }

    /// Looks a record up by id.
    pub fn get(&self, id: &str) -> Option<&TokenRecord> {
        self.records.get(id)
    }

    /// All records, ordered by id.
    pub fn records(&self) -> impl Iterator<Item = &TokenRecord> {
        self.records.values()
    }

    /// Removes a token (operator revoked it before use). Returns the record if it existed.
    pub fn remove(&mut self, id: &str) -> Option<TokenRecord> {
        self.records.remove(id)
    }

    /// Drops records that are used or expired at `now`; returns how many were dropped.
    pub fn prune(&mut self, now: OffsetDateTime) -> usize {
        let before = self.records.len();
        self.records.retain(|_, r| !r.used && r.expires_at > now);
        before - self.records.len()
    }

    /// Redeems a token once and returns the machine it was minted for. Fails for an unknown
    /// id, a wrong secret (compared in constant time), a used token, or an expired one.
    pub fn redeem(&mut self, token: &str, now: OffsetDateTime) -> Result<String> {
        self.redeem_inner(token, None, now)
    }

    /// Like [`TokenRegistry::redeem`], but the agent also claims a machine name: a claim that
    /// differs from the token's machine is refused (and the token stays unused, so the right
    /// agent can still enroll). The identity returned is always the record's machine.
    pub fn redeem_for(
        &mut self,
        token: &str,
        claimed_machine: &str,
        now: OffsetDateTime,
    ) -> Result<String> {
        self.redeem_inner(token, Some(claimed_machine), now)
    }

    fn redeem_inner(
        &mut self,
        token: &str,
        claimed: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<String> {
        let parsed = ParsedToken::parse(token)?;
        let record = self
            .records
            .get_mut(&parsed.id)
            .ok_or_else(|| CertsError::UnknownToken {
                id: parsed.id.clone(),
            })?;
        let presented = hash_secret(&parsed.secret);
        if !bool::from(presented.as_bytes().ct_eq(record.secret_sha256.as_bytes())) {
            tracing::warn!(token_id = %record.id, "join token presented with a wrong secret");
            return Err(CertsError::TokenSecretMismatch { id: parsed.id });
        }
        if record.used {
            tracing::warn!(token_id = %record.id, machine = %record.machine, "join token reused");
            return Err(CertsError::TokenAlreadyUsed { id: parsed.id });
        }
        if now >= record.expires_at {
            return Err(CertsError::TokenExpired {
                id: parsed.id,
                expired_at: record.expires_at,
            });
        }
        if let Some(claimed) = claimed
            && claimed != record.machine
        {
            tracing::warn!(token_id = %record.id, expected = %record.machine, %claimed, "join token machine mismatch");
            return Err(CertsError::TokenMachineMismatch {
                id: parsed.id,
                expected: record.machine.clone(),
                claimed: claimed.to_owned(),
            });
        }
        record.used = true;
        record.used_at = Some(now);
        tracing::info!(token_id = %record.id, machine = %record.machine, "join token redeemed");
        Ok(record.machine.clone())
    }
}
