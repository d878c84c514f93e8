//! Inspecting a keystore an operator provides (`[tls] issuer = "provided"`) before it is stored
//! or shipped, so that a store WSO2 could not open fails at `apply` instead of at a node's start:
//! does it open with the plan's password (JKS integrity digest, PKCS#12 MAC), is the plan's alias
//! a private key entry whose key decrypts with that same password (WSO2 requires key password =
//! store password), and which names its certificate carries.
//!
//! Errors name the alias and the entries the store has, never a password or a key byte.

use p12_keystore::Pkcs12Archive;
use p12_keystore::error::Error as P12Error;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{CertsError, Result};
use crate::jks::{JksEntryKind, JksStore};
use crate::keystore::StoreFormat;

/// What [`inspect_store`] found in a store that opened with its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInspection {
    /// The format, from the magic bytes (never the file name).
    pub format: StoreFormat,
    /// How many private key entries the store has.
    pub private_keys: usize,
    /// How many trusted certificate entries the store has.
    pub trusted_certs: usize,
    /// The private key entry asked for, when one was.
    pub key: Option<KeyEntryInfo>,
}

/// A private key entry whose key decrypts with the store password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntryInfo {
    /// The alias, as asked for.
    pub alias: String,
    /// The names the leaf certificate is valid for, lowercase: its SAN DNS names, or its subject
    /// CNs when it has none (what the JDK's hostname check accepts).
    pub names: Vec<String>,
    /// When the leaf certificate expires.
    pub not_after: OffsetDateTime,
    /// The leaf certificate, DER (the secure vault encrypts with its public key).
    pub cert_der: Vec<u8>,
}

impl KeyEntryInfo {
    /// Whether the certificate is valid for `host` (see [`name_matches`]).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, host))
    }
}

/// Whether certificate name `pattern` matches `host`, ignoring case: equal, or a wildcard
/// `*.example.com` standing for exactly one label (`a.example.com`, not `example.com` nor
/// `a.b.example.com`).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && !rest.is_empty() && tail == rest),
        None => !host.is_empty() && pattern == host,
    }
}

/// Opens `bytes` (JKS or PKCS#12, detected) with `password` and, when `key_alias` is given,
/// checks that it names a private key entry whose key decrypts with the same password and reads
/// the names of its leaf certificate.
///
/// Errors: [`CertsError::UnrecognizedStore`], [`CertsError::WrongKeystorePassword`],
/// [`CertsError::StoreContentsUndecryptable`] (PKCS#12 whose bags need another password),
/// [`CertsError::AliasNotFound`], [`CertsError::NotAKeyEntry`], [`CertsError::WrongKeyPassword`],
/// and [`CertsError::Parse`]/[`CertsError::Pkcs12`] for damaged stores or certificates.
pub fn inspect_store(
    bytes: &[u8],
    password: &str,
    key_alias: Option<&str>,
) -> Result<StoreInspection> {
    let format = StoreFormat::detect(bytes).ok_or_else(|| CertsError::UnrecognizedStore {
        magic: hex::encode(&bytes[..bytes.len().min(4)]),
    })?;
    let (private_keys, trusted_certs, leaf) = match format {
        StoreFormat::Jks => jks(bytes, password, key_alias)?,
        StoreFormat::Pkcs12 => pkcs12(bytes, password, key_alias)?,
    };
    let key = match (key_alias, leaf) {
        (Some(alias), Some(der)) => Some(key_entry(alias, &der)?),
        _ => None,
    };
    Ok(StoreInspection {
        format,
        private_keys,
        trusted_certs,
        key,
    })
}

/// (private keys, trusted certificates, the asked-for key's leaf certificate).
type Found = (usize, usize, Option<Vec<u8>>);

fn jks(bytes: &[u8], password: &str, key_alias: Option<&str>) -> Result<Found> {
    let store = JksStore::parse(bytes, password)?;
    let aliases = store.aliases();
    let keys = aliases
        .iter()
        .filter(|(_, k)| *k == JksEntryKind::PrivateKey)
        .count();
    let leaf = match key_alias {
        None => None,
        Some(alias) => match store.private_key(alias, password) {
            Ok((_, chain)) => Some(chain.into_iter().next().ok_or_else(|| no_cert(alias))?),
            Err(CertsError::NoSuchKeyEntry { .. }) if store.trusted_cert(alias).is_some() => {
                return Err(CertsError::NotAKeyEntry {
                    alias: alias.to_owned(),
                });
            }
            Err(CertsError::NoSuchKeyEntry { .. }) => {
                return Err(CertsError::AliasNotFound {
                    alias: alias.to_owned(),
                    present: aliases.iter().map(|(a, _)| (*a).to_owned()).collect(),
                });
            }
            Err(e) => return Err(e),
        },
    };
    Ok((keys, aliases.len() - keys, leaf))
}

fn pkcs12(bytes: &[u8], password: &str, key_alias: Option<&str>) -> Result<Found> {
    let archive = Pkcs12Archive::from_pkcs12(bytes, password).map_err(|e| match e {
        // The MAC is checked before any bag is decrypted.
        P12Error::MacError(_) => CertsError::WrongKeystorePassword,
        P12Error::Pkcs5Error(_) | P12Error::UnpadError => CertsError::StoreContentsUndecryptable,
        source => CertsError::Pkcs12 {
            context: "reading keystore",
            source,
        },
    })?;
    let named = |name: &Option<String>, alias: &str| {
        name.as_deref()
            .is_some_and(|n| n.to_lowercase() == alias.to_lowercase())
    };
    // A certificate bag with a local key id belongs to a key; the others are trusted entries.
    let trusted: Vec<&p12_keystore::CertificateBag> = archive
        .certs
        .iter()
        .filter(|c| c.local_key_id.is_none())
        .collect();
    let leaf = match key_alias {
        None => None,
        Some(alias) => {
            let Some(key) = archive.keys.iter().find(|k| named(&k.friendly_name, alias)) else {
                if trusted.iter().any(|c| named(&c.friendly_name, alias)) {
                    return Err(CertsError::NotAKeyEntry {
                        alias: alias.to_owned(),
                    });
                }
                let present = archive
                    .keys
                    .iter()
                    .map(|k| &k.friendly_name)
                    .chain(trusted.iter().map(|c| &c.friendly_name))
                    .flatten()
                    .cloned()
                    .collect();
                return Err(CertsError::AliasNotFound {
                    alias: alias.to_owned(),
                    present,
                });
            };
            let cert = archive.certs.iter().find(|c| {
                c.local_key_id.is_some()
                    && c.local_key_id.as_deref()
                        == key.local_key_id.as_ref().map(|k| k.0.as_slice())
            });
            Some(cert.ok_or_else(|| no_cert(alias))?.cert.as_der().to_vec())
        }
    };
    Ok((archive.keys.len(), trusted.len(), leaf))
}

fn no_cert(alias: &str) -> CertsError {
    CertsError::parse(
        "keystore",
        format!("the key of alias {alias:?} has no certificate"),
    )
}

/// The names and expiry of a leaf certificate.
fn key_entry(alias: &str, der: &[u8]) -> Result<KeyEntryInfo> {
    let bad = |e: &dyn std::fmt::Display| {
        CertsError::parse(
            "keystore",
            format!("the certificate of alias {alias:?}: {e}"),
        )
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(&e))?;
    let san = cert.subject_alternative_name().map_err(|e| bad(&e))?;
    let mut names: Vec<String> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    Ok(KeyEntryInfo {
        alias: alias.to_owned(),
        names,
        not_after: cert.validity().not_after.to_datetime(),
        cert_der: der.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stand_for_one_label_and_case_is_ignored() {
        assert!(name_matches("*.example.com", "gw-1.example.com"));
        assert!(name_matches("*.Example.COM", "GW-1.example.com"));
        assert!(name_matches("km.example.com", "KM.example.com."));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("km.example.com", "km2.example.com"));
        assert!(!name_matches("*.", "a."));
    }
}
