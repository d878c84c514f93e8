//! Keystores written natively by the crate and opened by the real JDK keytool; stores made by
//! keytool read natively; truststore import.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use apim_certs::jks::{JksEntryKind, JksStore};
use apim_certs::{
    CertsError, ClusterCa, DEFAULT_NODE_CERT_VALIDITY, DEFAULT_PRIMARY_KEY_VALIDITY,
    ENV_STORE_PASS, KeystoreBuilder, Keytool, KeytoolCommand, NodeCert, PrimaryKey, StoreFormat,
    import_trusted_certs,
};

use crate::support::{
    RecordingRunner, count_alias, entry_type, keytool_path, keytool_sha256, keytool_with_pass, mode,
};

const PASSWORD: &str = "s3cret-Store-pass";
const CA_ALIAS: &str = apim_certs::CLUSTER_CA_ALIAS;
const GW_ALIAS: &str = apim_certs::GATEWAY_CERT_ALIAS;

struct Pki {
    _tmp: tempfile::TempDir,
    ca: ClusterCa,
    node: NodeCert,
}

fn pki() -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(&tmp.path().join("cluster")).unwrap();
    let node = NodeCert::issue(
        &ca,
        "km.wso2.com",
        &["km-lb.wso2.com".into()],
        DEFAULT_NODE_CERT_VALIDITY,
    )
    .unwrap();
    Pki {
        _tmp: tmp,
        ca,
        node,
    }
}

fn node_store(p: &Pki) -> KeystoreBuilder {
    KeystoreBuilder::new()
        .private_key("wso2carbon", p.node.key_pkcs8_der(), &p.node.chain_der())
        .trusted_cert(CA_ALIAS, p.ca.cert_der())
}

fn keytool() -> Keytool {
    Keytool::new(keytool_path())
}

/// Asserts the listing has the node's private key entry (chain of 2) and the CA entry.
fn assert_node_listing(listing: &str, p: &Pki) {
    assert_eq!(count_alias(listing, "wso2carbon"), 1, "{listing}");
    assert_eq!(
        entry_type(listing, "wso2carbon").as_deref(),
        Some("PrivateKeyEntry"),
        "{listing}"
    );
    assert!(listing.contains("Certificate chain length: 2"), "{listing}");
    assert_eq!(count_alias(listing, CA_ALIAS), 1, "{listing}");
    assert_eq!(
        entry_type(listing, CA_ALIAS).as_deref(),
        Some("trustedCertEntry"),
        "{listing}"
    );
    assert!(
        listing.contains("Owner: CN=km.wso2.com, O=apimctl"),
        "{listing}"
    );
    assert!(
        listing.contains(&keytool_sha256(p.node.cert_der())),
        "{listing}"
    );
    assert!(
        listing.contains(&keytool_sha256(p.ca.cert_der())),
        "{listing}"
    );
}

/// Files in `dir` other than the ones named (temp leftovers).
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn pkcs12_written_natively_opens_in_keytool() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wso2carbon.p12");
    node_store(&p)
        .write(&path, StoreFormat::Pkcs12, PASSWORD)
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        StoreFormat::detect_file(&path).unwrap(),
        StoreFormat::Pkcs12
    );
    assert!(leftovers(dir.path(), &["wso2carbon.p12"]).is_empty());

    let listing = keytool().list_verbose(&path, PASSWORD).unwrap();
    assert!(listing.contains("Keystore type: PKCS12"), "{listing}");
    assert_node_listing(&listing, &p);

    // Wrong password: keytool refuses (the MAC is really checked).
    assert!(matches!(
        keytool().list_verbose(&path, "wrong-password"),
        Err(CertsError::KeytoolFailed { .. })
    ));
}

#[test]
fn jks_written_natively_opens_in_keytool() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wso2carbon.jks");
    // Pre-existing file is replaced atomically.
    std::fs::write(&path, b"old").unwrap();
    node_store(&p)
        .write(&path, StoreFormat::Jks, PASSWORD)
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        &std::fs::read(&path).unwrap()[..4],
        &[0xFE, 0xED, 0xFE, 0xED]
    );
    assert!(
        leftovers(dir.path(), &["wso2carbon.jks"]).is_empty(),
        "temp files left"
    );

    let listing = keytool().list_verbose(&path, PASSWORD).unwrap();
    assert!(listing.contains("Keystore type: JKS"), "{listing}");
    assert_node_listing(&listing, &p);
    // keytool checks the integrity digest: a wrong password is refused.
    assert!(matches!(
        keytool().list_verbose(&path, "wrong-password"),
        Err(CertsError::KeytoolFailed { .. })
    ));

    // The key password equals the store password (WSO2 requires it): keytool recovers the key
    // (Sun's KeyProtector, checked by keytool) without being given a separate key password.
    let back = dir.path().join("back.p12");
    keytool_with_pass(
        &[
            "-importkeystore",
            "-noprompt",
            "-srckeystore",
            path.to_str().unwrap(),
            "-srcstoretype",
            "JKS",
            "-srcstorepass:env",
            "TEST_STORE_PASS",
            "-srcalias",
            "wso2carbon",
            "-destkeystore",
            back.to_str().unwrap(),
            "-deststoretype",
            "PKCS12",
            "-deststorepass:env",
            "TEST_STORE_PASS",
        ],
        PASSWORD,
    );
    let back = p12_keystore::KeyStore::from_pkcs12(
        &std::fs::read(&back).unwrap(),
        PASSWORD,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .unwrap();
    let (alias, chain) = back.private_key_chain().unwrap();
    assert_eq!(alias, "wso2carbon");
    assert_eq!(chain.certs()[0].as_der(), p.node.cert_der());
    assert_eq!(chain.certs().len(), 2);
    assert_eq!(chain.key().as_der(), p.node.key_pkcs8_der());
}

#[test]
fn a_jks_made_by_keytool_is_read_natively_key_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = shipped_truststore(dir.path(), StoreFormat::Jks);
    let jks = JksStore::parse(&std::fs::read(&store).unwrap(), "wso2carbon").unwrap();
    let mut aliases = jks.aliases();
    aliases.sort();
    assert_eq!(
        aliases,
        vec![
            (GW_ALIAS, JksEntryKind::TrustedCert),
            ("wso2carbon", JksEntryKind::PrivateKey),
        ]
    );
    let (key, chain) = jks.private_key("WSO2Carbon", "wso2carbon").unwrap();
    // The key keytool generated matches the certificate keytool exported.
    let pem = std::fs::read_to_string(dir.path().join("shipped.pem")).unwrap();
    assert_eq!(chain[0], apim_certs::cert_pem_to_der(&pem).unwrap());
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    let key = rsa::RsaPrivateKey::from_pkcs8_der(&key).unwrap();
    let cert = x509_parser::parse_x509_certificate(&chain[0]).unwrap().1;
    let spki_key = rsa::RsaPublicKey::from_public_key_der(cert.public_key().raw).unwrap();
    assert_eq!(key.to_public_key(), spki_key);
    assert!(matches!(
        JksStore::parse(&std::fs::read(&store).unwrap(), "not-the-password"),
        Err(CertsError::WrongKeystorePassword)
    ));
}

#[test]
fn no_password_ever_reaches_a_child_argv() {
    let p = pki();
    let cmd = keytool().list_command(Path::new("t.jks"), PASSWORD);
    assert_no_password(&cmd);
    assert!(cmd.env.iter().all(|(_, v)| v == PASSWORD));
    assert!(has_pair(&cmd, "-storepass:env", ENV_STORE_PASS));
    assert!(
        !format!("{cmd:?}").contains(PASSWORD),
        "Debug leaks the password"
    );

    // And what really ran, recorded at the runner seam during a real listing.
    let rec = RecordingRunner::new();
    let kt = Keytool::with_runner(keytool_path(), rec.clone());
    let dir = tempfile::tempdir().unwrap();
    let jks = dir.path().join("ks.jks");
    node_store(&p)
        .write(&jks, StoreFormat::Jks, PASSWORD)
        .unwrap();
    let listing = kt.list_verbose(&jks, PASSWORD).unwrap();
    assert_node_listing(&listing, &p);
    let seen = rec.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one -list: {seen:?}");
    for cmd in seen.iter() {
        assert_no_password(cmd);
        assert!(!cmd.env.is_empty());
    }
    // The parent's own environment never got the password.
    assert!(std::env::vars().all(|(_, v)| v != PASSWORD));
}

fn assert_no_password(cmd: &KeytoolCommand) {
    for a in &cmd.args {
        let a = a.to_string_lossy();
        assert!(!a.contains(PASSWORD), "password on argv: {a}");
        assert!(
            !(a.ends_with("storepass") || a.ends_with("keypass")),
            "plain password option {a} (must be :env or :file)"
        );
    }
}

fn has_pair(cmd: &KeytoolCommand, flag: &str, value: &str) -> bool {
    cmd.args
        .windows(2)
        .any(|w| w[0].to_str() == Some(flag) && w[1].to_str() == Some(value))
}

/// Makes a starting truststore the way WSO2 ships one: an existing entry plus one trusted
/// certificate, in the given on-disk format, always named `.jks`.
fn shipped_truststore(dir: &Path, format: StoreFormat) -> std::path::PathBuf {
    let path = dir.join("client-truststore.jks");
    let store = path.to_str().unwrap();
    let storetype = format.keytool_name();
    keytool_with_pass(
        &[
            "-genkeypair",
            "-alias",
            "wso2carbon",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-dname",
            "CN=localhost, O=WSO2",
            "-validity",
            "30",
            "-keystore",
            store,
            "-storetype",
            storetype,
            "-storepass:env",
            "TEST_STORE_PASS",
            "-keypass:env",
            "TEST_STORE_PASS",
            "-noprompt",
        ],
        "wso2carbon",
    );
    let cert = dir.join("shipped.pem");
    keytool_with_pass(
        &[
            "-exportcert",
            "-rfc",
            "-alias",
            "wso2carbon",
            "-file",
            cert.to_str().unwrap(),
            "-keystore",
            store,
            "-storetype",
            storetype,
            "-storepass:env",
            "TEST_STORE_PASS",
        ],
        "wso2carbon",
    );
    // The shipped store already has a gateway_certificate_alias (a copy of wso2carbon).
    keytool_with_pass(
        &[
            "-importcert",
            "-noprompt",
            "-alias",
            GW_ALIAS,
            "-file",
            cert.to_str().unwrap(),
            "-keystore",
            store,
            "-storetype",
            storetype,
            "-storepass:env",
            "TEST_STORE_PASS",
        ],
        "wso2carbon",
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn truststore_import_twice(format: StoreFormat) {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let store = shipped_truststore(dir.path(), format);
    assert_eq!(StoreFormat::detect_file(&store).unwrap(), format);
    let primary = PrimaryKey::issue(&p.ca, "apim-prod", DEFAULT_PRIMARY_KEY_VALIDITY).unwrap();
    let kt = keytool();
    let certs = [
        (CA_ALIAS, p.ca.cert_der()),
        // Aliases compare ignoring case, as in the JDK: this replaces the shipped entry.
        ("Gateway_Certificate_Alias", primary.cert_der()),
    ];

    assert!(import_trusted_certs(&store, "wso2carbon", &certs).unwrap());
    let after_first = std::fs::read(&store).unwrap();
    // The second run finds every alias holding its certificate and writes nothing.
    assert!(!import_trusted_certs(&store, "wso2carbon", &certs).unwrap());
    assert_eq!(std::fs::read(&store).unwrap(), after_first);

    let listing = kt.list_verbose(&store, "wso2carbon").unwrap();
    assert_eq!(count_alias(&listing, CA_ALIAS), 1, "{listing}");
    assert_eq!(count_alias(&listing, GW_ALIAS), 1, "{listing}");
    assert_eq!(count_alias(&listing, "wso2carbon"), 1, "{listing}");
    assert!(
        listing.contains("Your keystore contains 3 entries"),
        "{listing}"
    );
    assert_eq!(
        entry_type(&listing, CA_ALIAS).as_deref(),
        Some("trustedCertEntry")
    );
    assert_eq!(
        entry_type(&listing, GW_ALIAS).as_deref(),
        Some("trustedCertEntry")
    );
    assert_eq!(
        entry_type(&listing, "wso2carbon").as_deref(),
        Some("PrivateKeyEntry")
    );
    // gateway_certificate_alias now holds the primary key's certificate (replaced, not kept).
    let gw_block: String = listing
        .split("Alias name: ")
        .find(|b| b.starts_with(GW_ALIAS))
        .unwrap()
        .to_owned();
    assert!(
        gw_block.contains(&keytool_sha256(primary.cert_der())),
        "{gw_block}"
    );
    assert!(gw_block.contains("CN=apim-prod"), "{gw_block}");

    // Format, mode and name kept; nothing left behind.
    assert_eq!(StoreFormat::detect_file(&store).unwrap(), format);
    assert_eq!(mode(&store), 0o644);
    assert!(
        leftovers(dir.path(), &["client-truststore.jks", "shipped.pem"]).is_empty(),
        "temp files left"
    );
}

#[test]
fn truststore_import_is_idempotent_on_jks() {
    truststore_import_twice(StoreFormat::Jks);
}

#[test]
fn truststore_import_is_idempotent_on_pkcs12_bytes_named_jks() {
    truststore_import_twice(StoreFormat::Pkcs12);
}

#[test]
fn failed_import_leaves_the_store_untouched() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let store = shipped_truststore(dir.path(), StoreFormat::Jks);
    let before = std::fs::read(&store).unwrap();
    let err =
        import_trusted_certs(&store, "wrong-password", &[(CA_ALIAS, p.ca.cert_der())]).unwrap_err();
    assert!(
        matches!(&err, CertsError::InStore { source, .. } if matches!(**source, CertsError::WrongKeystorePassword)),
        "{err}"
    );
    assert!(err.to_string().contains("client-truststore.jks"), "{err}");
    assert!(!err.to_string().contains("wrong-password"));
    assert_eq!(std::fs::read(&store).unwrap(), before);
    assert!(leftovers(dir.path(), &["client-truststore.jks", "shipped.pem"]).is_empty());

    // The same for PKCS#12 bytes (the MAC is checked).
    let dir = tempfile::tempdir().unwrap();
    let store = shipped_truststore(dir.path(), StoreFormat::Pkcs12);
    let before = std::fs::read(&store).unwrap();
    let err =
        import_trusted_certs(&store, "wrong-password", &[(CA_ALIAS, p.ca.cert_der())]).unwrap_err();
    assert!(matches!(err, CertsError::InStore { .. }), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), before);
}

#[test]
fn store_format_comes_from_magic_bytes_not_the_name() {
    assert_eq!(
        StoreFormat::detect(&[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2]),
        Some(StoreFormat::Jks)
    );
    assert_eq!(
        StoreFormat::detect(&[0x30, 0x82, 0x0A, 0x00]),
        Some(StoreFormat::Pkcs12)
    );
    assert_eq!(StoreFormat::detect(&[0xCE, 0xCE, 0xCE, 0xCE]), None);
    assert_eq!(StoreFormat::detect(&[]), None);

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("client-truststore.jks");
    std::fs::write(&junk, b"hello").unwrap();
    let p = pki();
    let err =
        import_trusted_certs(&junk, "wso2carbon", &[(CA_ALIAS, p.ca.cert_der())]).unwrap_err();
    assert!(
        matches!(&err, CertsError::UnknownStoreFormat { magic, .. } if magic == "68656c6c"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_refused_before_touching_disk() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    for format in [StoreFormat::Pkcs12, StoreFormat::Jks] {
        assert!(matches!(
            node_store(&p).write(&dir.path().join("a.p12"), format, "12345"),
            Err(CertsError::PasswordTooShort)
        ));
        let dup = node_store(&p).trusted_cert("WSO2Carbon", p.ca.cert_der());
        assert!(matches!(
            dup.to_bytes(format, PASSWORD),
            Err(CertsError::InvalidName { .. })
        ));
        let no_chain = KeystoreBuilder::new().private_key("k", p.node.key_pkcs8_der(), &[]);
        assert!(no_chain.to_bytes(format, PASSWORD).is_err());
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());

    // Listing with a keytool that is not there: a clear spawn error naming the path.
    let kt = Keytool::from_java_home(&dir.path().join("no-jdk"));
    let err = kt
        .list_verbose(&dir.path().join("x.jks"), PASSWORD)
        .unwrap_err();
    assert!(matches!(err, CertsError::KeytoolSpawn { .. }), "{err}");
    assert!(err.to_string().contains("no-jdk"), "{err}");
}
