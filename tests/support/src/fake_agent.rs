//! Fake agents that speak the real agent protocol over mTLS (the TLS client of
//! `apim_certs::tls`) and behave like agents without touching files: staged, starting, healthy,
//! or failing on demand; a controller restart or a cut link is reconnected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apim_certs::tls::{self, ControllerEndpoint};
use apim_proto::prost_types::Timestamp;
use apim_proto::v1::{
    AgentMessage, CommandResult, DesiredRun, Drift, Hello, MachineSpec, NodePhase, NodeStatus,
    StatusReport, agent_message, agent_service_client::AgentServiceClient, command,
    controller_message,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::ca::Creds;
use crate::controller::Controller;

/// What happened on a fake agent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node (re)started with this config digest.
    Started {
        /// The node.
        node: String,
        /// Its `config_digest`.
        digest: String,
    },
}

/// How a fake agent misbehaves.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Nodes that report FAILED when started.
    pub fail: BTreeSet<String>,
    /// Nodes that report FAILED when started on any configuration but this digest.
    pub fail_unless: BTreeMap<String, String>,
    /// Nodes that stay STARTING forever.
    pub hang: BTreeSet<String>,
    /// Nodes whose files drifted: reported while they run; a (re)start writes their files
    /// again, as the real agent's converge does, and clears it.
    pub drift: BTreeMap<String, Vec<Drift>>,
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
    /// How it misbehaves (change at any time; takes effect on the next spec).
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
    /// Enrols `machine` with the controller's CA (as `Enroll` would) and starts its loop. Its
    /// facts report no memory size (the controller's memory pre-flight skips it).
    pub fn start(
        c: &Controller,
        machine: &str,
        log: Arc<Mutex<Vec<(String, Event)>>>,
    ) -> FakeAgent {
        Self::start_with_memory(c, machine, log, 0)
    }

    /// [`FakeAgent::start`] for a machine whose facts say it has `memory_bytes` of memory.
    pub fn start_with_memory(
        c: &Controller,
        machine: &str,
        log: Arc<Mutex<Vec<(String, Event)>>>,
        memory_bytes: u64,
    ) -> FakeAgent {
        let creds = c.agent_creds(machine);
        let faults = Arc::new(Mutex::new(Faults::default()));
        let held = Arc::new(Mutex::new(None));
        let (online, online_rx) = watch::channel(true);
        let (nudge, nudge_rx) = watch::channel(0u64);
        let ctx = AgentCtx {
            machine: machine.to_string(),
            memory_bytes,
            ca_pem: c.ca_pem(),
            creds,
            endpoint: c.endpoint.clone(),
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

    /// Makes `node` report `drift` (empty: none) from its next report on.
    pub fn set_drift(&self, node: &str, drift: Vec<Drift>) {
        let mut f = self.faults.lock().unwrap();
        if drift.is_empty() {
            f.drift.remove(node);
        } else {
            f.drift.insert(node.to_owned(), drift);
        }
        drop(f);
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
    memory_bytes: u64,
    ca_pem: String,
    creds: Creds,
    endpoint: ControllerEndpoint,
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
            let config =
                tls::client_config(&self.ca_pem, Some(self.creds.identity())).expect("cfg");
            let Ok(channel) =
                tls::connect(&self.endpoint, Arc::new(config), Duration::from_secs(5)).await
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
                            memory_bytes: self.memory_bytes,
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
                        Ok(Some(m)) => match m.kind {
                            Some(controller_message::Kind::DesiredSpec(d)) => {
                                if let Some(spec) = d.spec {
                                    self.converge(spec);
                                    if tx.send(self.report()).await.is_err() { break; }
                                }
                            }
                            // Drift checks and report requests: a fresh report, then the result.
                            Some(controller_message::Kind::Command(c)) => {
                                let known = matches!(
                                    c.action,
                                    Some(command::Action::CheckDrift(_) | command::Action::ReportNow(_))
                                );
                                let result = AgentMessage {
                                    kind: Some(agent_message::Kind::CommandResult(CommandResult {
                                        command_id: c.command_id,
                                        ok: known,
                                        message: if known { "checked".into() } else { "not supported".into() },
                                    })),
                                };
                                if tx.send(self.report()).await.is_err()
                                    || tx.send(result).await.is_err()
                                {
                                    break;
                                }
                            }
                            // It runs no node whose folders are shared.
                            Some(controller_message::Kind::ArtifactUpdate(_)) | None => {}
                        },
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
                    self.faults.lock().unwrap().drift.remove(&n.name);
                    self.log.lock().unwrap().push((
                        self.machine.clone(),
                        Event::Started {
                            node: n.name.clone(),
                            digest: digest.clone(),
                        },
                    ));
                    let wrong_digest = faults
                        .fail_unless
                        .get(&n.name)
                        .is_some_and(|d| *d != digest);
                    if faults.fail.contains(&n.name) || wrong_digest {
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
        let drift = self.faults.lock().unwrap().drift.clone();
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
                        drift: if r.running.is_some() {
                            drift.get(name).cloned().unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                        // Its nodes share no folders.
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
