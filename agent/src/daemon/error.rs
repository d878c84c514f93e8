//! The daemon's error type: what can stop a converge step, a download, or the agent itself.
//!
//! Failures of the exec layer stay [`ExecError`]s, wrapped with the node they happened to (so a
//! `FAILED(reason)` report names it) by [`DaemonError::exec`], the one conversion, or its
//! shorthand [`OnNode::on`]; identity and link failures stay [`EnrollError`]s. The daemon adds
//! what only it knows about: the controller stream, downloads, the spec's own consistency,
//! readiness.

use std::path::PathBuf;

use crate::daemon::identity::EnrollError;
use crate::exec::ExecError;

/// Result alias for the daemon's modules.
pub type DaemonResult<T> = std::result::Result<T, DaemonError>;

/// Everything that can go wrong in the agent daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// An OS effect (ledger, unpack, hosts, process, health, keystores, facts) failed while
    /// working on `context` (a node name or "machine").
    #[error("{context}: {source}")]
    Exec {
        /// The node or "machine" the step was for.
        context: String,
        /// The exec layer's error.
        #[source]
        source: ExecError,
    },

    /// Enrollment or the persisted identity failed.
    #[error("agent identity: {0}")]
    Enroll(#[from] EnrollError),

    /// The agent has no identity in its state dir and no join token to enroll with.
    #[error(
        "no agent identity in {} and no join token (use --token-file or APIM_AGENT_TOKEN on first start)",
        state_dir.display()
    )]
    NoIdentity {
        /// The state dir searched.
        state_dir: PathBuf,
    },

    /// The configuration file or a flag is unusable.
    #[error("configuration: {reason}")]
    Config {
        /// What is wrong (never contains the token).
        reason: String,
    },

    /// A file operation of the daemon itself failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the daemon was doing.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The controller refused or broke a call (Connect, Fetch).
    #[error("controller call {call} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC, e.g. "Fetch".
        call: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The controller's (or transport's) message.
        message: String,
        /// The controller's stable error code (`ErrorDetail.code`, e.g. `auth.revoked`), empty
        /// when it sent none.
        detail: String,
    },

    /// The controller sent a chunk that does not continue the download where it stands.
    #[error("download of {sha256}: chunk at offset {got}, expected {expected}")]
    FetchOffset {
        /// The artifact.
        sha256: String,
        /// Where the file stands.
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },

    /// The controller sent more bytes than the pack's size (the download is cut off there).
    #[error("download of {sha256}: the controller sent {got} bytes of a {size}-byte pack")]
    FetchOverrun {
        /// The artifact.
        sha256: String,
        /// The pack's size in the spec.
        size: u64,
        /// Where the stream would have taken the file.
        got: u64,
    },

    /// The zip tail fetched ahead of the body (and unpacked from) is not the verified pack's.
    /// The staged tree was discarded; the next attempt stages from the verified cached pack.
    #[error(
        "pack {sha256}: the central directory fetched ahead differs from the verified pack's; \
         the tree staged from it was discarded"
    )]
    TailMismatch {
        /// The artifact.
        sha256: String,
    },

    /// The download did not complete after every retry (it is kept and resumed next time).
    #[error("download of {sha256} incomplete after {attempts} attempts: {have} of {size} bytes")]
    FetchIncomplete {
        /// The artifact.
        sha256: String,
        /// Bytes on disk.
        have: u64,
        /// Bytes expected.
        size: u64,
        /// Attempts made.
        attempts: u32,
    },

    /// The downloaded pack's sha256 differs from the spec's; it was deleted, and anything
    /// staged from it while it arrived was discarded: nothing was installed.
    #[error(
        "pack {expected} refused: the downloaded bytes hash to {actual}; nothing was installed"
    )]
    PackDigestMismatch {
        /// The digest the spec names.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },

    /// The spec is inconsistent or names something the agent cannot do.
    #[error("invalid spec for {node}: {reason}")]
    BadSpec {
        /// The node (or "machine").
        node: String,
        /// What is wrong.
        reason: String,
    },

    /// The machine fails a pre-flight check for the node; nothing was fetched or unpacked.
    #[error("pre-flight for {node} failed: {problems}")]
    Preflight {
        /// The node.
        node: String,
        /// The problems, joined.
        problems: String,
    },

    /// A database the node uses is unusable: unreachable, or its schema could not be created.
    /// Never carries a password.
    #[error("{node}: database {id} at {addr}: {reason}")]
    Database {
        /// The node.
        node: String,
        /// The plan's name of the database.
        id: String,
        /// host:port.
        addr: String,
        /// What happened.
        reason: String,
    },

    /// The profile optimizer failed (exit status or a failure marker in its output).
    #[error("optimizer of {node} failed: {reason}")]
    Optimizer {
        /// The node.
        node: String,
        /// Why, with the tail of its output.
        reason: String,
    },

    /// The node did not become ready (timed out, or its process died while starting).
    #[error("{node} not ready: {report}")]
    NotReady {
        /// The node.
        node: String,
        /// The readiness report.
        report: String,
    },

    /// The node's shared folder is not (or could not be) mounted from its source: the node is
    /// not started (it would serve from the pack's own copy, which no other node sees).
    #[error("{node}: the shared folder {} is not mounted from {}: {reason}; the node is not started", folder.display(), apim_proto::text::printable(source_fs))]
    SharedMount {
        /// The node.
        node: String,
        /// The folder in its home.
        folder: PathBuf,
        /// What should be mounted there.
        source_fs: String,
        /// What is wrong (mount's own words escaped).
        reason: String,
    },

    /// A spec older than (or conflicting with) the held one was refused.
    #[error("refused machine spec generation {offered}: {source}")]
    GenerationRefused {
        /// The generation offered.
        offered: u64,
        /// The ledger's refusal.
        #[source]
        source: ExecError,
    },

    /// The spec names another machine than this agent's certificate.
    #[error("spec for machine {spec_machine:?} refused: this agent is {machine:?}")]
    WrongMachine {
        /// The machine the spec is for.
        spec_machine: String,
        /// This agent's machine.
        machine: String,
    },

    /// The controller stream ended or could not be opened.
    #[error("controller stream: {reason}")]
    Stream {
        /// Why.
        reason: String,
    },

    /// A background task panicked.
    #[error("background task {op} failed: {source}")]
    Join {
        /// The task.
        op: &'static str,
        /// Tokio's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl DaemonError {
    /// Wraps an exec-layer error with the node (or "machine") it happened to.
    pub fn exec(context: impl Into<String>, source: impl Into<ExecError>) -> Self {
        DaemonError::Exec {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Shorthand for [`DaemonError::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DaemonError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`DaemonError::Rpc`].
    pub fn rpc(call: &'static str, status: &tonic::Status) -> Self {
        DaemonError::Rpc {
            call,
            code: status.code(),
            message: status.message().to_owned(),
            detail: apim_proto::error_details(status)
                .and_then(|d| d.errors.into_iter().next())
                .map(|e| e.code)
                .unwrap_or_default(),
        }
    }

    /// Whether the controller refused the call because this machine (or its certificate) is
    /// revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self, DaemonError::Rpc { detail, .. } if detail == "auth.revoked")
    }
}

/// `result.on(node)`: an exec-layer result in the daemon's terms ([`DaemonError::exec`]).
pub trait OnNode<T> {
    /// Wraps the error with the node (or "machine") it happened to.
    fn on(self, context: &str) -> DaemonResult<T>;
}

impl<T, E: Into<ExecError>> OnNode<T> for Result<T, E> {
    fn on(self, context: &str) -> DaemonResult<T> {
        self.map_err(|e| DaemonError::exec(context, e))
    }
}
