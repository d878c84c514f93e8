//! The apimctl agent: converges one VM to the machine spec the controller streams to it.
//!
//! This crate holds the agent's **building blocks** — each a module with a small API that knows
//! *how* to touch a VM and nothing about the plan. All WSO2 knowledge of *what* to write (the
//! `deployment.toml`, the start argv, the ports to probe) lives in the controller's renderer
//! and arrives as a typed `MachineSpec`; the converge loop that reads that spec and calls these
//! blocks comes with the gRPC wiring.
//!
//! Every OS effect sits behind a seam so tests run unprivileged in temp dirs while production
//! uses the real paths: an install/staging root and a state dir are plain paths, the hosts file
//! path is a parameter ([`hosts::DEFAULT_HOSTS_PATH`] in production) with a
//! [`apim_atomic::FileOps`] seam for its rename, and scripts run through a
//! [`process::ProcessRunner`] ([`process::TokioRunner`] in production).
//!
//! # The pieces
//!
//! | module | job |
//! | --- | --- |
//! | [`ledger`] | the accepted generation, persisted atomically; older generations refused |
//! | [`unpack`] | sha256 check, guarded parallel zip staging, atomic swap into place |
//! | [`arriving`] | a pack still downloading, readable while it arrives (staging overlaps the fetch) |
//! | [`hosts`] | the managed block in `/etc/hosts`, every foreign byte kept |
//! | [`process`] | start/stop through the node's script; pid-file truth; no double start |
//! | [`health`] | readiness probes (log line after an offset, TCP, HTTP(S), liveness) |
//! | [`facts`] | machine facts and pre-flight checks |
//! | [`error`] | [`AgentError`], one enum with context for all of the above |
//!
//! # The converge order (for the loop that will drive these blocks)
//!
//! For each node of the spec, when its generation changes:
//!
//! 1. **ledger** — [`ledger::Ledger::commit`] the new spec first; a lower generation is refused,
//!    so a stale controller cannot roll the machine back. After a restart the agent resumes
//!    from the ledger.
//! 2. **fetch** the pack (from the controller) into the pack cache, its tail first.
//! 3. **stage** — [`unpack::stage`] under the staging root (same filesystem as the install
//!    dir) *while the pack arrives* ([`arriving`]), then
//!    [`unpack::StagedTree::chown_blocking`] to the `run_as` user.
//! 4. **verify** — the whole pack's sha256 against the plan's digest (hashed as it arrives), and
//!    the tail the unpacker read against the verified file; a mismatch discards the staged tree.
//! 5. **install** — stop the node if it runs ([`process::stop`]), then
//!    [`unpack::install_staged`] swaps the tree in. Only when the pack changed: a reinstall
//!    wipes the node's local state (H2 databases, Solr index, logs).
//! 6. **optimize once** — run `profileSetup.sh -Dprofile=<p>` on a fresh tree only, and write a
//!    marker file (e.g. `.apimctl-profile-<p>` via [`apim_atomic::write_atomic`]) so it never runs
//!    twice: the script is not idempotent and would overwrite `deployment.toml`.
//! 7. **write config** — `deployment.toml` (mode 0600, it holds passwords) and any other
//!    rendered file, each with [`apim_atomic::write_atomic`]; only files whose bytes differ.
//! 8. **hosts** — [`hosts::apply`] the machine's block (no write when unchanged).
//! 9. **keystores** — write/import the node's keystores (the certs crate builds them).
//! 10. **start** — record [`health::log_offset`], then [`process::start`] (a no-op for a live
//!     node; restart only when something above changed).
//! 11. **wait ready** — [`health::wait_ready`] with the spec's probes and deadline.
//! 12. **report** — phase, generation, readiness report or error to the controller; pre-flight
//!     problems from [`facts::preflight`] are reported before step 2.
//! 13. **sync** — a freshly installed tree is made durable with one
//!     [`unpack::sync_filesystem`] once the node is serving (off the rollout's critical path);
//!     until then the node record holds the [`unpack::boot_id`], and a tree left unsynced by a
//!     crash of the machine is installed again.

pub mod arriving;
pub mod control;
pub mod enroll;
pub mod error;
pub mod facts;
pub mod health;
pub mod hosts;
pub mod ledger;
pub mod process;
pub mod unpack;

// The daemon: config, the converge loop, supervision, reports, the controller stream.
pub mod config;
pub mod converge;
pub mod daemon;
pub mod daemon_error;
pub mod fetch;
pub mod keystores;
pub mod packfile;
pub mod report;
pub mod supervise;

pub use error::{AgentError, Result};
