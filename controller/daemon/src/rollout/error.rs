//! [`RolloutError`]: what preparing, starting or driving a rollout can refuse or fail with. The
//! gRPC server turns it into a status in one place (`server::error`).

use apim_proto::v1::ErrorDetail;

use crate::artifacts::ArtifactError;
use crate::store::StoreError;

/// Why a plan was refused or a rollout could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The plan was refused; one entry per problem (with file, line and column). Nothing was
    /// stored or pushed.
    #[error("the plan was refused: {} problem(s), first: {}", errors.len(), errors.first().map_or("", |e| e.message.as_str()))]
    PlanRejected {
        /// The problems.
        errors: Vec<ErrorDetail>,
    },
    /// `expected_cluster_revision` no longer matches: the cluster changed since the plan was
    /// reviewed.
    #[error(
        "the cluster changed since the plan was reviewed (expected revision {expected}, now {actual})"
    )]
    ClusterChanged {
        /// The reviewed revision.
        expected: String,
        /// The current revision.
        actual: String,
    },
    /// A rollout is still in progress; a new apply must wait for it.
    #[error("rollout {id} is still in progress ({state})")]
    InProgress {
        /// The rollout's id.
        id: String,
        /// Its state.
        state: String,
    },
    /// There is no rollout in flight to abort (or not the one named).
    #[error("no rollout is in flight ({latest})")]
    NotInFlight {
        /// The latest rollout and its state, or that there is none.
        latest: String,
    },
    /// Rendering the plan or issuing its certificates failed.
    #[error("rendering the plan: {reason}")]
    Render {
        /// What failed.
        reason: String,
    },
    /// The store failed to read or write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The artifact store failed.
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    /// `destroy` while a rollout is in flight.
    #[error("rollout {id} is in flight ({state}); destroy refuses until it ends")]
    DestroyDuringRollout {
        /// The rollout's id.
        id: String,
        /// Its state.
        state: String,
    },
    /// `destroy` with no machine ever sent a spec.
    #[error("no machine has been sent a spec: nothing to destroy")]
    NothingToDestroy,
}
