//! A real controller on 127.0.0.1:0 over real TLS, and clients holding every kind of
//! credential the tests need.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apim_certs::tls::{self, ControllerEndpoint};
use apim_certs::{AgentKey, CA_CERT_FILE, CA_KEY_FILE, ControlPlaneCa};
use apim_controller::server::{self, ControllerState, ServerConfig};
use apim_proto::v1::{
    HostsEntry, MachineSpec, NodeSpec, agent_message, enrollment_client::EnrollmentClient,
    operator_service_client::OperatorServiceClient,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

#[path = "../common/wait.rs"]
mod wait;
pub use wait::{PATIENCE, eventually, within};

/// Connect timeout for test clients.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A PEM certificate and its PEM key.
#[derive(Clone)]
pub struct Creds {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A running controller.
pub struct Harness {
    pub dir: TempDir,
    pub state: Arc<ControllerState>,
    pub endpoint: ControllerEndpoint,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), server::ServerError>>>,
}

impl Harness {
    /// Starts a controller with default settings.
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Starts a controller after `tweak` adjusted its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ControlPlaneCa::load_or_create(&dir.path().join("ca")).expect("CA");
        let state = Arc::new(
            ControllerState::new(ca, &dir.path().join("artifacts")).expect("controller state"),
        );
        let mut config = ServerConfig::new(vec!["127.0.0.1".into(), "localhost".into()]);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            config,
            Arc::clone(&state),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Harness {
            dir,
            state,
            endpoint: ControllerEndpoint::parse(&addr.to_string()).expect("endpoint"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server task");
        within("server shutdown", task)
            .await
            .expect("server task panicked")
    }

    pub fn ca_pem(&self) -> String {
        self.state.ca().cert_pem().to_owned()
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// A channel presenting `creds` (or nothing), trusting this controller's CA.
    pub async fn channel(&self, creds: Option<&Creds>) -> Channel {
        channel_to(&self.endpoint, &self.ca_pem(), creds).await
    }

    /// An operator certificate issued by this controller's CA.
    pub fn operator_creds(&self, name: &str) -> Creds {
        let issued = self
            .state
            .ca()
            .issue_operator_cert(name, apim_certs::DEFAULT_OPERATOR_CERT_TTL)
            .expect("operator cert");
        Creds {
            cert_pem: issued.cert.cert_pem.clone(),
            key_pem: issued.key_pem().to_owned(),
        }
    }

    /// An agent certificate for `machine` signed by this CA (recorded as enrolled, as if it had
    /// come through `Enroll`).
    pub fn agent_creds(&self, machine: &str) -> Creds {
        let key = AgentKey::generate().expect("agent key");
        let issued = self
            .state
            .ca()
            .sign_agent_csr(
                &key.csr_der(machine).expect("csr"),
                machine,
                apim_certs::DEFAULT_AGENT_CERT_TTL,
            )
            .expect("sign");
        self.state.record_issued(machine, &issued, true);
        Creds {
            cert_pem: issued.cert_pem,
            key_pem: key.key_pem(),
        }
    }

    /// An agent certificate for `machine` signed by the real CA key with rcgen, whose validity
    /// ended an hour ago.
    pub fn expired_agent_creds(&self, machine: &str) -> Creds {
        let ca_dir = self.ca_dir();
        mint_with_rcgen(&ca_dir, machine, |p| {
            let now = OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::hours(2);
            p.not_after = now - time::Duration::hours(1);
        })
    }

    /// An operator client.
    pub async fn operator(&self) -> OperatorServiceClient<Channel> {
        let creds = self.operator_creds("alice");
        OperatorServiceClient::new(self.channel(Some(&creds)).await)
    }

    /// Creates a join token through the real `CreateToken` RPC.
    pub async fn token_for(&self, machine: &str, ttl_s: u64) -> String {
        self.operator()
            .await
            .create_token(apim_proto::v1::CreateTokenRequest {
                machine: machine.into(),
                ttl_s,
            })
            .await
            .expect("create token")
            .into_inner()
            .token
    }
}

/// Dials `endpoint` over TLS 1.3, trusting `ca_pem`, presenting `creds` when given.
pub async fn channel_to(
    endpoint: &ControllerEndpoint,
    ca_pem: &str,
    creds: Option<&Creds>,
) -> Channel {
    let identity = creds.map(|c| {
        let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("key pem");
        (chain, key)
    });
    let config = tls::client_config(ca_pem, identity).expect("client config");
    tls::connect(endpoint, Arc::new(config), CONNECT_TIMEOUT)
        .await
        .expect("TLS connect")
}

/// Signs an agent-shaped certificate for `machine` with the CA stored in `ca_dir`, after
/// `adjust` changed its parameters (validity, usages).
pub fn mint_with_rcgen(
    ca_dir: &Path,
    machine: &str,
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> Creds {
    let ca_key = std::fs::read_to_string(ca_dir.join(CA_KEY_FILE)).expect("CA key");
    let ca_cert = std::fs::read_to_string(ca_dir.join(CA_CERT_FILE)).expect("CA cert");
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &ca_cert,
        rcgen::KeyPair::from_pem(&ca_key).expect("CA key pem"),
    )
    .expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, machine);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://apimctl/agent/{machine}")
            .try_into()
            .expect("ia5"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    adjust(&mut params);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    Creds {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A small spec for `machine` with the given nodes.
pub fn spec(machine: &str, generation: u64, nodes: &[&str]) -> MachineSpec {
    MachineSpec {
        machine: machine.into(),
        generation,
        plan_generation: generation,
        hosts_block: vec![HostsEntry {
            address: "10.0.0.11".into(),
            names: vec!["km.wso2.com".into()],
        }],
        nodes: nodes
            .iter()
            .map(|n| NodeSpec {
                name: (*n).into(),
                role: "key-manager".into(),
                ..NodeSpec::default()
            })
            .collect(),
    }
}

/// A `Hello` message.
pub fn hello(held: u64) -> apim_proto::v1::AgentMessage {
    apim_proto::v1::AgentMessage {
        kind: Some(agent_message::Kind::Hello(apim_proto::v1::Hello {
            agent_version: "test".into(),
            facts: Some(apim_proto::v1::MachineFacts {
                hostname: "test-host".into(),
                cpus: 2,
                ..Default::default()
            }),
            held_generation: held,
        })),
    }
}

/// A status report naming `nodes`.
pub fn report(generation: u64, nodes: &[&str]) -> apim_proto::v1::AgentMessage {
    apim_proto::v1::AgentMessage {
        kind: Some(agent_message::Kind::Status(apim_proto::v1::StatusReport {
            generation,
            nodes: nodes
                .iter()
                .map(|n| apim_proto::v1::NodeStatus {
                    node: (*n).into(),
                    phase: apim_proto::v1::NodePhase::Pending as i32,
                    generation,
                    ..Default::default()
                })
                .collect(),
            facts: None,
        })),
    }
}

/// An enrollment client without a certificate.
pub async fn anonymous_enrollment(h: &Harness) -> EnrollmentClient<Channel> {
    EnrollmentClient::new(h.channel(None).await)
}
