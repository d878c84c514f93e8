//! A scripted fake controller: `AgentService` + `ArtifactService` over mTLS (certs minted by
//! apim-certs) on a loopback address. It pushes specs, serves packs (optionally cutting a
//! Fetch stream after N bytes), and records hellos and status reports.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apim_agent::daemon::identity::AgentIdentity;
use apim_certs::{AgentKey, ControlPlaneCa};
use apim_proto::v1::agent_message::Kind as AgentKind;
use apim_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use apim_proto::v1::artifact_service_server::{ArtifactService, ArtifactServiceServer};
use apim_proto::v1::controller_message::Kind as CtlKind;
use apim_proto::v1::{
    AgentMessage, Chunk, Command, CommandResult, ControllerMessage, DesiredSpec, FetchRequest,
    Hello, LogData, MachineSpec, StatRequest, StatResponse, StatusReport, UploadChunk,
    UploadResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

type Outbound = mpsc::Sender<Result<ControllerMessage, Status>>;

/// What the fake controller saw and what it will do.
#[derive(Default)]
pub struct FakeState {
    artifacts: Mutex<HashMap<String, PathBuf>>,
    /// Cut the next Fetch stream after this many bytes (then forget it).
    pub cut_next_fetch_after: Mutex<Option<u64>>,
    /// Offsets of every whole-remainder Fetch request (a download or its resumption), in order.
    pub fetch_offsets: Mutex<Vec<u64>>,
    /// `(offset, limit)` of every ranged Fetch request (a zip's tail), in order.
    pub fetch_ranges: Mutex<Vec<(u64, u64)>>,
    /// Serve ranged requests with every byte inverted (a controller inconsistent with itself).
    pub corrupt_ranges: Mutex<bool>,
    /// Every status report received.
    pub reports: Mutex<Vec<StatusReport>>,
    /// Every hello received.
    pub hellos: Mutex<Vec<Hello>>,
    /// Every command result received.
    pub results: Mutex<Vec<CommandResult>>,
    /// Per command id, how many status reports had come when its result came.
    pub reports_before_result: Mutex<HashMap<String, usize>>,
    /// Every piece of log received.
    pub log_data: Mutex<Vec<LogData>>,
    /// Shared-folder pushes received.
    pub artifact_pushes: Mutex<Vec<apim_proto::v1::ArtifactPush>>,
    latest: Mutex<Option<MachineSpec>>,
    session: Mutex<Option<Outbound>>,
}

struct Svc(Arc<FakeState>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Svc {
    type ConnectStream = BoxStream<ControllerMessage>;

    async fn connect(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.kind {
                    Some(AgentKind::Hello(h)) => {
                        let held = h.held_generation;
                        state.hellos.lock().unwrap().push(h);
                        *state.session.lock().unwrap() = Some(tx.clone());
                        let latest = state.latest.lock().unwrap().clone();
                        if let Some(spec) = latest.filter(|s| s.generation != held) {
                            let _ = tx.send(Ok(desired(spec))).await;
                        }
                    }
                    Some(AgentKind::Status(r)) => state.reports.lock().unwrap().push(r),
                    Some(AgentKind::CommandResult(r)) => {
                        let reports = state.reports.lock().unwrap().len();
                        state
                            .reports_before_result
                            .lock()
                            .unwrap()
                            .insert(r.command_id.clone(), reports);
                        state.results.lock().unwrap().push(r);
                    }
                    Some(AgentKind::LogData(d)) => state.log_data.lock().unwrap().push(d),
                    Some(AgentKind::ArtifactPush(p)) => {
                        state.artifact_pushes.lock().unwrap().push(p)
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn desired(spec: MachineSpec) -> ControllerMessage {
    ControllerMessage {
        kind: Some(CtlKind::DesiredSpec(DesiredSpec { spec: Some(spec) })),
    }
}

#[tonic::async_trait]
impl ArtifactService for Svc {
    type FetchStream = BoxStream<Chunk>;

    async fn fetch(
        &self,
        req: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let req = req.into_inner();
        if req.limit == 0 {
            self.0.fetch_offsets.lock().unwrap().push(req.offset);
        } else {
            self.0
                .fetch_ranges
                .lock()
                .unwrap()
                .push((req.offset, req.limit));
        }
        let path = self
            .0
            .artifacts
            .lock()
            .unwrap()
            .get(&req.sha256)
            .cloned()
            .ok_or_else(|| Status::not_found("unknown digest"))?;
        let mut data = std::fs::read(&path).map_err(|e| Status::internal(e.to_string()))?;
        if req.limit != 0 && *self.0.corrupt_ranges.lock().unwrap() {
            data.iter_mut().for_each(|b| *b = !*b);
        }
        if req.offset > data.len() as u64 {
            return Err(Status::out_of_range("offset past the end"));
        }
        let len = match req.limit {
            0 => data.len() as u64,
            n => (req.offset + n).min(data.len() as u64),
        };
        let cut = match req.limit {
            0 => self.0.cut_next_fetch_after.lock().unwrap().take(),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut at = req.offset;
            let mut sent = 0u64;
            while at < len {
                let end = (at + (1 << 20)).min(len);
                let mut piece = &data[at as usize..end as usize];
                if let Some(c) = cut {
                    if sent >= c {
                        let _ = tx.send(Err(Status::unavailable("cut by the test"))).await;
                        return;
                    }
                    let room = (c - sent) as usize;
                    if piece.len() > room {
                        piece = &piece[..room];
                    }
                }
                let chunk = Chunk {
                    offset: at,
                    data: piece.to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                at += piece.len() as u64;
                sent += piece.len() as u64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stat(&self, req: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let path = self
            .0
            .artifacts
            .lock()
            .unwrap()
            .get(&req.into_inner().sha256)
            .cloned()
            .ok_or_else(|| Status::not_found("unknown digest"))?;
        let size = std::fs::metadata(path)
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        Ok(Response::new(StatResponse { size }))
    }

    async fn upload(
        &self,
        _req: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<UploadResponse>, Status> {
        Err(Status::permission_denied("agents do not upload"))
    }
}

/// The running fake controller.
pub struct FakeController {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its CA (signs the agent's certificate).
    pub ca: ControlPlaneCa,
    /// What it saw.
    pub state: Arc<FakeState>,
    _ca_dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeController {
    /// Starts on `ip` (port chosen by the OS).
    pub async fn start(ip: IpAddr) -> FakeController {
        let ca_dir = tempfile::tempdir().expect("ca dir");
        let ca = ControlPlaneCa::load_or_create(ca_dir.path()).expect("CA");
        let server = ca
            .issue_server_cert(&[ip.to_string()], Duration::from_secs(3600))
            .expect("server cert");
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&server.cert.cert_pem, server.key_pem()))
            .client_ca_root(Certificate::from_pem(ca.cert_pem()));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(FakeState::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(tls)
            .expect("tls config")
            .add_service(AgentServiceServer::new(Svc(Arc::clone(&state))))
            .add_service(ArtifactServiceServer::new(Svc(Arc::clone(&state))));
        tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeController {
            addr,
            ca,
            state,
            _ca_dir: ca_dir,
            _stop: stop,
        }
    }

    /// Serves `path` as the artifact `sha256`.
    pub fn add_artifact(&self, sha256: &str, path: &Path) {
        self.state
            .artifacts
            .lock()
            .unwrap()
            .insert(sha256.to_owned(), path.to_path_buf());
    }

    /// Makes `spec` the desired spec: sent now on the open session, and on every Hello.
    pub async fn push(&self, spec: MachineSpec) {
        *self.state.latest.lock().unwrap() = Some(spec.clone());
        let session = self.state.session.lock().unwrap().clone();
        if let Some(tx) = session {
            let _ = tx.send(Ok(desired(spec))).await;
        }
    }

    /// Sends `command` on the open session.
    pub async fn command(&self, command: Command) {
        let session = self.state.session.lock().unwrap().clone();
        if let Some(tx) = session {
            let _ = tx
                .send(Ok(ControllerMessage {
                    kind: Some(CtlKind::Command(command)),
                }))
                .await;
        }
    }

    /// Waits (polling; `timeout` is a failure guard) until `pred` holds on what the fake
    /// controller saw, and returns what it returned.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&FakeState) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = pred(&self.state) {
                return v;
            }
            assert!(Instant::now() <= deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends `spec` on the open session without making it the latest (e.g. a stale one).
    pub async fn send_only(&self, spec: MachineSpec) {
        let session = self.state.session.lock().unwrap().clone();
        tx_send(session, spec).await;
    }

    /// Mints and stores an agent identity for `machine` in `state_dir` (what enrollment does).
    pub fn provision_agent(&self, state_dir: &Path, machine: &str) {
        let key = AgentKey::generate().expect("key");
        let csr = key.csr_der(machine).expect("csr");
        let cert = self
            .ca
            .sign_agent_csr(&csr, machine, Duration::from_secs(3600))
            .expect("sign");
        let id = AgentIdentity::from_parts(
            &key,
            &cert.cert_pem,
            self.ca.cert_pem(),
            Some(machine),
            time::OffsetDateTime::from(SystemTime::now()),
        )
        .expect("identity");
        std::fs::create_dir_all(state_dir).expect("state dir");
        id.save(state_dir).expect("save identity");
    }

    /// Number of reports received so far.
    pub fn report_count(&self) -> usize {
        self.state.reports.lock().unwrap().len()
    }

    /// Waits (polling; `timeout` is a failure guard) for a report after index `from` that
    /// satisfies `pred`, and returns it.
    pub async fn wait_report(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&StatusReport) -> bool,
    ) -> StatusReport {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let reports = self.state.reports.lock().unwrap();
                if let Some(r) = reports.iter().skip(from).find(|r| pred(r)) {
                    return r.clone();
                }
                if Instant::now() > deadline {
                    panic!(
                        "no report where {what} within {timeout:?}; last: {:#?}",
                        reports.last()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn tx_send(session: Option<Outbound>, spec: MachineSpec) {
    if let Some(tx) = session {
        let _ = tx.send(Ok(desired(spec))).await;
    }
}
