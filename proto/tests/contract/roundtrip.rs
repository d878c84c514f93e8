//! The generated clients and servers over a real tonic server on 127.0.0.1:0 (plain TCP; mTLS
//! is exercised by the controller and agent crates).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apim_proto::v1::agent_service_client::AgentServiceClient;
use apim_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use apim_proto::v1::artifact_service_client::ArtifactServiceClient;
use apim_proto::v1::artifact_service_server::{ArtifactService, ArtifactServiceServer};
use apim_proto::v1::{
    AgentMessage, Chunk, Command, CommandResult, ControllerMessage, DesiredSpec, ErrorDetail,
    ErrorDetails, FetchRequest, Hello, NodePhase, NodeStatus, ReportNow, StatRequest, StatResponse,
    StatusReport, UploadChunk, UploadHeader, UploadResponse, agent_message, command,
    controller_message,
};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

use super::sample;

/// Failure guard for every await on the network: generous, never a synchronisation device.
const GUARD: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A tiny controller: answers `Hello` with the next generation's spec, a status report with a
/// `ReportNow` command, and ends the stream after a command result.
struct EchoController;

#[tonic::async_trait]
impl AgentService for EchoController {
    type ConnectStream = BoxStream<ControllerMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let reply = match msg.kind {
                    Some(agent_message::Kind::Hello(hello)) => {
                        let machine = hello.facts.map(|f| f.hostname).unwrap_or_default();
                        let mut spec = sample::machine_spec(hello.held_generation + 1);
                        spec.machine = machine;
                        controller_message::Kind::DesiredSpec(DesiredSpec { spec: Some(spec) })
                    }
                    Some(agent_message::Kind::Status(report)) => {
                        controller_message::Kind::Command(Command {
                            command_id: format!("report-{}", report.generation),
                            action: Some(command::Action::ReportNow(ReportNow {})),
                        })
                    }
                    Some(agent_message::Kind::CommandResult(_)) => break,
                    Some(
                        agent_message::Kind::LogData(_) | agent_message::Kind::ArtifactPush(_),
                    ) => continue,
                    None => {
                        let _ = tx
                            .send(Err(Status::invalid_argument("empty message")))
                            .await;
                        break;
                    }
                };
                if tx
                    .send(Ok(ControllerMessage { kind: Some(reply) }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// An in-memory artifact store; serves `Fetch` in `chunk_size` pieces.
#[derive(Default)]
struct MemoryArtifacts {
    blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    chunk_size: usize,
}

fn not_found(sha256: &str) -> Status {
    apim_proto::status_with_details(
        tonic::Code::NotFound,
        format!("no artifact {sha256}"),
        &ErrorDetails {
            errors: vec![ErrorDetail {
                code: "artifact.not_found".into(),
                message: format!("no artifact {sha256}"),
                hint: "upload it with apimctl apply".into(),
                ..Default::default()
            }],
        },
    )
}

#[tonic::async_trait]
impl ArtifactService for MemoryArtifacts {
    type FetchStream = BoxStream<Chunk>;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let FetchRequest { sha256, offset, .. } = request.into_inner();
        let data = self
            .blobs
            .lock()
            .expect("lock")
            .get(&sha256)
            .cloned()
            .ok_or_else(|| not_found(&sha256))?;
        let start = usize::try_from(offset).map_err(|_| Status::out_of_range("offset"))?;
        if start > data.len() {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the end ({} bytes)",
                data.len()
            )));
        }
        let chunks: Vec<Result<Chunk, Status>> = data[start..]
            .chunks(self.chunk_size)
            .enumerate()
            .map(|(i, piece)| {
                Ok(Chunk {
                    offset: (start + i * self.chunk_size) as u64,
                    data: piece.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let sha256 = request.into_inner().sha256;
        let blobs = self.blobs.lock().expect("lock");
        let data = blobs.get(&sha256).ok_or_else(|| not_found(&sha256))?;
        Ok(Response::new(StatResponse {
            size: data.len() as u64,
        }))
    }

    async fn upload(
        &self,
        request: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("the first chunk must carry the header"))?;
        let mut data = first.data;
        while let Some(chunk) = inbound.message().await? {
            if chunk.header.is_some() {
                return Err(Status::invalid_argument("header on a later chunk"));
            }
            data.extend_from_slice(&chunk.data);
        }
        let digest = hex(&Sha256::digest(&data));
        if data.len() as u64 != header.size || digest != header.sha256 {
            return Err(Status::invalid_argument("size or sha256 mismatch"));
        }
        let already_present = self
            .blobs
            .lock()
            .expect("lock")
            .insert(digest.clone(), data)
            .is_some();
        Ok(Response::new(UploadResponse {
            sha256: digest,
            size: header.size,
            already_present,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running server on 127.0.0.1:0 with both services; shut down on drop of `_shutdown`.
struct TestServer {
    addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

impl TestServer {
    async fn start(chunk_size: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let artifacts = MemoryArtifacts {
            chunk_size,
            ..Default::default()
        };
        tokio::spawn(
            Server::builder()
                .add_service(AgentServiceServer::new(EchoController))
                .add_service(ArtifactServiceServer::new(artifacts))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                }),
        );
        Self {
            addr,
            _shutdown: shutdown,
        }
    }

    async fn channel(&self) -> Channel {
        let endpoint =
            Endpoint::from_shared(format!("http://{}", self.addr)).expect("valid endpoint");
        within("connect", endpoint.connect())
            .await
            .expect("connect to the test server")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connect_stream_round_trip() {
    let server = TestServer::start(1024).await;
    let mut client = AgentServiceClient::new(server.channel().await);

    let (to_controller, outbound) = mpsc::channel(4);
    let mut inbound = within("Connect", client.connect(ReceiverStream::new(outbound)))
        .await
        .expect("Connect")
        .into_inner();

    let hello = Hello {
        agent_version: "0.1.0".into(),
        facts: Some(sample::facts()),
        held_generation: 4,
    };
    let send = |kind| AgentMessage { kind: Some(kind) };
    to_controller
        .send(send(agent_message::Kind::Hello(hello)))
        .await
        .expect("send Hello");

    let reply = within("DesiredSpec", inbound.message())
        .await
        .expect("stream ok")
        .expect("a message");
    let Some(controller_message::Kind::DesiredSpec(DesiredSpec { spec: Some(spec) })) = reply.kind
    else {
        panic!("expected a DesiredSpec, got {reply:?}");
    };
    let mut expected = sample::machine_spec(5);
    expected.machine = "vm-gw-1".into();
    assert_eq!(spec, expected, "the spec survives the wire unchanged");

    to_controller
        .send(send(agent_message::Kind::Status(StatusReport {
            generation: 5,
            nodes: vec![NodeStatus {
                node: "gw-1".into(),
                phase: NodePhase::Fetching.into(),
                step: "fetched 1 MiB of 3 MiB".into(),
                generation: 5,
                phase_since: Some(sample::timestamp()),
                ..Default::default()
            }],
            facts: None,
            destroy_error: String::new(),
            services: Vec::new(),
        })))
        .await
        .expect("send StatusReport");
    let reply = within("Command", inbound.message())
        .await
        .expect("stream ok")
        .expect("a message");
    let Some(controller_message::Kind::Command(cmd)) = reply.kind else {
        panic!("expected a Command, got {reply:?}");
    };
    assert_eq!(cmd.command_id, "report-5");
    assert_eq!(cmd.action, Some(command::Action::ReportNow(ReportNow {})));

    to_controller
        .send(send(agent_message::Kind::CommandResult(CommandResult {
            command_id: cmd.command_id,
            ok: true,
            message: "reported".into(),
        })))
        .await
        .expect("send CommandResult");
    let end = within("end of stream", inbound.message())
        .await
        .expect("clean end");
    assert_eq!(
        end, None,
        "the controller closes the stream after the result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_upload_stat_and_resumed_fetch() {
    const CHUNK: usize = 4096;
    let server = TestServer::start(CHUNK).await;
    let mut client = ArtifactServiceClient::new(server.channel().await);

    // Deterministic pseudo-random content, not a multiple of the chunk size.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..50_001)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let sha256 = hex(&Sha256::digest(&data));

    // Unknown digest: NOT_FOUND with the package's ErrorDetails attached.
    let err = within(
        "Stat",
        client.stat(StatRequest {
            sha256: sha256.clone(),
        }),
    )
    .await
    .expect_err("not stored yet");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let details = apim_proto::error_details(&err).expect("details attached");
    assert_eq!(details.errors[0].code, "artifact.not_found");

    // Upload in three messages; only the first carries the header.
    let mut messages: Vec<UploadChunk> = data
        .chunks(20_000)
        .map(|piece| UploadChunk {
            header: None,
            data: piece.to_vec(),
        })
        .collect();
    messages[0].header = Some(UploadHeader {
        sha256: sha256.clone(),
        size: data.len() as u64,
        name: "wso2am-3.2.0.zip".into(),
    });
    let uploaded = within("Upload", client.upload(tokio_stream::iter(messages)))
        .await
        .expect("Upload")
        .into_inner();
    assert_eq!(
        uploaded,
        UploadResponse {
            sha256: sha256.clone(),
            size: data.len() as u64,
            already_present: false,
        }
    );

    let stat = within(
        "Stat",
        client.stat(StatRequest {
            sha256: sha256.clone(),
        }),
    )
    .await
    .expect("Stat")
    .into_inner();
    assert_eq!(stat.size, data.len() as u64);

    // Resume from an offset that is not chunk-aligned, as an agent does after a broken download.
    let offset = 12_345usize;
    let mut stream = within(
        "Fetch",
        client.fetch(FetchRequest {
            sha256: sha256.clone(),
            offset: offset as u64,
            limit: 0,
        }),
    )
    .await
    .expect("Fetch")
    .into_inner();
    let mut received = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = within("Chunk", stream.message()).await.expect("chunk") {
        assert_eq!(
            chunk.offset,
            (offset + received.len()) as u64,
            "contiguous offsets"
        );
        assert!(chunk.data.len() <= CHUNK);
        received.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert_eq!(received.as_slice(), &data[offset..]);
    assert_eq!(chunks, (data.len() - offset).div_ceil(CHUNK));

    // Fetching from the very end yields an empty stream; past the end is OUT_OF_RANGE.
    let mut at_end = within(
        "Fetch at end",
        client.fetch(FetchRequest {
            sha256: sha256.clone(),
            offset: data.len() as u64,
            limit: 0,
        }),
    )
    .await
    .expect("Fetch at end")
    .into_inner();
    assert_eq!(within("end", at_end.message()).await.expect("ok"), None);
    let err = within(
        "Fetch past end",
        client.fetch(FetchRequest {
            sha256,
            offset: data.len() as u64 + 1,
            limit: 0,
        }),
    )
    .await
    .expect_err("past the end");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
}
