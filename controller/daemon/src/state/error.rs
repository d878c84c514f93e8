//! [`StateError`]: what the state can refuse or fail with.

use crate::artifacts::ArtifactError;
use crate::store::StoreError;

/// What the state can refuse or fail with; the gRPC server maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed to read or write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The artifact directory could not be opened.
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    /// A machine name is not acceptable.
    #[error("invalid machine: {reason}")]
    InvalidMachine {
        /// Why.
        reason: String,
    },
    /// The join token was refused (unknown, used, expired, wrong secret, malformed, or bound
    /// to another machine).
    #[error("join token refused: {source}")]
    Token {
        /// Why, from the token registry (never contains the secret).
        #[source]
        source: apim_certs::CertsError,
    },
    /// Minting or storing a token failed.
    #[error("{action}: {source}")]
    Issue {
        /// What was being done.
        action: &'static str,
        /// The certs crate's error.
        #[source]
        source: apim_certs::CertsError,
    },
    /// An operator named a machine the controller knows nothing about.
    #[error("unknown machine {machine:?}")]
    UnknownMachine {
        /// The name given.
        machine: String,
    },
    /// An agent reported a node of another machine.
    #[error("{identity} may not act for machine {named:?} ({what})")]
    ForeignMachine {
        /// The caller's identity URI.
        identity: String,
        /// The machine the message named.
        named: String,
        /// Where the name appeared.
        what: String,
    },
    /// The machine's agent is not connected (or takes no commands now).
    #[error("the agent of machine {machine:?} is not connected{}", elsewhere.as_ref().map(|c| format!(" here: it is connected to controller {c}; ask that one")).unwrap_or_default())]
    AgentNotConnected {
        /// The machine.
        machine: String,
        /// The other controller (id and address) holding its stream, when one does.
        elsewhere: Option<String>,
    },
    /// An agent pushed shared-folder files that cannot be taken (untrusted: the reason names
    /// the file escaped).
    #[error("machine {machine:?} pushed shared folder files that cannot be taken: {reason}")]
    BadPush {
        /// The machine.
        machine: String,
        /// Why.
        reason: String,
    },
    /// Too many log streams are open already.
    #[error("too many log streams from {scope} (at most {limit} at once)")]
    TooManyLogStreams {
        /// "this controller" or "machine NAME".
        scope: String,
        /// The limit.
        limit: usize,
    },
}
