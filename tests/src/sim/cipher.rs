//! The secure vault's asymmetric cipher, as the JDK runs it for Carbon (see
//! `docs/secure-vault.md`): RSA with the keystore's certificate to encrypt and its private key
//! to decrypt, the value stored as standard base64 (with padding, no line breaks) of the raw
//! ciphertext, the plaintext being the UTF-8 bytes of the secret.
//!
//! Transformations (the JCE names, case-insensitive):
//! - `RSA/ECB/OAEPwithSHA1andMGF1Padding` (also written `...OAEPWithSHA-1AndMGF1Padding`):
//!   RSAES-OAEP, SHA-1 digest, MGF1 with SHA-1, empty label — what the product sets as
//!   `org.wso2.CipherTransformation`;
//! - `RSA` (the JDK's default, = `RSA/ECB/PKCS1Padding`): RSAES-PKCS1-v1_5.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey, RsaPublicKey};

/// The transformation the product configures (`system.parameter.'org.wso2.CipherTransformation'`).
pub const PRODUCT_TRANSFORMATION: &str = "RSA/ECB/OAEPwithSHA1andMGF1Padding";

/// A supported RSA transformation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transformation {
    /// OAEP with SHA-1 and MGF1-SHA-1.
    OaepSha1,
    /// PKCS#1 v1.5.
    Pkcs1,
}

impl Transformation {
    /// Parses a JCE transformation name; `None` if the JDK would not find a provider for it.
    pub fn parse(name: &str) -> Option<Transformation> {
        match name.trim().to_ascii_uppercase().as_str() {
            "RSA/ECB/OAEPWITHSHA1ANDMGF1PADDING" | "RSA/ECB/OAEPWITHSHA-1ANDMGF1PADDING" => {
                Some(Transformation::OaepSha1)
            }
            "RSA" | "RSA/ECB/PKCS1PADDING" => Some(Transformation::Pkcs1),
            _ => None,
        }
    }
}

/// Why a cipher operation failed (the JDK's words where it has them).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// The certificate or key is not an RSA key.
    #[error("Invalid key: {0}")]
    Key(String),
    /// Not base64.
    #[error("Invalid base64 cipher text: {0}")]
    Base64(String),
    /// Wrong key, wrong padding or corrupt data.
    #[error("javax.crypto.BadPaddingException: Decryption error")]
    BadPadding,
    /// Too long for the key.
    #[error("javax.crypto.IllegalBlockSizeException: {0}")]
    TooLong(String),
    /// Decrypted bytes are not UTF-8.
    #[error("decrypted value is not text")]
    NotText,
}

fn public_key_of(cert_der: &[u8]) -> Result<RsaPublicKey, CipherError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CipherError::Key(e.to_string()))?;
    RsaPublicKey::from_public_key_der(cert.tbs_certificate.subject_pki.raw)
        .map_err(|e| CipherError::Key(e.to_string()))
}

/// Encrypts `plain` (UTF-8) with the certificate's public key; returns base64.
pub fn encrypt(cert_der: &[u8], t: Transformation, plain: &str) -> Result<String, CipherError> {
    let key = public_key_of(cert_der)?;
    let mut rng = rsa::rand_core::OsRng;
    let data = plain.as_bytes();
    let out = match t {
        Transformation::OaepSha1 => key.encrypt(&mut rng, Oaep::new::<sha1_digest10::Sha1>(), data),
        Transformation::Pkcs1 => key.encrypt(&mut rng, Pkcs1v15Encrypt, data),
    }
    .map_err(|e| CipherError::TooLong(e.to_string()))?;
    Ok(STANDARD.encode(out))
}

/// Decrypts a base64 value with the PKCS#8 private key.
pub fn decrypt(key_pkcs8: &[u8], t: Transformation, b64: &str) -> Result<String, CipherError> {
    let key =
        RsaPrivateKey::from_pkcs8_der(key_pkcs8).map_err(|e| CipherError::Key(e.to_string()))?;
    let data = STANDARD
        .decode(b64.trim())
        .map_err(|e| CipherError::Base64(e.to_string()))?;
    let plain = match t {
        Transformation::OaepSha1 => key.decrypt(Oaep::new::<sha1_digest10::Sha1>(), &data),
        Transformation::Pkcs1 => key.decrypt(Pkcs1v15Encrypt, &data),
    }
    .map_err(|_| CipherError::BadPadding)?;
    String::from_utf8(plain).map_err(|_| CipherError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A keytool-made RSA certificate (DER) and its PKCS#8 key.
    fn pair() -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ks.p12");
        let keytool = crate::simpack::find_keytool().expect("keytool");
        let out = Command::new(keytool)
            .args([
                "-genkeypair",
                "-alias",
                "k",
                "-keyalg",
                "RSA",
                "-keysize",
                "2048",
            ])
            .args([
                "-dname",
                "CN=vault",
                "-storetype",
                "PKCS12",
                "-storepass:env",
                "P",
            ])
            .args(["-keypass:env", "P", "-keystore"])
            .arg(&path)
            .env("P", "pw-pw-pw")
            .output()
            .expect("keytool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = std::fs::read(&path).expect("read");
        let id =
            crate::sim::keystore::load_identity(&data, "pw-pw-pw", "k", "pw-pw-pw").expect("id");
        (id.chain[0].clone(), id.key_pkcs8)
    }

    #[test]
    fn oaep_and_pkcs1_round_trip_and_do_not_mix() {
        let (cert, key) = pair();
        for t in [Transformation::OaepSha1, Transformation::Pkcs1] {
            let enc = encrypt(&cert, t, "s3cr3t-ünï").expect("enc");
            assert_eq!(STANDARD.decode(&enc).expect("b64").len(), 256);
            assert_eq!(decrypt(&key, t, &enc).as_deref(), Ok("s3cr3t-ünï"));
        }
        let oaep = encrypt(&cert, Transformation::OaepSha1, "x").expect("enc");
        assert_eq!(
            decrypt(&key, Transformation::Pkcs1, &oaep),
            Err(CipherError::BadPadding)
        );
        assert_eq!(
            Transformation::parse("rsa/ecb/OAEPWithSHA-1AndMGF1Padding"),
            Some(Transformation::OaepSha1)
        );
        assert_eq!(
            Transformation::parse("RSA/ECB/OAEPWithSHA-256AndMGF1Padding"),
            None
        );
    }
}
