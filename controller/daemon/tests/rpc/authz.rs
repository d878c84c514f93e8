//! Every RPC of the four services, called with every wrong credential, is refused with the
//! right code before any handler runs (peers.md: "a negative test for every RPC").

use apim_certs::AgentKey;
use apim_controller::server::Rpc;
use apim_proto::v1::{
    AbortRolloutRequest, ApplyRequest, CreateTokenRequest, EnrollRequest, FetchRequest,
    ListAgentsRequest, PlanRequest, RenewRequest, RevokeRequest, StatRequest, StatusRequest,
    UploadChunk, UploadHeader, WatchRequest, agent_service_client::AgentServiceClient,
    artifact_service_client::ArtifactServiceClient, enrollment_client::EnrollmentClient,
    operator_service_client::OperatorServiceClient,
};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use apim_testkit::ca::{Creds, mint_with_rcgen};
use apim_testkit::controller::Controller as Harness;
use apim_testkit::messages::hello;
use apim_testkit::wait::{eventually, within};

/// A syntactically valid token that the controller never minted.
const BOGUS_TOKEN: &str = "apimctl1.0011223344556677.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.0000000000000000000000000000000000000000000000000000000000000000";

/// Calls `rpc` once with a plausible request and returns the outcome of the first response.
async fn call(rpc: Rpc, ch: Channel) -> Result<(), Status> {
    let digest = "a".repeat(64);
    match rpc {
        Rpc::Enroll => {
            let csr_der = AgentKey::generate()
                .expect("key")
                .csr_der("vm-a")
                .expect("csr");
            EnrollmentClient::new(ch)
                .enroll(EnrollRequest {
                    token: BOGUS_TOKEN.into(),
                    machine: "vm-a".into(),
                    csr_der,
                })
                .await
                .map(drop)
        }
        Rpc::Renew => EnrollmentClient::new(ch)
            .renew(RenewRequest { csr_der: vec![] })
            .await
            .map(drop),
        Rpc::Recover => EnrollmentClient::new(ch)
            .recover(RenewRequest { csr_der: vec![] })
            .await
            .map(drop),
        Rpc::Connect => {
            let mut inbound = AgentServiceClient::new(ch)
                .connect(tokio_stream::iter(vec![hello(0)]))
                .await?
                .into_inner();
            inbound.message().await.map(drop)
        }
        Rpc::Fetch => {
            let mut chunks = ArtifactServiceClient::new(ch)
                .fetch(FetchRequest {
                    sha256: digest,
                    offset: 0,
                    limit: 0,
                })
                .await?
                .into_inner();
            chunks.message().await.map(drop)
        }
        Rpc::Stat => ArtifactServiceClient::new(ch)
            .stat(StatRequest { sha256: digest })
            .await
            .map(drop),
        Rpc::Upload => ArtifactServiceClient::new(ch)
            .upload(tokio_stream::iter(vec![UploadChunk {
                header: Some(UploadHeader {
                    sha256: digest,
                    size: 1,
                    name: "x.zip".into(),
                }),
                data: vec![b'x'],
            }]))
            .await
            .map(drop),
        Rpc::Apply => OperatorServiceClient::new(ch)
            .apply(ApplyRequest::default())
            .await
            .map(drop),
        Rpc::Plan => OperatorServiceClient::new(ch)
            .plan(PlanRequest::default())
            .await
            .map(drop),
        Rpc::Status => OperatorServiceClient::new(ch)
            .status(StatusRequest {})
            .await
            .map(drop),
        Rpc::Watch => {
            let mut updates = OperatorServiceClient::new(ch)
                .watch(WatchRequest {})
                .await?
                .into_inner();
            updates.message().await.map(drop)
        }
        Rpc::CreateToken => OperatorServiceClient::new(ch)
            .create_token(CreateTokenRequest {
                machine: "vm-z".into(),
                ttl_s: 0,
            })
            .await
            .map(drop),
        Rpc::ListAgents => OperatorServiceClient::new(ch)
            .list_agents(ListAgentsRequest {})
            .await
            .map(drop),
        Rpc::Revoke => OperatorServiceClient::new(ch)
            .revoke(RevokeRequest {
                machine: "vm-a".into(),
            })
            .await
            .map(drop),
        Rpc::AbortRollout => OperatorServiceClient::new(ch)
            .abort_rollout(AbortRolloutRequest::default())
            .await
            .map(drop),
        Rpc::History => OperatorServiceClient::new(ch)
            .history(apim_proto::v1::HistoryRequest::default())
            .await
            .map(drop),
        Rpc::Rollback => OperatorServiceClient::new(ch)
            .rollback(apim_proto::v1::RollbackRequest::default())
            .await
            .map(drop),
        Rpc::OperateNodes => OperatorServiceClient::new(ch)
            .operate_nodes(apim_proto::v1::OperateNodesRequest::default())
            .await
            .map(drop),
        Rpc::Diff => OperatorServiceClient::new(ch)
            .diff(apim_proto::v1::DiffRequest::default())
            .await
            .map(drop),
        Rpc::ListArtifacts => OperatorServiceClient::new(ch)
            .list_artifacts(apim_proto::v1::ListArtifactsRequest::default())
            .await
            .map(drop),
        Rpc::PruneArtifacts => OperatorServiceClient::new(ch)
            .prune_artifacts(apim_proto::v1::PruneArtifactsRequest {
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ShowNode => OperatorServiceClient::new(ch)
            .show_node(apim_proto::v1::ShowNodeRequest {
                node: "km-1".into(),
            })
            .await
            .map(drop),
        Rpc::Logs => {
            let mut chunks = OperatorServiceClient::new(ch)
                .logs(apim_proto::v1::LogsRequest {
                    node: "km-1".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            chunks.message().await.map(drop)
        }
        Rpc::Destroy => {
            let mut progress = OperatorServiceClient::new(ch)
                .destroy(apim_proto::v1::DestroyRequest::default())
                .await?
                .into_inner();
            progress.message().await.map(drop)
        }
        Rpc::HealthCheck => HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop),
        Rpc::HealthWatch => {
            let mut updates = HealthClient::new(ch)
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner();
            updates.message().await.map(drop)
        }
        Rpc::CheckDrift => OperatorServiceClient::new(ch)
            .check_drift(apim_proto::v1::CheckDriftRequest::default())
            .await
            .map(drop),
        Rpc::ListControllers => OperatorServiceClient::new(ch)
            .list_controllers(apim_proto::v1::ListControllersRequest {})
            .await
            .map(drop),
    }
}

/// The credentials of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    NoCert,
    ForeignCa,
    Expired,
    RevokedAgent,
    /// A valid agent certificate (only rows for operator RPCs).
    Agent,
    /// A valid operator certificate (only rows for agent RPCs).
    Operator,
}

/// The expected refusal (code, ErrorDetail code), or `None` when the row is not in the table
/// (the call would be allowed: those paths have their own tests).
fn expected(rpc: Rpc, cred: Cred) -> Option<(Code, &'static str)> {
    use apim_controller::server::Access;
    let access = rpc.access();
    match cred {
        Cred::NoCert if rpc == Rpc::Enroll => Some((Code::Unauthenticated, "enroll.token_refused")),
        // Health probes need no certificate (they only learn SERVING/NOT_SERVING).
        Cred::NoCert if access == Access::Probe => None,
        Cred::NoCert => Some((Code::Unauthenticated, "auth.no_client_certificate")),
        // Within the recovery window an expired certificate reaches Recover, which takes only
        // the newest certificate the machine was issued (this one was minted aside).
        Cred::Expired if rpc == Rpc::Recover => {
            Some((Code::PermissionDenied, "auth.not_newest_certificate"))
        }
        Cred::ForeignCa | Cred::Expired => {
            Some((Code::Unauthenticated, "auth.invalid_client_certificate"))
        }
        Cred::RevokedAgent => Some((Code::PermissionDenied, "auth.revoked")),
        Cred::Agent if access == Access::Operator => {
            Some((Code::PermissionDenied, "auth.wrong_role"))
        }
        Cred::Operator if matches!(access, Access::Agent | Access::RecoveringAgent) => {
            Some((Code::PermissionDenied, "auth.wrong_role"))
        }
        Cred::Agent | Cred::Operator => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_every_wrong_credential() {
    let h = Harness::start().await;

    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let foreign_ca =
        apim_certs::ControlPlaneCa::load_or_create(foreign_dir.path()).expect("foreign CA");
    drop(foreign_ca);
    let foreign = mint_with_rcgen(foreign_dir.path(), "vm-a", |_| {});
    let expired = h.expired_agent_creds("vm-a");
    let revoked = h.agent_creds("vm-r");
    h.state.revoke_machine("vm-r").expect("revoke vm-r");
    let agent = h.agent_creds("vm-a");
    let operator = h.operator_creds("alice");
    let agents_before = h.state.agents();

    let creds: Vec<(Cred, Option<&Creds>)> = vec![
        (Cred::NoCert, None),
        (Cred::ForeignCa, Some(&foreign)),
        (Cred::Expired, Some(&expired)),
        (Cred::RevokedAgent, Some(&revoked)),
        (Cred::Agent, Some(&agent)),
        (Cred::Operator, Some(&operator)),
    ];
    let mut rows = 0;
    for (cred, c) in creds {
        let channel = h.channel(c).await;
        for rpc in Rpc::ALL {
            let Some((code, detail)) = expected(rpc, cred) else {
                continue;
            };
            rows += 1;
            let outcome = within(&format!("{rpc} with {cred:?}"), call(rpc, channel.clone())).await;
            let status = outcome.expect_err(&format!("{rpc} with {cred:?} must be refused"));
            assert_eq!(
                status.code(),
                code,
                "{rpc} with {cred:?}: {}",
                status.message()
            );
            let details = apim_proto::error_details(&status)
                .unwrap_or_else(|| panic!("{rpc} with {cred:?}: no ErrorDetails"));
            assert_eq!(details.errors[0].code, detail, "{rpc} with {cred:?}");
            if cred == Cred::Expired && rpc != Rpc::Recover {
                assert!(
                    status.message().to_lowercase().contains("expired"),
                    "{rpc}: {}",
                    status.message()
                );
            }
        }
    }
    // 26 RPCs × 4 credentials refused everywhere, the 2 health probes × 3 (a presented
    // certificate must be valid; none at all is fine), 20 operator RPCs for the agent and 3
    // agent RPCs for the operator (Stat and Renew are open to both: agents before a fetch,
    // apply before an upload; each renews its own certificate).
    assert_eq!(rows, 26 * 4 + 2 * 3 + 20 + 3);

    // Nothing was done on the refused calls' behalf.
    assert_eq!(h.state.agents(), agents_before, "agent records changed");
    let driver = apim_plan::digest(&apim_testkit::plans::mysql_driver_jar());
    let stored: Vec<_> = std::fs::read_dir(h.state.artifacts().dir())
        .expect("artifact dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != driver)
        .collect();
    assert!(stored.is_empty(), "an artifact was stored: {stored:?}");
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_on_an_open_connection_stops_working() {
    // The chain is checked per call, not only at the handshake: a connection opened while the
    // certificate was valid cannot be used after its not_after.
    let h = Harness::start().await;
    let soon = mint_with_rcgen(&h.ca_dir(), "vm-a", |p| {
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::seconds(5);
    });
    let channel = h.channel(Some(&soon)).await;
    let code = call(Rpc::Stat, channel.clone())
        .await
        .expect_err("unknown digest")
        .code();
    assert_eq!(code, Code::NotFound, "the valid certificate is accepted");
    let der = apim_certs::cert_pem_to_der(&soon.cert_pem).expect("pem");
    let not_after = apim_certs::PeerCert::from_der(&der)
        .expect("cert")
        .not_after;
    // X.509 times have whole seconds and WebPKI compares whole seconds: the certificate is
    // valid through the second of its not_after.
    eventually("the certificate to expire", || {
        time::OffsetDateTime::now_utc() >= not_after + time::Duration::seconds(1)
    })
    .await;
    let status = call(Rpc::Stat, channel).await.expect_err("expired");
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_refused() {
    let h = Harness::start().await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(
            h.state.ca().cert_der().to_vec(),
        ))
        .expect("root");
    let tls12 = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("tls12")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&h.endpoint.address)
        .await
        .expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let outcome = within(
        "TLS 1.2 handshake",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12)).connect(name, tcp),
    )
    .await;
    assert!(outcome.is_err(), "a TLS 1.2 handshake succeeded");
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_and_ca_certificates_and_a_huge_token_are_refused() {
    let h = Harness::start().await;
    // A self-signed certificate shaped like an agent's.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vm-a");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://apimctl/agent/vm-a".try_into().expect("ia5"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let self_signed = Creds {
        cert_pem: params.self_signed(&key).expect("self-signed").pem(),
        key_pem: key.serialize_pem(),
    };
    // The control-plane CA's own certificate and key presented as a client certificate.
    let ca_dir = h.ca_dir();
    let ca_as_client = Creds {
        cert_pem: std::fs::read_to_string(ca_dir.join(apim_certs::CA_CERT_FILE)).expect("ca"),
        key_pem: std::fs::read_to_string(ca_dir.join(apim_certs::CA_KEY_FILE)).expect("key"),
    };
    for (what, creds) in [("self-signed", &self_signed), ("the CA", &ca_as_client)] {
        let status = call(Rpc::Status, h.channel(Some(creds)).await)
            .await
            .expect_err(what);
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{what}: {}",
            status.message()
        );
    }
    // A 1 MB join token: refused as malformed, quickly, without echoing it.
    let token = format!("apimctl1.{}", "A".repeat(1 << 20));
    let csr_der = AgentKey::generate()
        .expect("key")
        .csr_der("vm-a")
        .expect("csr");
    let status = within(
        "a huge token",
        EnrollmentClient::new(h.channel(None).await).enroll(EnrollRequest {
            token,
            machine: "vm-a".into(),
            csr_der,
        }),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(
            status.code(),
            Code::Unauthenticated | Code::InvalidArgument | Code::ResourceExhausted
        ),
        "{status:?}"
    );
    assert!(status.message().len() < 1000, "the token is not echoed");
    h.shutdown().await.expect("clean shutdown");
}
