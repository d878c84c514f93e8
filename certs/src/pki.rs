//! Helpers shared by the control-plane CA and the product PKI: fingerprints, PEM decoding,
//! random serial numbers, validity windows, randomness.

use std::time::Duration;

use rand::TryRngCore;
use rand::rngs::OsRng;
use rcgen::SerialNumber;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{CertsError, Result};
use crate::identity::serial_hex;

/// How far back `not_before` is set, so a peer whose clock is a little behind still accepts
/// a certificate issued a moment ago.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Upper bound for any validity we issue (keeps date arithmetic far from overflow).
const MAX_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// SHA-256 of `der`, lowercase hex. This is the CA fingerprint format used in join tokens.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Decodes the first `CERTIFICATE` block of a PEM document to DER.
pub fn cert_pem_to_der(pem: &str) -> Result<Vec<u8>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| CertsError::parse("certificate PEM", e))
}

/// PEM text of a DER certificate.
pub fn cert_der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// Minimal PEM encoder (64-column base64 body).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    OsRng.try_fill_bytes(buf).map_err(|e| CertsError::Random {
        reason: e.to_string(),
    })
}

/// A fresh random 128-bit positive serial number. rcgen's default serial is derived from the
/// public key, which would give a renewed certificate (same agent key) the same serial and make
/// revocation by serial hit both; a random serial avoids that.
pub(crate) fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes)?;
    // Positive, and no leading zero byte, so the DER encoding is exactly these 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Validity window `[now - skew, now + ttl]`, rejecting zero or absurd TTLs.
pub(crate) fn validity_window(
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if ttl.is_zero() {
        return Err(CertsError::InvalidValidity {
            reason: "must be longer than zero",
        });
    }
    if ttl > MAX_VALIDITY {
        return Err(CertsError::InvalidValidity {
            reason: "must be at most 100 years",
        });
    }
    // Both conversions are in range because of the bound above.
    let ttl = time::Duration::try_from(ttl).map_err(|_| CertsError::InvalidValidity {
        reason: "out of range",
    })?;
    let skew = time::Duration::try_from(CLOCK_SKEW).map_err(|_| CertsError::InvalidValidity {
        reason: "out of range",
    })?;
    // Whole seconds: X.509 times have no sub-second part.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    Ok((now - skew, now + ttl))
}

/// Facts read back from a certificate we just issued (serial as it was encoded, and the
/// validity as it will be seen by peers).
pub(crate) struct CertFacts {
    pub(crate) serial: String,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

/// Parses a DER certificate enough to report its serial and validity.
pub(crate) fn cert_facts(der: &[u8]) -> Result<CertFacts> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertsError::parse("certificate", e))?;
    Ok(CertFacts {
        serial: serial_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// When to renew a certificate: at two thirds of its lifetime (Nomad renews at 67 %, the
/// kubelet at 70–90 %), which leaves a third of the lifetime to ride out a controller outage.
/// A certificate whose `not_after` is not after `not_before` is due immediately.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    if not_after <= not_before {
        return not_before;
    }
    not_before + (not_after - not_before) * 2 / 3
}

/// The skeleton every apimctl certificate shares: O=apimctl, the CN, a random 128-bit serial and
/// a skew-tolerant validity window from now. Callers add CA-ness, key usages and SANs.
pub(crate) fn base_params(
    common_name: &str,
    validity: Duration,
) -> Result<rcgen::CertificateParams> {
    let (not_before, not_after) = validity_window(OffsetDateTime::now_utc(), validity)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "apimctl");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}
