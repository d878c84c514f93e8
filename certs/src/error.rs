//! The one error type of this crate.
//!
//! Every variant carries enough context (a path, an alias, a token id, the machine name) for an
//! operator to act on it, and none ever carries a secret: token secrets, passwords and private
//! keys never reach an error message.

use std::path::PathBuf;

use time::OffsetDateTime;

/// Short alias used throughout the crate.
pub type Result<T, E = CertsError> = std::result::Result<T, E>;

/// Everything that can go wrong while issuing, enrolling, parsing or writing key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// A file or directory operation failed; `action` says what we were doing.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being attempted, e.g. "writing CA key".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },

    /// A file holding a private key is readable by group or others; we refuse to use it
    /// (like ssh does) rather than silently trusting a key others may have copied.
    #[error(
        "{} holds a private key but has mode {mode:o}; expected 0600 (fix with chmod 600)",
        path.display()
    )]
    InsecurePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// Only one half of a key/certificate pair exists on disk. We never regenerate a CA
    /// over a half-present one, because that would silently orphan every issued certificate.
    #[error(
        "{} exists but {} is missing; restore it from backup or remove both to start a new CA",
        present.display(),
        missing.display()
    )]
    IncompletePair {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },

    /// rcgen refused to build, sign or load something.
    #[error("{context}: {source}")]
    Rcgen {
        /// What was being built or loaded.
        context: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },

    /// A certificate, CSR or PEM document could not be parsed.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What we tried to parse, e.g. "peer certificate".
        what: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// A machine, operator or host name is not acceptable in an identity or certificate.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// "machine", "operator", "hostname", …
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A validity / TTL value is zero or absurdly large.
    #[error("invalid validity period: {reason}")]
    InvalidValidity {
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The CSR was refused by the signing policy (bad signature, unsupported key type).
    #[error("certificate signing request rejected: {reason}")]
    CsrRejected {
        /// Why it was refused.
        reason: String,
    },

    /// A peer certificate carries no apimctl identity, or carries several.
    #[error("peer certificate has no usable apimctl identity: {reason}")]
    NoIdentity {
        /// What was wrong with it.
        reason: String,
    },

    /// A join token string does not have the `apimctl1.<id>.<secret>.<fp>` shape.
    #[error("malformed join token: {reason}")]
    MalformedToken {
        /// What was wrong with it (never the token itself).
        reason: &'static str,
    },

    /// No token with this id is known to the controller.
    #[error("unknown join token id {id}")]
    UnknownToken {
        /// The token id (public part of the token).
        id: String,
    },

    /// The token id is known but the secret does not match.
    #[error("join token {id}: secret does not match")]
    TokenSecretMismatch {
        /// The token id.
        id: String,
    },

    /// The token was already redeemed once; tokens are single use.
    #[error("join token {id} has already been used")]
    TokenAlreadyUsed {
        /// The token id.
        id: String,
    },

    /// The token's lifetime is over.
    #[error("join token {id} expired at {expired_at}")]
    TokenExpired {
        /// The token id.
        id: String,
        /// When it expired.
        expired_at: OffsetDateTime,
    },

    /// The agent claims a machine name different from the one the token was minted for.
    #[error(
        "join token {id} was issued for machine {expected:?}, but the agent claims {claimed:?}"
    )]
    TokenMachineMismatch {
        /// The token id.
        id: String,
        /// The machine the token is bound to.
        expected: String,
        /// The machine the agent claimed.
        claimed: String,
    },

    /// A token record with this id already exists in the registry.
    #[error("join token id {id} already exists")]
    DuplicateToken {
        /// The clashing id.
        id: String,
    },

    /// The CA certificate presented by the controller does not match the pinned fingerprint:
    /// possibly a man in the middle, or a token minted for another controller.
    #[error("controller CA fingerprint {actual} does not match the pinned {expected}")]
    CaPinMismatch {
        /// The fingerprint from the join token.
        expected: String,
        /// The fingerprint of the CA actually presented.
        actual: String,
    },

    /// The operating system's random number generator failed.
    #[error("random number generator failed: {reason}")]
    Random {
        /// The OS error text.
        reason: String,
    },

    /// RSA key generation or encoding failed.
    #[error("RSA key generation failed: {reason}")]
    RsaKey {
        /// The error text from the rsa crate.
        reason: String,
    },

    /// A PKCS#12 store could not be built or read.
    #[error("PKCS#12 {context}: {source}")]
    Pkcs12 {
        /// What was being done.
        context: &'static str,
        /// The p12-keystore error.
        #[source]
        source: p12_keystore::error::Error,
    },

    /// A keystore password is too short for keytool (which demands at least 6 characters).
    #[error("keystore password must be at least 6 characters long")]
    PasswordTooShort,

    /// keytool could not be started at all (missing JDK, wrong JAVA_HOME).
    #[error("cannot run keytool at {}: {source}", path.display())]
    KeytoolSpawn {
        /// The keytool path we tried.
        path: PathBuf,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },

    /// keytool ran but failed.
    #[error("keytool {action} on {} failed ({status}): {output}", store.display())]
    KeytoolFailed {
        /// The keytool sub-command, e.g. "-importcert".
        action: &'static str,
        /// The store being worked on.
        store: PathBuf,
        /// Exit status text.
        status: String,
        /// keytool's combined stdout/stderr (keytool never prints passwords).
        output: String,
    },

    /// A keystore's integrity check failed: the store password is wrong, or the file was
    /// changed (keytool's "Keystore was tampered with, or password was incorrect").
    #[error("keystore was tampered with, or its password is incorrect")]
    WrongKeystorePassword,

    /// A private key entry does not decrypt with the key password given.
    #[error("cannot recover the key of alias {alias:?}: the key password is incorrect")]
    WrongKeyPassword {
        /// The entry's alias.
        alias: String,
    },

    /// The keystore has no private key entry under this alias.
    #[error("no private key entry with alias {alias:?}")]
    NoSuchKeyEntry {
        /// The alias asked for.
        alias: String,
    },

    /// The store has no entry under this alias at all.
    #[error("no entry with alias {alias:?} (the store has {})", list(present))]
    AliasNotFound {
        /// The alias asked for.
        alias: String,
        /// The aliases the store has.
        present: Vec<String>,
    },

    /// The alias names a trusted certificate entry where a private key entry is needed.
    #[error("alias {alias:?} is a trusted certificate entry, not a private key entry")]
    NotAKeyEntry {
        /// The alias.
        alias: String,
    },

    /// A PKCS#12 store opens with the password (its MAC verifies), but a key or certificate
    /// in it is encrypted under another password.
    #[error(
        "the store opens, but a key or certificate in it does not decrypt with the same password"
    )]
    StoreContentsUndecryptable,

    /// Bytes that are neither JKS nor PKCS#12.
    #[error("neither a JKS nor a PKCS#12 keystore (starts with {magic})")]
    UnrecognizedStore {
        /// Hex of the first bytes.
        magic: String,
    },

    /// Something went wrong with one keystore file; `source` says what.
    #[error("{}: {source}", path.display())]
    InStore {
        /// The store file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<CertsError>,
    },

    /// An existing keystore is neither JKS nor PKCS#12 according to its magic bytes.
    #[error("{} is neither a JKS nor a PKCS#12 keystore (starts with {magic})", path.display())]
    UnknownStoreFormat {
        /// The store file.
        path: PathBuf,
        /// Hex of its first bytes.
        magic: String,
    },
}

/// The aliases for a message: `no entries`, `entries a, b`, or the first ten and a count.
fn list(aliases: &[String]) -> String {
    const SHOWN: usize = 10;
    match aliases.len() {
        0 => "no entries".to_owned(),
        n if n <= SHOWN => format!("entries {}", aliases.join(", ")),
        n => format!(
            "entries {} and {} more",
            aliases[..SHOWN].join(", "),
            n - SHOWN
        ),
    }
}

impl CertsError {
    /// Shorthand for [`CertsError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CertsError::Io {
            action,
            path,
            source,
        }
    }

    /// Shorthand for [`CertsError::Rcgen`].
    pub(crate) fn rcgen(context: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |source| CertsError::Rcgen { context, source }
    }

    /// Shorthand for [`CertsError::Parse`].
    pub(crate) fn parse(what: &'static str, reason: impl ToString) -> Self {
        CertsError::Parse {
            what,
            reason: reason.to_string(),
        }
    }
}
