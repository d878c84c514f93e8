//! The WSO2 secure vault's cipher (docs/secure-vault.md §2): RSA-OAEP with SHA-1 and MGF1-SHA-1
//! (the JCE's `RSA/ECB/OAEPwithSHA1andMGF1Padding`) under the vault keystore's certificate,
//! stored as standard base64 of the raw ciphertext.
//!
//! OAEP is randomised; here the randomness is drawn from a generator seeded with a digest of a
//! secret key, the alias and the value, so the same secret encrypts to the same text: a plan
//! applied twice renders the same `deployment.toml` and restarts nothing. The seed key (the
//! vault key's own private key bytes) keeps the randomness unpredictable to anyone without it.

use base64::Engine as _;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::error::{CertsError, Result};

/// Encrypts secrets for one vault keystore.
pub struct VaultEncrypter {
    key: RsaPublicKey,
    seed_key: Vec<u8>,
}

impl VaultEncrypter {
    /// For the certificate `cert_der` (its RSA public key); `seed_key` is secret material of the
    /// caller's (e.g. the vault key's PKCS#8 bytes).
    pub fn new(cert_der: &[u8], seed_key: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| parse("the vault certificate", e.to_string()))?;
        let spki = cert.public_key().raw;
        let key = RsaPublicKey::from_public_key_der(spki)
            .map_err(|e| parse("the vault certificate's RSA key", e.to_string()))?;
        Ok(VaultEncrypter {
            key,
            seed_key: seed_key.to_vec(),
        })
    }

    /// The largest secret this key can hold, bytes (one OAEP-SHA-1 block).
    pub fn max_len(&self) -> usize {
        use rsa::traits::PublicKeyParts;
        self.key.size() - 2 * 20 - 2
    }

    /// base64 of the RSA-OAEP ciphertext of `value` (UTF-8); the same `alias` and `value` give
    /// the same text.
    pub fn encrypt(&self, alias: &str, value: &str) -> Result<String> {
        if value.len() > self.max_len() {
            return Err(parse(
                "a vault secret",
                format!(
                    "`{alias}` is {} bytes, over the {} one RSA block holds",
                    value.len(),
                    self.max_len()
                ),
            ));
        }
        let mut h = Sha256::new();
        h.update(b"apimctl secure vault v1\0");
        for part in [&self.seed_key[..], alias.as_bytes(), value.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let mut rng = ChaCha20Rng::from_seed(h.finalize().into());
        let ct = self
            .key
            .encrypt(
                &mut rng,
                Oaep::new::<sha1_digest10::Sha1>(),
                value.as_bytes(),
            )
            .map_err(|e| parse("a vault secret", format!("encrypting `{alias}`: {e}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(ct))
    }
}

fn parse(what: &'static str, reason: String) -> CertsError {
    CertsError::Parse { what, reason }
}

#[cfg(test)]
mod tests {
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;

    use super::*;

    #[test]
    fn oaep_sha1_base64_deterministic_and_decryptable() {
        let pair = crate::product::generate_rsa_key().unwrap();
        let params = rcgen::CertificateParams::new(vec!["vault".to_string()]).unwrap();
        let cert = params.self_signed(&pair).unwrap();
        let pkcs8 = pair.serialize_der();
        let v = VaultEncrypter::new(cert.der(), &pkcs8).unwrap();
        let a = v.encrypt("admin_password", "s3cret").unwrap();
        assert_eq!(a.len(), 344, "base64 of 256 bytes");
        assert_eq!(a, v.encrypt("admin_password", "s3cret").unwrap());
        assert_ne!(a, v.encrypt("db_password", "s3cret").unwrap());
        let key = RsaPrivateKey::from_pkcs8_der(&pkcs8).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        let plain = key
            .decrypt(Oaep::new::<sha1_digest10::Sha1>(), &raw)
            .unwrap();
        assert_eq!(plain, b"s3cret");
        assert_eq!(v.max_len(), 214);
        assert!(v.encrypt("x", &"y".repeat(215)).is_err());
    }
}
