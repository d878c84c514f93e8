//! `OperatorService.Logs` over real streams: the operator's request reaches the node's agent as a
//! `TailLog`, only that agent's pieces reach the operator (another machine answering for the
//! command, or pieces for a command never sent, are dropped), the agent's result ends the
//! stream, and an operator hanging up makes the controller tell the agent to stop.

use apim_proto::v1::agent_message::Kind;
use apim_proto::v1::command::Action;
use apim_proto::v1::{
    AgentMessage, Command, CommandResult, ControllerMessage, LogData, LogsRequest,
    agent_service_client::AgentServiceClient, controller_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

use apim_testkit::controller::Controller as Harness;
use apim_testkit::messages::{hello, report};
use apim_testkit::specs::spec;
use apim_testkit::wait::{eventually, within};

/// An agent's open stream.
struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<ControllerMessage>,
}

impl Agent {
    async fn connect(h: &Harness, machine: &str, held: u64) -> Agent {
        let creds = h.agent_creds(machine);
        let mut client = AgentServiceClient::new(h.channel(Some(&creds)).await);
        let (tx, rx) = mpsc::channel(8);
        tx.send(hello(held)).await.expect("hello");
        let rx = client
            .connect(ReceiverStream::new(rx))
            .await
            .expect("connect")
            .into_inner();
        Agent { tx, rx }
    }

    /// The next command (specs are skipped).
    async fn command(&mut self) -> Command {
        loop {
            let msg = within("a controller message", self.rx.message())
                .await
                .expect("stream healthy")
                .expect("stream open");
            if let Some(controller_message::Kind::Command(c)) = msg.kind {
                return c;
            }
        }
    }

    async fn send(&self, kind: Kind) {
        self.tx
            .send(AgentMessage { kind: Some(kind) })
            .await
            .expect("send");
    }

    async fn piece(&self, id: &str, text: &str) {
        self.send(Kind::LogData(LogData {
            command_id: id.into(),
            data: text.as_bytes().to_vec(),
            notice: String::new(),
        }))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_asked_agent_answers_and_hanging_up_cancels() {
    let h = Harness::start().await;
    h.state.set_desired_spec(spec("vm-a", 1, &["gw-1"]));
    h.state.set_desired_spec(spec("vm-b", 1, &["km-1"]));
    let mut a = Agent::connect(&h, "vm-a", 1).await;
    let b = Agent::connect(&h, "vm-b", 1).await;
    eventually("both agents connected", || {
        ["vm-a", "vm-b"]
            .iter()
            .all(|m| h.state.agent(m).is_some_and(|a| a.connected))
    })
    .await;
    let mut op = h.operator().await;

    // Refusals before any agent is asked.
    let unknown = op
        .logs(LogsRequest {
            node: "gw-9".into(),
            ..LogsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("gw-9"));
    for (file, lines) in [("../../../etc/passwd", 5), ("/etc/passwd", 5), ("", 10_001)] {
        let bad = op
            .logs(LogsRequest {
                node: "gw-1".into(),
                file: file.into(),
                lines,
                follow: false,
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{file} {lines}: {bad:?}");
    }

    // The asked agent gets the command; vm-b forges pieces and an end for it, vm-a sends a
    // piece for a command never sent: none of it reaches the operator.
    let mut logs = op
        .logs(LogsRequest {
            node: "gw-1".into(),
            lines: 5,
            ..LogsRequest::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let cmd = a.command().await;
    let Some(Action::TailLog(t)) = &cmd.action else {
        panic!("expected TailLog, got {cmd:?}");
    };
    assert_eq!((t.node.as_str(), t.lines, t.follow), ("gw-1", 5, false));
    b.piece(&cmd.command_id, "forged by vm-b\n").await;
    b.send(Kind::CommandResult(CommandResult {
        command_id: cmd.command_id.clone(),
        ok: false,
        message: "forged end".into(),
    }))
    .await;
    // vm-b's stream is handled in order: once this report is in, the forgeries were handled.
    b.send(report(1, &["km-1"]).kind.expect("report")).await;
    eventually("vm-b's report", || {
        h.state
            .agent("vm-b")
            .and_then(|a| a.last_status)
            .is_some_and(|r| r.generation == 1)
    })
    .await;
    a.piece("logs-999999", "never asked for\n").await;
    a.piece(&cmd.command_id, "line one\n").await;
    a.send(Kind::CommandResult(CommandResult {
        command_id: cmd.command_id.clone(),
        ok: true,
        message: "9 bytes".into(),
    }))
    .await;
    let mut got = Vec::new();
    while let Some(chunk) = within("a log piece", logs.message()).await.expect("ok") {
        got.extend(chunk.data);
    }
    assert_eq!(String::from_utf8_lossy(&got), "line one\n");

    // An agent's refusal reaches the operator as its error, escaped.
    let mut refused = op
        .logs(LogsRequest {
            node: "gw-1".into(),
            file: "nope.log".into(),
            ..LogsRequest::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let cmd = a.command().await;
    a.send(Kind::CommandResult(CommandResult {
        command_id: cmd.command_id.clone(),
        ok: false,
        message: "log file \"nope.log\" refused: no such file\u{1b}[2J".into(),
    }))
    .await;
    let e = within("the refusal", refused.message()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("vm-a: log file"), "{}", e.message());
    assert!(!e.message().contains('\u{1b}'), "escaped: {}", e.message());

    // Following, then hanging up: the agent is told to stop that command.
    let mut follow = op
        .logs(LogsRequest {
            node: "gw-1".into(),
            follow: true,
            ..LogsRequest::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let cmd = a.command().await;
    a.piece(&cmd.command_id, "following\n").await;
    let first = within("the first piece", follow.message())
        .await
        .expect("ok")
        .expect("a piece");
    assert_eq!(first.data, b"following\n");
    drop(follow);
    let cancel = a.command().await;
    let Some(Action::CancelCommand(c)) = &cancel.action else {
        panic!("expected CancelCommand, got {cancel:?}");
    };
    assert_eq!(c.command_id, cmd.command_id);
    eventually("the relay to be gone", || h.state.log_streams() == 0).await;
    h.shutdown().await.expect("clean shutdown");
}
