//! Reads the TLS key pair out of a node's keystore, so the simulated server presents the same
//! certificate the real one would: the `[keystore.tls]` entry (default: the primary keystore).
//!
//! Both formats WSO2 ships behind a `.jks` name are read: Sun JKS (parsed here, with the JDK's
//! SHA-1 key protector and integrity check) and PKCS#12 (through `p12-keystore`).

use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
use sha1::{Digest, Sha1};

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

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeystoreError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or(KeystoreError::Corrupt("truncated"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u16(&mut self) -> Result<u16, KeystoreError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, KeystoreError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn utf(&mut self) -> Result<String, KeystoreError> {
        let n = usize::from(self.u16()?);
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn blob(&mut self) -> Result<&'a [u8], KeystoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn utf16be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Sun's `KeyProtector` algorithm OID 1.3.6.1.4.1.42.2.17.1.1, DER-encoded.
const SUN_KEY_PROTECTOR: [u8; 12] = [
    0x06, 0x0A, 0x2B, 0x06, 0x01, 0x04, 0x01, 0x2A, 0x02, 0x11, 0x01, 0x01,
];

/// Reads one DER TLV header; returns (tag, content).
fn der_tlv<'a>(r: &mut Reader<'a>) -> Result<(u8, &'a [u8]), KeystoreError> {
    let tag = r.take(1)?[0];
    let first = r.take(1)?[0];
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return Err(KeystoreError::Corrupt("DER length"));
        }
        r.take(n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    Ok((tag, r.take(len)?))
}

fn jks_identity(
    data: &[u8],
    store_password: &str,
    alias: &str,
    key_password: &str,
) -> Result<TlsIdentity, KeystoreError> {
    let mut r = Reader { data, pos: 0 };
    if r.u32()? != 0xFEED_FEED {
        return Err(KeystoreError::UnknownFormat);
    }
    let version = r.u32()?;
    if version != 1 && version != 2 {
        return Err(KeystoreError::Corrupt("unsupported JKS version"));
    }
    let count = r.u32()?;
    let mut found: Option<(&[u8], Vec<Vec<u8>>)> = None;
    for _ in 0..count {
        let tag = r.u32()?;
        let name = r.utf()?;
        r.take(8)?; // creation date
        match tag {
            1 => {
                let key = r.blob()?;
                let n = r.u32()?;
                let mut chain = Vec::new();
                for _ in 0..n {
                    if version == 2 {
                        r.utf()?; // certificate type, "X.509"
                    }
                    chain.push(r.blob()?.to_vec());
                }
                if name.eq_ignore_ascii_case(alias) {
                    found = Some((key, chain));
                }
            }
            2 => {
                if version == 2 {
                    r.utf()?;
                }
                r.blob()?;
            }
            _ => return Err(KeystoreError::Corrupt("unknown JKS entry type")),
        }
    }
    let body = &data[..r.pos];
    let stored = r.take(20)?;
    let mut h = Sha1::new();
    h.update(utf16be(store_password));
    h.update(b"Mighty Aphrodite");
    h.update(body);
    if h.finalize().as_slice() != stored {
        return Err(KeystoreError::StorePassword);
    }
    let (protected, chain) = found.ok_or_else(|| KeystoreError::NoSuchKey(alias.to_string()))?;

    // EncryptedPrivateKeyInfo ::= SEQUENCE { AlgorithmIdentifier, OCTET STRING }
    let (tag, seq) = der_tlv(&mut Reader {
        data: protected,
        pos: 0,
    })?;
    if tag != 0x30 {
        return Err(KeystoreError::Corrupt("EncryptedPrivateKeyInfo"));
    }
    let mut inner = Reader { data: seq, pos: 0 };
    let (tag, alg) = der_tlv(&mut inner)?;
    if tag != 0x30 || !alg.starts_with(&SUN_KEY_PROTECTOR) {
        return Err(KeystoreError::Corrupt(
            "unsupported key protection algorithm",
        ));
    }
    let (tag, enc) = der_tlv(&mut inner)?;
    if tag != 0x04 || enc.len() < 40 {
        return Err(KeystoreError::Corrupt("encrypted key"));
    }
    let (salt, rest) = enc.split_at(20);
    let (cipher, check) = rest.split_at(rest.len() - 20);
    let pw = utf16be(key_password);
    let mut digest = salt.to_vec();
    let mut plain = Vec::with_capacity(cipher.len());
    for block in cipher.chunks(20) {
        let mut h = Sha1::new();
        h.update(&pw);
        h.update(&digest);
        digest = h.finalize().to_vec();
        plain.extend(block.iter().zip(&digest).map(|(c, k)| c ^ k));
    }
    let mut h = Sha1::new();
    h.update(&pw);
    h.update(&plain);
    if h.finalize().as_slice() != check {
        return Err(KeystoreError::KeyPassword(alias.to_string()));
    }
    Ok(TlsIdentity {
        chain,
        key_pkcs8: plain,
    })
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
