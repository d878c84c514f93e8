//! Product PKI: cluster CA, node certificates, the shared primary key, checked with openssl.

use std::time::Duration;

use apim_certs::{
    CLUSTER_CA_KEY_FILE, CertsError, ClusterCa, DEFAULT_NODE_CERT_VALIDITY,
    DEFAULT_PRIMARY_KEY_VALIDITY, NodeCert, PRIMARY_CERT_FILE, PRIMARY_KEY_FILE, PrimaryKey,
};

use crate::support::{mode, openssl, write};

#[test]
fn cluster_ca_is_rsa_private_and_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let ca = ClusterCa::load_or_create(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CLUSTER_CA_KEY_FILE)), 0o600);
    let again = ClusterCa::load_or_create(&dir).unwrap();
    assert_eq!(again.cert_pem(), ca.cert_pem());
    assert_eq!(again.fingerprint(), ca.fingerprint());

    let pem = write(tmp.path(), "ca.pem", ca.cert_pem());
    let text = openssl(["x509", "-noout", "-text", "-in", pem.to_str().unwrap()]);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    // Roughly ten years.
    let end = openssl(["x509", "-noout", "-enddate", "-in", pem.to_str().unwrap()]);
    let year: i32 = end.trim().rsplit(' ').nth(1).unwrap().parse().unwrap();
    let now = time::OffsetDateTime::now_utc().year();
    assert!((now + 9..=now + 10).contains(&year), "{end}");
}

#[test]
fn node_cert_verifies_against_cluster_ca_with_hostname_and_lb_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(&tmp.path().join("cluster")).unwrap();
    let node = NodeCert::issue(
        &ca,
        "gw-1.wso2.com",
        &[
            "gw-lb.wso2.com".into(),
            "GW-1.wso2.com".into(),
            "10.0.0.21".into(),
        ],
        DEFAULT_NODE_CERT_VALIDITY,
    )
    .unwrap();
    assert_eq!(node.hostname(), "gw-1.wso2.com");
    assert_eq!(
        node.sans(),
        ["gw-1.wso2.com", "gw-lb.wso2.com", "10.0.0.21"]
    );
    assert_eq!(
        node.chain_der(),
        vec![node.cert_der().to_vec(), ca.cert_der().to_vec()]
    );
    assert!(!format!("{node:?}").contains("PRIVATE KEY"));

    let ca_pem = write(tmp.path(), "ca.pem", ca.cert_pem());
    let leaf = write(tmp.path(), "node.pem", node.cert_pem());
    let out = openssl([
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        ca_pem.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), format!("{}: OK", leaf.display()));

    let san = openssl([
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        leaf.to_str().unwrap(),
    ]);
    assert!(
        san.contains("DNS:gw-1.wso2.com, DNS:gw-lb.wso2.com, IP Address:10.0.0.21"),
        "{san}"
    );
    let ku = openssl([
        "x509",
        "-noout",
        "-ext",
        "keyUsage,extendedKeyUsage,basicConstraints",
        "-in",
        leaf.to_str().unwrap(),
    ]);
    assert!(
        ku.contains("Digital Signature, Key Encipherment, Data Encipherment"),
        "{ku}"
    );
    assert!(
        ku.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{ku}"
    );
    assert!(ku.contains("CA:FALSE"), "{ku}");
    let subject = openssl([
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        leaf.to_str().unwrap(),
    ]);
    assert!(subject.contains("CN=gw-1.wso2.com"), "{subject}");

    // The key belongs to the certificate.
    let key = write(tmp.path(), "node.key", node.key_pem());
    let pub_key = openssl(["pkey", "-pubout", "-in", key.to_str().unwrap()]);
    let pub_cert = openssl(["x509", "-noout", "-pubkey", "-in", leaf.to_str().unwrap()]);
    assert_eq!(pub_key, pub_cert);
}

#[test]
fn node_cert_rejects_bad_hostnames() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(&tmp.path().join("cluster")).unwrap();
    for bad in ["", "a b", "-x.com", "x..com", "host/../x"] {
        assert!(
            matches!(
                NodeCert::issue(&ca, bad, &[], DEFAULT_NODE_CERT_VALIDITY),
                Err(CertsError::InvalidName { .. })
            ),
            "{bad:?} accepted"
        );
    }
    assert!(
        NodeCert::issue(
            &ca,
            "ok.example",
            &["bad name".into()],
            DEFAULT_NODE_CERT_VALIDITY
        )
        .is_err()
    );
    assert!(NodeCert::issue(&ca, "ok.example", &[], Duration::ZERO).is_err());
}

#[test]
fn primary_key_is_issued_once_and_signs_sha256_with_rsa() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(&tmp.path().join("cluster")).unwrap();
    let dir = tmp.path().join("primary");
    let first =
        PrimaryKey::load_or_create(&dir, &ca, "apim-prod", DEFAULT_PRIMARY_KEY_VALIDITY).unwrap();
    assert_eq!(mode(&dir.join(PRIMARY_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(PRIMARY_CERT_FILE)), 0o600);
    let second =
        PrimaryKey::load_or_create(&dir, &ca, "apim-prod", DEFAULT_PRIMARY_KEY_VALIDITY).unwrap();
    assert_eq!(first.cert_der(), second.cert_der());
    assert_eq!(first.key_pkcs8_der(), second.key_pkcs8_der());
    assert_eq!(second.cluster_name(), "apim-prod");
    assert_eq!(second.chain_der()[1], ca.cert_der());

    let cert = write(tmp.path(), "primary.pem", first.cert_pem());
    let text = openssl(["x509", "-noout", "-text", "-in", cert.to_str().unwrap()]);
    assert!(
        text.contains("Subject: O = apimctl, CN = apim-prod"),
        "{text}"
    );
    assert!(text.contains("Data Encipherment"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    let ca_pem = write(tmp.path(), "ca.pem", ca.cert_pem());
    let out = openssl([
        "verify",
        "-CAfile",
        ca_pem.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(out.trim().ends_with(": OK"), "{out}");

    // SHA256withRSA (JWT RS256) with the key verifies with the certificate's public key.
    let key = write(tmp.path(), "primary.key", first.key_pem());
    let data = write(tmp.path(), "payload", "header.payload");
    let sig = tmp.path().join("sig");
    let pubkey = tmp.path().join("pub.pem");
    std::fs::write(
        &pubkey,
        openssl(["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]),
    )
    .unwrap();
    openssl([
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
        data.to_str().unwrap(),
    ]);
    let out = openssl([
        "dgst",
        "-sha256",
        "-verify",
        pubkey.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "Verified OK");

    // A key file that does not match the certificate is refused.
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().join("p");
    drop(
        PrimaryKey::load_or_create(&other_dir, &ca, "apim-prod", DEFAULT_PRIMARY_KEY_VALIDITY)
            .unwrap(),
    );
    std::fs::copy(other_dir.join(PRIMARY_KEY_FILE), dir.join(PRIMARY_KEY_FILE)).unwrap();
    let err = PrimaryKey::load_or_create(&dir, &ca, "apim-prod", DEFAULT_PRIMARY_KEY_VALIDITY)
        .unwrap_err();
    assert!(matches!(err, CertsError::Parse { .. }), "{err}");
}
