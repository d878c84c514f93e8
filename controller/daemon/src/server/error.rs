//! [`ServerError`]: everything the gRPC server can refuse or fail with, and the one function
//! that turns it into a `tonic::Status` ([`ServerError::to_status`]).

use std::path::PathBuf;

use apim_certs::CertsError;
use apim_proto::v1::{ErrorDetail, ErrorDetails};
use tonic::{Code, Status};

use super::auth::{Access, Rpc};
use crate::artifacts::ArtifactError;
use crate::rollout::RolloutError;
use crate::state::StateError;

/// Why a call was refused or failed, or why the server could not start. Messages never carry
/// secrets (tokens, keys); paths and OS errors stay in the log and are not sent to callers.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The RPC needs a client certificate and the connection presented none.
    #[error("{rpc} requires a client certificate and none was presented")]
    NoClientCert {
        /// The RPC that was called.
        rpc: Rpc,
    },

    /// The presented client certificate does not verify against the control-plane CA right
    /// now (foreign CA, expired, not yet valid, wrong key usage, broken signature).
    #[error("client certificate rejected: {reason}")]
    InvalidClientCert {
        /// What the verifier said, e.g. "certificate expired".
        reason: String,
    },

    /// The certificate verifies but carries no usable apimctl identity.
    #[error("client certificate has no usable identity: {source}")]
    NoIdentity {
        /// Why the identity could not be read.
        #[source]
        source: CertsError,
    },

    /// The identity or this particular certificate is on the revocation list.
    #[error("{identity} is revoked")]
    Revoked {
        /// The identity URI of the caller.
        identity: String,
    },

    /// A valid identity of the wrong kind, e.g. an agent certificate on an operator RPC.
    #[error("{rpc} is reserved for {needed}; the caller is {identity}")]
    WrongRole {
        /// The RPC that was called.
        rpc: Rpc,
        /// Who may call it.
        needed: Access,
        /// The caller's identity URI.
        identity: String,
    },

    /// A message names a machine other than the one in the caller's certificate.
    #[error("{identity} may not act for machine {named:?} ({what})")]
    ForeignMachine {
        /// The caller's identity URI.
        identity: String,
        /// The machine the message named.
        named: String,
        /// Where the name appeared, e.g. "status report node km-1".
        what: String,
    },

    /// The call path is not an RPC of `apimctl.v1`.
    #[error("unknown method {path}")]
    UnknownMethod {
        /// The HTTP/2 path that was requested.
        path: String,
    },

    /// The join token was refused (unknown, used, expired, wrong secret, malformed, or bound to
    /// another machine).
    #[error("join token refused: {source}")]
    Token {
        /// Why, from the token registry (never contains the secret).
        #[source]
        source: CertsError,
    },

    /// The certificate signing request was refused (bad encoding, bad self-signature,
    /// unsupported key type).
    #[error("certificate signing request refused: {reason}")]
    Csr {
        /// Why.
        reason: String,
    },

    /// A request field has an unacceptable value.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, e.g. "sha256".
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The stream broke the protocol (e.g. no `Hello` first, a second header on an upload).
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What was expected.
        reason: String,
    },

    /// No artifact with this digest is stored.
    #[error("artifact {sha256} is not stored")]
    ArtifactNotFound {
        /// The requested digest.
        sha256: String,
    },

    /// A prune named an artifact the retained history (or a pushed spec) still needs.
    #[error("artifact {sha256} is still needed: {why}")]
    ArtifactRetained {
        /// The artifact.
        sha256: String,
        /// Which generations need it, or that a machine's spec names it.
        why: String,
    },

    /// An agent asked for a pack that none of its machine's specs names.
    #[error("machine {machine:?} may not fetch artifact {sha256}: none of its specs names it")]
    ArtifactNotInSpec {
        /// The agent's machine.
        machine: String,
        /// The requested digest.
        sha256: String,
    },

    /// A fetch offset lies past the end of the artifact.
    #[error("offset {offset} is past the end of artifact {sha256} ({size} bytes)")]
    OffsetOutOfRange {
        /// The artifact.
        sha256: String,
        /// The requested offset.
        offset: u64,
        /// The artifact's size.
        size: u64,
    },

    /// An upload's content does not match its header (size or sha256).
    #[error("uploaded artifact does not match its header: {reason}")]
    ArtifactMismatch {
        /// Which check failed, with expected and actual values.
        reason: String,
    },

    /// An operator named a machine the controller knows nothing about.
    #[error("unknown machine {machine:?}")]
    UnknownMachine {
        /// The name given.
        machine: String,
    },

    /// `Recover` with a certificate that is not the newest the machine was issued (an older
    /// or copied one).
    #[error("only the newest certificate issued to machine {machine:?} may recover it")]
    NotNewestCert {
        /// The machine.
        machine: String,
    },

    /// The caller's certificate expired while its stream was open.
    #[error("client certificate expired during the session; reconnect with the renewed one")]
    SessionCertExpired,

    /// The controller is shutting down; the caller should reconnect later.
    #[error("controller is shutting down")]
    ShuttingDown,

    /// A file operation of the artifact store failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the server was doing.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The CA could not issue a certificate, or a token could not be minted.
    #[error("{action}: {source}")]
    Issue {
        /// What was being issued.
        action: &'static str,
        /// The certs crate's error.
        #[source]
        source: CertsError,
    },

    /// The TLS configuration could not be built (server start only).
    #[error("building the TLS configuration: {reason}")]
    TlsConfig {
        /// rustls' complaint.
        reason: String,
    },

    /// The store failed to read or write.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),

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
    RolloutInProgress {
        /// The rollout's id.
        id: String,
        /// Its state.
        state: String,
    },

    /// The operation needs a generation and none was applied yet.
    #[error("nothing was applied yet: {what} needs a stored plan")]
    NothingApplied {
        /// What was asked.
        what: &'static str,
    },

    /// No machine's spec names the node an operator asked about.
    #[error("no machine's spec names node {node:?}")]
    UnknownNode {
        /// The name given.
        node: String,
    },

    /// The machine's agent is not connected, so it cannot be asked anything now.
    #[error("the agent of machine {machine:?} is not connected{}", elsewhere.as_ref().map(|c| format!(" here: it is connected to controller {c}; ask that one")).unwrap_or_default())]
    AgentNotConnected {
        /// The machine.
        machine: String,
        /// The other controller (id and address) holding its stream, when one does.
        elsewhere: Option<String>,
    },

    /// Too many log streams are open already.
    #[error("too many log streams from {scope} (at most {limit} at once)")]
    TooManyLogStreams {
        /// "this controller" or "machine NAME".
        scope: String,
        /// The limit.
        limit: usize,
    },

    /// The node's agent refused or could not serve the log (its words, escaped).
    #[error("{machine}: {reason}")]
    LogRefused {
        /// The machine.
        machine: String,
        /// What the agent said.
        reason: String,
    },

    /// The log stream broke off: the agent disconnected, or this client read too slowly.
    #[error("{reason}")]
    LogDropped {
        /// Why.
        reason: String,
    },

    /// `destroy` while a rollout is in flight.
    #[error("rollout {id} is in flight ({state}); destroy refuses until it ends")]
    DestroyDuringRollout {
        /// The rollout's id.
        id: String,
        /// Its state.
        state: String,
    },

    /// `destroy` with nothing applied.
    #[error("no machine has been sent a spec: nothing to destroy")]
    NothingToDestroy,

    /// No rollout is in flight to abort.
    #[error("no rollout is in flight ({latest})")]
    NoRolloutInFlight {
        /// The latest rollout and its state, or that there is none.
        latest: String,
    },

    /// Rendering the stored plan or issuing its certificates failed.
    #[error("rendering the plan: {reason}")]
    Render {
        /// What failed.
        reason: String,
    },

    /// The listener failed or tonic stopped with an error (server start and run only).
    #[error("gRPC transport: {source}")]
    Transport {
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
}

impl ServerError {
    /// The gRPC code for this error. Authentication problems are UNAUTHENTICATED, authorization
    /// problems PERMISSION_DENIED (see `ErrorDetails` in `common.proto`).
    pub fn code(&self) -> Code {
        match self {
            ServerError::NoClientCert { .. }
            | ServerError::InvalidClientCert { .. }
            | ServerError::NoIdentity { .. }
            | ServerError::SessionCertExpired => Code::Unauthenticated,
            ServerError::Token { source } => match source {
                CertsError::TokenMachineMismatch { .. } => Code::PermissionDenied,
                _ => Code::Unauthenticated,
            },
            ServerError::Revoked { .. }
            | ServerError::WrongRole { .. }
            | ServerError::ForeignMachine { .. }
            | ServerError::ArtifactNotInSpec { .. }
            | ServerError::NotNewestCert { .. } => Code::PermissionDenied,
            ServerError::UnknownMethod { .. } => Code::Unimplemented,
            ServerError::Csr { .. }
            | ServerError::InvalidArgument { .. }
            | ServerError::Protocol { .. }
            | ServerError::ArtifactMismatch { .. }
            | ServerError::PlanRejected { .. } => Code::InvalidArgument,
            ServerError::ClusterChanged { .. }
            | ServerError::RolloutInProgress { .. }
            | ServerError::NoRolloutInFlight { .. }
            | ServerError::NothingApplied { .. }
            | ServerError::ArtifactRetained { .. }
            | ServerError::LogRefused { .. }
            | ServerError::DestroyDuringRollout { .. }
            | ServerError::NothingToDestroy => Code::FailedPrecondition,
            ServerError::ArtifactNotFound { .. }
            | ServerError::UnknownMachine { .. }
            | ServerError::UnknownNode { .. } => Code::NotFound,
            ServerError::AgentNotConnected { .. } => Code::Unavailable,
            ServerError::TooManyLogStreams { .. } => Code::ResourceExhausted,
            ServerError::LogDropped { .. } => Code::Aborted,
            ServerError::OffsetOutOfRange { .. } => Code::OutOfRange,
            ServerError::ShuttingDown => Code::Unavailable,
            // The database went away (a restart, a failover): retry; it comes back by itself.
            ServerError::Store(e) if e.is_unavailable() => Code::Unavailable,
            ServerError::Io { .. }
            | ServerError::Issue { .. }
            | ServerError::TlsConfig { .. }
            | ServerError::Store(_)
            | ServerError::Render { .. }
            | ServerError::Transport { .. } => Code::Internal,
        }
    }

    /// A stable machine-readable code for `ErrorDetail.code`.
    fn detail_code(&self) -> &'static str {
        match self {
            ServerError::NoClientCert { .. } => "auth.no_client_certificate",
            ServerError::InvalidClientCert { .. } => "auth.invalid_client_certificate",
            ServerError::NoIdentity { .. } => "auth.no_identity",
            ServerError::Revoked { .. } => "auth.revoked",
            ServerError::WrongRole { .. } => "auth.wrong_role",
            ServerError::ForeignMachine { .. } => "auth.foreign_machine",
            ServerError::UnknownMethod { .. } => "rpc.unknown_method",
            ServerError::Token { .. } => "enroll.token_refused",
            ServerError::Csr { .. } => "enroll.csr_refused",
            ServerError::InvalidArgument { .. } => "request.invalid_argument",
            ServerError::Protocol { .. } => "request.protocol",
            ServerError::ArtifactNotFound { .. } => "artifact.not_found",
            ServerError::ArtifactNotInSpec { .. } => "artifact.not_in_spec",
            ServerError::ArtifactRetained { .. } => "artifact.retained",
            ServerError::NotNewestCert { .. } => "auth.not_newest_certificate",
            ServerError::OffsetOutOfRange { .. } => "artifact.offset_out_of_range",
            ServerError::ArtifactMismatch { .. } => "artifact.digest_mismatch",
            ServerError::UnknownMachine { .. } => "operator.unknown_machine",
            ServerError::SessionCertExpired => "auth.certificate_expired",
            ServerError::ShuttingDown => "server.shutting_down",
            ServerError::PlanRejected { .. } => "plan.invalid",
            ServerError::ClusterChanged { .. } => "plan.cluster_changed",
            ServerError::RolloutInProgress { .. } => "rollout.in_progress",
            ServerError::NoRolloutInFlight { .. } => "rollout.not_in_flight",
            ServerError::NothingApplied { .. } => "cluster.nothing_applied",
            ServerError::UnknownNode { .. } => "operator.unknown_node",
            ServerError::AgentNotConnected { .. } => "agent.not_connected",
            ServerError::TooManyLogStreams { .. } => "logs.too_many",
            ServerError::LogRefused { .. } => "logs.refused",
            ServerError::LogDropped { .. } => "logs.dropped",
            ServerError::DestroyDuringRollout { .. } => "destroy.rollout_in_flight",
            ServerError::NothingToDestroy => "destroy.nothing",
            ServerError::Store(e) if e.is_unavailable() => "store.unavailable",
            ServerError::Io { .. }
            | ServerError::Issue { .. }
            | ServerError::TlsConfig { .. }
            | ServerError::Store(_)
            | ServerError::Render { .. }
            | ServerError::Transport { .. } => "server.internal",
        }
    }

    /// What the caller can do about it; empty when nothing.
    fn hint(&self) -> &'static str {
        match self {
            ServerError::NoClientCert { .. } => {
                "enroll the agent with a join token, or use an operator certificate"
            }
            ServerError::InvalidClientCert { .. } => {
                "the certificate must be issued by this controller's CA and be valid now; agents \
                 renew (and, within the recovery window, recover) automatically; past it, enroll \
                 again with a new join token"
            }
            ServerError::Revoked { .. } => {
                "re-admit the machine: apimctl token create --machine <name>, and put the token in \
                 the agent's token file; it enrolls again on its own"
            }
            ServerError::Token { .. } => {
                "create a new join token with apimctl token create --machine <name>"
            }
            ServerError::SessionCertExpired => "reconnect; the agent renews at 2/3 of the lifetime",
            ServerError::ShuttingDown => "retry with backoff",
            ServerError::Store(e) if e.is_unavailable() => {
                "the controller's database is unreachable; the controller reconnects by itself: \
                 retry, and check the database server if it lasts"
            }
            ServerError::ClusterChanged { .. } => "run apimctl plan again and review the changes",
            ServerError::RolloutInProgress { .. } => {
                "wait for it to finish (apimctl status --watch), then apply again"
            }
            ServerError::NothingApplied { .. } => "apply a plan first: apimctl apply plan.toml",
            ServerError::ArtifactRetained { .. } => {
                "apimctl packs lists what needs it; a generation leaves the retained history once \
                 its secrets are forgotten (secrets_retention) and it is neither current nor \
                 rolling out"
            }
            ServerError::UnknownNode { .. } => "apimctl status lists the nodes",
            ServerError::AgentNotConnected { .. } => {
                "apimctl agents shows when it was last seen; it is asked again once it reconnects"
            }
            ServerError::TooManyLogStreams { .. } => "end another `apimctl logs -f`, then retry",
            ServerError::LogRefused { .. } => {
                "the agent serves regular files of the node's log folder only (--file NAME)"
            }
            ServerError::LogDropped { .. } => "run the command again",
            ServerError::DestroyDuringRollout { .. } => {
                "stop it first with `apimctl rollout abort`, then destroy"
            }
            _ => "",
        }
    }

    /// The one mapping from [`ServerError`] to `tonic::Status`. Internal errors are logged here
    /// with their detail and sent as a generic message; everything else carries an
    /// [`ErrorDetails`] with a stable code and a hint.
    pub fn to_status(&self) -> Status {
        let code = self.code();
        let message = if code == Code::Internal {
            tracing::error!(error = %self, "internal error while serving a call");
            "internal controller error (see the controller log)".to_owned()
        } else {
            tracing::debug!(error = %self, ?code, "call refused");
            self.to_string()
        };
        let details = match self {
            ServerError::PlanRejected { errors } => ErrorDetails {
                errors: errors.clone(),
            },
            _ => ErrorDetails {
                errors: vec![ErrorDetail {
                    code: self.detail_code().to_owned(),
                    message: message.clone(),
                    hint: self.hint().to_owned(),
                    ..ErrorDetail::default()
                }],
            },
        };
        apim_proto::status_with_details(code, message, &details)
    }
}

impl From<ArtifactError> for ServerError {
    fn from(e: ArtifactError) -> Self {
        match e {
            ArtifactError::InvalidDigest => ServerError::InvalidArgument {
                field: "sha256",
                reason: "must be 64 lowercase hex characters".into(),
            },
            ArtifactError::NotFound { sha256 } => ServerError::ArtifactNotFound { sha256 },
            ArtifactError::Mismatch { reason } => ServerError::ArtifactMismatch { reason },
            e @ ArtifactError::BadPack { .. } => ServerError::InvalidArgument {
                field: "pack",
                reason: e.to_string(),
            },
            ArtifactError::Io {
                action,
                path,
                source,
            } => ServerError::Io {
                action,
                path,
                source,
            },
        }
    }
}

impl From<StateError> for ServerError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Store(e) => ServerError::Store(e),
            StateError::Artifacts(e) => e.into(),
            StateError::InvalidMachine { reason } => ServerError::InvalidArgument {
                field: "machine",
                reason,
            },
            StateError::Token { source } => ServerError::Token { source },
            StateError::Issue { action, source } => ServerError::Issue { action, source },
            StateError::UnknownMachine { machine } => ServerError::UnknownMachine { machine },
            StateError::AgentNotConnected { machine, elsewhere } => {
                ServerError::AgentNotConnected { machine, elsewhere }
            }
            StateError::TooManyLogStreams { scope, limit } => {
                ServerError::TooManyLogStreams { scope, limit }
            }
            StateError::BadPush { machine, reason } => ServerError::Protocol {
                reason: format!("machine {machine:?}: shared folder push refused: {reason}"),
            },
            StateError::ForeignMachine {
                identity,
                named,
                what,
            } => ServerError::ForeignMachine {
                identity,
                named,
                what,
            },
        }
    }
}

impl From<RolloutError> for ServerError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::PlanRejected { errors } => ServerError::PlanRejected { errors },
            RolloutError::ClusterChanged { expected, actual } => {
                ServerError::ClusterChanged { expected, actual }
            }
            RolloutError::InProgress { id, state } => ServerError::RolloutInProgress { id, state },
            RolloutError::NotInFlight { latest } => ServerError::NoRolloutInFlight { latest },
            RolloutError::Render { reason } => ServerError::Render { reason },
            RolloutError::Store(e) => ServerError::Store(e),
            RolloutError::Artifacts(e) => e.into(),
            RolloutError::DestroyDuringRollout { id, state } => {
                ServerError::DestroyDuringRollout { id, state }
            }
            RolloutError::NothingToDestroy => ServerError::NothingToDestroy,
        }
    }
}

impl From<ServerError> for Status {
    fn from(err: ServerError) -> Self {
        err.to_status()
    }
}
