//! What the store keeps: plan generations, agents, artifacts and rollouts.

use std::collections::{BTreeMap, BTreeSet};

use apim_proto::v1::RolloutState;
use serde::{Deserialize, Serialize};

/// A stored plan generation. `secrets` holds the resolved secret values (SECRET).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPlan {
    /// The generation number (1, 2, …).
    pub generation: u64,
    /// Who applied it (the operator certificate's name).
    pub author: String,
    /// When, unix seconds.
    pub created_at: i64,
    /// The plan's path on the operator's side (messages only).
    pub plan_path: String,
    /// The plan text.
    pub plan_toml: String,
    /// The resolved secrets, keyed as in `ApplyRequest.resolved_secrets`. SECRET.
    pub secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for StoredPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPlan")
            .field("generation", &self.generation)
            .field("author", &self.author)
            .field("created_at", &self.created_at)
            .field("plan_path", &self.plan_path)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What the operator asked of nodes beyond the plan (`apimctl stop | start | restart`), stored
/// with each generation and carried to the next, so a stopped node stays stopped through later
/// applies and a restarted one is not restarted again by them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Nodes stopped by the operator.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub stopped: BTreeSet<String>,
    /// Each restarted node's counter (`NodeSpec.restart_seq`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restarts: BTreeMap<String, u64>,
}

impl RunState {
    /// Only what concerns `nodes` (a plan's nodes): a node that left the plan is forgotten.
    pub fn retain_nodes(&mut self, nodes: &BTreeSet<String>) {
        self.stopped.retain(|n| nodes.contains(n));
        self.restarts.retain(|n, _| nodes.contains(n));
    }
}

/// What the store keeps about an enrolled agent (its live session is not persisted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredAgent {
    /// Unexpired certificate serials → not_after (unix seconds).
    pub serials: BTreeMap<String, i64>,
    /// The newest certificate's serial.
    pub cert_serial: Option<String>,
    /// The newest certificate's expiry, unix seconds.
    pub cert_not_after: Option<i64>,
    /// When last heard from, unix milliseconds.
    pub last_seen_ms: Option<i64>,
    /// Last facts, prost-encoded and hex.
    pub facts: Option<String>,
    /// The generation it held at its last `Hello`.
    pub held_generation: u64,
    /// Last status report, prost-encoded and hex.
    pub last_status: Option<String>,
    /// The controller holding its stream when this was written (several controllers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
}

/// One artifact of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Original file name.
    pub name: String,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Staging changed nodes on every machine in parallel.
    Staging,
    /// Releasing nodes tier by tier.
    Starting,
    /// Every changed node is healthy on the new generation.
    Succeeded,
    /// A node failed and the rollout halted.
    Failed,
    /// A node failed; the previous specs are being pushed again.
    RollingBack,
    /// The previous specs were pushed again.
    RolledBack,
    /// Not a rollout: `apimctl destroy` was recorded (its machines were sent destroy specs).
    Destroyed,
}

impl Phase {
    /// Whether the engine still has work to do.
    pub fn active(self) -> bool {
        matches!(self, Phase::Staging | Phase::Starting | Phase::RollingBack)
    }

    /// The wire state.
    pub fn wire(self) -> RolloutState {
        match self {
            Phase::Staging => RolloutState::Staging,
            Phase::Starting => RolloutState::Starting,
            Phase::Succeeded => RolloutState::Succeeded,
            Phase::Failed => RolloutState::Failed,
            Phase::RollingBack => RolloutState::RollingBack,
            Phase::RolledBack => RolloutState::RolledBack,
            Phase::Destroyed => RolloutState::Destroyed,
        }
    }
}

/// The progress of one node in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    /// The node's machine.
    pub machine: String,
    /// The node's role.
    pub role: String,
    /// Whether the node's configuration or pack changes (only changed nodes are staged and
    /// released).
    pub changed: bool,
    /// The target `config_digest`.
    pub target_digest: String,
    /// When the node was released (unix ms); `None` until then.
    pub released_at_ms: Option<i64>,
    /// The machine generation that released it.
    pub release_generation: u64,
    /// Whether it is finished: HEALTHY on the target digest and, for a role behind a load
    /// balancer, served by it again since.
    pub done: bool,
    /// When it was first seen HEALTHY on the target digest (unix ms, controller clock): the
    /// balancers fronting its role must answer for the role with a probe newer than this.
    #[serde(default)]
    pub healthy_at_ms: Option<i64>,
}

/// One rollout, persisted after every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The rollout's id.
    pub id: String,
    /// The plan generation rolled out.
    pub generation: u64,
    /// Where it is.
    pub state: Phase,
    /// The tier being started.
    pub tier: u32,
    /// A human-readable summary (the failed node and why).
    pub message: String,
    /// `halt` or `rollback`.
    pub rollback: bool,
    /// Most nodes released and not yet healthy at once.
    pub max_parallel: u32,
    /// How long a released node may take to become healthy, seconds.
    pub health_timeout_s: u64,
    /// Start tiers (node names).
    pub tiers: Vec<Vec<String>>,
    /// Roles that had running nodes before this rollout (their nodes restart one at a time).
    pub ha_roles: BTreeSet<String>,
    /// Every node of the target plan.
    pub nodes: BTreeMap<String, NodeProgress>,
    /// Machines whose spec this rollout changes (including machines that lose every node),
    /// with the generation of their staging push (0 until pushed).
    pub machines: BTreeMap<String, u64>,
    /// When every tier was done (unix ms): from then on the rollout waits, at most its health
    /// timeout, for every role a balancer fronts to be served before it succeeds.
    #[serde(default)]
    pub settled_at_ms: Option<i64>,
}
