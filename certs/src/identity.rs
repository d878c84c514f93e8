//! Control-plane identities and how they are read back from a verified peer certificate.
//!
//! An identity lives in exactly one URI SAN of the form `spiffe://apimctl/agent/<machine>` or
//! `spiffe://apimctl/operator/<name>`. The controller puts it there when it signs (never copying
//! it from a CSR), and the gRPC server reads it back with [`PeerCert::from_der`] after rustls has
//! verified the chain, so a host's identity can only come from the controller's own CA.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{CertsError, Result};

/// Prefix of every apimctl identity URI (the SPIFFE "trust domain" is `apimctl`).
pub const IDENTITY_URI_PREFIX: &str = "spiffe://apimctl/";
/// Path segment for agents.
const AGENT_SEGMENT: &str = "agent/";
/// Path segment for operators.
const OPERATOR_SEGMENT: &str = "operator/";
/// Longest accepted machine/operator name (a DNS name's limit).
const MAX_NAME_LEN: usize = 253;

/// Who is on the other end of an mTLS connection to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerIdentity {
    /// An enrolled agent; `machine` is the plan's machine name the token was minted for.
    Agent {
        /// The machine name.
        machine: String,
    },
    /// An operator holding a cert file issued on the controller host.
    Operator {
        /// The operator's name.
        name: String,
    },
}

impl PeerIdentity {
    /// An agent identity, validating the machine name so it is safe inside a URI.
    pub fn agent(machine: &str) -> Result<Self> {
        validate_name("machine", machine)?;
        Ok(PeerIdentity::Agent {
            machine: machine.to_owned(),
        })
    }

    /// An operator identity, validating the name so it is safe inside a URI.
    pub fn operator(name: &str) -> Result<Self> {
        validate_name("operator", name)?;
        Ok(PeerIdentity::Operator {
            name: name.to_owned(),
        })
    }

    /// The URI SAN that carries this identity in a certificate.
    pub fn uri(&self) -> String {
        match self {
            PeerIdentity::Agent { machine } => {
                format!("{IDENTITY_URI_PREFIX}{AGENT_SEGMENT}{machine}")
            }
            PeerIdentity::Operator { name } => {
                format!("{IDENTITY_URI_PREFIX}{OPERATOR_SEGMENT}{name}")
            }
        }
    }

    /// Parses an identity URI; anything not exactly of our two shapes is refused.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let rest = uri
            .strip_prefix(IDENTITY_URI_PREFIX)
            .ok_or_else(|| CertsError::NoIdentity {
                reason: format!("URI {uri:?} is not an apimctl identity"),
            })?;
        if let Some(machine) = rest.strip_prefix(AGENT_SEGMENT) {
            Self::agent(machine)
        } else if let Some(name) = rest.strip_prefix(OPERATOR_SEGMENT) {
            Self::operator(name)
        } else {
            Err(CertsError::NoIdentity {
                reason: format!("URI {uri:?} names no known identity kind"),
            })
        }
    }

    /// Reads the identity from a DER certificate already verified by rustls against the
    /// control-plane CA. See [`PeerCert::from_der`] for the serial and expiry as well.
    pub fn from_cert_der(der: &[u8]) -> Result<Self> {
        PeerCert::from_der(der).map(|c| c.identity)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// What the server needs to know about a verified client certificate: who, which certificate
/// (for revocation by serial) and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The identity from the certificate's single apimctl URI SAN.
    pub identity: PeerIdentity,
    /// The serial number, normalised with [`normalize_serial`].
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl PeerCert {
    /// Parses a client certificate. Requires exactly one apimctl URI SAN, the clientAuth EKU,
    /// and no CA flag; any other shape is refused rather than guessed at.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CertsError::parse("peer certificate", e))?;
        if !rest.is_empty() {
            return Err(CertsError::parse(
                "peer certificate",
                "trailing bytes after certificate",
            ));
        }
        if cert.is_ca() {
            return Err(CertsError::NoIdentity {
                reason: "certificate is a CA certificate".into(),
            });
        }
        let eku = cert
            .extended_key_usage()
            .map_err(|e| CertsError::parse("peer certificate extended key usage", e))?;
        if !eku.is_some_and(|e| e.value.client_auth) {
            return Err(CertsError::NoIdentity {
                reason: "certificate lacks the clientAuth extended key usage".into(),
            });
        }
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertsError::parse("peer certificate subject alternative name", e))?;
        let uris: Vec<&str> = san
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) if u.starts_with(IDENTITY_URI_PREFIX) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let identity = match uris.as_slice() {
            [one] => PeerIdentity::from_uri(one)?,
            [] => {
                return Err(CertsError::NoIdentity {
                    reason: "no spiffe://apimctl/ URI SAN".into(),
                });
            }
            _ => {
                return Err(CertsError::NoIdentity {
                    reason: format!("{} apimctl URI SANs; exactly one is allowed", uris.len()),
                });
            }
        };
        Ok(PeerCert {
            identity,
            serial: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }
}

/// Checks that a machine/operator name is safe in a URI path, a file name and a log line:
/// 1–253 characters of ASCII letters, digits, `.`, `-`, `_`, starting with a letter or digit.
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(CertsError::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 253 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad("only ASCII letters, digits, '.', '-' and '_' are allowed");
    }
    Ok(())
}

/// Canonical text form of a serial number: lowercase hex, no separators, no leading zero
/// bytes. Accepts `aa:bb`, `AABB` or `00aabb` and returns `aabb`, so serials typed by an
/// operator and serials read from certificates compare equal.
pub fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    let canon = if trimmed.len() % 2 == 1 {
        format!("0{trimmed}")
    } else {
        trimmed.to_owned()
    };
    if canon.is_empty() {
        "00".to_owned()
    } else {
        canon
    }
}

/// Hex form of raw serial bytes (as in DER), canonicalised.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    normalize_serial(&hex::encode(raw))
}
