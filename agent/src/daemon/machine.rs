//! The machine: the ledgered spec and one converge task per node.
//!
//! [`Machine::accept`] ledgers a new `MachineSpec` (an older generation is refused: a stale
//! controller cannot roll the machine back), applies its hosts block, and hands each node its
//! latest target; nodes that left the spec are stopped by their task. [`Machine::load`] resumes
//! the ledgered spec at start, adopting running nodes. A destroy spec ends every node task and
//! hands the machine to [`destroy`], which takes back everything the agent put on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use apim_proto::prost::Message as _;
use apim_proto::v1::MachineSpec;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::daemon::converge::{
    ExecContext, MachineMemory, NodeExecutor, NodeTarget, prune_pack_cache, validate_node_name,
};
use crate::daemon::destroy;
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::services::{self, ServiceTarget};
use crate::daemon::supervise;
use crate::exec::hosts::{self, HostsEntry};
use crate::exec::ledger::{CommitOutcome, Generational, Ledger};

/// Name of the spec ledger in the state dir (`machine-spec.json`).
pub const LEDGER_NAME: &str = "machine-spec";

/// The ledgered form of a `MachineSpec`: its generation and its protobuf bytes (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSpec {
    /// `MachineSpec.generation`.
    pub generation: u64,
    /// The prost-encoded spec, base64.
    pub spec: String,
}

impl Generational for StoredSpec {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl StoredSpec {
    /// Encodes `spec`.
    pub fn from_spec(spec: &MachineSpec) -> Self {
        StoredSpec {
            generation: spec.generation,
            spec: base64::engine::general_purpose::STANDARD.encode(spec.encode_to_vec()),
        }
    }

    /// Decodes the spec.
    pub fn decode(&self) -> DaemonResult<MachineSpec> {
        let bad = |reason: String| DaemonError::Config {
            reason: format!("ledgered spec generation {}: {reason}", self.generation),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.spec)
            .map_err(|e| bad(e.to_string()))?;
        MachineSpec::decode(bytes.as_slice()).map_err(|e| bad(e.to_string()))
    }
}

struct ServiceHandle {
    tx: watch::Sender<Option<Arc<ServiceTarget>>>,
    task: JoinHandle<()>,
}

struct NodeHandle {
    tx: watch::Sender<Option<Arc<NodeTarget>>>,
    task: JoinHandle<()>,
}

/// The machine: the ledger and the node tasks.
pub struct Machine {
    ctx: Arc<ExecContext>,
    ledger: Ledger<StoredSpec>,
    nodes: BTreeMap<String, NodeHandle>,
    services: BTreeMap<String, ServiceHandle>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("generation", &self.ledger.generation())
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Machine {
    /// Loads the ledger and dispatches the held spec (adopting running nodes); a held destroy
    /// spec that was not carried out whole is carried out now.
    pub async fn load(ctx: Arc<ExecContext>) -> DaemonResult<Self> {
        let ledger: Ledger<StoredSpec> =
            Ledger::load(&ctx.config.state_dir, LEDGER_NAME).on("machine")?;
        let held = ledger.current().map(StoredSpec::decode).transpose()?;
        let mut m = Machine {
            ctx,
            ledger,
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        match held {
            Some(spec) if spec.destroy => {
                if destroy::pending(&m.ctx.config.state_dir) {
                    tracing::warn!(
                        generation = spec.generation,
                        "finishing an interrupted destroy"
                    );
                    m.destroy(&spec).await;
                } else {
                    m.ctx.board.set_generation(spec.generation);
                }
            }
            Some(spec) => {
                tracing::info!(generation = spec.generation, "resuming the ledgered spec");
                m.dispatch(&spec)?;
            }
            None => {}
        }
        Ok(m)
    }

    /// The held spec, decoded (none before the first).
    pub fn held_spec(&self) -> Option<MachineSpec> {
        self.ledger.current()?.decode().ok()
    }

    /// The held spec's node `name`, if the held spec has it.
    pub fn node_spec(&self, name: &str) -> Option<apim_proto::v1::NodeSpec> {
        let spec = self.ledger.current()?.decode().ok()?;
        spec.nodes.into_iter().find(|n| n.name == name)
    }

    /// Ends every node task (each stops its node), then takes everything back ([`destroy`]).
    /// The board says how it went: the destroy spec's generation with no nodes when it was
    /// carried out whole, else the error (the next destroy spec or agent start tries again).
    async fn destroy(&mut self, spec: &MachineSpec) {
        let timings = &self.ctx.config.timings;
        let bound = timings.stop_grace + std::time::Duration::from_secs(60);
        let handles = std::mem::take(&mut self.nodes);
        let ends = handles.into_iter().map(|(name, h)| async move {
            h.tx.send_replace(None);
            let mut task = h.task;
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                tracing::warn!(node = %name, "node task did not end in time; ending it");
                task.abort();
                let _ = task.await;
            }
        });
        futures::future::join_all(ends).await;
        // Managed services stop too (their folders stay: the agent keeps no record of them).
        for (name, h) in std::mem::take(&mut self.services) {
            h.tx.send_replace(None);
            let mut task = h.task;
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                tracing::warn!(service = %name, "service task did not end in time; ending it");
                task.abort();
                let _ = task.await;
            }
        }
        self.ctx.board.retain_services(&[]);
        match destroy::carry_out(&self.ctx).await {
            Ok(()) => {
                self.ctx.board.clear();
                self.ctx.board.set_destroy_error("");
                self.ctx.board.set_generation(spec.generation);
                tracing::warn!(
                    generation = spec.generation,
                    "machine destroyed: nodes stopped, trees, packs and hosts block removed"
                );
            }
            Err(e) => self.ctx.board.set_destroy_error(&e),
        }
    }

    /// The `java_home` of the held spec's first node (for the machine facts), if any.
    pub fn held_java_home(&self) -> Option<String> {
        self.ledger
            .current()
            .and_then(|s| s.decode().ok())
            .and_then(|s| s.nodes.first().map(|n| n.java_home.clone()))
    }

    /// The held generation (0: none).
    pub fn held_generation(&self) -> u64 {
        self.ledger.generation().unwrap_or(0)
    }

    /// Ledgers `spec` and converges to it (a destroy spec: carries it out before returning).
    /// `Ok(false)`: the same generation with the same content was already held (nothing
    /// changes). An older generation is refused.
    pub async fn accept(&mut self, spec: MachineSpec) -> DaemonResult<bool> {
        if spec.machine != self.ctx.config.machine {
            return Err(DaemonError::WrongMachine {
                spec_machine: spec.machine,
                machine: self.ctx.config.machine.clone(),
            });
        }
        let offered = spec.generation;
        if spec.destroy && self.ledger.generation().is_none_or(|held| held < offered) {
            // Kept before the ledger forgets it: how to stop each node, even after a restart.
            destroy::remember(&self.ctx.config.state_dir, self.ledger.current())?;
        }
        match self.ledger.commit(StoredSpec::from_spec(&spec)) {
            Ok(CommitOutcome::Unchanged) => Ok(false),
            Ok(CommitOutcome::Committed { previous }) => {
                tracing::info!(generation = offered, ?previous, "accepted machine spec");
                if spec.destroy {
                    self.destroy(&spec).await;
                } else {
                    destroy::forget(&self.ctx.config.state_dir);
                    self.ctx.board.set_destroy_error("");
                    self.dispatch(&spec)?;
                }
                Ok(true)
            }
            Err(source) => Err(DaemonError::GenerationRefused { offered, source }),
        }
    }

    fn dispatch(&mut self, spec: &MachineSpec) -> DaemonResult<()> {
        self.ctx.board.set_generation(spec.generation);
        let mut entries = Vec::new();
        for h in &spec.hosts_block {
            let ip = h.address.parse().map_err(|_| DaemonError::BadSpec {
                node: "machine".into(),
                reason: format!("hosts_block address {:?} is not an IP address", h.address),
            })?;
            entries.push(HostsEntry::new(ip, h.names.iter().cloned()));
        }
        let change = hosts::apply(&self.ctx.config.hosts_file, &entries).on("machine")?;
        tracing::debug!(?change, "hosts block");
        let mut wanted = BTreeMap::new();
        for n in &spec.nodes {
            validate_node_name(&n.name)?;
            wanted.insert(n.name.clone(), n);
        }
        // Nodes that left the spec: stop and forget (their task does it).
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(h) = self.nodes.remove(&name) {
                h.tx.send_replace(None);
                // The task ends by itself after stopping the node.
                drop(h.task);
            }
        }
        // The spec's packs and jars stay cached; what neither it nor a node record needs goes.
        self.ctx.fetcher.pin(spec.nodes.iter().flat_map(|n| {
            n.pack
                .iter()
                .map(|p| p.sha256.clone())
                .chain(
                    n.libs
                        .iter()
                        .filter_map(|l| Some(l.artifact.as_ref()?.sha256.clone())),
                )
                .collect::<Vec<_>>()
        }));
        prune_pack_cache(&self.ctx);
        self.dispatch_services(spec)?;
        let machine_memory = MachineMemory::of(spec);
        for (name, node) in wanted {
            let target = Arc::new(NodeTarget {
                generation: spec.generation,
                spec: node.clone(),
                machine_memory: machine_memory.clone(),
                hosts: entries.clone(),
            });
            match self.nodes.get(&name) {
                Some(h) => {
                    h.tx.send_if_modified(|cur| {
                        if cur.as_deref() == Some(&*target) {
                            false
                        } else {
                            *cur = Some(Arc::clone(&target));
                            true
                        }
                    });
                }
                None => {
                    let exec = NodeExecutor::load(&name, Arc::clone(&self.ctx))?;
                    let (tx, rx) = watch::channel(Some(target));
                    let task = tokio::spawn(supervise::node_loop(
                        exec,
                        rx,
                        self.ctx.config.timings.clone(),
                    ));
                    self.nodes.insert(name, NodeHandle { tx, task });
                }
            }
        }
        Ok(())
    }

    /// Hands each managed service its target; services that left the spec are stopped.
    fn dispatch_services(&mut self, spec: &MachineSpec) -> DaemonResult<()> {
        let mut wanted = BTreeMap::new();
        for s in &spec.services {
            if !services::valid_name(&s.name) {
                return Err(DaemonError::BadSpec {
                    node: "machine".into(),
                    reason: format!("service name {:?} is not [a-z0-9-]{{1,63}}", s.name),
                });
            }
            let root = self.ctx.config.rooted(&s.name, &s.root)?;
            wanted.insert(s.name.clone(), (s, root));
        }
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(h) = self.services.remove(&name) {
                h.tx.send_replace(None);
                drop(h.task);
            }
        }
        let names: Vec<String> = wanted.keys().cloned().collect();
        self.ctx.board.retain_services(&names);
        for (name, (s, root)) in wanted {
            let target = Arc::new(ServiceTarget {
                generation: spec.generation,
                spec: s.clone(),
            });
            match self.services.get(&name) {
                Some(h) => {
                    h.tx.send_replace(Some(target));
                }
                None => {
                    let (tx, rx) = watch::channel(Some(target));
                    let task =
                        tokio::spawn(services::service_loop(Arc::clone(&self.ctx), root, rx));
                    self.services.insert(name, ServiceHandle { tx, task });
                }
            }
        }
        Ok(())
    }

    /// Ends every node task without stopping the nodes (they keep running; the next agent
    /// run adopts them).
    pub async fn shutdown(&mut self) {
        for (_, h) in std::mem::take(&mut self.services) {
            drop(h.tx);
            h.task.abort();
            let _ = h.task.await;
        }
        for (_, h) in std::mem::take(&mut self.nodes) {
            drop(h.tx);
            h.task.abort();
            let _ = h.task.await;
        }
    }
}
