//! A node's keystores and truststore, as its `KeystoreSpec` says, through the certs crate.
//!
//! The node TLS keystore (key + chain) and the primary keystore are written whole (PKCS#12 or
//! JKS, natively: no JVM on the way, atomically, mode 0600), or, with `provided`, the operator's
//! keystore and truststore byte for byte once they match their digests; the `trusted` certificates are
//! imported into the pack's existing truststore under their aliases in one read and one write
//! (idempotent: an alias is replaced, never duplicated). [`keystores_digest`] lets the converge
//! loop skip all of it when nothing changed since the last successful write.

use std::path::Path;

use apim_certs::{KeystoreBuilder, StoreFormat};
use apim_proto::v1::{KeystoreSpec, StoreType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::exec::error::{ExecError, Result};

/// A digest of everything in `ks` that ends up in a store (secrets included, never printed).
pub fn keystores_digest(ks: &KeystoreSpec) -> String {
    let mut h = Sha256::new();
    let mut part = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    part(&ks.store_type.to_string());
    for s in [
        &ks.keystore_file,
        &ks.alias,
        &ks.password,
        &ks.node_key_pem,
        &ks.node_chain_pem,
        ks.primary_keystore_file.as_deref().unwrap_or(""),
        ks.primary_alias.as_deref().unwrap_or(""),
        &ks.primary_key_pem,
        &ks.primary_chain_pem,
        &ks.truststore_file,
        &ks.truststore_password,
    ] {
        part(s);
    }
    for t in &ks.trusted {
        part(&t.alias);
        part(&t.cert_pem);
    }
    // Provided stores by their digests (write_keystores_blocking refuses bytes that differ).
    if let Some(p) = &ks.provided {
        part("provided");
        part(&p.keystore_sha256);
        part(&p.truststore_sha256);
    }
    hex::encode(h.finalize())
}

fn format_of(ks: &KeystoreSpec) -> Result<StoreFormat> {
    match StoreType::try_from(ks.store_type) {
        Ok(StoreType::Jks) => Ok(StoreFormat::Jks),
        Ok(StoreType::Pkcs12) => Ok(StoreFormat::Pkcs12),
        _ => Err(ExecError::InvalidKeystoreSpec {
            reason: format!(
                "keystores.store_type {} is not JKS or PKCS12",
                ks.store_type
            ),
        }),
    }
}

fn key_der(what: &'static str, pem: &str) -> Result<Vec<u8>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map(|k| k.secret_der().to_vec())
        .map_err(|_| ExecError::BadPem { what })
}

fn chain_der(what: &'static str, pem: &str) -> Result<Vec<Vec<u8>>> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| ExecError::BadPem { what })?;
    if chain.is_empty() {
        return Err(ExecError::BadPem { what });
    }
    Ok(chain)
}

/// The store files (relative to the home) [`write_keystores_blocking`] writes for `ks`: the
/// keystore, the primary keystore, and the truststore when certificates are imported into it or
/// a provided one replaces it.
pub fn written_stores(ks: &KeystoreSpec) -> Vec<&str> {
    let mut out = vec![ks.keystore_file.as_str()];
    if ks.provided.is_none()
        && let Some(p) = ks.primary_keystore_file.as_deref()
    {
        out.push(p);
    }
    let provided_trust = ks
        .provided
        .as_ref()
        .is_some_and(|p| !p.truststore.is_empty());
    if provided_trust || !ks.trusted.is_empty() {
        out.push(ks.truststore_file.as_str());
    }
    out.retain(|f| !f.is_empty());
    out.sort_unstable();
    out.dedup();
    out
}

/// Hands the stores of `ks` (written by the agent, as root) to the user the server runs as;
/// they keep their 0600 mode.
pub fn chown_stores(home: &Path, ks: &KeystoreSpec, uid: u32, gid: u32) -> Result<()> {
    let files = [
        Some(ks.keystore_file.as_str()),
        ks.primary_keystore_file.as_deref(),
        Some(ks.truststore_file.as_str()),
    ];
    for rel in files.into_iter().flatten().filter(|f| !f.is_empty()) {
        let path = home.join(rel);
        if path.exists() {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| ExecError::io("chown", &path, e))?;
        }
    }
    Ok(())
}

/// Writes the stores of `ks` under the node's `home`. Blocking file I/O (and an RSA-free but
/// SHA-heavy encoding); call from `spawn_blocking`.
pub fn write_keystores_blocking(home: &Path, ks: &KeystoreSpec) -> Result<()> {
    let format = format_of(ks)?;
    let rel = |field: &str, p: &str| -> Result<std::path::PathBuf> {
        let path = Path::new(p);
        if p.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ExecError::InvalidKeystoreSpec {
                reason: format!("keystores.{field} {p:?} must be a relative path inside the home"),
            });
        }
        Ok(home.join(path))
    };
    let ks_err = |what: String| {
        move |source| ExecError::Keystore {
            what,
            source: Box::new(source),
        }
    };

    if let Some(provided) = &ks.provided {
        write_provided(
            &rel("keystore_file", &ks.keystore_file)?,
            "keystore",
            &provided.keystore,
            &provided.keystore_sha256,
        )?;
        if !provided.truststore.is_empty() {
            write_provided(
                &rel("truststore_file", &ks.truststore_file)?,
                "truststore",
                &provided.truststore,
                &provided.truststore_sha256,
            )?;
        }
        return import_trusted(ks, &rel);
    }

    let tls_path = rel("keystore_file", &ks.keystore_file)?;
    let contents = KeystoreBuilder::new().private_key(
        &ks.alias,
        &key_der("node_key_pem", &ks.node_key_pem)?,
        &chain_der("node_chain_pem", &ks.node_chain_pem)?,
    );
    contents
        .write(&tls_path, format, &ks.password)
        .map_err(ks_err(format!("writing {}", ks.keystore_file)))?;

    if let Some(primary) = ks.primary_keystore_file.as_deref() {
        let path = rel("primary_keystore_file", primary)?;
        let alias = ks.primary_alias.as_deref().unwrap_or(&ks.alias);
        let contents = KeystoreBuilder::new().private_key(
            alias,
            &key_der("primary_key_pem", &ks.primary_key_pem)?,
            &chain_der("primary_chain_pem", &ks.primary_chain_pem)?,
        );
        contents
            .write(&path, format, &ks.password)
            .map_err(ks_err(format!("writing {primary}")))?;
    }

    import_trusted(ks, &rel)
}

/// Writes a provided store whole (atomically, 0600) once its bytes are the ones the spec's
/// digest names; the error names the file and the digests, never a byte.
fn write_provided(path: &Path, what: &'static str, bytes: &[u8], sha256: &str) -> Result<()> {
    let actual = hex::encode(Sha256::digest(bytes));
    if bytes.is_empty() || !actual.eq_ignore_ascii_case(sha256) {
        return Err(ExecError::InvalidKeystoreSpec {
            reason: format!(
                "keystores.provided.{what} has sha256 {actual}, not the {sha256:?} it names"
            ),
        });
    }
    apim_atomic::write_atomic(path, bytes, 0o600)?;
    Ok(())
}

/// Imports the spec's `trusted` certificates into its truststore (nothing when none).
fn import_trusted(
    ks: &KeystoreSpec,
    rel: &dyn Fn(&str, &str) -> Result<std::path::PathBuf>,
) -> Result<()> {
    let ks_err = |what: String| {
        move |source| ExecError::Keystore {
            what,
            source: Box::new(source),
        }
    };
    if !ks.trusted.is_empty() {
        let store = rel("truststore_file", &ks.truststore_file)?;
        let ders = ks
            .trusted
            .iter()
            .map(|t| chain_der("trusted.cert_pem", &t.cert_pem).map(|mut c| c.swap_remove(0)))
            .collect::<Result<Vec<_>>>()?;
        let certs: Vec<(&str, &[u8])> = ks
            .trusted
            .iter()
            .zip(&ders)
            .map(|(t, der)| (t.alias.as_str(), der.as_slice()))
            .collect();
        let aliases: Vec<&str> = certs.iter().map(|(a, _)| *a).collect();
        apim_certs::import_trusted_certs(&store, &ks.truststore_password, &certs).map_err(
            ks_err(format!(
                "importing {} into {}",
                aliases.join(", "),
                ks.truststore_file
            )),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use apim_proto::v1::ProvidedStores;

    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn provided(keystore: &[u8], truststore: &[u8]) -> KeystoreSpec {
        KeystoreSpec {
            store_type: StoreType::Pkcs12 as i32,
            keystore_file: "security/ks.p12".into(),
            alias: "node-key".into(),
            password: "store-pass".into(),
            truststore_file: "security/trust.p12".into(),
            truststore_password: "trust-pass".into(),
            provided: Some(ProvidedStores {
                keystore: keystore.to_vec(),
                keystore_sha256: sha(keystore),
                truststore: truststore.to_vec(),
                truststore_sha256: if truststore.is_empty() {
                    String::new()
                } else {
                    sha(truststore)
                },
            }),
            ..KeystoreSpec::default()
        }
    }

    #[test]
    fn provided_stores_are_written_whole_0600_and_only_when_their_digest_matches() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("security")).unwrap();
        let ks = provided(b"\xFE\xED\xFE\xEDkeystore", b"\x30truststore");
        write_keystores_blocking(home.path(), &ks).unwrap();
        for (file, bytes) in [
            ("security/ks.p12", &b"\xFE\xED\xFE\xEDkeystore"[..]),
            ("security/trust.p12", b"\x30truststore"),
        ] {
            let path = home.path().join(file);
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Without a truststore the pack's own is left alone.
        std::fs::write(home.path().join("security/trust.p12"), b"shipped").unwrap();
        write_keystores_blocking(home.path(), &provided(b"other", b"")).unwrap();
        assert_eq!(
            std::fs::read(home.path().join("security/trust.p12")).unwrap(),
            b"shipped"
        );

        // Bytes that are not the ones the digest names are refused; nothing is written.
        let mut tampered = provided(b"forged", b"");
        tampered.provided.as_mut().unwrap().keystore_sha256 = sha(b"other-bytes");
        let err = write_keystores_blocking(home.path(), &tampered).unwrap_err();
        assert!(err.to_string().contains(&sha(b"forged")), "{err}");
        assert!(!err.to_string().contains("forged\""), "{err}");
        assert_eq!(
            std::fs::read(home.path().join("security/ks.p12")).unwrap(),
            b"other"
        );
    }

    #[test]
    fn the_keystores_digest_follows_the_provided_files() {
        let a = provided(b"keystore-a", b"trust");
        assert_eq!(keystores_digest(&a), keystores_digest(&a.clone()));
        assert_ne!(
            keystores_digest(&a),
            keystores_digest(&provided(b"keystore-b", b"trust"))
        );
        assert_ne!(
            keystores_digest(&a),
            keystores_digest(&provided(b"keystore-a", b"trust-2"))
        );
        let issued = KeystoreSpec {
            provided: None,
            ..a.clone()
        };
        assert_ne!(keystores_digest(&a), keystores_digest(&issued));
    }
}
