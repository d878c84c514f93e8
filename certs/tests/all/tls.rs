//! `apim_certs::tls`: every configuration against the others, handshakes run in memory.

use std::sync::Arc;
use std::time::Duration;

use apim_certs::tls::{self, ClientIdentity};
use apim_certs::{AgentKey, ControlPlaneCa, IssuedKeyPair};
use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use x509_parser::prelude::{FromDer, X509Certificate};

const HOUR: Duration = Duration::from_secs(3600);

fn ca() -> (TempDir, ControlPlaneCa) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ControlPlaneCa::load_or_create(dir.path()).expect("CA");
    (dir, ca)
}

fn server_cert(ca: &ControlPlaneCa) -> IssuedKeyPair {
    ca.issue_server_cert(&["ctl.test".into()], HOUR)
        .expect("server cert")
}

fn agent_identity(ca: &ControlPlaneCa) -> (ClientIdentity, Vec<u8>) {
    let key = AgentKey::generate().expect("key");
    let issued = ca
        .sign_agent_csr(&key.csr_der("vm-a").expect("csr"), "vm-a", HOUR)
        .expect("sign");
    let chain = vec![CertificateDer::from(issued.cert_der.clone())];
    let key = PrivateKeyDer::from_pem_slice(key.key_pem().as_bytes()).expect("key");
    ((chain, key), issued.cert_der)
}

/// Runs a handshake between the two configurations in memory.
fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from("ctl.test").expect("name");
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn client_config_offers_h2_and_needs_a_ca() {
    let (_d, ca) = ca();
    let config = tls::client_config(ca.cert_pem(), None).expect("config");
    assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(tls::client_config("not a pem", None).is_err());
}

#[test]
fn an_enrolled_agent_and_the_controller_agree_on_tls13_and_h2() {
    let (_d, ca) = ca();
    let server = tls::server_config(&ca, &server_cert(&ca)).expect("server config");
    let (identity, agent_der) = agent_identity(&ca);
    let client = tls::client_config(ca.cert_pem(), Some(identity)).expect("client config");
    let (c, s) = handshake(Arc::new(client), server.clone()).expect("handshake");
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
    // The controller presents [leaf, CA] and receives the agent's certificate.
    assert_eq!(c.peer_certificates().map(<[_]>::len), Some(2));
    assert_eq!(
        s.peer_certificates().expect("client cert")[0].as_ref(),
        &agent_der[..]
    );
    // Client certificates are optional at the handshake (an unenrolled agent must reach Enroll).
    let anonymous = tls::client_config(ca.cert_pem(), None).expect("client config");
    let (_, s) = handshake(Arc::new(anonymous), server).expect("anonymous handshake");
    assert!(s.peer_certificates().is_none());
}

#[test]
fn pinning_refuses_a_foreign_ca_with_the_same_subject() {
    let (_d1, ours) = ca();
    let (_d2, foreign) = ca();
    let subject = |der: &[u8]| {
        X509Certificate::from_der(der)
            .expect("parse")
            .1
            .subject()
            .to_string()
    };
    assert_eq!(subject(ours.cert_der()), subject(foreign.cert_der()));
    let server = tls::server_config(&foreign, &server_cert(&foreign)).expect("server config");
    let client = tls::client_config(ours.cert_pem(), None).expect("client config");
    let err = handshake(Arc::new(client), server).expect_err("a foreign CA");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn tls12_is_refused_both_ways() {
    let (_d, ca) = ca();
    let server = tls::server_config(&ca, &server_cert(&ca)).expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .expect("root");
    let old_client = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(handshake(Arc::new(old_client), server).is_err());

    let issued = server_cert(&ca);
    let chain = vec![CertificateDer::from(issued.cert.cert_der.clone())];
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem().as_bytes()).expect("key");
    let old_server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server");
    let client = tls::client_config(ca.cert_pem(), None).expect("client config");
    assert!(handshake(Arc::new(client), Arc::new(old_server)).is_err());
}

#[test]
fn first_contact_trusts_only_the_pinned_ca() {
    let (_d1, ours) = ca();
    let (_d2, rogue) = ca();
    let ours_server = tls::server_config(&ours, &server_cert(&ours)).expect("server");
    let (config, mismatch) = tls::first_contact_config(ours.fingerprint()).expect("config");
    let config = Arc::new(config);
    let (c, _) = handshake(Arc::clone(&config), ours_server).expect("the pinned CA");
    assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(mismatch.take(), None);

    // Another CA altogether: refused, and the caller learns what was presented.
    let rogue_server = tls::server_config(&rogue, &server_cert(&rogue)).expect("server");
    assert!(handshake(Arc::clone(&config), rogue_server).is_err());
    assert_eq!(mismatch.take().as_deref(), Some(rogue.fingerprint()));

    // The real CA copied into the chain with a leaf the attacker signed: the pin matches, the
    // leaf does not chain to it.
    let forged = server_cert(&rogue);
    let chain = vec![
        CertificateDer::from(forged.cert.cert_der.clone()),
        CertificateDer::from(ours.cert_der().to_vec()),
    ];
    let key = PrivateKeyDer::from_pem_slice(forged.key_pem().as_bytes()).expect("key");
    let forged_server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server");
    let err = handshake(config, Arc::new(forged_server)).expect_err("a forged leaf");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
    assert_eq!(mismatch.take(), None, "the pin itself matched");
}

#[test]
fn a_client_certificate_is_judged_per_call_not_at_the_handshake() {
    let (_d1, ours) = ca();
    let (_d2, foreign) = ca();
    let server = tls::server_config(&ours, &server_cert(&ours)).expect("server");
    let (identity, der) = agent_identity(&foreign);
    let client = tls::client_config(ours.cert_pem(), Some(identity)).expect("client");
    handshake(Arc::new(client), server).expect("possession is enough at the handshake");
    let now = rustls_pki_types::UnixTime::now();
    let verifier = tls::ca_client_verifier(ours.cert_der()).expect("verifier");
    let cert = CertificateDer::from(der);
    assert!(verifier.verify_client_cert(&cert, &[], now).is_err());
    let (_, ours_der) = agent_identity(&ours);
    let ours_cert = CertificateDer::from(ours_der);
    verifier
        .verify_client_cert(&ours_cert, &[], now)
        .expect("our own agent");
}

#[test]
fn the_local_probe_accepts_a_self_signed_certificate_and_nothing_else_does() {
    let (_d, ca) = ca();
    let self_signed = rcgen::generate_simple_self_signed(vec!["ctl.test".into()]).expect("cert");
    let chain = vec![self_signed.cert.der().clone()];
    let key = PrivateKeyDer::from_pem_slice(self_signed.signing_key.serialize_pem().as_bytes())
        .expect("key");
    let node = Arc::new(
        rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server"),
    );
    handshake(tls::insecure_local_probe_config(), Arc::clone(&node)).expect("probe");
    let strict = tls::client_config(ca.cert_pem(), None).expect("client");
    assert!(handshake(Arc::new(strict), node).is_err());
}
