//! A restartable controller on 127.0.0.1 over a data directory, and fake agents that speak the
//! real agent protocol over mTLS (the agent crate's TLS client) and behave like agents:
//! staged, starting, healthy, or failing on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apim_certs::tls::{self, ControllerEndpoint};
use apim_certs::{AgentKey, ControlPlaneCa};
use apim_controller::server::{self, ControllerState, ServerConfig};
use apim_controller::store::Store;
use apim_proto::prost_types::Timestamp;
use apim_proto::v1::{
    AgentMessage, ApplyRequest, ClusterStatus, DesiredRun, Hello, MachineSpec, NodePhase,
    NodeStatus, StatusReport, StatusRequest, agent_message,
    agent_service_client::AgentServiceClient, controller_message,
    operator_service_client::OperatorServiceClient,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[path = "../common/wait.rs"]
mod wait;
pub use wait::{PATIENCE, eventually, within};

/// A controller over a data directory that survives [`Controller::restart`].
pub struct Controller {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub state: Arc<ControllerState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), server::ServerError>>>,
    /// Shared with fake agents: the current endpoint's CA.
    pub ca_pem: String,
}

fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("bind loopback");
    socket.listen(128).expect("listen")
}

impl Controller {
    /// Starts a fresh controller.
    pub async fn start() -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_on(dir, "127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_on(dir: TempDir, addr: SocketAddr) -> Controller {
        let data = dir.path();
        let ca = ControlPlaneCa::load_or_create(&data.join("ca")).expect("CA");
        let ca_pem = ca.cert_pem().to_owned();
        let store = Store::open(data).expect("store");
        let state = Arc::new(
            ControllerState::open(ca, &data.join("artifacts"), &data.join("pki"), store)
                .expect("state"),
        );
        let listener = bind(addr);
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig::new(vec!["127.0.0.1".into()]);
        let task = tokio::spawn(server::serve(
            config,
            Arc::clone(&state),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Controller {
            dir,
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
            ca_pem,
        }
    }

    /// Stops the server (its task and the rollout engine) and starts a new one on the same
    /// data directory and port — a controller restart.
    pub async fn restart(mut self) -> Controller {
        let _ = self.stop.take().expect("running").send(());
        let task = self.task.take().expect("task");
        let _ = within("server shutdown", task).await;
        let addr = self.addr;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        Self::start_on(dir, addr).await
    }

    pub fn endpoint(&self) -> ControllerEndpoint {
        ControllerEndpoint::parse(&self.addr.to_string()).expect("endpoint")
    }

    /// Stores a pack's bytes as an artifact (as an upload would).
    pub fn store_pack(&self, bytes: &[u8]) -> String {
        let sha = apim_plan::digest(bytes);
        let path = self.state.artifacts().path_for(&sha).expect("path");
        std::fs::write(path, bytes).expect("write pack");
        sha
    }

    pub async fn operator(&self) -> OperatorServiceClient<Channel> {
        let issued = self
            .state
            .ca()
            .issue_operator_cert("alice", apim_certs::DEFAULT_OPERATOR_CERT_TTL)
            .expect("operator cert");
        let channel = channel(
            &self.endpoint(),
            &self.ca_pem,
            &issued.cert.cert_pem,
            issued.key_pem(),
        )
        .await;
        OperatorServiceClient::new(channel)
    }

    pub async fn apply(&self, plan: &str) -> Result<(u64, String), tonic::Status> {
        let r = self
            .operator()
            .await
            .apply(ApplyRequest {
                plan_toml: plan.into(),
                plan_path: "plan.toml".into(),
                expected_cluster_revision: None,
                author: "test".into(),
                resolved_secrets: secrets(),
            })
            .await?
            .into_inner();
        Ok((r.generation, r.rollout_id))
    }

    pub async fn status(&self) -> ClusterStatus {
        self.operator()
            .await
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Waits until the latest rollout is in `state`.
    pub async fn wait_rollout(&self, state: apim_proto::v1::RolloutState) -> ClusterStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let s = self.status().await;
            if s.rollout.as_ref().is_some_and(|r| r.state() == state) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollout never reached {state:?}: {:?}",
                s.rollout
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The resolved secrets the test plans reference.
pub fn secrets() -> std::collections::HashMap<String, String> {
    [
        ("env:ADMIN_PW".to_string(), "admin-secret".to_string()),
        ("env:DB_PW".to_string(), "db-secret".to_string()),
        ("env:KS_PW".to_string(), "ks-secret".to_string()),
    ]
    .into()
}

pub async fn channel(
    endpoint: &ControllerEndpoint,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Channel {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
    let config = tls::client_config(ca_pem, Some((chain, key))).expect("client config");
    tls::connect(endpoint, Arc::new(config), Duration::from_secs(20))
        .await
        .expect("TLS connect")
}

/// What happened on a fake agent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node (re)started with this config digest.
    Started { node: String, digest: String },
}

/// How a fake agent misbehaves.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Nodes that report FAILED when started.
    pub fail: BTreeSet<String>,
    /// Nodes that stay STARTING forever.
    pub hang: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct NodeRun {
    running: Option<String>,
    phase: i32,
    last_error: String,
    generation: u64,
    staged: String,
}

/// A fake agent for one machine.
pub struct FakeAgent {
    pub faults: Arc<Mutex<Faults>>,
    held: Arc<Mutex<Option<MachineSpec>>>,
    online: watch::Sender<bool>,
    nudge: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    /// Enrols `machine` with the controller's CA (as `Enroll` would) and starts its loop.
    pub fn start(
        c: &Controller,
        machine: &str,
        log: Arc<Mutex<Vec<(String, Event)>>>,
    ) -> FakeAgent {
        let key = AgentKey::generate().expect("agent key");
        let issued = c
            .state
            .ca()
            .sign_agent_csr(
                &key.csr_der(machine).expect("csr"),
                machine,
                apim_certs::DEFAULT_AGENT_CERT_TTL,
            )
            .expect("sign");
        c.state.record_issued(machine, &issued, true);
        let faults = Arc::new(Mutex::new(Faults::default()));
        let held = Arc::new(Mutex::new(None));
        let (online, online_rx) = watch::channel(true);
        let (nudge, nudge_rx) = watch::channel(0u64);
        let endpoint = Arc::new(Mutex::new(c.endpoint()));
        let ctx = AgentCtx {
            machine: machine.to_string(),
            ca_pem: c.ca_pem.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: key.key_pem(),
            endpoint,
            faults: Arc::clone(&faults),
            log: Arc::clone(&log),
            held: Arc::clone(&held),
            nodes: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let task = tokio::spawn(ctx.run(online_rx, nudge_rx));
        FakeAgent {
            faults,
            held,
            online,
            nudge,
            task,
        }
    }

    /// Cuts the agent off (its stream closes) until [`FakeAgent::reconnect`].
    pub fn disconnect(&self) {
        self.online.send_replace(false);
    }

    /// Lets the agent connect again.
    pub fn reconnect(&self) {
        self.online.send_replace(true);
    }

    /// Lets a hanging node finish starting (it reports HEALTHY).
    pub fn unhang(&self, node: &str) {
        self.faults.lock().unwrap().hang.remove(node);
        self.nudge.send_modify(|n| *n += 1);
    }

    /// The generation of the spec it holds.
    pub fn held_generation(&self) -> u64 {
        self.held
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |s| s.generation)
    }
}

#[derive(Clone)]
struct AgentCtx {
    machine: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    endpoint: Arc<Mutex<ControllerEndpoint>>,
    faults: Arc<Mutex<Faults>>,
    log: Arc<Mutex<Vec<(String, Event)>>>,
    held: Arc<Mutex<Option<MachineSpec>>>,
    nodes: Arc<Mutex<BTreeMap<String, NodeRun>>>,
}

fn now_ts() -> Option<Timestamp> {
    Some(Timestamp::from(std::time::SystemTime::now()))
}

impl AgentCtx {
    async fn run(self, mut online: watch::Receiver<bool>, mut nudge: watch::Receiver<u64>) {
        loop {
            let _ = online.wait_for(|o| *o).await;
            let endpoint = self.endpoint.lock().unwrap().clone();
            let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key");
            let config = tls::client_config(&self.ca_pem, Some((chain, key))).expect("cfg");
            let Ok(channel) =
                tls::connect(&endpoint, Arc::new(config), Duration::from_secs(5)).await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (tx, rx) = mpsc::channel(16);
            let held = self
                .held
                .lock()
                .unwrap()
                .as_ref()
                .map_or(0, |s| s.generation);
            let _ = tx
                .send(AgentMessage {
                    kind: Some(agent_message::Kind::Hello(Hello {
                        agent_version: "fake".into(),
                        facts: Some(apim_proto::v1::MachineFacts {
                            hostname: self.machine.clone(),
                            cpus: 2,
                            ..Default::default()
                        }),
                        held_generation: held,
                    })),
                })
                .await;
            let mut client = AgentServiceClient::new(channel);
            let Ok(resp) = client.connect(ReceiverStream::new(rx)).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut inbound = resp.into_inner();
            let _ = tx.send(self.report()).await;
            loop {
                tokio::select! {
                    () = async { let _ = online.wait_for(|o| !*o).await; } => break,
                    _ = nudge.changed() => {
                        self.finish_starting();
                        if tx.send(self.report()).await.is_err() { break; }
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => {
                            if let Some(controller_message::Kind::DesiredSpec(d)) = m.kind
                                && let Some(spec) = d.spec
                            {
                                self.converge(spec);
                                if tx.send(self.report()).await.is_err() { break; }
                            }
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                    }
                }
            }
        }
    }

    /// What a real agent does with a spec, minus the files: stage, (re)start what must run on
    /// a new configuration, leave alone what already runs it.
    fn converge(&self, spec: MachineSpec) {
        let faults = self.faults.lock().unwrap().clone();
        let mut nodes = self.nodes.lock().unwrap();
        nodes.retain(|name, _| spec.nodes.iter().any(|n| &n.name == name));
        for n in &spec.nodes {
            let run = nodes.entry(n.name.clone()).or_default();
            run.generation = spec.generation;
            let digest = n.config_digest.clone();
            let desired = n.desired();
            if run.running.as_deref() == Some(digest.as_str()) {
                run.phase = NodePhase::Healthy as i32;
                run.last_error.clear();
                continue;
            }
            match desired {
                DesiredRun::Running => {
                    self.log.lock().unwrap().push((
                        self.machine.clone(),
                        Event::Started {
                            node: n.name.clone(),
                            digest: digest.clone(),
                        },
                    ));
                    if faults.fail.contains(&n.name) {
                        run.running = None;
                        run.phase = NodePhase::Failed as i32;
                        run.last_error = "server exited during start-up".into();
                    } else if faults.hang.contains(&n.name) {
                        run.running = None;
                        run.phase = NodePhase::Starting as i32;
                    } else {
                        run.running = Some(digest.clone());
                        run.phase = NodePhase::Healthy as i32;
                        run.last_error.clear();
                    }
                    run.staged = digest;
                }
                DesiredRun::Staged | DesiredRun::Unspecified => {
                    run.staged = digest;
                    run.phase = NodePhase::Staged as i32;
                }
                DesiredRun::Stopped => {
                    run.running = None;
                    run.phase = NodePhase::Stopped as i32;
                }
            }
        }
        *self.held.lock().unwrap() = Some(spec);
    }

    fn finish_starting(&self) {
        let hang = self.faults.lock().unwrap().hang.clone();
        for (name, run) in self.nodes.lock().unwrap().iter_mut() {
            if run.phase == NodePhase::Starting as i32 && !hang.contains(name) {
                run.running = Some(run.staged.clone());
                run.phase = NodePhase::Healthy as i32;
            }
        }
    }

    fn report(&self) -> AgentMessage {
        let nodes = self.nodes.lock().unwrap();
        let generation = self
            .held
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |s| s.generation);
        AgentMessage {
            kind: Some(agent_message::Kind::Status(StatusReport {
                generation,
                nodes: nodes
                    .iter()
                    .map(|(name, r)| NodeStatus {
                        node: name.clone(),
                        phase: r.phase,
                        step: String::new(),
                        generation: r.generation,
                        last_error: r.last_error.clone(),
                        phase_since: now_ts(),
                        restarts: 0,
                        pid: None,
                        config_digest: r.running.clone().unwrap_or_else(|| r.staged.clone()),
                        running: r.running.is_some(),
                        // Agents leave it to the controller.
                        plan_generation: 0,
                    })
                    .collect(),
                facts: None,
            })),
        }
    }
}

/// The five-node 3.x plan, one machine per node (127.0.0.x), with an optional gateway
/// override and failure policy.
pub fn plan_v3(pack_sha: &str, gateway_override: &str, on_failure: &str, timeout: &str) -> String {
    let nodes = [
        ("km-1", "key-manager", "km.wso2.com"),
        ("tm-1", "traffic-manager", "tm.wso2.com"),
        ("pub-1", "publisher", "pub.wso2.com"),
        ("dp-1", "devportal", "dp.wso2.com"),
        ("gw-1", "gateway", "gw.wso2.com"),
    ];
    let mut s = format!(
        r#"[cluster]
name = "apim-test"
product = "wso2am-3.2.0"
install_dir = "/opt/wso2"
java_home = "/usr/lib/jvm/java-11"

[distributions]
default = {{ path = "dist/wso2am-3.2.0.zip", sha256 = "{pack_sha}" }}

[admin]
username = "admin"
password = {{ env = "ADMIN_PW" }}

[databases.apim_db]
type = "mysql"
host = "db.wso2.com"
port = 3306
name = "apim_db"
username = "apim"
password = {{ env = "DB_PW" }}

[databases.shared_db]
type = "mysql"
host = "db.wso2.com"
port = 3306
name = "shared_db"
username = "apim"
password = {{ env = "DB_PW" }}

[tls]
issuer = "cluster-ca"
keystore_type = "PKCS12"
keystore_password = {{ env = "KS_PW" }}

[hosts]
"db.wso2.com" = "127.0.0.1"

[rollout]
max_parallel = 2
health_timeout = "{timeout}"
on_failure = "{on_failure}"
"#
    );
    for (i, (name, role, host)) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "\n[[machines]]\nname = \"vm-{name}\"\naddress = \"127.0.1.{}\"\n\n[[nodes]]\nname = \"{name}\"\nmachine = \"vm-{name}\"\nrole = \"{role}\"\nhostname = \"{host}\"\noffset = 0\n",
            i + 1
        ));
    }
    if !gateway_override.is_empty() {
        s.push_str(&format!(
            "\n[overrides]\n\"node:gw-1\" = '''\n{gateway_override}\n'''\n"
        ));
    }
    s
}

/// Machines of [`plan_v3`].
pub const V3_MACHINES: [&str; 5] = ["vm-km-1", "vm-tm-1", "vm-pub-1", "vm-dp-1", "vm-gw-1"];

/// A zip laid out like a product pack: one small file under `top/` (the fake agents never
/// unpack it; the controller reads its central directory).
pub fn tiny_pack(top: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        format!("{top}/bin/version.txt"),
        zip::write::SimpleFileOptions::default(),
    )
    .expect("zip entry");
    w.write_all(top.as_bytes()).expect("zip data");
    w.finish().expect("zip").into_inner()
}
