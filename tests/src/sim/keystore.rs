//! Reads the TLS key pair out of a node's keystore, so the simulated server presents the same
//! certificate the real one would: the `[keystore.tls]` entry (default: the primary keystore).
//!
//! Both formats WSO2 ships behind a `.jks` name are read: Sun JKS (through `apim_certs::jks`,
//! with the JDK's key protector and integrity check; the certs tests check that codec against
//! the real keytool) and PKCS#12 (through `p12-keystore`).

use apim_certs::CertsError;
use apim_certs::jks::JksStore;
use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};

use crate::simpack::StoreFormat;

/// A private key (PKCS#8 DER) and its certificate chain (DER, leaf first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The private key as PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

/// Why a keystore cannot provide the TLS identity.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeystoreError {
    /// Neither JKS nor PKCS#12.
    #[error("invalid keystore format")]
    UnknownFormat,
    /// The file ended early or a structure is malformed.
    #[error("keystore is corrupt: {0}")]
    Corrupt(&'static str),
    /// The store password does not match (the JDK's own wording).
    #[error("Keystore was tampered with, or password was incorrect")]
    StorePassword,
    /// The key password does not decrypt the key.
    #[error("Cannot recover key: the key password for alias {0} is incorrect")]
    KeyPassword(String),
    /// No private key entry under the alias.
    #[error("no private key entry with alias {0}")]
    NoSuchKey(String),
    /// The PKCS#12 library rejected the file.
    #[error("PKCS12 keystore cannot be read: {0}")]
    Pkcs12(String),
}

/// Loads the key pair `alias` from keystore bytes of either format.
pub fn load_identity(
    data: &[u8],
    store_password: &str,
    alias: &str,
    key_password: &str,
) -> Result<TlsIdentity, KeystoreError> {
    match StoreFormat::detect(data) {
        Some(StoreFormat::Jks) => jks_identity(data, store_password, alias, key_password),
        Some(StoreFormat::Pkcs12) => pkcs12_identity(data, store_password, alias),
        None => Err(KeystoreError::UnknownFormat),
    }
}

fn pkcs12_identity(data: &[u8], password: &str, alias: &str) -> Result<TlsIdentity, KeystoreError> {
    let store = KeyStore::from_pkcs12(data, password, Pkcs12ImportPolicy::Relaxed)
        .map_err(|e| KeystoreError::Pkcs12(e.to_string()))?;
    let chain = store
        .entries()
        .find_map(|(name, entry)| match entry {
            KeyStoreEntry::PrivateKeyChain(c) if name.eq_ignore_ascii_case(alias) => Some(c),
            _ => None,
        })
        .ok_or_else(|| KeystoreError::NoSuchKey(alias.to_string()))?;
    Ok(TlsIdentity {
        chain: chain.certs().iter().map(|c| c.as_der().to_vec()).collect(),
        key_pkcs8: chain.key().as_der().to_vec(),
    })
}

fn jks_identity(
    data: &[u8],
    store_password: &str,
    alias: &str,
    key_password: &str,
) -> Result<TlsIdentity, KeystoreError> {
    let store = JksStore::parse(data, store_password).map_err(|e| match e {
        CertsError::WrongKeystorePassword => KeystoreError::StorePassword,
        _ => KeystoreError::Corrupt("not a readable JKS keystore"),
    })?;
    let (key_pkcs8, chain) = store
        .private_key(alias, key_password)
        .map_err(|e| match e {
            CertsError::WrongKeyPassword { .. } => KeystoreError::KeyPassword(alias.to_string()),
            CertsError::NoSuchKeyEntry { .. } => KeystoreError::NoSuchKey(alias.to_string()),
            _ => KeystoreError::Corrupt("protected key"),
        })?;
    Ok(TlsIdentity { chain, key_pkcs8 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn keytool_store(dir: &std::path::Path, storetype: &str) -> Vec<u8> {
        let keytool = crate::simpack::find_keytool().expect("keytool");
        let path = dir.join(format!("ks-{storetype}"));
        let out = Command::new(keytool)
            .args([
                "-genkeypair",
                "-alias",
                "wso2carbon",
                "-keyalg",
                "RSA",
                "-keysize",
                "2048",
                "-dname",
                "CN=gw.wso2.com",
                "-validity",
                "30",
                "-storetype",
                storetype,
                "-storepass:env",
                "P",
                "-keypass:env",
                "P",
                "-keystore",
            ])
            .arg(&path)
            .env("P", "s3cret-pass")
            .output()
            .expect("keytool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(path).expect("read store")
    }

    #[test]
    fn reads_jks_and_pkcs12_made_by_keytool() {
        let dir = tempfile::tempdir().expect("tmp");
        for storetype in ["JKS", "PKCS12"] {
            let data = keytool_store(dir.path(), storetype);
            let id = load_identity(&data, "s3cret-pass", "wso2carbon", "s3cret-pass")
                .unwrap_or_else(|e| panic!("{storetype}: {e}"));
            assert_eq!(id.chain.len(), 1);
            assert_eq!(id.key_pkcs8.first(), Some(&0x30));
            let (_, cert) = x509_subject(&id.chain[0]);
            assert!(cert, "{storetype}: certificate names gw.wso2.com");
            let wrong = load_identity(&data, "nope", "wso2carbon", "nope");
            assert!(wrong.is_err(), "{storetype} accepted a wrong password");
            let missing = load_identity(&data, "s3cret-pass", "other", "s3cret-pass");
            assert_eq!(missing, Err(KeystoreError::NoSuchKey("other".into())));
        }
        assert_eq!(
            load_identity(b"PK\x03\x04", "x", "a", "x"),
            Err(KeystoreError::UnknownFormat)
        );
    }

    fn x509_subject(der: &[u8]) -> (usize, bool) {
        let needle = b"gw.wso2.com";
        (der.len(), der.windows(needle.len()).any(|w| w == needle))
    }

    #[test]
    fn jks_wrong_key_password_is_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let data = keytool_store(dir.path(), "JKS");
        assert_eq!(
            load_identity(&data, "s3cret-pass", "wso2carbon", "other"),
            Err(KeystoreError::KeyPassword("wso2carbon".into()))
        );
    }
}
