//! The agent's stream: the happy path with a real enrollment and automatic renewal, agent A
//! acting as B, revocation of a connected agent, and shutdown.

use std::time::Duration;

use apim_agent::daemon::identity::{self as enroll, EnrollOptions};
use apim_agent::daemon::link::{Control, ControlConfig};
use apim_proto::v1::{
    AgentMessage, ControllerMessage, ListAgentsRequest, MachineSpec, RevokeRequest, StatRequest,
    agent_service_client::AgentServiceClient, artifact_service_client::ArtifactServiceClient,
    controller_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use apim_testkit::controller::{CONNECT_TIMEOUT, Controller as Harness};
use apim_testkit::messages::{hello, report};
use apim_testkit::specs::spec;
use apim_testkit::wait::{PATIENCE, eventually, within};

/// An open `Connect` stream: a sender for agent messages and the controller's messages.
pub(crate) struct Stream {
    pub(crate) to_controller: mpsc::Sender<AgentMessage>,
    pub(crate) from_controller: Streaming<ControllerMessage>,
}

impl Stream {
    pub(crate) async fn open<T>(
        client: &mut AgentServiceClient<T>,
        held: u64,
    ) -> Result<Stream, Status>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<tonic::codegen::StdError>,
        T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    {
        let (tx, rx) = mpsc::channel(8);
        tx.send(hello(held)).await.expect("queue hello");
        let from_controller = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Stream {
            to_controller: tx,
            from_controller,
        })
    }

    async fn next_spec(&mut self) -> MachineSpec {
        let msg = within("a controller message", self.from_controller.message())
            .await
            .expect("stream healthy")
            .expect("stream open");
        match msg.kind {
            Some(controller_message::Kind::DesiredSpec(d)) => d.spec.expect("spec"),
            other => panic!("expected a desired spec, got {other:?}"),
        }
    }

    /// The status that ends the stream.
    pub(crate) async fn end(&mut self) -> Status {
        loop {
            match within("the stream to end", self.from_controller.message()).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => return status,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_connect_receive_spec_renew_and_keep_working() {
    let h = Harness::start_with(|c| c.agent_cert_ttl = Duration::from_secs(6)).await;
    h.state.set_desired_spec(spec("vm-a", 1, &["km-1"]));
    h.state.set_desired_spec(spec("vm-b", 1, &["gw-1"]));
    let token = h.token_for("vm-a", 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("agent");
    enroll::enroll(&EnrollOptions {
        endpoint: h.endpoint.clone(),
        machine: "vm-a".into(),
        token,
        state_dir: state_dir.clone(),
        connect_timeout: CONNECT_TIMEOUT,
    })
    .await
    .expect("enroll");

    let control = Control::open(ControlConfig {
        endpoints: vec![h.endpoint.clone()],
        state_dir: state_dir.clone(),
        connect_timeout: CONNECT_TIMEOUT,
    })
    .expect("control");
    let first = control.identity();
    // Renewal runs from the start, at 2/3 of the 6-second life, whatever the test does.
    let _renewal = control.spawn_renewal();
    let mut agent = AgentServiceClient::new(control.channel());

    // Hello → this machine's spec (never vm-b's), then every new generation.
    let mut stream = Stream::open(&mut agent, 0).await.expect("connect");
    let got = stream.next_spec().await;
    assert_eq!(got, spec("vm-a", 1, &["km-1"]));
    stream
        .to_controller
        .send(report(1, &["km-1"]))
        .await
        .expect("send report");
    eventually("the status report to be recorded", || {
        h.state
            .agent("vm-a")
            .and_then(|a| a.last_status)
            .is_some_and(|r| r.nodes.len() == 1 && r.nodes[0].node == "km-1")
    })
    .await;
    let snapshot = h.state.agent("vm-a").expect("agent");
    assert!(snapshot.connected);
    assert_eq!(snapshot.facts.expect("facts").hostname, "test-host");
    h.state.set_desired_spec(spec("vm-a", 2, &["km-1", "km-2"]));
    assert_eq!(stream.next_spec().await.generation, 2);

    // The renewal, observed in the controller's state.
    eventually("the controller to issue a renewed certificate", || {
        h.state
            .agent("vm-a")
            .and_then(|a| a.cert_serial)
            .is_some_and(|s| s != first.info().serial)
    })
    .await;
    eventually("the agent to install it", || {
        control.identity().info().serial != first.info().serial
    })
    .await;
    let renewed = control.identity();
    assert!(renewed.info().not_after > first.info().not_after);
    assert_eq!(
        enroll::AgentIdentity::load(&state_dir)
            .expect("persisted")
            .info()
            .serial,
        renewed.info().serial
    );

    // The stream opened with the first certificate ends when that certificate expires.
    let status = stream.end().await;
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    assert!(time::OffsetDateTime::now_utc() >= first.info().not_after);

    // The same clients keep working: every call now goes out with a renewed certificate
    // (the first one is expired, so it would be refused).
    let mut artifacts = ArtifactServiceClient::new(control.channel());
    let status = artifacts
        .stat(StatRequest {
            sha256: "b".repeat(64),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(
        status.code(),
        Code::NotFound,
        "authorized: {}",
        status.message()
    );
    let mut again = Stream::open(&mut agent, 1).await.expect("reconnect");
    assert_eq!(again.next_spec().await.generation, 2);

    // Shutdown closes the open stream with UNAVAILABLE and serve returns.
    let state = std::sync::Arc::clone(&h.state);
    let server = tokio::spawn(h.shutdown());
    let status = again.end().await;
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    within("serve to return", server)
        .await
        .expect("join")
        .expect("clean shutdown");
    eventually("the session to be closed", || {
        state.agent("vm-a").is_some_and(|a| !a.connected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_a_cannot_act_as_machine_b() {
    let h = Harness::start().await;
    h.state.set_desired_spec(spec("vm-a", 3, &["km-1"]));
    h.state.set_desired_spec(spec("vm-b", 5, &["gw-1"]));
    let a = h.agent_creds("vm-a");
    let mut agent = AgentServiceClient::new(h.channel(Some(&a)).await);

    // A receives A's spec, never B's.
    let mut stream = Stream::open(&mut agent, 0).await.expect("connect");
    assert_eq!(stream.next_spec().await, spec("vm-a", 3, &["km-1"]));

    // A reporting B's node is cut off with PERMISSION_DENIED, and nothing is recorded.
    stream
        .to_controller
        .send(report(5, &["gw-1"]))
        .await
        .expect("send");
    let status = stream.end().await;
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert!(status.message().contains("vm-b"), "{}", status.message());
    assert!(h.state.agent("vm-b").is_none());
    assert!(h.state.agent("vm-a").and_then(|r| r.last_status).is_none());

    // Holding a spec already: no resend on Hello.
    h.state.set_desired_spec(spec("vm-a", 4, &["km-1"]));
    let mut stream = Stream::open(&mut agent, 4).await.expect("reconnect");
    stream
        .to_controller
        .send(report(4, &["km-1"]))
        .await
        .expect("send");
    eventually("A's own report to be recorded", || {
        h.state
            .agent("vm-a")
            .and_then(|r| r.last_status)
            .is_some_and(|r| r.generation == 4)
    })
    .await;
    h.state.set_desired_spec(spec("vm-a", 6, &["km-1"]));
    assert_eq!(
        stream.next_spec().await.generation,
        6,
        "only the newer generation is sent"
    );
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_connected_agent_ends_its_stream_and_every_later_call() {
    let h = Harness::start().await;
    h.state.set_desired_spec(spec("vm-a", 1, &["km-1"]));
    let token = h.token_for("vm-a", 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControlConfig {
        endpoints: vec![h.endpoint.clone()],
        state_dir: dir.path().join("agent"),
        connect_timeout: CONNECT_TIMEOUT,
    };
    let identity = enroll::enroll(&EnrollOptions {
        endpoint: h.endpoint.clone(),
        machine: "vm-a".into(),
        token,
        state_dir: config.state_dir.clone(),
        connect_timeout: CONNECT_TIMEOUT,
    })
    .await
    .expect("enroll");
    let control = Control::with_identity(config.clone(), identity).expect("control");
    let mut agent = AgentServiceClient::new(control.channel());
    let mut stream = Stream::open(&mut agent, 0).await.expect("connect");
    stream.next_spec().await;
    eventually("the agent to show as connected", || {
        h.state.agent("vm-a").is_some_and(|a| a.connected)
    })
    .await;

    let mut operator = h.operator().await;
    let revoked = operator
        .revoke(RevokeRequest {
            machine: "vm-a".into(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.disconnected);
    let status = stream.end().await;
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );

    let status = ArtifactServiceClient::new(control.channel())
        .stat(StatRequest {
            sha256: "c".repeat(64),
        })
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = control
        .renew()
        .await
        .expect_err("a revoked agent cannot renew");
    assert!(
        matches!(
            status,
            enroll::EnrollError::Refused {
                code: Code::PermissionDenied,
                ..
            }
        ),
        "{status:?}"
    );
    let listed = operator
        .list_agents(ListAgentsRequest {})
        .await
        .expect("list")
        .into_inner();
    let entry = listed
        .agents
        .iter()
        .find(|a| a.machine == "vm-a")
        .expect("listed");
    assert!(entry.revoked && !entry.connected);

    // Re-enrolling with a new token works; the old certificate stays dead.
    let token = h.token_for("vm-a", 0).await;
    let fresh = enroll::enroll(&EnrollOptions {
        endpoint: h.endpoint.clone(),
        machine: "vm-a".into(),
        token,
        state_dir: dir.path().join("agent2"),
        connect_timeout: CONNECT_TIMEOUT,
    })
    .await
    .expect("re-enroll");
    let control2 = Control::with_identity(
        ControlConfig {
            state_dir: dir.path().join("agent2"),
            ..config
        },
        fresh,
    )
    .expect("control");
    let mut stream = Stream::open(&mut AgentServiceClient::new(control2.channel()), 0)
        .await
        .expect("connect again");
    stream.next_spec().await;
    let status = ArtifactServiceClient::new(control.channel())
        .stat(StatRequest {
            sha256: "c".repeat(64),
        })
        .await
        .expect_err("old certificate");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Revoking an unknown machine is NOT_FOUND (typo guard).
    let status = operator
        .revoke(RevokeRequest {
            machine: "vm-nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_must_start_with_hello_and_a_newer_stream_replaces_an_older_one() {
    let h = Harness::start().await;
    h.state.set_desired_spec(spec("vm-a", 1, &["km-1"]));
    let a = h.agent_creds("vm-a");
    let mut agent = AgentServiceClient::new(h.channel(Some(&a)).await);

    let (tx, rx) = mpsc::channel(1);
    tx.send(report(1, &["km-1"])).await.expect("queue");
    let mut inbound = agent
        .connect(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let status = within("the refusal", inbound.message())
        .await
        .expect_err("no Hello first");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(h.state.agent("vm-a").and_then(|r| r.last_status).is_none());

    let mut older = Stream::open(&mut agent, 0).await.expect("first");
    older.next_spec().await;
    let mut newer = Stream::open(&mut agent, 0).await.expect("second");
    newer.next_spec().await;
    // The older stream is closed cleanly at once; the newer one is served.
    let ended = within("the older stream to close", older.from_controller.message()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    h.state.set_desired_spec(spec("vm-a", 2, &["km-1"]));
    assert_eq!(newer.next_spec().await.generation, 2);
    assert!(h.state.agent("vm-a").is_some_and(|r| r.connected));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reports_unknown_nodes_and_unissued_command_results_are_not_taken() {
    let h = Harness::start().await;
    h.state.set_desired_spec(spec("vm-a", 5, &["km-1"]));
    let a = h.agent_creds("vm-a");
    let mut agent = AgentServiceClient::new(h.channel(Some(&a)).await);
    let stream = Stream::open(&mut agent, 5).await.expect("connect");
    let last = || h.state.agent("vm-a").and_then(|r| r.last_status);
    let seen = || h.state.agent("vm-a").and_then(|r| r.last_seen);

    // A node nobody's spec names is dropped; the machine's own node is kept.
    stream
        .to_controller
        .send(report(5, &["km-1", "ghost-9"]))
        .await
        .expect("send");
    eventually("the report to be recorded", || {
        last().is_some_and(|r| r.generation == 5)
    })
    .await;
    let nodes: Vec<String> = last()
        .expect("report")
        .nodes
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, ["km-1"]);

    // A report for an older generation does not replace the current one (it is heard: the
    // agent's last_seen moves).
    let mut old = report(3, &["km-1"]);
    if let Some(apim_proto::v1::agent_message::Kind::Status(s)) = &mut old.kind {
        s.nodes[0].step = "forged: vm-km-1 km-1 failed".into();
    }
    let before = seen();
    stream.to_controller.send(old).await.expect("send");
    eventually("the stale report to be heard", || seen() != before).await;
    let r = last().expect("report");
    assert_eq!(r.generation, 5, "a stale report was recorded: {r:?}");
    assert!(r.nodes.iter().all(|n| !n.step.contains("forged")), "{r:?}");
    // A result for a command never issued is not taken (and ends nothing).
    stream
        .to_controller
        .send(AgentMessage {
            kind: Some(apim_proto::v1::agent_message::Kind::CommandResult(
                apim_proto::v1::CommandResult {
                    command_id: "never-issued".into(),
                    ok: true,
                    message: "done\nFAKE LOG LINE".into(),
                },
            )),
        })
        .await
        .expect("send");
    // Then a genuine newer report: once it is in, the two before it were handled.
    stream
        .to_controller
        .send(report(6, &["km-1"]))
        .await
        .expect("send");
    eventually("the newer report", || {
        last().is_some_and(|r| r.generation == 6)
    })
    .await;
    let r = last().expect("report");
    assert!(
        r.nodes.iter().all(|n| !n.step.contains("forged")),
        "a stale report was recorded: {r:?}"
    );
    assert!(!h.state.command_answered("vm-a", "never-issued"));
    h.state.command_issued("vm-a", "c-1");
    assert!(h.state.command_answered("vm-a", "c-1"));
    assert!(
        !h.state.command_answered("vm-a", "c-1"),
        "answered once only"
    );
    h.shutdown().await.expect("clean shutdown");
}

/// The serial of the certificate the controller presents to a new handshake now.
async fn served_serial(h: &Harness) -> String {
    let config = apim_certs::tls::insecure_local_probe_config();
    let tcp = tokio::net::TcpStream::connect(&h.endpoint.address)
        .await
        .expect("tcp");
    let name = rustls_pki_types::ServerName::try_from(h.endpoint.server_name.clone())
        .expect("server name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("chain")[0].clone();
    apim_certs::PeerCert::from_der(&leaf)
        .map_or_else(|_| apim_certs::sha256_fingerprint(&leaf), |p| p.serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_is_renewed_under_a_connected_agent_and_a_watching_operator() {
    let ttl = Duration::from_secs(6);
    let h = Harness::start_with(|c| c.server_cert_ttl = ttl).await;
    let started = tokio::time::Instant::now();
    let first = served_serial(&h).await;

    // An agent on its stream, an operator watching (the machine in the cluster's baseline, so
    // status shows it).
    h.state.set_desired_spec(spec("vm-a", 1, &["km-1"]));
    h.state
        .store()
        .write(|tx| tx.set_baseline(&[spec("vm-a", 1, &["km-1"])]))
        .expect("baseline");
    let a = h.agent_creds("vm-a");
    let mut agent = AgentServiceClient::new(h.channel(Some(&a)).await);
    let mut stream = Stream::open(&mut agent, 0).await.expect("connect");
    assert_eq!(stream.next_spec().await.generation, 1);
    let mut op = h.operator().await;
    let mut watch = op
        .watch(apim_proto::v1::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    within("the first status", watch.message())
        .await
        .expect("watch healthy")
        .expect("a status");

    // New handshakes get a new certificate once 2/3 of the first one's life has passed; the
    // first one then expires while the stream and the watch stay open.
    let mut renewed = first.clone();
    while renewed == first {
        assert!(started.elapsed() < PATIENCE, "never renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        renewed = served_serial(&h).await;
    }
    tokio::time::sleep_until(started + ttl + Duration::from_secs(1)).await;

    // The agent's stream still carries reports; the watch sees them, with no error.
    stream
        .to_controller
        .send(report(1, &["km-1"]))
        .await
        .expect("send");
    let seen = within("a watched change", async {
        loop {
            let s = watch.message().await.expect("watch healthy").expect("open");
            let reported = s
                .machines
                .iter()
                .flat_map(|m| &m.nodes)
                .any(|n| n.node == "km-1" && n.generation == 1 && s.machines[0].reachable);
            if reported {
                return s;
            }
        }
    })
    .await;
    assert_eq!(seen.machines.len(), 1);
    // A new connection made after the first certificate expired works: the renewed one serves.
    let fresh = h
        .operator()
        .await
        .status(apim_proto::v1::StatusRequest {})
        .await;
    assert!(fresh.is_ok(), "{fresh:?}");
    assert_ne!(served_serial(&h).await, first);
    h.shutdown().await.expect("clean shutdown");
}
