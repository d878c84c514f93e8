//! The agent's identity: how a fresh agent turns a one-time join token into its mTLS identity
//! ([`enroll`]), and the persisted key, certificate and trusted CA ([`AgentIdentity`]).
//!
//! 1. Parse the token (`apimctl1.<id>.<secret>.<ca-sha256>`); a malformed token fails before
//!    any network traffic.
//! 2. Dial the controller with [`apim_certs::tls::first_contact_config`], which pins the CA:
//!    the controller presents `[leaf, CA]`; the CA certificate's sha256 must equal the token's
//!    pin, and the leaf must chain to it and match the dialled name. On a mismatch the
//!    handshake is aborted, so the token secret (and every other byte of application data) is
//!    never sent, and [`enroll`] returns [`EnrollError::CaPinMismatch`].
//! 3. Generate a P-256 key, send a CSR with the token, check the returned CA against the pin
//!    and the returned certificate against the key, the CA and the machine name.
//! 4. Persist the identity in the state dir, atomically, mode 0600: [`IDENTITY_FILE`] (private
//!    key + certificate in one file, so a renewal swaps both in one rename) and [`CA_FILE`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apim_certs::tls::{self, ControllerEndpoint, TlsError};
use apim_certs::{AgentKey, ParsedToken, PeerCert, PeerIdentity};
use apim_proto::v1::EnrollRequest;
use apim_proto::v1::enrollment_client::EnrollmentClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The agent's private key and certificate (PEM, one file), mode 0600.
pub const IDENTITY_FILE: &str = "agent-identity.pem";
/// The controller's CA certificate the agent trusts from enrollment on, mode 0600.
pub const CA_FILE: &str = "controller-ca.pem";
/// Mode of both files.
const PRIVATE_MODE: u32 = 0o600;

/// Everything that can go wrong while enrolling or handling the agent's identity.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The join token is malformed (the message never contains the token).
    #[error("join token: {source}")]
    Token {
        /// What is wrong with it.
        #[source]
        source: apim_certs::CertsError,
    },

    /// The controller's CA is not the one the token pins: a man in the middle, or a token
    /// minted by another controller. Nothing was sent.
    #[error(
        "controller CA fingerprint {actual} does not match the join token's pin {expected}; \
         nothing was sent (wrong controller address, or a man in the middle)"
    )]
    CaPinMismatch {
        /// The pin from the token.
        expected: String,
        /// What the controller presented ("none" when it sent no CA certificate).
        actual: String,
    },

    /// The controller could not be reached or the TLS handshake failed for another reason.
    #[error("connecting to the controller at {address}: {reason}")]
    Connect {
        /// The address dialled.
        address: String,
        /// The transport's explanation.
        reason: String,
    },

    /// The controller refused the request.
    #[error("controller refused {call}: {code:?}: {message}")]
    Refused {
        /// The RPC, e.g. "Enroll".
        call: &'static str,
        /// The gRPC code (UNAUTHENTICATED for a used or expired token, PERMISSION_DENIED for a
        /// token of another machine).
        code: tonic::Code,
        /// The controller's message.
        message: String,
        /// The controller's stable error code (`ErrorDetail.code`, e.g. `auth.revoked`).
        detail: String,
    },

    /// The controller's answer does not hold together (wrong key, wrong machine, a
    /// certificate that does not verify, or a CA different from the pinned one).
    #[error("controller answer rejected: {reason}")]
    BadAnswer {
        /// What is wrong.
        reason: String,
    },

    /// Key generation, CSR building or certificate parsing failed.
    #[error("{action}: {source}")]
    Certs {
        /// What was being done.
        action: &'static str,
        /// The certs crate's error.
        #[source]
        source: apim_certs::CertsError,
    },

    /// TLS configuration could not be built.
    #[error("TLS configuration: {reason}")]
    Tls {
        /// rustls' complaint.
        reason: String,
    },

    /// The persisted identity is missing, unreadable or inconsistent.
    #[error("agent identity in {}: {reason}", dir.display())]
    Identity {
        /// The state dir.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Writing the identity failed.
    #[error("persisting the agent identity: {source}")]
    Persist {
        /// The atomic writer's error (carries the path).
        #[source]
        source: apim_atomic::AtomicError,
    },
}

impl EnrollError {
    /// The controller refused `call` with `status`.
    pub fn refused(call: &'static str, status: &tonic::Status) -> Self {
        EnrollError::Refused {
            call,
            code: status.code(),
            message: status.message().to_owned(),
            detail: apim_proto::error_details(status)
                .and_then(|d| d.errors.into_iter().next())
                .map(|e| e.code)
                .unwrap_or_default(),
        }
    }

    /// Whether the controller refused because this machine (or certificate) is revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self, EnrollError::Refused { detail, .. } if detail == "auth.revoked")
    }
}

pub(crate) fn tls_err(e: impl fmt::Display) -> EnrollError {
    EnrollError::Tls {
        reason: e.to_string(),
    }
}

/// The one mapping of [`apim_certs::tls`]'s errors: an unusable address or a failed dial is a
/// connection problem (retried while enrolling), a configuration one is a TLS problem.
impl From<TlsError> for EnrollError {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Config { reason } => EnrollError::Tls { reason },
            TlsError::Address { address, reason } | TlsError::Connect { address, reason } => {
                EnrollError::Connect { address, reason }
            }
        }
    }
}

/// Facts about the agent's current certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityInfo {
    /// The machine name in the certificate.
    pub machine: String,
    /// The certificate's serial (normalised hex).
    pub serial: String,
    /// Start of validity (back-dated by the controller for clock skew).
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// When the agent obtained it (or, after a restart, when the file was written).
    pub obtained_at: OffsetDateTime,
}

impl IdentityInfo {
    /// Whether the certificate has expired (the agent then recovers rather than renews).
    pub fn expired(&self) -> bool {
        OffsetDateTime::now_utc() > self.not_after
    }

    /// When to renew: at 2/3 of the certificate's life ([`apim_certs::renew_at`]), counted
    /// from when it was actually obtained rather than from the back-dated `not_before` (for
    /// short lifetimes the back-dating alone would make a brand-new certificate due at once).
    pub fn renew_due(&self) -> OffsetDateTime {
        let start = self.not_before.max(self.obtained_at);
        apim_certs::renew_at(start, self.not_after)
    }
}

/// The agent's key, certificate and trusted CA. `Debug` never prints the key.
pub struct AgentIdentity {
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    info: IdentityInfo,
}

impl fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AgentIdentity {
    /// Checks and assembles an identity: the certificate must be for `key`, chain to `ca_pem`
    /// and be valid now with clientAuth (exactly what the controller will check), and carry an
    /// agent identity (`expected_machine`, when given).
    pub fn from_parts(
        key: &AgentKey,
        cert_pem: &str,
        ca_pem: &str,
        expected_machine: Option<&str>,
        obtained_at: OffsetDateTime,
    ) -> Result<Self, EnrollError> {
        Self::assemble(key, cert_pem, ca_pem, expected_machine, obtained_at, false)
    }

    fn assemble(
        key: &AgentKey,
        cert_pem: &str,
        ca_pem: &str,
        expected_machine: Option<&str>,
        obtained_at: OffsetDateTime,
        allow_expired: bool,
    ) -> Result<Self, EnrollError> {
        let bad = |reason: String| EnrollError::BadAnswer { reason };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("certificate PEM: {e}")))?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| bad(format!("CA PEM: {e}")))?;
        let (_, parsed) =
            X509Certificate::from_der(&cert_der).map_err(|e| bad(format!("certificate: {e}")))?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(bad("the certificate is not for this agent's key".into()));
        }
        // An expired certificate is checked as of its last valid second: it still proves the
        // machine to the controller's `Recover`, within the controller's window.
        let not_after = parsed.validity().not_after.to_datetime();
        let at = if allow_expired && OffsetDateTime::now_utc() > not_after {
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                u64::try_from(not_after.unix_timestamp()).unwrap_or(0),
            ))
        } else {
            UnixTime::now()
        };
        tls::ca_client_verifier(&ca_der)?
            .verify_client_cert(&cert_der, &[], at)
            .map_err(|e| bad(format!("certificate does not verify against the CA: {e}")))?;
        let peer = PeerCert::from_der(&cert_der).map_err(|source| EnrollError::Certs {
            action: "reading the agent certificate's identity",
            source,
        })?;
        let PeerIdentity::Agent { machine } = peer.identity else {
            return Err(bad(format!("{} is not an agent identity", peer.identity)));
        };
        if let Some(expected) = expected_machine
            && expected != machine
        {
            return Err(bad(format!(
                "certificate is for machine {machine:?}, expected {expected:?}"
            )));
        }
        Ok(AgentIdentity {
            key_pem: key.key_pem(),
            cert_pem: cert_pem.to_owned(),
            ca_pem: ca_pem.to_owned(),
            info: IdentityInfo {
                machine,
                serial: peer.serial,
                not_before: peer.not_before,
                not_after: peer.not_after,
                obtained_at,
            },
        })
    }

    /// Loads the identity persisted in `state_dir` and re-checks it (key ↔ certificate ↔ CA).
    /// An expired certificate loads (see [`IdentityInfo::expired`]): the agent keeps enforcing
    /// its ledger and recovers a new certificate when the controller is back.
    pub fn load(state_dir: &Path) -> Result<Self, EnrollError> {
        let err = |reason: String| EnrollError::Identity {
            dir: state_dir.to_path_buf(),
            reason,
        };
        let identity_path = state_dir.join(IDENTITY_FILE);
        let ca_path = state_dir.join(CA_FILE);
        for path in [&identity_path, &ca_path] {
            let meta = std::fs::metadata(path)
                .map_err(|e| err(format!("{}: {e} (enroll first)", path.display())))?;
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(format!(
                    "{} is readable by group or others (mode {:o}); refusing to use it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))
        };
        let identity = read(&identity_path)?;
        let ca_pem = read(&ca_path)?;
        let obtained_at = std::fs::metadata(&identity_path)
            .and_then(|m| m.modified())
            .map(OffsetDateTime::from)
            .unwrap_or_else(|_| OffsetDateTime::now_utc())
            .min(OffsetDateTime::now_utc());
        let key = AgentKey::from_pem(&identity).map_err(|source| EnrollError::Certs {
            action: "loading the agent key",
            source,
        })?;
        let cert_der = CertificateDer::from_pem_slice(identity.as_bytes())
            .map_err(|e| err(format!("{IDENTITY_FILE} holds no certificate: {e}")))?;
        let cert_pem = apim_certs::cert_der_to_pem(&cert_der);
        Self::assemble(&key, &cert_pem, &ca_pem, None, obtained_at, true)
            .map_err(|e| err(e.to_string()))
    }

    /// Writes the identity to `state_dir` (created 0700 if missing): CA first, then key and
    /// certificate together in one atomic rename, both files 0600.
    pub fn save(&self, state_dir: &Path) -> Result<(), EnrollError> {
        if !state_dir.exists() {
            std::fs::create_dir_all(state_dir).map_err(|e| EnrollError::Identity {
                dir: state_dir.to_path_buf(),
                reason: format!("creating the state dir: {e}"),
            })?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |e| EnrollError::Identity {
                    dir: state_dir.to_path_buf(),
                    reason: format!("restricting the state dir: {e}"),
                },
            )?;
        }
        apim_atomic::write_atomic(
            &state_dir.join(CA_FILE),
            self.ca_pem.as_bytes(),
            PRIVATE_MODE,
        )
        .map_err(|source| EnrollError::Persist { source })?;
        let bundle = format!("{}{}", self.key_pem, self.cert_pem);
        apim_atomic::write_atomic(
            &state_dir.join(IDENTITY_FILE),
            bundle.as_bytes(),
            PRIVATE_MODE,
        )
        .map_err(|source| EnrollError::Persist { source })
    }

    /// Facts about the certificate.
    pub fn info(&self) -> &IdentityInfo {
        &self.info
    }

    /// The trusted CA (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The TLS 1.3 client configuration for mTLS to the controller: trusts only the CA,
    /// presents this certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, EnrollError> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(tls_err)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(tls_err)?;
        Ok(tls::client_config(&self.ca_pem, Some((vec![cert], key)))?)
    }
}

/// What [`enroll`] needs. `Debug` redacts the token.
#[derive(Clone)]
pub struct EnrollOptions {
    /// Where the controller listens.
    pub endpoint: ControllerEndpoint,
    /// The machine name this agent believes it is (must match the token's).
    pub machine: String,
    /// The join token. SECRET.
    pub token: String,
    /// Where the identity is persisted.
    pub state_dir: PathBuf,
    /// Limit for the TCP connect and the TLS handshake.
    pub connect_timeout: Duration,
}

impl fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("endpoint", &self.endpoint)
            .field("machine", &self.machine)
            .field("token", &"<redacted>")
            .field("state_dir", &self.state_dir)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Enrolls this agent: see the module docs for the steps. Returns the persisted identity.
pub async fn enroll(opts: &EnrollOptions) -> Result<AgentIdentity, EnrollError> {
    let token = ParsedToken::parse(&opts.token).map_err(|source| EnrollError::Token { source })?;
    apim_certs::validate_name("machine", &opts.machine).map_err(|source| EnrollError::Certs {
        action: "checking the machine name",
        source,
    })?;
    let (config, mismatch) = tls::first_contact_config(&token.ca_fingerprint)?;
    let channel = tls::connect(&opts.endpoint, Arc::new(config), opts.connect_timeout)
        .await
        .map_err(|e| match mismatch.take() {
            Some(actual) => EnrollError::CaPinMismatch {
                expected: token.ca_fingerprint.clone(),
                actual,
            },
            None => e.into(),
        })?;

    let key = AgentKey::generate().map_err(|source| EnrollError::Certs {
        action: "generating the agent key",
        source,
    })?;
    let csr_der = key
        .csr_der(&opts.machine)
        .map_err(|source| EnrollError::Certs {
            action: "building the CSR",
            source,
        })?;
    let response = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: opts.token.trim().to_owned(),
            machine: opts.machine.clone(),
            csr_der,
        })
        .await
        .map_err(|status| EnrollError::refused("Enroll", &status))?
        .into_inner();
    apim_certs::verify_ca_pin(&response.ca_pem, &token.ca_fingerprint).map_err(|e| {
        EnrollError::BadAnswer {
            reason: format!("returned CA: {e}"),
        }
    })?;
    let identity = AgentIdentity::from_parts(
        &key,
        &response.cert_chain_pem,
        &response.ca_pem,
        Some(&opts.machine),
        OffsetDateTime::from(SystemTime::now()),
    )?;
    identity.save(&opts.state_dir)?;
    tracing::info!(
        machine = %identity.info.machine,
        serial = %identity.info.serial,
        not_after = %identity.info.not_after,
        "enrolled with the controller"
    );
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn identity_from(ca: &apim_certs::ControlPlaneCa, ttl: Duration) -> AgentIdentity {
        let key = AgentKey::generate().expect("key");
        let issued = ca
            .sign_agent_csr(&key.csr_der("vm-a").expect("csr"), "vm-a", ttl)
            .expect("sign");
        AgentIdentity::from_parts(
            &key,
            &issued.cert_pem,
            ca.cert_pem(),
            Some("vm-a"),
            OffsetDateTime::now_utc(),
        )
        .expect("identity")
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_life_actually_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = apim_certs::ControlPlaneCa::load_or_create(dir.path()).expect("CA");
        // A 6-second certificate is back-dated by the CA; counting from not_before would make
        // it due before it was even received.
        let short = identity_from(&ca, Duration::from_secs(6));
        let info = short.info();
        assert!(apim_certs::renew_at(info.not_before, info.not_after) < info.obtained_at);
        let due = info.renew_due();
        assert!(
            due > info.obtained_at && due < info.not_after,
            "{info:?} due {due}"
        );
        // A day-long certificate: the usual 2/3 point, ~16 h from now.
        let long = identity_from(&ca, Duration::from_secs(24 * 3600));
        let until = long.info().renew_due() - OffsetDateTime::now_utc();
        assert!(until > time::Duration::hours(15) && until < time::Duration::hours(17));
        // Written 20 h ago (the file's mtime) and loaded now: past 2/3, so due at once.
        let now = OffsetDateTime::now_utc();
        let stale = IdentityInfo {
            not_before: now - time::Duration::hours(20) - time::Duration::minutes(5),
            obtained_at: now - time::Duration::hours(20),
            not_after: now + time::Duration::hours(4),
            ..long.info().clone()
        };
        assert!(stale.renew_due() < now);
    }

    #[test]
    fn the_identity_round_trips_private_and_refuses_loose_files_or_foreign_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = apim_certs::ControlPlaneCa::load_or_create(&dir.path().join("ca")).expect("CA");
        let identity = identity_from(&ca, Duration::from_secs(3600));
        let state = dir.path().join("state");
        identity.save(&state).expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(IDENTITY_FILE)), 0o600);
        assert_eq!(mode(&state.join(CA_FILE)), 0o600);
        let loaded = AgentIdentity::load(&state).expect("load");
        assert_eq!(loaded.info().serial, identity.info().serial);
        assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));

        std::fs::set_permissions(
            state.join(IDENTITY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let err = AgentIdentity::load(&state).expect_err("world-readable key");
        assert!(
            err.to_string().contains("readable by group or others"),
            "{err}"
        );

        // A certificate for another key is refused.
        let other = AgentKey::generate().expect("key");
        let err = AgentIdentity::from_parts(
            &other,
            identity.cert_pem(),
            ca.cert_pem(),
            None,
            OffsetDateTime::now_utc(),
        )
        .expect_err("foreign key");
        assert!(matches!(err, EnrollError::BadAnswer { .. }), "{err:?}");
    }
}
