//! Control-plane CA: persistence, CSR policy, identities, operator and server certificates.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use apim_certs::{
    AgentKey, CA_CERT_FILE, CA_KEY_FILE, CertsError, ControlPlaneCa, DEFAULT_AGENT_CERT_TTL,
    PeerCert, PeerIdentity, renew_at, sha256_fingerprint,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::support::{mode, openssl, write};

fn new_ca() -> (tempfile::TempDir, ControlPlaneCa) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ControlPlaneCa::load_or_create(&tmp.path().join("ca")).unwrap();
    (tmp, ca)
}

/// All SANs of a certificate, rendered as `DNS:x` / `URI:x` / `IP:..`.
fn sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::URI(u) => format!("URI:{u}"),
            GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn ca_is_created_private_and_reloaded_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki").join("ca");
    let ca = ControlPlaneCa::load_or_create(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o600);
    assert_eq!(ca.fingerprint(), sha256_fingerprint(ca.cert_der()));

    // openssl computes the same fingerprint and sees a path-length-0 CA.
    let pem = write(tmp.path(), "ca.pem", ca.cert_pem());
    let fp = openssl([
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        pem.to_str().unwrap(),
    ]);
    let fp_hex: String = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(fp_hex, ca.fingerprint());
    let text = openssl(["x509", "-noout", "-text", "-in", pem.to_str().unwrap()]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");

    let again = ControlPlaneCa::load_or_create(&dir).unwrap();
    assert_eq!(again.fingerprint(), ca.fingerprint());
    assert_eq!(again.cert_pem(), ca.cert_pem());
}

#[test]
fn certificates_from_a_reloaded_ca_verify_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    drop(ControlPlaneCa::load_or_create(&dir).unwrap());
    let ca = ControlPlaneCa::load_or_create(&dir).unwrap();
    let ca_pem = write(tmp.path(), "ca.pem", ca.cert_pem());

    let key = AgentKey::generate().unwrap();
    let agent = ca
        .sign_agent_csr(
            &key.csr_der("vm-gw-1").unwrap(),
            "vm-gw-1",
            DEFAULT_AGENT_CERT_TTL,
        )
        .unwrap();
    let agent_pem = write(tmp.path(), "agent.pem", &agent.cert_pem);
    let out = openssl([
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        ca_pem.to_str().unwrap(),
        agent_pem.to_str().unwrap(),
    ]);
    assert!(out.trim().ends_with(": OK"), "{out}");

    let server = ca
        .issue_server_cert(
            &["controller.example.com".into(), "127.0.0.1".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let server_pem = write(tmp.path(), "server.pem", &server.cert.cert_pem);
    let out = openssl([
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        ca_pem.to_str().unwrap(),
        server_pem.to_str().unwrap(),
    ]);
    assert!(out.trim().ends_with(": OK"), "{out}");
    assert_eq!(
        sans(&server.cert.cert_der),
        vec![
            "DNS:controller.example.com".to_string(),
            "IP:[127, 0, 0, 1]".to_string()
        ]
    );
    // The server certificate is not a client identity: it cannot pose as an agent.
    assert!(matches!(
        PeerIdentity::from_cert_der(&server.cert.cert_der),
        Err(CertsError::NoIdentity { .. })
    ));
    // A server cert needs at least one name.
    assert!(ca.issue_server_cert(&[], Duration::from_secs(60)).is_err());
}

#[test]
fn world_readable_ca_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    drop(ControlPlaneCa::load_or_create(&dir).unwrap());
    let key = dir.join(CA_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ControlPlaneCa::load_or_create(&dir).unwrap_err();
    assert!(
        matches!(&err, CertsError::InsecurePermissions { path, mode: 0o644 } if *path == key),
        "{err}"
    );
}

#[test]
fn half_a_ca_is_an_error_not_a_silent_new_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    drop(ControlPlaneCa::load_or_create(&dir).unwrap());
    let key_before = std::fs::read(dir.join(CA_KEY_FILE)).unwrap();
    std::fs::remove_file(dir.join(CA_CERT_FILE)).unwrap();
    let err = ControlPlaneCa::load_or_create(&dir).unwrap_err();
    assert!(matches!(err, CertsError::IncompletePair { .. }), "{err}");
    assert_eq!(std::fs::read(dir.join(CA_KEY_FILE)).unwrap(), key_before);
    assert!(!dir.join(CA_CERT_FILE).exists());
}

#[test]
fn csr_policy_ignores_requested_sans_ca_flag_and_usages() {
    let (_tmp, ca) = new_ca();
    // A hostile CSR: asks to be an unconstrained CA, a server, an operator and another agent.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["controller.evil".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "root");
    params.subject_alt_names.push(SanType::URI(
        "spiffe://apimctl/operator/admin".try_into().unwrap(),
    ));
    params.subject_alt_names.push(SanType::URI(
        "spiffe://apimctl/agent/vm-db".try_into().unwrap(),
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::Any,
    ];
    let csr = params.serialize_request(&key).unwrap();

    let issued = ca
        .sign_agent_csr(csr.der(), "vm-gw-1", DEFAULT_AGENT_CERT_TTL)
        .unwrap();

    let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
    assert_eq!(
        sans(&issued.cert_der),
        vec!["URI:spiffe://apimctl/agent/vm-gw-1".to_string()]
    );
    assert!(!cert.is_ca());
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("explicit basicConstraints");
    assert!(!bc.value.ca);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any && eku.other.is_empty());
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cn, vec!["vm-gw-1".to_string()]);
    // Only the public key was taken from the CSR.
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    assert_eq!(
        PeerIdentity::from_cert_der(&issued.cert_der).unwrap(),
        PeerIdentity::Agent {
            machine: "vm-gw-1".into()
        }
    );
}

#[test]
fn csr_with_broken_signature_or_garbage_is_rejected() {
    let (_tmp, ca) = new_ca();
    let key = AgentKey::generate().unwrap();
    let mut csr = key.csr_der("vm-1").unwrap();
    let last = csr.len() - 1;
    csr[last] ^= 0x01; // flip a bit of the signature
    let err = ca
        .sign_agent_csr(&csr, "vm-1", DEFAULT_AGENT_CERT_TTL)
        .unwrap_err();
    assert!(matches!(err, CertsError::CsrRejected { .. }), "{err}");

    let err = ca
        .sign_agent_csr(b"not a csr", "vm-1", DEFAULT_AGENT_CERT_TTL)
        .unwrap_err();
    assert!(matches!(err, CertsError::CsrRejected { .. }), "{err}");
}

#[test]
fn agent_key_persists_private_and_gets_a_24h_cert_for_its_own_key() {
    let (tmp, ca) = new_ca();
    let path = tmp.path().join("agent").join("agent-key.pem");
    let key = AgentKey::load_or_generate(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let reloaded = AgentKey::load_or_generate(&path).unwrap();
    assert_eq!(reloaded.public_key_der(), key.public_key_der());
    assert!(!format!("{key:?}").contains("PRIVATE"));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        AgentKey::load(&path),
        Err(CertsError::InsecurePermissions { .. })
    ));

    let issued = ca
        .sign_agent_csr(
            &key.csr_der("vm-tm-1").unwrap(),
            "vm-tm-1",
            DEFAULT_AGENT_CERT_TTL,
        )
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
    assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());
    // 24 h, plus the 5 min back-dating for clock skew.
    assert_eq!(
        issued.not_after - issued.not_before,
        time::Duration::hours(24) + time::Duration::minutes(5)
    );
    let now = OffsetDateTime::now_utc();
    assert!(issued.not_before <= now && now < issued.not_after);

    let peer = PeerCert::from_der(&issued.cert_der).unwrap();
    assert_eq!(peer.serial, issued.serial);
    assert_eq!(peer.not_after, issued.not_after);
    // Serial as openssl prints it.
    let pem = write(tmp.path(), "agent.pem", &issued.cert_pem);
    let s = openssl(["x509", "-noout", "-serial", "-in", pem.to_str().unwrap()]);
    assert_eq!(
        s.trim().trim_start_matches("serial=").to_lowercase(),
        peer.serial
    );
}

#[test]
fn renewals_of_the_same_key_get_distinct_serials() {
    let (_tmp, ca) = new_ca();
    let key = AgentKey::generate().unwrap();
    let csr = key.csr_der("vm-1").unwrap();
    let a = ca
        .sign_agent_csr(&csr, "vm-1", DEFAULT_AGENT_CERT_TTL)
        .unwrap();
    let b = ca
        .sign_agent_csr(&csr, "vm-1", DEFAULT_AGENT_CERT_TTL)
        .unwrap();
    assert_ne!(a.serial, b.serial);
    assert_eq!(a.serial.len(), 32, "128-bit serial: {}", a.serial);
}

#[test]
fn operator_cert_carries_operator_identity_and_is_written_0600() {
    let (tmp, ca) = new_ca();
    let op = ca
        .issue_operator_cert("alice", Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        PeerIdentity::from_cert_der(&op.cert.cert_der).unwrap(),
        PeerIdentity::Operator {
            name: "alice".into()
        }
    );
    assert!(!format!("{op:?}").contains("PRIVATE KEY"));
    let cert_path = tmp.path().join("alice.crt");
    let key_path = tmp.path().join("alice.key");
    op.write_pem_files(&cert_path, &key_path).unwrap();
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&cert_path), 0o600);
    // The key file really is the certificate's key.
    let pub_from_key = openssl(["pkey", "-pubout", "-in", key_path.to_str().unwrap()]);
    let pub_from_cert = openssl([
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        cert_path.to_str().unwrap(),
    ]);
    assert_eq!(pub_from_key, pub_from_cert);
}

#[test]
fn identity_parsing_is_strict() {
    assert_eq!(
        PeerIdentity::from_uri("spiffe://apimctl/agent/vm-gw-1").unwrap(),
        PeerIdentity::Agent {
            machine: "vm-gw-1".into()
        }
    );
    assert_eq!(
        PeerIdentity::from_uri("spiffe://apimctl/operator/bob")
            .unwrap()
            .uri(),
        "spiffe://apimctl/operator/bob"
    );
    for bad in [
        "spiffe://other/agent/vm-1",
        "spiffe://apimctl/agent/",
        "spiffe://apimctl/agent/../vm-1",
        "spiffe://apimctl/agent/vm-1/extra",
        "spiffe://apimctl/controller/x",
        "https://apimctl/agent/vm-1",
    ] {
        assert!(PeerIdentity::from_uri(bad).is_err(), "{bad} accepted");
    }
    let json = serde_json::to_string(&PeerIdentity::Agent {
        machine: "vm-1".into(),
    })
    .unwrap();
    assert_eq!(json, r#"{"kind":"agent","machine":"vm-1"}"#);
    let back: PeerIdentity = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back,
        PeerIdentity::Agent {
            machine: "vm-1".into()
        }
    );

    // A certificate with two identities (not one we would issue) is refused.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI("spiffe://apimctl/agent/a".try_into().unwrap()),
        SanType::URI("spiffe://apimctl/agent/b".try_into().unwrap()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    let err = PeerIdentity::from_cert_der(cert.der()).unwrap_err();
    assert!(matches!(err, CertsError::NoIdentity { .. }), "{err}");

    // No identity at all.
    params.subject_alt_names = vec![SanType::DnsName("host".try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    assert!(matches!(
        PeerIdentity::from_cert_der(cert.der()),
        Err(CertsError::NoIdentity { .. })
    ));
    assert!(matches!(
        PeerIdentity::from_cert_der(b"junk"),
        Err(CertsError::Parse { .. })
    ));
}

#[test]
fn names_and_ttls_are_validated_before_signing() {
    let (_tmp, ca) = new_ca();
    let csr = AgentKey::generate().unwrap().csr_der("vm-1").unwrap();
    for bad in ["", "a/b", "../x", "-x", "vm 1", "vm\n1"] {
        assert!(
            matches!(
                ca.sign_agent_csr(&csr, bad, DEFAULT_AGENT_CERT_TTL),
                Err(CertsError::InvalidName { .. })
            ),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        ca.sign_agent_csr(&csr, "vm-1", Duration::ZERO),
        Err(CertsError::InvalidValidity { .. })
    ));
    assert!(matches!(
        ca.issue_operator_cert("bob/../admin", Duration::from_secs(60)),
        Err(CertsError::InvalidName { .. })
    ));
}

#[test]
fn renew_at_is_two_thirds_of_the_lifetime() {
    let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let na = nb + time::Duration::hours(24);
    assert_eq!(renew_at(nb, na), nb + time::Duration::hours(16));
    let na = nb + time::Duration::seconds(90);
    assert_eq!(renew_at(nb, na), nb + time::Duration::seconds(60));
    // Broken validity: renew immediately.
    assert_eq!(renew_at(nb, nb), nb);
    assert_eq!(renew_at(nb, nb - time::Duration::hours(1)), nb);

    let (_tmp, ca) = new_ca();
    let key = AgentKey::generate().unwrap();
    let issued = ca
        .sign_agent_csr(
            &key.csr_der("vm-1").unwrap(),
            "vm-1",
            Duration::from_secs(3 * 3600),
        )
        .unwrap();
    let at = issued.renew_at();
    assert!(issued.not_before < at && at < issued.not_after);
    assert_eq!(
        (at - issued.not_before) * 3,
        (issued.not_after - issued.not_before) * 2
    );
}
