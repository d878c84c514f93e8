//! The exec layer: every OS effect the agent has, and nothing about the controller.
//!
//! Each module knows *how* to touch the machine and takes everything else as parameters: paths,
//! commands, the server's process identity, probes. Every effect sits behind a seam so tests run
//! unprivileged in temp dirs (an install root, a state dir, the hosts file path, a
//! [`process::ProcessRunner`], [`apim_atomic::FileOps`]). Files are written with
//! [`apim_atomic`]. Errors are [`ExecError`]s, with the path, entry, pid or limit concerned.
//!
//! | module | job |
//! | --- | --- |
//! | [`unpack`] | sha256 check, guarded parallel zip staging, atomic swap into place |
//! | [`arriving`] | a pack still downloading, readable while it arrives |
//! | [`packfile`] | the download's file, written with direct I/O where it can be |
//! | [`hosts`] | the managed block in `/etc/hosts`, every foreign byte kept |
//! | [`process`] | start/stop through the node's scripts; pid-file truth; no double start |
//! | [`health`] | readiness probes (log line after an offset, TCP, HTTP(S), liveness) |
//! | [`keystores`] | a node's keystores and truststore, as its spec says |
//! | [`ledger`] | the accepted generation, persisted atomically; older generations refused |
//! | [`facts`] | machine facts and pre-flight checks |
//! | [`logfile`] | a node's log files: the folder guard, bounded tails, following appends |
//! | [`mount`] | shared file systems in a node's tree: mount points, `mount`/`umount`, the removal guard |
//! | [`seed`] | a shared folder seeded once from a node's own copy, nothing there overwritten |
//! | [`cleanup`] | removing an installed tree (destroy), only strictly inside the install root |
//! | [`drift`] | how bytes on disk differ from those written: TOML keys, digests, never values |
//! | [`error`] | [`ExecError`], the one error type of the layer |

pub mod arriving;
pub mod cleanup;
pub mod drift;
pub mod error;
pub mod facts;
pub mod folders;
pub mod health;
pub mod hosts;
pub mod keystores;
pub mod ledger;
pub mod logfile;
pub mod mount;
pub mod packfile;
pub mod process;
pub mod seed;
pub mod service;
pub mod unpack;

pub use error::{ExecError, Result};
