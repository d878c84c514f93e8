//! Agents given several controller addresses: the real agent daemon against the real
//! controller. A dead first address (connection refused) is passed over, for enrollment and for
//! the stream; a stream dropped on the first address (a TCP relay in front of the controller,
//! killed) is resumed on the next address with a new `Hello`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apim_agent::daemon::config::{AgentConfig, Timings, parse_endpoints};
use apim_certs::tls::ControllerEndpoint;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use apim_testkit::controller::Controller as Harness;
use apim_testkit::specs::spec;
use apim_testkit::wait::{eventually, within};

/// A `host:port` where nothing listens (a port just released).
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// A plain TCP relay to `target` (TLS passes through it untouched); killing it closes the
/// listener and every relayed connection at once.
struct Relay {
    address: String,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let address = listener.local_addr().expect("addr").to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            // Dropped with the task: every relayed connection goes with it.
            let mut relayed = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                relayed.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            address,
            connections,
            task,
        }
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A running agent daemon; dropping the sender stops it.
struct Agent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<apim_agent::daemon::error::DaemonResult<()>>,
}

impl Agent {
    /// Starts the agent for `machine` with the controller list `addresses`, enrolling with
    /// `token`, its files under `dir`.
    fn start(dir: &std::path::Path, machine: &str, addresses: &str, token: String) -> Agent {
        let endpoints = parse_endpoints(addresses, None).expect("address list");
        let mut config = AgentConfig::new(endpoints[0].clone(), machine);
        config.endpoints = endpoints;
        config.state_dir = dir.join("state");
        config.install_root = dir.join("root");
        config.hosts_file = dir.join("hosts");
        std::fs::write(&config.hosts_file, "127.0.0.1 localhost\n").expect("hosts");
        config.token = Some(token);
        config.timings = Timings {
            report_interval: Duration::from_secs(2),
            reconnect_base: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            ..Timings::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(apim_agent::daemon::session::run(config, async {
            let _ = stopped.await;
        }));
        Agent { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within("agent stop", self.task)
            .await
            .expect("agent task")
            .expect("agent ran cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_passes_over_a_dead_address_to_enroll_and_report() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = h.token_for("vm-a", 0).await;
    let list = format!("{}, {}", dead_address(), h.addr);
    let agent = Agent::start(dir.path(), "vm-a", &list, token);
    eventually("vm-a enrolled, connected and reporting", || {
        h.state
            .agent("vm-a")
            .is_some_and(|a| a.connected && a.last_status.is_some())
    })
    .await;
    agent.stop().await;
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_on_the_first_address_resumes_on_the_next() {
    let h = Harness::start().await;
    let relay = Relay::start(h.addr).await;
    // The relay's address dials 127.0.0.1 like the controller's: the server name check holds.
    assert!(ControllerEndpoint::parse(&relay.address).is_ok());
    let dir = tempfile::tempdir().expect("tempdir");
    let token = h.token_for("vm-a", 0).await;
    let list = format!("{},{}", relay.address, h.addr);
    let agent = Agent::start(dir.path(), "vm-a", &list, token);
    h.state.set_desired_spec(spec("vm-a", 1, &[]));
    // Enrolled, connected and holding generation 1, all through the relay: its first Hello
    // said generation 0.
    eventually("vm-a holds generation 1", || {
        h.state.agent("vm-a").is_some_and(|a| {
            a.connected
                && a.held_generation == 0
                && a.last_status.as_ref().is_some_and(|s| s.generation == 1)
        })
    })
    .await;
    assert!(
        relay.connections.load(Ordering::SeqCst) >= 2,
        "enrolled and connected via the relay"
    );

    // The first address goes away with the stream on it: only a new Hello on the second
    // address can say generation 1.
    relay.kill().await;
    eventually("vm-a says Hello again on the second address", || {
        h.state
            .agent("vm-a")
            .is_some_and(|a| a.connected && a.held_generation == 1)
    })
    .await;
    agent.stop().await;
    h.shutdown().await.expect("clean shutdown");
}
