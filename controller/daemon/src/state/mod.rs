//! [`ControllerState`]: what the gRPC server knows, kept in memory for speed and written
//! through to the [`Store`] on every change, so a controller restart loses nothing
//! ([`ControllerState::open`] loads it back).
//!
//! It holds the control-plane CA, the join tokens, the revocation list, every enrolled agent
//! (its certificates, connection, facts, last status) and the desired [`MachineSpec`] of every
//! machine. Desired specs and revocations are published through `tokio::sync::watch`, so an
//! open agent stream reacts the moment either changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use apim_certs::{ControlPlaneCa, PeerIdentity, RevocationList, TokenRegistry};
use apim_proto::v1::{CommandResult, MachineFacts, MachineSpec, StatusReport, command};
use tokio::sync::{oneshot, watch};

use crate::artifacts::ArtifactStore;
use crate::store::{ArtifactRow, Store};

mod agents;
mod credentials;
mod error;
mod folders;
mod generations;
mod ha;
mod layout;
mod members;
mod refusals;
mod relay;
mod shared_artifacts;

pub use agents::AgentSnapshot;
use agents::{AgentRecord, date_probes, node_names, snapshot};
pub use error::StateError;
pub use ha::{Identity, LEASE_TTL};
pub use layout::{Layout, layout_of};
pub use members::Member;
use refusals::RefusalLog;
pub use refusals::Refused;
pub use relay::{MAX_TAILS, MAX_TAILS_PER_AGENT, RELAY_BUFFER, TailEnd, TailStream};

/// The latest desired spec of one machine, as seen by its agent's stream.
pub type SpecWatch = watch::Receiver<Option<Arc<MachineSpec>>>;

/// The controller's in-memory state, shared by every service.
#[derive(Debug)]
pub struct ControllerState {
    ca: ControlPlaneCa,
    artifacts: ArtifactStore,
    pki_dir: std::path::PathBuf,
    store: Store,
    inner: Mutex<Inner>,
    /// Bumped on every change an operator can see (status, sessions, specs, rollouts).
    changes: watch::Sender<u64>,
    /// Bumped on every revocation; open streams re-check their caller when it changes.
    revocations: watch::Sender<u64>,
    next_session: AtomicU64,
    refusals: RefusalLog,
    /// Held shared while a plan is prepared and stored (its artifacts checked, then needed),
    /// exclusively while the artifact store is pruned: a prune never removes what an apply
    /// has just checked.
    artifact_gate: tokio::sync::RwLock<()>,
    /// One artifact taken from the store at a time (several controllers).
    materializing: tokio::sync::Mutex<()>,
    /// Command queues of connected agents, and the log streams relayed from them.
    relays: relay::Relays,
    /// The target specs of the latest rollout read, decoded once: a rollout's targets never
    /// change once stored, and `Status` and the engine read them on every change.
    targets: Mutex<Option<(String, Targets)>>,
    /// Several controllers on one store: identity, lease, the revision this view includes.
    ha: ha::Ha,
    /// The machines and node names of the latest rollout `Status` showed.
    layout: layout::LayoutCache,
    /// Which plan generation each published spec generation came from (for `Status`).
    plan_generations: generations::PlanGenerations,
    /// The newest shared-folder revision known here (pushes here, other controllers' seen by
    /// [`ControllerState::catch_up`]): agent streams send what their groups gained.
    folders: watch::Sender<u64>,
}

/// A rollout's target spec of every machine, shared.
pub type Targets = Arc<BTreeMap<String, MachineSpec>>;

#[derive(Debug, Default)]
struct Inner {
    tokens: TokenRegistry,
    revoked: RevocationList,
    agents: BTreeMap<String, AgentRecord>,
    desired: BTreeMap<String, watch::Sender<Option<Arc<MachineSpec>>>>,
    /// Per machine, the id of its current stream; an older stream ends when it changes.
    sessions: BTreeMap<String, watch::Sender<u64>>,
    /// Per machine, the ids of commands sent and not answered yet.
    issued_commands: BTreeMap<String, BTreeSet<String>>,
    /// Per (machine, command id), who waits for the result.
    command_waiters: BTreeMap<(String, String), oneshot::Sender<CommandResult>>,
    /// Per machine, the packs of the spec its current one replaced (still fetchable: a node
    /// may be mid-way through them, and a rollback returns to them).
    previous_packs: BTreeMap<String, BTreeSet<String>>,
}

/// The pack digests a spec names.
/// The artifacts a spec names: its nodes' packs and the jars placed with them.
fn packs_of(spec: &MachineSpec) -> BTreeSet<String> {
    spec.nodes
        .iter()
        .flat_map(|n| {
            n.pack
                .iter()
                .chain(n.libs.iter().filter_map(|l| l.artifact.as_ref()))
                .map(|a| a.sha256.to_ascii_lowercase())
        })
        .collect()
}

impl ControllerState {
    /// State around a loaded CA, with artifacts stored in `artifact_dir` (created 0750 if
    /// missing) and everything else in an in-memory store (lost on exit: tests and embedding).
    pub fn new(ca: ControlPlaneCa, artifact_dir: &Path) -> Result<Self, StateError> {
        let pki_dir = artifact_dir.with_file_name("pki");
        Self::open(ca, artifact_dir, &pki_dir, Store::in_memory()?)
    }

    /// State around a loaded CA and an opened store, loading what the store holds (tokens,
    /// revocations, agents, the last pushed spec of every machine). Product PKIs (one folder
    /// per cluster) live under `pki_dir`.
    pub fn open(
        ca: ControlPlaneCa,
        artifact_dir: &Path,
        pki_dir: &Path,
        store: Store,
    ) -> Result<Self, StateError> {
        let (tokens, revoked, agents, specs, revision) = store.read(|tx| {
            Ok((
                tx.tokens()?,
                tx.revocations()?,
                tx.agents()?,
                tx.specs()?,
                tx.revision()?,
            ))
        })?;
        let mut inner = Inner {
            tokens,
            revoked,
            ..Inner::default()
        };
        for (machine, stored) in agents {
            inner
                .agents
                .insert(machine, AgentRecord::from_stored(&stored));
        }
        for spec in specs {
            inner
                .desired
                .insert(spec.machine.clone(), watch::channel(Some(Arc::new(spec))).0);
        }
        Ok(ControllerState {
            ca,
            artifacts: ArtifactStore::open(artifact_dir)?,
            pki_dir: pki_dir.to_path_buf(),
            store,
            inner: Mutex::new(inner),
            changes: watch::channel(0).0,
            revocations: watch::channel(0).0,
            next_session: AtomicU64::new(1),
            refusals: RefusalLog::default(),
            artifact_gate: tokio::sync::RwLock::new(()),
            materializing: tokio::sync::Mutex::new(()),
            relays: relay::Relays::default(),
            targets: Mutex::new(None),
            ha: ha::Ha::new(revision),
            layout: Default::default(),
            plan_generations: Default::default(),
            folders: watch::channel(0).0,
        })
    }

    /// Where the product PKIs live (one folder per cluster).
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// The store behind this state.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The target specs of rollout `id` (stored once when the rollout starts, never changed),
    /// decoded from the store the first time and kept for the latest id asked.
    pub fn rollout_targets(&self, id: &str) -> Result<Targets, crate::store::StoreError> {
        let cache = || {
            self.targets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((cached, t)) = cache().as_ref()
            && cached == id
        {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(self.store.read(|tx| tx.targets(id))?);
        *cache() = Some((id.to_owned(), Arc::clone(&t)));
        Ok(t)
    }

    /// The decoded targets of rollout `id`, when they are kept.
    fn cached_targets(&self, id: &str) -> Option<Targets> {
        let cache = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .as_ref()
            .filter(|(cached, _)| cached == id)
            .map(|(_, t)| Arc::clone(t))
    }

    /// Lets go of rollout `id`'s decoded targets (it ended: the engine reads them no more).
    fn forget_targets(&self, id: &str) {
        let mut cache = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.as_ref().is_some_and(|(cached, _)| cached == id) {
            *cache = None;
        }
    }

    /// A receiver that changes whenever something an operator can see changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes [`ControllerState::changes`] watchers.
    pub fn notify_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Logs a failed write-through; the in-memory state stays authoritative until the next
    /// successful write of the same record.
    fn persist(
        &self,
        what: &'static str,
        f: impl FnOnce(&crate::store::Tx<'_>) -> Result<(), crate::store::StoreError>,
    ) {
        if let Err(e) = self.store.write(f) {
            tracing::error!(error = %e, what, "could not persist controller state");
        }
    }

    fn persist_agent(&self, inner: &mut Inner, machine: &str) {
        let me = self.ha.id();
        if let Some(r) = inner.agents.get_mut(machine) {
            r.persisted_at = Some(SystemTime::now());
            let stored = r.to_stored(&me);
            self.persist("agent", |tx| tx.save_agent(machine, &stored));
        }
    }

    /// Records an artifact that was just stored in the artifact directory.
    pub fn record_artifact(&self, header: &apim_proto::v1::UploadHeader) {
        let row = ArtifactRow {
            sha256: header.sha256.clone(),
            size: header.size,
            name: header.name.clone(),
        };
        self.persist("artifact", |tx| tx.record_artifact(&row));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The control-plane CA.
    pub fn ca(&self) -> &ControlPlaneCa {
        &self.ca
    }

    /// The content-addressed artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    // ---- desired specs ------------------------------------------------------------------

    fn spec_sender(inner: &mut Inner, machine: &str) -> watch::Sender<Option<Arc<MachineSpec>>> {
        inner
            .desired
            .entry(machine.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Sets (and stores) the desired spec of `spec.machine`; a connected agent receives it at
    /// once.
    pub fn set_desired_spec(&self, spec: MachineSpec) {
        self.persist("desired spec", |tx| tx.save_spec(&spec));
        self.publish_specs(vec![spec]);
    }

    /// Publishes specs already written to the store (inside the caller's transaction) to the
    /// agents' streams.
    pub fn publish_specs(&self, specs: Vec<MachineSpec>) {
        {
            let mut inner = self.lock();
            for spec in specs {
                self.plan_generations
                    .note(&spec.machine, spec.generation, spec.plan_generation);
                let sender = Self::spec_sender(&mut inner, &spec.machine);
                let spec = Arc::new(spec);
                let old = sender.send_replace(Some(Arc::clone(&spec)));
                if let Some(old) = old {
                    let (before, now) = (packs_of(&old), packs_of(&spec));
                    if before != now {
                        inner.previous_packs.insert(spec.machine.clone(), before);
                    }
                }
            }
        }
        self.notify_change();
    }

    /// Whether `machine`'s agent may fetch the pack `sha256`: only the packs of its current
    /// spec, of the spec that one replaced, and of the spec it runs when no rollout is in
    /// flight (what a rollback returns to).
    pub fn may_fetch(&self, machine: &str, sha256: &str) -> Result<bool, StateError> {
        let sha256 = sha256.to_ascii_lowercase();
        {
            let inner = self.lock();
            let current = inner
                .desired
                .get(machine)
                .and_then(|s| s.borrow().as_deref().map(packs_of))
                .unwrap_or_default();
            let previous = inner.previous_packs.get(machine);
            if current.contains(&sha256) || previous.is_some_and(|p| p.contains(&sha256)) {
                return Ok(true);
            }
        }
        let baseline = self.store.read(|tx| tx.baseline())?;
        Ok(baseline
            .get(machine)
            .is_some_and(|s| packs_of(s).contains(&sha256)))
    }

    /// Applies hold this shared, prunes of the artifact store exclusively (see the field).
    pub fn artifact_gate(&self) -> &tokio::sync::RwLock<()> {
        &self.artifact_gate
    }

    /// Every artifact an agent may fetch now ([`ControllerState::may_fetch`] over all
    /// machines): the packs and jars of the pushed specs, of the specs they replaced and of
    /// the baseline.
    pub fn fetchable_artifacts(&self) -> Result<BTreeSet<String>, StateError> {
        let mut out = BTreeSet::new();
        {
            let inner = self.lock();
            for s in inner.desired.values() {
                if let Some(spec) = s.borrow().as_deref() {
                    out.extend(packs_of(spec));
                }
            }
            for p in inner.previous_packs.values() {
                out.extend(p.iter().cloned());
            }
        }
        for spec in self.store.read(|tx| tx.baseline())?.values() {
            out.extend(packs_of(spec));
        }
        Ok(out)
    }

    /// The desired spec of every machine that has one, shared (not copied: with a thousand
    /// machines the specs weigh tens of MiB, and the engine reads them on every change).
    pub fn desired_specs(&self) -> BTreeMap<String, Arc<MachineSpec>> {
        let inner = self.lock();
        inner
            .desired
            .iter()
            .filter_map(|(m, s)| s.borrow().clone().map(|s| (m.clone(), s)))
            .collect()
    }

    /// The desired spec of `machine`, if any.
    pub fn desired_spec(&self, machine: &str) -> Option<MachineSpec> {
        let inner = self.lock();
        inner
            .desired
            .get(machine)
            .and_then(|sender| sender.borrow().as_deref().cloned())
    }

    /// Subscribes to `machine`'s desired spec.
    pub fn watch_spec(&self, machine: &str) -> SpecWatch {
        Self::spec_sender(&mut self.lock(), machine).subscribe()
    }

    /// Refuses a status report that names a node which belongs to another machine's desired
    /// spec and not to `machine`'s (an agent reporting as someone else).
    pub fn check_report(&self, machine: &str, report: &StatusReport) -> Result<(), StateError> {
        let inner = self.lock();
        let own: BTreeSet<String> = inner
            .desired
            .get(machine)
            .and_then(|s| s.borrow().as_ref().map(|spec| node_names(spec)))
            .unwrap_or_default();
        for status in &report.nodes {
            if own.contains(&status.node) {
                continue;
            }
            let owner = inner.desired.iter().find(|(other, sender)| {
                other.as_str() != machine
                    && sender
                        .borrow()
                        .as_ref()
                        .is_some_and(|spec| spec.nodes.iter().any(|n| n.name == status.node))
            });
            if let Some((other, _)) = owner {
                return Err(StateError::ForeignMachine {
                    identity: PeerIdentity::Agent {
                        machine: machine.to_owned(),
                    }
                    .uri(),
                    named: other.clone(),
                    what: format!("status report for node {:?}", status.node),
                });
            }
        }
        Ok(())
    }

    // ---- sessions -----------------------------------------------------------------------

    /// Registers `machine`'s stream after its `Hello`; a newer stream replaces an older one.
    /// Returns the session id and a receiver of the machine's current session id (the stream
    /// ends when it is no longer its own).
    pub fn open_session(
        &self,
        machine: &str,
        facts: Option<MachineFacts>,
        held: u64,
    ) -> (u64, watch::Receiver<u64>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let record = inner.agents.entry(machine.to_owned()).or_default();
        record.session = Some(id);
        record.last_seen = Some(SystemTime::now());
        record.held_generation = held;
        if facts.is_some() {
            record.facts = facts;
        }
        let current = inner
            .sessions
            .entry(machine.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        current.send_replace(id);
        let rx = current.subscribe();
        self.persist_agent(&mut inner, machine);
        drop(inner);
        self.notify_change();
        (id, rx)
    }

    /// Records a status report (already checked with [`ControllerState::check_report`]),
    /// keeping only what can be true: a report for an older spec generation than the last one
    /// is refused whole; statuses of nodes the machine's spec does not name, or for an older
    /// generation than the node's last, are dropped. Refusals are counted in the log.
    pub fn record_status(&self, machine: &str, mut report: StatusReport) {
        let mut inner = self.lock();
        let own = inner
            .desired
            .get(machine)
            .and_then(|s| s.borrow().as_ref().map(|spec| node_names(spec)))
            .unwrap_or_default();
        let record = inner.agents.entry(machine.to_owned()).or_default();
        record.last_seen = Some(SystemTime::now());
        let previous = record.last_status.take();
        let mut refused = Refused::default();
        let facts_before = record.facts.clone();
        if let Some(prev) = previous
            .as_ref()
            .filter(|p| p.generation > report.generation)
        {
            refused.stale_reports = 1;
            record.last_status = Some(prev.clone());
        } else {
            if let Some(facts) = report.facts.clone() {
                record.facts = Some(facts);
            }
            date_probes(&mut report, SystemTime::now());
            report.nodes.retain(|n| {
                let known = own.contains(&n.node);
                refused.unknown_nodes += usize::from(!known);
                known
            });
            for n in &mut report.nodes {
                let newer_before = previous
                    .as_ref()
                    .and_then(|p| p.nodes.iter().find(|o| o.node == n.node))
                    .filter(|o| o.generation > n.generation);
                if let Some(old) = newer_before {
                    refused.stale_nodes += 1;
                    *n = old.clone();
                }
            }
            record.last_status = Some(report);
        }
        // A report that changes nothing (the periodic one, mostly) wakes no one, and is stored
        // only to keep `last_seen` at most `agents::LAST_SEEN_LAG` behind: a thousand agents
        // report every 10 s.
        let changed = record.last_status != previous || record.facts != facts_before;
        if changed || agents::persist_due(record) {
            self.persist_agent(&mut inner, machine);
        }
        drop(inner);
        self.refusals.count(machine, refused);
        if changed {
            self.notify_change();
        }
    }

    /// Notes that `command_id` was sent to `machine`, so its result will be taken.
    pub fn command_issued(&self, machine: &str, command_id: &str) {
        self.lock()
            .issued_commands
            .entry(machine.to_owned())
            .or_default()
            .insert(command_id.to_owned());
    }

    /// Takes the result of a command issued to `machine`; `false` (and counted) for a command
    /// the controller never sent it, or one already answered.
    pub fn command_answered(&self, machine: &str, command_id: &str) -> bool {
        let mut inner = self.lock();
        if let Some(r) = inner.agents.get_mut(machine) {
            r.last_seen = Some(SystemTime::now());
        }
        let issued = inner
            .issued_commands
            .get_mut(machine)
            .is_some_and(|s| s.remove(command_id));
        drop(inner);
        if !issued {
            self.refusals.count(
                machine,
                Refused {
                    unissued_results: 1,
                    ..Refused::default()
                },
            );
        }
        issued
    }

    /// Sends `action` to `machine`'s connected agent; the receiver gets the agent's
    /// `CommandResult` (it fails when the stream closes first). `None`: the machine has no open
    /// stream, or its command queue is full.
    pub fn request(
        &self,
        machine: &str,
        action: command::Action,
    ) -> Option<oneshot::Receiver<CommandResult>> {
        let id = self.command_id(&action);
        let (tx, rx) = oneshot::channel();
        self.lock()
            .command_waiters
            .insert((machine.to_owned(), id.clone()), tx);
        if let Err(e) = self.send_command(machine, &id, action) {
            tracing::debug!(%machine, error = %e, "command not sent");
            self.lock()
                .command_waiters
                .remove(&(machine.to_owned(), id));
            return None;
        }
        Some(rx)
    }

    /// Hands an agent's `CommandResult` (already taken with
    /// [`ControllerState::command_answered`]) to whoever waits for it with
    /// [`ControllerState::request`].
    pub fn answer_waiter(&self, machine: &str, result: &CommandResult) {
        let waiter = self
            .lock()
            .command_waiters
            .remove(&(machine.to_owned(), result.command_id.clone()));
        if let Some(w) = waiter {
            let _ = w.send(result.clone());
        }
    }

    /// Unregisters a stream (only if it is still the current one).
    pub fn close_session(&self, machine: &str, session: u64) {
        let mut inner = self.lock();
        if inner
            .agents
            .get(machine)
            .is_some_and(|r| r.session == Some(session))
        {
            // Nobody will answer their requests now: the waiters learn it at once.
            let gone: Vec<(String, String)> = inner
                .command_waiters
                .keys()
                .filter(|(m, _)| m == machine)
                .cloned()
                .collect();
            for key in gone {
                inner.command_waiters.remove(&key);
                if let Some(issued) = inner.issued_commands.get_mut(machine) {
                    issued.remove(&key.1);
                }
            }
            let Some(record) = inner.agents.get_mut(machine) else {
                return;
            };
            record.session = None;
            record.last_seen = Some(SystemTime::now());
            self.persist_agent(&mut inner, machine);
            drop(inner);
            self.notify_change();
        }
    }

    // ---- views --------------------------------------------------------------------------

    /// Every enrolled agent, by machine name.
    pub fn agents(&self) -> Vec<AgentSnapshot> {
        let me = self.ha.id();
        let inner = self.lock();
        inner
            .agents
            .iter()
            .map(|(machine, r)| {
                snapshot(&inner, machine, r, &|c| self.ha.is_live_elsewhere(c, &me))
            })
            .collect()
    }

    /// One agent.
    pub fn agent(&self, machine: &str) -> Option<AgentSnapshot> {
        let me = self.ha.id();
        let inner = self.lock();
        inner
            .agents
            .get(machine)
            .map(|r| snapshot(&inner, machine, r, &|c| self.ha.is_live_elsewhere(c, &me)))
    }
}

#[cfg(test)]
mod tests {
    use apim_proto::v1::{ArtifactRef, NodeSpec};

    use super::*;

    fn spec(generation: u64, pack: &str) -> MachineSpec {
        MachineSpec {
            machine: "vm-a".into(),
            generation,
            nodes: vec![NodeSpec {
                name: "n".into(),
                pack: Some(ArtifactRef {
                    sha256: pack.repeat(64),
                    ..ArtifactRef::default()
                }),
                ..NodeSpec::default()
            }],
            ..MachineSpec::default()
        }
    }

    #[test]
    fn an_agent_may_fetch_its_current_previous_and_baseline_packs_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ControlPlaneCa::load_or_create(&dir.path().join("ca")).unwrap();
        let state = ControllerState::new(ca, &dir.path().join("artifacts")).unwrap();
        let may = |p: &str| state.may_fetch("vm-a", &p.repeat(64)).unwrap();
        assert!(!may("a"), "no spec yet");
        state
            .store()
            .write(|tx| tx.set_baseline(&[spec(1, "a")]))
            .unwrap();
        state.set_desired_spec(spec(1, "a"));
        state.set_desired_spec(spec(2, "b"));
        assert!(may("a") && may("b"), "current and previous");
        state.set_desired_spec(spec(3, "c"));
        assert!(may("a"), "the baseline's pack stays fetchable (rollback)");
        assert!(may("b") && may("c"));
        state.set_desired_spec(spec(4, "d"));
        assert!(!may("b"), "two specs ago, not the baseline");
        assert!(!state.may_fetch("vm-other", &"d".repeat(64)).unwrap());
    }
}
