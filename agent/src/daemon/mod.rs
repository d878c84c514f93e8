//! The daemon layer: what the agent decides, using the [`crate::exec`] layer for every effect.
//!
//! The agent is one long-running process per VM: it holds its identity, keeps a link to the
//! controller, ledgers each machine spec it accepts and converges every node to it, supervises
//! the nodes it runs and reports what it sees. Errors are [`DaemonError`]s: an exec error is
//! wrapped with the node it happened to in one place ([`error::OnNode`]); enrollment and link
//! failures are [`identity::EnrollError`]s (callers match on them), carried by
//! [`DaemonError::Enroll`].
//!
//! | module | job |
//! | --- | --- |
//! | [`session`] | [`run`]: the main loop (identity, ledger, the stream to the controller) |
//! | [`machine`] | the ledgered spec, the hosts block, one converge task per node |
//! | [`destroy`] | a destroy spec: nodes stopped, installed trees, packs and hosts block removed |
//! | [`tail`] | `TailLog` commands: a node's log, bounded and rate-limited, cancellable |
//! | [`converge`] | one node to its spec, in named idempotent steps |
//! | [`supervise`] | the node task: converge, retry with backoff, restart a dead node |
//! | [`fetch`] | packs from the controller: resumable, verified, cached, readable as they arrive |
//! | [`report`] | the status board the reports are made from |
//! | [`identity`] | enrollment with a join token, the persisted key and certificate |
//! | [`link`] | the mTLS channel to the controller, renewed before the certificate expires |
//! | [`config`] | the agent's configuration file, flags' target, timings |
//! | [`error`] | [`DaemonError`] |

pub mod config;
pub mod converge;
pub mod destroy;
pub mod error;
pub mod fetch;
pub mod folders;
pub mod identity;
pub mod link;
pub mod machine;
pub mod report;
pub mod services;
pub mod session;
pub mod supervise;
pub mod tail;

pub use error::{DaemonError, DaemonResult};
pub use session::run;
