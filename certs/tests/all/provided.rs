//! `inspect_store`: the checks a provided keystore passes before it is stored or shipped, on
//! stores written natively (rcgen + `KeystoreBuilder`), by the real JDK 17 `keytool`, and by the
//! JDK's own `KeyStore` API (a PKCS#12 key under another password, which keytool refuses to make).

use std::path::{Path, PathBuf};
use std::process::Command;

use apim_certs::jks::JksStore;
use apim_certs::{CertsError, KeystoreBuilder, StoreFormat, inspect_store};

use crate::support::{keytool_path, keytool_with_pass, run_ok};

const PASSWORD: &str = "Provided-st0re-pass";

/// A leaf certificate for `sans` (none: CN only, `cn`), self-signed: (PKCS#8 key DER, cert DER).
fn leaf(cn: &str, sans: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    (key.serialize_der(), cert.der().to_vec())
}

fn store(format: StoreFormat, alias: &str, sans: &[&str]) -> Vec<u8> {
    let (key, cert) = leaf("apim.example.com", sans);
    let (_, ca) = leaf("Some CA", &[]);
    KeystoreBuilder::new()
        .private_key(alias, &key, &[cert])
        .trusted_cert("corp-ca", &ca)
        .to_bytes(format, PASSWORD)
        .unwrap()
}

const FORMATS: [StoreFormat; 2] = [StoreFormat::Jks, StoreFormat::Pkcs12];

#[test]
fn a_provided_store_opens_and_names_its_certificate_in_both_formats() {
    for format in FORMATS {
        let bytes = store(format, "wso2carbon", &["*.Example.com", "km.example.com"]);
        let found = inspect_store(&bytes, PASSWORD, Some("WSO2Carbon")).unwrap();
        assert_eq!(found.format, format);
        assert_eq!((found.private_keys, found.trusted_certs), (1, 1));
        let key = found.key.expect("key entry");
        assert_eq!(key.names, ["*.example.com", "km.example.com"], "{format:?}");
        assert!(key.covers("gw-1.example.com") && key.covers("KM.example.com"));
        assert!(!key.covers("example.com") && !key.covers("a.b.example.com"));
        assert!(key.not_after > time::OffsetDateTime::now_utc());
        // Without an alias (a truststore) it only has to open.
        let opened = inspect_store(&bytes, PASSWORD, None).unwrap();
        assert_eq!(opened.key, None);
    }
}

#[test]
fn a_certificate_without_sans_is_named_by_its_cn() {
    let (key, cert) = leaf("KM.example.com", &[]);
    let bytes = KeystoreBuilder::new()
        .private_key("wso2carbon", &key, &[cert])
        .to_jks(PASSWORD)
        .unwrap();
    let found = inspect_store(&bytes, PASSWORD, Some("wso2carbon")).unwrap();
    assert_eq!(found.key.unwrap().names, ["km.example.com"]);
}

#[test]
fn a_wrong_store_password_is_refused_without_being_shown() {
    for format in FORMATS {
        let bytes = store(format, "wso2carbon", &["km.example.com"]);
        let err = inspect_store(&bytes, "Not-the-pass-word", Some("wso2carbon")).unwrap_err();
        assert!(
            matches!(err, CertsError::WrongKeystorePassword),
            "{format:?}: {err}"
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("Not-the-pass-word") && !text.contains(PASSWORD));
    }
}

#[test]
fn a_missing_alias_names_the_entries_the_store_has() {
    for format in FORMATS {
        let bytes = store(format, "mykey", &["km.example.com"]);
        let err = inspect_store(&bytes, PASSWORD, Some("wso2carbon")).unwrap_err();
        let CertsError::AliasNotFound { alias, present } = &err else {
            panic!("{format:?}: {err}");
        };
        assert_eq!(alias, "wso2carbon");
        let mut present = present.clone();
        present.sort();
        assert_eq!(present, ["corp-ca", "mykey"], "{format:?}");
        assert_eq!(
            err.to_string(),
            "no entry with alias \"wso2carbon\" (the store has entries mykey, corp-ca)"
        );
    }
}

#[test]
fn a_trusted_certificate_alias_is_not_a_key() {
    for format in FORMATS {
        let bytes = store(format, "wso2carbon", &["km.example.com"]);
        let err = inspect_store(&bytes, PASSWORD, Some("corp-ca")).unwrap_err();
        assert!(
            matches!(&err, CertsError::NotAKeyEntry { alias } if alias == "corp-ca"),
            "{format:?}: {err}"
        );
    }
}

#[test]
fn a_jks_key_under_another_password_is_refused() {
    let (key, cert) = leaf("km.example.com", &["km.example.com"]);
    let mut jks = JksStore::new();
    jks.set_private_key("wso2carbon", &key, &[cert], "Other-key-pass")
        .unwrap();
    let bytes = jks.encode(PASSWORD).unwrap();
    let err = inspect_store(&bytes, PASSWORD, Some("wso2carbon")).unwrap_err();
    assert!(
        matches!(&err, CertsError::WrongKeyPassword { alias } if alias == "wso2carbon"),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("Other-key-pass"));
}

#[test]
fn garbage_and_truncated_stores_are_refused() {
    let err = inspect_store(b"-----BEGIN CERTIFICATE-----", PASSWORD, None).unwrap_err();
    assert!(
        matches!(&err, CertsError::UnrecognizedStore { magic } if magic == "2d2d2d2d"),
        "{err}"
    );
    for format in FORMATS {
        let bytes = store(format, "wso2carbon", &["km.example.com"]);
        let cut = &bytes[..bytes.len() / 2];
        assert!(inspect_store(cut, PASSWORD, Some("wso2carbon")).is_err());
    }
}

/// `keytool -genkeypair` of a key for `sans` into `store` (`-keypass` as given).
fn keytool_keypair(store: &Path, format: StoreFormat, alias: &str, sans: &str, keypass: &str) {
    run_ok(
        Command::new(keytool_path())
            .args([
                "-genkeypair",
                "-alias",
                alias,
                "-keyalg",
                "RSA",
                "-keysize",
                "2048",
                "-dname",
                "CN=apim.example.com, O=Example",
                "-ext",
                &format!("SAN={sans}"),
                "-validity",
                "30",
                "-keystore",
                store.to_str().unwrap(),
                "-storetype",
                format.keytool_name(),
                "-storepass:env",
                "TEST_STORE_PASS",
                "-keypass:env",
                "TEST_KEY_PASS",
                "-noprompt",
            ])
            .env("TEST_STORE_PASS", PASSWORD)
            .env("TEST_KEY_PASS", keypass),
    );
}

/// Imports the certificate of `alias` in `keystore` into a new truststore of `format`.
fn keytool_truststore(dir: &Path, keystore: &Path, alias: &str, format: StoreFormat) -> PathBuf {
    let pem = dir.join(format!("{alias}.pem"));
    keytool_with_pass(
        &[
            "-exportcert",
            "-rfc",
            "-alias",
            alias,
            "-file",
            pem.to_str().unwrap(),
            "-keystore",
            keystore.to_str().unwrap(),
            "-storepass:env",
            "TEST_STORE_PASS",
        ],
        PASSWORD,
    );
    let trust = dir.join(format!("trust.{}", format.keytool_name()));
    keytool_with_pass(
        &[
            "-importcert",
            "-noprompt",
            "-alias",
            "gateway_certificate_alias",
            "-file",
            pem.to_str().unwrap(),
            "-keystore",
            trust.to_str().unwrap(),
            "-storetype",
            format.keytool_name(),
            "-storepass:env",
            "TEST_STORE_PASS",
        ],
        "trust-pass-123",
    );
    trust
}

#[test]
fn stores_made_by_keytool_are_inspected_like_ours() {
    let dir = tempfile::tempdir().unwrap();
    for format in FORMATS {
        let ks = dir.path().join(format!("ks.{}", format.keytool_name()));
        keytool_keypair(
            &ks,
            format,
            "WSO2Carbon",
            "dns:*.apim.example.com,dns:km.example.com,ip:10.0.0.5",
            PASSWORD,
        );
        let bytes = std::fs::read(&ks).unwrap();
        let found = inspect_store(&bytes, PASSWORD, Some("wso2carbon")).unwrap();
        assert_eq!(found.format, format);
        assert_eq!((found.private_keys, found.trusted_certs), (1, 0));
        let key = found.key.unwrap();
        assert_eq!(key.names, ["*.apim.example.com", "km.example.com"]);
        assert!(key.covers("gw-1.apim.example.com"));
        assert!(!key.covers("apim.example.com"), "CN is ignored with SANs");
        assert!(matches!(
            inspect_store(&bytes, "wrong-pass-word", Some("wso2carbon")),
            Err(CertsError::WrongKeystorePassword)
        ));

        let trust = keytool_truststore(dir.path(), &ks, "wso2carbon", format);
        let bytes = std::fs::read(&trust).unwrap();
        let opened = inspect_store(&bytes, "trust-pass-123", None).unwrap();
        assert_eq!((opened.private_keys, opened.trusted_certs), (0, 1));
        assert!(matches!(
            inspect_store(&bytes, PASSWORD, None),
            Err(CertsError::WrongKeystorePassword)
        ));
        assert!(matches!(
            inspect_store(&bytes, "trust-pass-123", Some("gateway_certificate_alias")),
            Err(CertsError::NotAKeyEntry { .. })
        ));
    }
}

#[test]
fn a_key_password_that_differs_from_the_store_password_is_refused_in_stores_the_jdk_made() {
    let dir = tempfile::tempdir().unwrap();
    // JKS: keytool keeps a -keypass that differs.
    let jks = dir.path().join("ks.jks");
    keytool_keypair(
        &jks,
        StoreFormat::Jks,
        "wso2carbon",
        "dns:km.example.com",
        "Key-pass-456",
    );
    let err =
        inspect_store(&std::fs::read(&jks).unwrap(), PASSWORD, Some("wso2carbon")).unwrap_err();
    assert!(
        matches!(&err, CertsError::WrongKeyPassword { alias } if alias == "wso2carbon"),
        "{err}"
    );

    // PKCS#12: keytool ignores -keypass, but the JDK's KeyStore API stores a key under its own
    // password, which WSO2 (key password = store password) cannot recover.
    let p12 = dir.path().join("ks.p12");
    keytool_keypair(
        &p12,
        StoreFormat::Pkcs12,
        "wso2carbon",
        "dns:km.example.com",
        PASSWORD,
    );
    let source = dir.path().join("Rekey.java");
    std::fs::write(
        &source,
        r#"import java.io.*; import java.security.*; import java.security.cert.Certificate;
public class Rekey { public static void main(String[] a) throws Exception {
  char[] store = System.getenv("STORE_PASS").toCharArray();
  KeyStore ks = KeyStore.getInstance("PKCS12");
  try (InputStream in = new FileInputStream(a[0])) { ks.load(in, store); }
  Key k = ks.getKey("wso2carbon", store);
  Certificate[] chain = ks.getCertificateChain("wso2carbon");
  ks.setKeyEntry("wso2carbon", k, System.getenv("KEY_PASS").toCharArray(), chain);
  try (OutputStream out = new FileOutputStream(a[0])) { ks.store(out, store); }
}}
"#,
    )
    .unwrap();
    run_ok(
        Command::new(keytool_path().with_file_name("java"))
            .arg(&source)
            .arg(&p12)
            .env("STORE_PASS", PASSWORD)
            .env("KEY_PASS", "Key-pass-456"),
    );
    let err =
        inspect_store(&std::fs::read(&p12).unwrap(), PASSWORD, Some("wso2carbon")).unwrap_err();
    assert!(
        matches!(err, CertsError::StoreContentsUndecryptable),
        "{err}"
    );
}
