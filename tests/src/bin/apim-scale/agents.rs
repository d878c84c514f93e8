//! Light in-process agents for `apim-scale`: each enrols with its own join token and key (the
//! real `Enroll` RPC with a CSR), then keeps one `AgentService.Connect` stream open over mTLS
//! with its own certificate, as `apim-agent` does: Hello, a status report at once and every
//! [`REPORT_INTERVAL`] (each node's `phase_since` moving only when its phase does, as the real
//! agent's), and every DesiredSpec answered with a report that shows its nodes staged or
//! healthy on the spec's `config_digest` as the spec asks. No files, no processes:
//! what is measured is the controller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apim_certs::AgentKey;
use apim_certs::tls::{self, ClientIdentity, ControllerEndpoint};
use apim_proto::prost_types::Timestamp;
use apim_proto::v1::{
    AgentMessage, CommandResult, CreateTokenRequest, DesiredRun, EnrollRequest, Hello,
    MachineFacts, MachineSpec, NodePhase, NodeStatus, StatusReport, agent_message,
    agent_service_client::AgentServiceClient, command, controller_message,
    enrollment_client::EnrollmentClient, operator_service_client::OperatorServiceClient,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The real agent's default `report_interval`.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Dial timeout of every connection the bench makes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A PEM certificate chain and key.
#[derive(Clone)]
pub struct Creds {
    /// Leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl Creds {
    /// The pair as rustls wants it.
    pub fn identity(&self) -> Res<ClientIdentity> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())?;
        Ok((chain, key))
    }
}

/// Dials the controller over TLS 1.3 trusting `ca_pem`, presenting `creds` when given.
pub async fn dial(
    endpoint: &ControllerEndpoint,
    ca_pem: &str,
    creds: Option<&Creds>,
) -> Res<Channel> {
    let identity = creds.map(Creds::identity).transpose()?;
    let config = tls::client_config(ca_pem, identity)?;
    Ok(tls::connect(endpoint, Arc::new(config), CONNECT_TIMEOUT).await?)
}

/// What every agent reports to the bench: how many are connected, and per plan generation how
/// many agents hold a spec of it and when the last one got it.
#[derive(Default)]
pub struct Tracker {
    /// Agents whose Connect stream is open.
    pub connected: AtomicUsize,
    /// Streams that ended while the bench ran (each one a reconnect).
    pub dropped: AtomicUsize,
    /// Set before the controller is stopped: streams ending then are expected.
    pub stopping: AtomicBool,
    reached: Mutex<BTreeMap<u64, (usize, Instant)>>,
}

impl Tracker {
    /// (agents holding a spec of `plan_generation`, when the latest of them got it).
    pub async fn reached(&self, plan_generation: u64) -> Option<(usize, Instant)> {
        self.reached.lock().await.get(&plan_generation).copied()
    }
}

/// Enrols `machines` through the real RPCs: a join token each (`CreateToken`, as the
/// operator), then `Enroll` with a fresh key's CSR over a certificate-less connection, at most
/// `parallel` at a time. Returns each machine's credentials, in order.
pub async fn enrol_all(
    endpoint: &ControllerEndpoint,
    ca_pem: &str,
    operator: &Creds,
    machines: &[String],
    parallel: usize,
) -> Res<Vec<Creds>> {
    let mut op = OperatorServiceClient::new(dial(endpoint, ca_pem, Some(operator)).await?);
    let gate = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(machines.len());
    for machine in machines {
        let token = op
            .create_token(CreateTokenRequest {
                machine: machine.clone(),
                ttl_s: 3600,
            })
            .await?
            .into_inner()
            .token;
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let (endpoint, ca_pem, machine) = (endpoint.clone(), ca_pem.to_owned(), machine.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            enrol(&endpoint, &ca_pem, &machine, token).await
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

async fn enrol(
    endpoint: &ControllerEndpoint,
    ca_pem: &str,
    machine: &str,
    token: String,
) -> Res<Creds> {
    let key = AgentKey::generate()?;
    let csr_der = key.csr_der(machine)?;
    let channel = dial(endpoint, ca_pem, None).await?;
    let r = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token,
            machine: machine.to_owned(),
            csr_der,
        })
        .await
        .map_err(|s| format!("enrolling {machine}: {s}"))?
        .into_inner();
    Ok(Creds {
        cert_pem: r.cert_chain_pem,
        key_pem: key.key_pem(),
    })
}

/// One light agent.
struct Agent {
    machine: String,
    endpoint: ControllerEndpoint,
    ca_pem: String,
    creds: Creds,
    tracker: Arc<Tracker>,
    /// The plan generation of the spec it holds.
    plan_generation: u64,
    /// The spec's generation (the agent protocol's).
    generation: u64,
    /// node -> (phase, config digest it runs or staged, running, since when in that phase).
    nodes: BTreeMap<String, (NodePhase, String, bool, Option<Timestamp>)>,
}

/// Starts one light agent for `machine` on the runtime; it reconnects after 1 s if its stream
/// ends, so a figure is never taken with an agent silently gone (the bench checks the count).
pub fn spawn(
    endpoint: ControllerEndpoint,
    ca_pem: String,
    machine: String,
    creds: Creds,
    tracker: Arc<Tracker>,
) {
    let mut a = Agent {
        machine,
        endpoint,
        ca_pem,
        creds,
        tracker,
        plan_generation: 0,
        generation: 0,
        nodes: BTreeMap::new(),
    };
    tokio::spawn(async move {
        loop {
            let r = a.session().await;
            if a.tracker.stopping.load(Ordering::SeqCst) {
                return;
            }
            a.tracker.dropped.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = r {
                eprintln!("apim-scale: agent {}: {e}; reconnecting", a.machine);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

fn now_ts() -> Option<Timestamp> {
    Some(Timestamp::from(std::time::SystemTime::now()))
}

impl Agent {
    /// One Connect stream, until it ends.
    async fn session(&mut self) -> Res<()> {
        let channel = dial(&self.endpoint, &self.ca_pem, Some(&self.creds)).await?;
        let (tx, rx) = mpsc::channel(8);
        tx.send(AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                agent_version: "apim-scale".into(),
                facts: Some(MachineFacts {
                    hostname: self.machine.clone(),
                    cpus: 2,
                    ..Default::default()
                }),
                held_generation: self.generation,
            })),
        })
        .await?;
        let mut inbound = AgentServiceClient::new(channel)
            .connect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        tx.send(self.report()).await?;
        self.tracker.connected.fetch_add(1, Ordering::SeqCst);
        let r = self.serve(&tx, &mut inbound).await;
        self.tracker.connected.fetch_sub(1, Ordering::SeqCst);
        r
    }

    async fn serve(
        &mut self,
        tx: &mpsc::Sender<AgentMessage>,
        inbound: &mut tonic::Streaming<apim_proto::v1::ControllerMessage>,
    ) -> Res<()> {
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => tx.send(self.report()).await?,
                msg = inbound.message() => match msg?.ok_or("the controller closed the stream")?.kind {
                    Some(controller_message::Kind::DesiredSpec(d)) => {
                        if let Some(spec) = d.spec {
                            self.converge(spec).await;
                            tx.send(self.report()).await?;
                        }
                    }
                    Some(controller_message::Kind::Command(c)) => {
                        let known = matches!(
                            c.action,
                            Some(command::Action::CheckDrift(_) | command::Action::ReportNow(_))
                        );
                        tx.send(self.report()).await?;
                        tx.send(AgentMessage {
                            kind: Some(agent_message::Kind::CommandResult(CommandResult {
                                command_id: c.command_id,
                                ok: known,
                                message: if known { "checked".into() } else { "not supported".into() },
                            })),
                        })
                        .await?;
                    }
                    // Its nodes share no folders.
                    Some(controller_message::Kind::ArtifactUpdate(_)) | None => {}
                },
            }
        }
    }

    /// What a real agent does with a spec, minus the files: stage what it must, (re)start what
    /// must run on a new digest (healthy at once), leave alone what already runs it.
    async fn converge(&mut self, spec: MachineSpec) {
        self.nodes
            .retain(|name, _| spec.nodes.iter().any(|n| &n.name == name));
        for n in &spec.nodes {
            let digest = n.config_digest.clone();
            let entry = self.nodes.entry(n.name.clone()).or_insert((
                NodePhase::Staged,
                String::new(),
                false,
                now_ts(),
            ));
            if entry.2 && entry.1 == digest {
                continue;
            }
            let (phase, running) = match n.desired() {
                DesiredRun::Running => (NodePhase::Healthy, true),
                DesiredRun::Stopped => (NodePhase::Stopped, false),
                DesiredRun::Staged | DesiredRun::Unspecified => (NodePhase::Staged, false),
            };
            // As the real agent: `phase_since` moves only when the phase does.
            let since = if entry.0 == phase { entry.3 } else { now_ts() };
            *entry = (phase, digest, running, since);
        }
        self.generation = spec.generation;
        if spec.plan_generation > self.plan_generation {
            self.plan_generation = spec.plan_generation;
            let mut reached = self.tracker.reached.lock().await;
            let e = reached
                .entry(spec.plan_generation)
                .or_insert((0, Instant::now()));
            e.0 += 1;
            e.1 = Instant::now();
        }
    }

    fn report(&self) -> AgentMessage {
        AgentMessage {
            kind: Some(agent_message::Kind::Status(StatusReport {
                generation: self.generation,
                nodes: self
                    .nodes
                    .iter()
                    .map(|(name, (phase, digest, running, since))| NodeStatus {
                        node: name.clone(),
                        phase: *phase as i32,
                        step: String::new(),
                        generation: self.generation,
                        last_error: String::new(),
                        phase_since: *since,
                        restarts: 0,
                        pid: None,
                        config_digest: digest.clone(),
                        running: *running,
                        plan_generation: 0,
                        drift: Vec::new(),
                        shared: String::new(),
                    })
                    .collect(),
                facts: None,
                destroy_error: String::new(),
                services: Vec::new(),
            })),
        }
    }
}
