//! Join tokens (reuse, expiry, wrong machine, a man in the middle) and the agent's real
//! enrollment code against the real server.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apim_agent::daemon::identity::{
    self as enroll, CA_FILE, EnrollError, EnrollOptions, IDENTITY_FILE,
};
use apim_certs::tls::ControllerEndpoint;
use apim_certs::{AgentKey, ControlPlaneCa};
use apim_proto::v1::{CreateTokenRequest, EnrollRequest, RenewRequest};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tonic::Code;

use apim_testkit::controller::{CONNECT_TIMEOUT, Controller as Harness, anonymous_enrollment};
use apim_testkit::wait::{eventually, within};

fn options(h: &Harness, machine: &str, token: &str, dir: &std::path::Path) -> EnrollOptions {
    EnrollOptions {
        endpoint: h.endpoint.clone(),
        machine: machine.into(),
        token: token.into(),
        state_dir: dir.to_path_buf(),
        connect_timeout: CONNECT_TIMEOUT,
    }
}

fn refused_code(result: Result<enroll::AgentIdentity, EnrollError>) -> Code {
    match result {
        Err(EnrollError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_persists_a_private_identity_for_the_tokens_machine() {
    let h = Harness::start().await;
    let token = h.token_for("vm-a", 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let identity = enroll::enroll(&options(&h, "vm-a", &token, &state_dir))
        .await
        .expect("enroll");
    assert_eq!(identity.info().machine, "vm-a");
    assert_eq!(identity.ca_pem(), h.ca_pem());
    for file in [IDENTITY_FILE, CA_FILE] {
        let mode = std::fs::metadata(state_dir.join(file))
            .expect("persisted")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let reloaded = enroll::AgentIdentity::load(&state_dir).expect("reload");
    assert_eq!(reloaded.info().serial, identity.info().serial);
    let record = h.state.agent("vm-a").expect("agent recorded");
    assert_eq!(
        record.cert_serial.as_deref(),
        Some(identity.info().serial.as_str())
    );
    assert!(!record.revoked);
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_single_use_time_limited_and_machine_bound() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Wrong machine: refused, and the token stays usable by the right one.
    let token = h.token_for("vm-a", 0).await;
    let code =
        refused_code(enroll::enroll(&options(&h, "vm-b", &token, &dir.path().join("b"))).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(h.state.agent("vm-b").is_none());
    enroll::enroll(&options(&h, "vm-a", &token, &dir.path().join("a")))
        .await
        .expect("the right machine still enrolls");

    // Reuse: refused.
    let code =
        refused_code(enroll::enroll(&options(&h, "vm-a", &token, &dir.path().join("a2"))).await);
    assert_eq!(code, Code::Unauthenticated);

    // Expiry: a 1-second token, used after its expires_at.
    let created = h
        .operator()
        .await
        .create_token(CreateTokenRequest {
            machine: "vm-c".into(),
            ttl_s: 1,
        })
        .await
        .expect("token")
        .into_inner();
    let expires_at = created.expires_at.expect("expiry").seconds;
    eventually("the token to expire", || {
        time::OffsetDateTime::now_utc().unix_timestamp() > expires_at
    })
    .await;
    let code = refused_code(
        enroll::enroll(&options(&h, "vm-c", &created.token, &dir.path().join("c"))).await,
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(h.state.agent("vm-c").is_none());

    // A token longer than the maximum is refused at creation.
    let status = h
        .operator()
        .await
        .create_token(CreateTokenRequest {
            machine: "vm-d".into(),
            ttl_s: 48 * 3600,
        })
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_naming_another_machine_is_refused_and_does_not_burn_the_token() {
    let h = Harness::start().await;
    let token = h.token_for("vm-a", 0).await;
    let key = AgentKey::generate().expect("key");
    let mut client = anonymous_enrollment(&h).await;
    let status = client
        .enroll(EnrollRequest {
            token: token.clone(),
            machine: "vm-a".into(),
            csr_der: key.csr_der("vm-b").expect("csr"),
        })
        .await
        .expect_err("CSR names vm-b");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    let status = client
        .enroll(EnrollRequest {
            token: token.clone(),
            machine: "vm-a".into(),
            csr_der: b"not a csr".to_vec(),
        })
        .await
        .expect_err("garbage CSR");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    client
        .enroll(EnrollRequest {
            token,
            machine: "vm-a".into(),
            csr_der: key.csr_der("vm-a").expect("csr"),
        })
        .await
        .expect("the token is still good");

    // Renew: agent A's certificate with a CSR naming B is refused; a garbage CSR too.
    let a = h.agent_creds("vm-a");
    let mut renew =
        apim_proto::v1::enrollment_client::EnrollmentClient::new(h.channel(Some(&a)).await);
    let status = renew
        .renew(RenewRequest {
            csr_der: key.csr_der("vm-b").expect("csr"),
        })
        .await
        .expect_err("renewing as vm-b");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    let status = renew
        .renew(RenewRequest {
            csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        })
        .await
        .expect_err("malformed CSR");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    h.shutdown().await.expect("clean shutdown");
}

/// A TLS server that is not our controller: it presents `chain` and counts every byte of
/// application data a client sends after the handshake.
struct Impostor {
    endpoint: ControllerEndpoint,
    handshakes_failed: Arc<AtomicUsize>,
    bytes_received: Arc<AtomicUsize>,
}

async fn impostor(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Impostor {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes_failed = Arc::new(AtomicUsize::new(0));
    let bytes_received = Arc::new(AtomicUsize::new(0));
    let (failed, received) = (Arc::clone(&handshakes_failed), Arc::clone(&bytes_received));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            match acceptor.accept(tcp).await {
                Err(_) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(mut tls) => {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        received.fetch_add(n, Ordering::SeqCst);
                    }
                }
            }
        }
    });
    Impostor {
        endpoint: ControllerEndpoint::parse(&addr.to_string()).expect("endpoint"),
        handshakes_failed,
        bytes_received,
    }
}

fn pem_chain(pems: &[&str]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).expect("pem"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_gets_nothing() {
    let h = Harness::start().await;
    let token = h.token_for("vm-a", 0).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. Another CA altogether: the pin fails.
    let rogue_dir = tempfile::tempdir().expect("tempdir");
    let rogue = ControlPlaneCa::load_or_create(rogue_dir.path()).expect("rogue CA");
    let rogue_server = rogue
        .issue_server_cert(&["127.0.0.1".into()], Duration::from_secs(3600))
        .expect("rogue server cert");
    let mitm = impostor(
        pem_chain(&[&rogue_server.cert.cert_pem, rogue.cert_pem()]),
        PrivateKeyDer::from_pem_slice(rogue_server.key_pem().as_bytes()).expect("key"),
    )
    .await;
    let mut opts = options(&h, "vm-a", &token, &dir.path().join("mitm1"));
    opts.endpoint = mitm.endpoint.clone();
    match enroll::enroll(&opts).await {
        Err(EnrollError::CaPinMismatch { expected, actual }) => {
            assert_eq!(expected, h.state.ca().fingerprint());
            assert_eq!(actual, rogue.fingerprint());
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    eventually("the impostor to see the aborted handshake", || {
        mitm.handshakes_failed.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        mitm.bytes_received.load(Ordering::SeqCst),
        0,
        "the agent sent data"
    );
    assert!(!dir.path().join("mitm1").exists(), "nothing persisted");

    // 2. The real CA certificate copied into the chain, but a leaf the attacker signed: the pin
    //    matches the CA, the leaf does not chain to it.
    let mitm2 = impostor(
        pem_chain(&[&rogue_server.cert.cert_pem, &h.ca_pem()]),
        PrivateKeyDer::from_pem_slice(rogue_server.key_pem().as_bytes()).expect("key"),
    )
    .await;
    let mut opts = options(&h, "vm-a", &token, &dir.path().join("mitm2"));
    opts.endpoint = mitm2.endpoint.clone();
    let err = enroll::enroll(&opts).await.expect_err("forged leaf");
    assert!(matches!(err, EnrollError::Connect { .. }), "{err:?}");
    eventually("the second impostor to see the aborted handshake", || {
        mitm2.handshakes_failed.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        mitm2.bytes_received.load(Ordering::SeqCst),
        0,
        "the agent sent data"
    );

    // The token was never exposed, so the real controller still accepts it.
    within(
        "real enrollment",
        enroll::enroll(&options(&h, "vm-a", &token, &dir.path().join("real"))),
    )
    .await
    .expect("the real controller enrolls");
    h.shutdown().await.expect("clean shutdown");
}

/// An agent certificate for `machine` valid for `ttl`, recorded as issued (the newest).
fn short_lived_agent(
    h: &Harness,
    machine: &str,
    ttl: Duration,
) -> (apim_testkit::ca::Creds, String) {
    let key = AgentKey::generate().expect("agent key");
    let issued = h
        .state
        .ca()
        .sign_agent_csr(&key.csr_der(machine).expect("csr"), machine, ttl)
        .expect("sign");
    h.state.record_issued(machine, &issued, true);
    let serial = issued.serial.clone();
    (
        apim_testkit::ca::Creds {
            cert_pem: issued.cert_pem,
            key_pem: key.key_pem(),
        },
        serial,
    )
}

fn csr(machine: &str) -> (AgentKey, Vec<u8>) {
    let key = AgentKey::generate().expect("key");
    let csr = key.csr_der(machine).expect("csr");
    (key, csr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_agent_recovers_with_its_newest_certificate_within_the_window_only() {
    let h = Harness::start().await;
    let (expired, serial) = short_lived_agent(&h, "vm-a", Duration::from_secs(1));
    let (older, _) = short_lived_agent(&h, "vm-b", Duration::from_secs(1));
    let (_newer, _) = short_lived_agent(&h, "vm-b", Duration::from_secs(3600));
    let (revoked, _) = short_lived_agent(&h, "vm-r", Duration::from_secs(1));
    h.state.revoke_machine("vm-r").expect("revoke");
    let not_after = apim_certs::PeerCert::from_der(
        &apim_certs::cert_pem_to_der(&expired.cert_pem).expect("pem"),
    )
    .expect("cert")
    .not_after;
    eventually("the certificates to expire", || {
        time::OffsetDateTime::now_utc() >= not_after + time::Duration::seconds(1)
    })
    .await;

    // Renew no longer takes it; Recover does, and the new certificate works.
    let mut client =
        apim_proto::v1::enrollment_client::EnrollmentClient::new(h.channel(Some(&expired)).await);
    let (_, request) = csr("vm-a");
    let status = client
        .renew(RenewRequest {
            csr_der: request.clone(),
        })
        .await
        .expect_err("expired");
    assert_eq!(status.code(), Code::Unauthenticated);
    let (key, request) = csr("vm-a");
    let answer = client
        .recover(RenewRequest { csr_der: request })
        .await
        .expect("recovered")
        .into_inner();
    let fresh = apim_testkit::ca::Creds {
        cert_pem: answer.cert_chain_pem,
        key_pem: key.key_pem(),
    };
    let recovered =
        apim_certs::PeerCert::from_der(&apim_certs::cert_pem_to_der(&fresh.cert_pem).expect("pem"))
            .expect("cert");
    assert_ne!(recovered.serial, serial);
    assert!(recovered.not_after > time::OffsetDateTime::now_utc());
    let mut agent = apim_proto::v1::artifact_service_client::ArtifactServiceClient::new(
        h.channel(Some(&fresh)).await,
    );
    let stat = agent
        .stat(apim_proto::v1::StatRequest {
            sha256: "a".repeat(64),
        })
        .await
        .expect_err("no such artifact");
    assert_eq!(
        stat.code(),
        Code::NotFound,
        "the recovered certificate is accepted"
    );

    // The expired certificate cannot recover twice (it is no longer the newest), nor can an
    // older certificate of another machine, nor a revoked machine's.
    for (creds, machine, what) in [
        (&expired, "vm-a", "newest"),
        (&older, "vm-b", "newest"),
        (&revoked, "vm-r", "revoked"),
    ] {
        let mut c =
            apim_proto::v1::enrollment_client::EnrollmentClient::new(h.channel(Some(creds)).await);
        let status = c
            .recover(RenewRequest {
                csr_der: csr(machine).1,
            })
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{}",
            status.message()
        );
        assert!(status.message().contains(what), "{}", status.message());
    }
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_ends_with_the_controllers_window() {
    let h = Harness::start_with(|c| c.agent_recovery_grace = Duration::ZERO).await;
    let (expired, _) = short_lived_agent(&h, "vm-a", Duration::from_secs(1));
    let not_after = apim_certs::PeerCert::from_der(
        &apim_certs::cert_pem_to_der(&expired.cert_pem).expect("pem"),
    )
    .expect("cert")
    .not_after;
    eventually("the certificate to expire", || {
        time::OffsetDateTime::now_utc() >= not_after + time::Duration::seconds(1)
    })
    .await;
    let status =
        apim_proto::v1::enrollment_client::EnrollmentClient::new(h.channel(Some(&expired)).await)
            .recover(RenewRequest {
                csr_der: csr("vm-a").1,
            })
            .await
            .expect_err("past the window");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("recovery window"),
        "{}",
        status.message()
    );
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_renews_its_own_certificate_with_the_current_one() {
    let h = Harness::start().await;
    let alice = h.operator_creds("alice");
    let mut client =
        apim_proto::v1::enrollment_client::EnrollmentClient::new(h.channel(Some(&alice)).await);
    // A CSR naming someone else is refused; one naming alice gets alice a new certificate.
    let operator = |name: &str| apim_certs::PeerIdentity::Operator { name: name.into() };
    let key = AgentKey::generate().expect("key");
    let status = client
        .renew(RenewRequest {
            csr_der: key.csr_der_for(&operator("bob")).expect("csr"),
        })
        .await
        .expect_err("a foreign name");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    let request = key.csr_der_for(&operator("alice")).expect("csr");
    let answer = client
        .renew(RenewRequest { csr_der: request })
        .await
        .expect("renewed")
        .into_inner();
    let renewed = apim_testkit::ca::Creds {
        cert_pem: answer.cert_chain_pem,
        key_pem: key.key_pem(),
    };
    let peer = apim_certs::PeerCert::from_der(
        &apim_certs::cert_pem_to_der(&renewed.cert_pem).expect("pem"),
    )
    .expect("cert");
    assert_eq!(
        peer.identity,
        apim_certs::PeerIdentity::Operator {
            name: "alice".into()
        }
    );
    let mut op = apim_proto::v1::operator_service_client::OperatorServiceClient::new(
        h.channel(Some(&renewed)).await,
    );
    op.status(apim_proto::v1::StatusRequest {})
        .await
        .expect("the renewed certificate works");
    h.shutdown().await.expect("clean shutdown");
}
