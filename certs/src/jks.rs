//! Sun JKS keystores, read and written natively.
//!
//! WSO2 3.x–4.3 ship their keystores and `client-truststore.jks` as JKS, and their
//! `deployment.toml` says `type = "JKS"`. The agent used to produce JKS with the node's own
//! `keytool`, but every keytool run is a JVM start (0.3–1 s of CPU each, about six per node), which
//! put several seconds of JVM start-up on every node's critical path during a rollout. The format
//! is small and has not changed since JDK 1.2, so it is written here instead, and the tests check
//! every store with the real JDK 17 `keytool` (listing, password check, key recovery).
//!
//! Layout (all integers big-endian; strings in Java's modified UTF-8 with a `u16` length):
//!
//! ```text
//! magic FEEDFEED, version 2, entry count
//! per entry: tag (1 = private key, 2 = trusted certificate), alias, creation time (ms)
//!   tag 1: u32 len + EncryptedPrivateKeyInfo (Sun KeyProtector), u32 chain length,
//!          per certificate: type ("X.509"), u32 len + DER
//!   tag 2: type ("X.509"), u32 len + DER
//! SHA-1(password as UTF-16BE || "Mighty Aphrodite" || everything above)
//! ```
//!
//! Sun's KeyProtector encrypts the PKCS#8 key with a SHA-1 keystream: a random 20-byte salt,
//! then `d_i = SHA-1(password || d_{i-1})` (with `d_0` = salt) XORed over the key, then
//! `SHA-1(password || key)` as a check value. It is weak by today's standards, which is why the
//! files stay mode 0600; it is what every JDK reads.
//!
//! Aliases are case-insensitive: the JDK stores them lowercased, and so does this module.
//! Entries read from an existing store are kept byte for byte (their protected keys are never
//! decrypted unless asked for), so editing a shipped truststore changes only the aliases set.

use sha1::{Digest, Sha1};

use crate::error::{CertsError, Result};

/// The JKS magic number.
const MAGIC: u32 = 0xFEED_FEED;
/// The format version written (2 adds the certificate type strings).
const VERSION: u32 = 2;
/// The integrity digest's fixed whitening string.
const WHITENER: &[u8] = b"Mighty Aphrodite";
/// The certificate type every entry uses.
const X509: &str = "X.509";
/// DER of Sun's KeyProtector algorithm OID 1.3.6.1.4.1.42.2.17.1.1.
const KEY_PROTECTOR_OID: [u8; 12] = [
    0x06, 0x0A, 0x2B, 0x06, 0x01, 0x04, 0x01, 0x2A, 0x02, 0x11, 0x01, 0x01,
];
const SHA1_LEN: usize = 20;

/// One entry of a JKS store.
#[derive(Clone, PartialEq, Eq)]
enum Entry {
    /// A private key (encrypted by the KeyProtector) and its chain.
    PrivateKey {
        alias: String,
        created_ms: u64,
        protected: Vec<u8>,
        chain: Vec<(String, Vec<u8>)>,
    },
    /// A trusted certificate.
    Trusted {
        alias: String,
        created_ms: u64,
        cert_type: String,
        cert: Vec<u8>,
    },
}

impl Entry {
    fn alias(&self) -> &str {
        match self {
            Entry::PrivateKey { alias, .. } | Entry::Trusted { alias, .. } => alias,
        }
    }
}

/// What an entry of a JKS store is, for listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JksEntryKind {
    /// A PrivateKeyEntry.
    PrivateKey,
    /// A trustedCertEntry.
    TrustedCert,
}

/// A JKS keystore in memory: parsed from bytes (integrity checked) or built up, then encoded.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JksStore {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for JksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let aliases: Vec<&str> = self.entries.iter().map(Entry::alias).collect();
        f.debug_struct("JksStore")
            .field("aliases", &aliases)
            .finish()
    }
}

fn corrupt(reason: &'static str) -> CertsError {
    CertsError::parse("JKS keystore", reason)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The password as the JDK feeds it to SHA-1: each UTF-16 unit big-endian.
fn password_bytes(password: &str) -> Vec<u8> {
    password.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Java's modified UTF-8 (`DataOutputStream.writeUTF`) of `s`.
fn modified_utf8(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for unit in s.encode_utf16() {
        match unit {
            0x0001..=0x007F => out.push(unit as u8),
            0x0000 | 0x0080..=0x07FF => {
                out.push(0xC0 | (unit >> 6) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
            _ => {
                out.push(0xE0 | (unit >> 12) as u8);
                out.push(0x80 | ((unit >> 6) & 0x3F) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
        }
    }
    out
}

/// Decodes Java's modified UTF-8.
fn from_modified_utf8(bytes: &[u8]) -> Result<String> {
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let cont = |b: Option<&u8>| match b {
        Some(b) if b & 0xC0 == 0x80 => Ok(u16::from(b & 0x3F)),
        _ => Err(corrupt("alias is not modified UTF-8")),
    };
    while i < bytes.len() {
        let b = bytes[i];
        if b & 0x80 == 0 {
            units.push(u16::from(b));
            i += 1;
        } else if b & 0xE0 == 0xC0 {
            units.push((u16::from(b & 0x1F) << 6) | cont(bytes.get(i + 1))?);
            i += 2;
        } else if b & 0xF0 == 0xE0 {
            units.push(
                (u16::from(b & 0x0F) << 12)
                    | (cont(bytes.get(i + 1))? << 6)
                    | cont(bytes.get(i + 2))?,
            );
            i += 3;
        } else {
            return Err(corrupt("alias is not modified UTF-8"));
        }
    }
    Ok(String::from_utf16_lossy(&units))
}

/// The JDK's alias key: lowercased.
fn alias_key(alias: &str) -> String {
    alias.to_lowercase()
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| corrupt("truncated"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn utf(&mut self) -> Result<String> {
        let n = usize::from(self.u16()?);
        from_modified_utf8(self.take(n)?)
    }
    fn blob(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// One DER TLV; returns (tag, content).
    fn der(&mut self) -> Result<(u8, &'a [u8])> {
        let tag = self.take(1)?[0];
        let first = self.take(1)?[0];
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 || n > 4 {
                return Err(corrupt("bad DER length in a protected key"));
            }
            self.take(n)?
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        Ok((tag, self.take(len)?))
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn utf(&mut self, s: &str) -> Result<()> {
        let b = modified_utf8(s);
        let n = u16::try_from(b.len()).map_err(|_| corrupt("string longer than 65535 bytes"))?;
        self.0.extend_from_slice(&n.to_be_bytes());
        self.0.extend_from_slice(&b);
        Ok(())
    }
    fn blob(&mut self, b: &[u8]) -> Result<()> {
        let n = u32::try_from(b.len()).map_err(|_| corrupt("entry larger than 4 GiB"))?;
        self.u32(n);
        self.0.extend_from_slice(b);
        Ok(())
    }
}

/// DER TLV with a definite length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// XORs `data` with the KeyProtector keystream of `password` and `salt`.
fn keystream_xor(password: &[u8], salt: &[u8], data: &[u8]) -> Vec<u8> {
    let mut digest = salt.to_vec();
    let mut out = Vec::with_capacity(data.len());
    for block in data.chunks(SHA1_LEN) {
        let mut h = Sha1::new();
        h.update(password);
        h.update(&digest);
        digest = h.finalize().to_vec();
        out.extend(block.iter().zip(&digest).map(|(b, k)| b ^ k));
    }
    out
}

fn check_value(password: &[u8], key: &[u8]) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(password);
    h.update(key);
    h.finalize().to_vec()
}

/// Encrypts a PKCS#8 key the way Sun's `KeyProtector.protect` does.
fn protect(key_pkcs8: &[u8], password: &str) -> Result<Vec<u8>> {
    let pw = password_bytes(password);
    let mut salt = [0u8; SHA1_LEN];
    crate::pki::random_bytes(&mut salt)?;
    let mut encrypted = salt.to_vec();
    encrypted.extend(keystream_xor(&pw, &salt, key_pkcs8));
    encrypted.extend(check_value(&pw, key_pkcs8));
    let mut alg = KEY_PROTECTOR_OID.to_vec();
    alg.extend_from_slice(&[0x05, 0x00]); // NULL parameters
    let mut info = der(0x30, &alg);
    info.extend(der(0x04, &encrypted));
    Ok(der(0x30, &info))
}

/// Decrypts a KeyProtector blob; `None` when the password is wrong.
fn recover(protected: &[u8], password: &str) -> Result<Option<Vec<u8>>> {
    let (tag, seq) = Reader {
        data: protected,
        pos: 0,
    }
    .der()?;
    if tag != 0x30 {
        return Err(corrupt("protected key is not an EncryptedPrivateKeyInfo"));
    }
    let mut inner = Reader { data: seq, pos: 0 };
    let (tag, alg) = inner.der()?;
    if tag != 0x30 || !alg.starts_with(&KEY_PROTECTOR_OID) {
        return Err(corrupt(
            "protected key uses an algorithm other than Sun's KeyProtector",
        ));
    }
    let (tag, enc) = inner.der()?;
    if tag != 0x04 || enc.len() < 2 * SHA1_LEN {
        return Err(corrupt("protected key is too short"));
    }
    let (salt, rest) = enc.split_at(SHA1_LEN);
    let (cipher, check) = rest.split_at(rest.len() - SHA1_LEN);
    let pw = password_bytes(password);
    let plain = keystream_xor(&pw, salt, cipher);
    Ok((check_value(&pw, &plain) == check).then_some(plain))
}

impl JksStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `data` starts with the JKS magic.
    pub fn is_jks(data: &[u8]) -> bool {
        data.starts_with(&MAGIC.to_be_bytes())
    }

    /// Parses a store and checks its integrity digest with `password` (a wrong password is
    /// [`CertsError::WrongKeystorePassword`], as keytool says "tampered with, or password was
    /// incorrect").
    pub fn parse(data: &[u8], password: &str) -> Result<Self> {
        let mut r = Reader { data, pos: 0 };
        if r.u32()? != MAGIC {
            return Err(corrupt("not a JKS keystore (no FEEDFEED magic)"));
        }
        let version = r.u32()?;
        if version != 1 && version != 2 {
            return Err(corrupt("unsupported JKS version"));
        }
        let count = r.u32()?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let tag = r.u32()?;
            let alias = r.utf()?;
            let created_ms = r.u64()?;
            let entry = match tag {
                1 => {
                    let protected = r.blob()?;
                    let n = r.u32()?;
                    let mut chain = Vec::new();
                    for _ in 0..n {
                        let cert_type = if version == 2 {
                            r.utf()?
                        } else {
                            X509.to_owned()
                        };
                        chain.push((cert_type, r.blob()?));
                    }
                    Entry::PrivateKey {
                        alias,
                        created_ms,
                        protected,
                        chain,
                    }
                }
                2 => {
                    let cert_type = if version == 2 {
                        r.utf()?
                    } else {
                        X509.to_owned()
                    };
                    Entry::Trusted {
                        alias,
                        created_ms,
                        cert_type,
                        cert: r.blob()?,
                    }
                }
                _ => return Err(corrupt("unknown entry type (a JCEKS store?)")),
            };
            entries.push(entry);
        }
        let body = &data[..r.pos];
        let stored = r.take(SHA1_LEN)?;
        if integrity_digest(password, body) != stored {
            return Err(CertsError::WrongKeystorePassword);
        }
        Ok(JksStore { entries })
    }

    /// Encodes the store (version 2) with its integrity digest under `password`.
    pub fn encode(&self, password: &str) -> Result<Vec<u8>> {
        let mut w = Writer(Vec::new());
        w.u32(MAGIC);
        w.u32(VERSION);
        w.u32(u32::try_from(self.entries.len()).map_err(|_| corrupt("too many entries"))?);
        for e in &self.entries {
            match e {
                Entry::PrivateKey {
                    alias,
                    created_ms,
                    protected,
                    chain,
                } => {
                    w.u32(1);
                    w.utf(alias)?;
                    w.u64(*created_ms);
                    w.blob(protected)?;
                    w.u32(u32::try_from(chain.len()).map_err(|_| corrupt("chain too long"))?);
                    for (t, c) in chain {
                        w.utf(t)?;
                        w.blob(c)?;
                    }
                }
                Entry::Trusted {
                    alias,
                    created_ms,
                    cert_type,
                    cert,
                } => {
                    w.u32(2);
                    w.utf(alias)?;
                    w.u64(*created_ms);
                    w.utf(cert_type)?;
                    w.blob(cert)?;
                }
            }
        }
        let digest = integrity_digest(password, &w.0);
        w.0.extend_from_slice(&digest);
        Ok(w.0)
    }

    /// The aliases, in store order.
    pub fn aliases(&self) -> Vec<(&str, JksEntryKind)> {
        self.entries
            .iter()
            .map(|e| match e {
                Entry::PrivateKey { alias, .. } => (alias.as_str(), JksEntryKind::PrivateKey),
                Entry::Trusted { alias, .. } => (alias.as_str(), JksEntryKind::TrustedCert),
            })
            .collect()
    }

    fn position(&self, alias: &str) -> Option<usize> {
        let key = alias_key(alias);
        self.entries
            .iter()
            .position(|e| alias_key(e.alias()) == key)
    }

    /// Puts `entry` under its alias: replaces an entry with the same alias (ignoring case) in
    /// place, or appends.
    fn put(&mut self, entry: Entry) {
        match self.position(entry.alias()) {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
    }

    /// Sets a PrivateKeyEntry: the PKCS#8 DER key, protected with `key_password`, and its
    /// chain (leaf first).
    pub fn set_private_key(
        &mut self,
        alias: &str,
        key_pkcs8_der: &[u8],
        chain_der: &[Vec<u8>],
        key_password: &str,
    ) -> Result<()> {
        let protected = protect(key_pkcs8_der, key_password)?;
        self.put(Entry::PrivateKey {
            alias: alias_key(alias),
            created_ms: now_ms(),
            protected,
            chain: chain_der
                .iter()
                .map(|c| (X509.to_owned(), c.clone()))
                .collect(),
        });
        Ok(())
    }

    /// Sets a trustedCertEntry. Returns `false` (and changes nothing) when the alias already
    /// holds exactly this certificate as a trusted entry.
    pub fn set_trusted_cert(&mut self, alias: &str, cert_der: &[u8]) -> bool {
        if let Some(i) = self.position(alias)
            && let Entry::Trusted { cert, .. } = &self.entries[i]
            && cert == cert_der
        {
            return false;
        }
        self.put(Entry::Trusted {
            alias: alias_key(alias),
            created_ms: now_ms(),
            cert_type: X509.to_owned(),
            cert: cert_der.to_vec(),
        });
        true
    }

    /// The DER certificate of trusted entry `alias`.
    pub fn trusted_cert(&self, alias: &str) -> Option<&[u8]> {
        match &self.entries[self.position(alias)?] {
            Entry::Trusted { cert, .. } => Some(cert),
            Entry::PrivateKey { .. } => None,
        }
    }

    /// Decrypts private key entry `alias`: its PKCS#8 DER key and chain (leaf first).
    pub fn private_key(&self, alias: &str, key_password: &str) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
        let no_key = || CertsError::NoSuchKeyEntry {
            alias: alias.to_owned(),
        };
        match &self.entries[self.position(alias).ok_or_else(no_key)?] {
            Entry::PrivateKey {
                protected, chain, ..
            } => {
                let key = recover(protected, key_password)?.ok_or_else(|| {
                    CertsError::WrongKeyPassword {
                        alias: alias.to_owned(),
                    }
                })?;
                Ok((key, chain.iter().map(|(_, c)| c.clone()).collect()))
            }
            Entry::Trusted { .. } => Err(no_key()),
        }
    }
}

fn integrity_digest(password: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(password_bytes(password));
    h.update(WHITENER);
    h.update(body);
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf8_round_trips_and_encodes_nul_and_astral_like_java() {
        for s in [
            "wso2carbon",
            "gateway_certificate_alias",
            "ünïcödé",
            "a\u{0}b",
            "𝄞",
        ] {
            assert_eq!(from_modified_utf8(&modified_utf8(s)).unwrap(), s);
        }
        // NUL is two bytes, a supplementary character two 3-byte surrogates (CESU-8).
        assert_eq!(modified_utf8("\u{0}"), vec![0xC0, 0x80]);
        assert_eq!(modified_utf8("𝄞").len(), 6);
    }

    #[test]
    fn a_store_round_trips_and_the_password_is_checked() {
        let mut s = JksStore::new();
        s.set_private_key(
            "MyKey",
            b"not really pkcs8 but bytes",
            &[b"cert".to_vec()],
            "secret1",
        )
        .unwrap();
        assert!(s.set_trusted_cert("CA", b"ca-der"));
        let bytes = s.encode("store-pass").unwrap();
        assert!(JksStore::is_jks(&bytes));
        let back = JksStore::parse(&bytes, "store-pass").unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.aliases(),
            vec![
                ("mykey", JksEntryKind::PrivateKey),
                ("ca", JksEntryKind::TrustedCert)
            ]
        );
        assert!(matches!(
            JksStore::parse(&bytes, "wrong-pass"),
            Err(CertsError::WrongKeystorePassword)
        ));
        let (key, chain) = back.private_key("MYKEY", "secret1").unwrap();
        assert_eq!(key, b"not really pkcs8 but bytes");
        assert_eq!(chain, vec![b"cert".to_vec()]);
        assert!(matches!(
            back.private_key("mykey", "nope-nope"),
            Err(CertsError::WrongKeyPassword { .. })
        ));
        assert!(matches!(
            back.private_key("ca", "secret1"),
            Err(CertsError::NoSuchKeyEntry { .. })
        ));
    }

    #[test]
    fn setting_an_alias_again_replaces_it_ignoring_case() {
        let mut s = JksStore::new();
        assert!(s.set_trusted_cert("Gateway_Certificate_Alias", b"one"));
        assert!(!s.set_trusted_cert("gateway_certificate_alias", b"one"));
        assert!(s.set_trusted_cert("GATEWAY_CERTIFICATE_ALIAS", b"two"));
        assert_eq!(s.aliases().len(), 1);
        assert_eq!(
            s.trusted_cert("gateway_certificate_alias"),
            Some(&b"two"[..])
        );
    }

    #[test]
    fn truncated_or_foreign_bytes_are_refused() {
        let mut s = JksStore::new();
        s.set_trusted_cert("a", b"cert");
        let bytes = s.encode("password").unwrap();
        for cut in [0, 4, 12, bytes.len() - 1] {
            assert!(
                JksStore::parse(&bytes[..cut], "password").is_err(),
                "cut at {cut}"
            );
        }
        assert!(JksStore::parse(&[0xCE, 0xCE, 0xCE, 0xCE, 0, 0, 0, 2], "password").is_err());
    }

    #[test]
    fn long_der_lengths_are_encoded_in_long_form() {
        assert_eq!(der(0x04, &[0u8; 5])[..2], [0x04, 5]);
        assert_eq!(der(0x04, &[0u8; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der(0x04, &[0u8; 1300])[..4], [0x04, 0x82, 0x05, 0x14]);
    }
}
