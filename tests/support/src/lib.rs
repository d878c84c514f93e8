//! apim-testkit: what the workspace's integration tests share — the fakes, the CA fixtures, the
//! test plans, and NodeSpecs made by rendering a plan.
//!
//! - [`controller`]: the real controller in-process on 127.0.0.1 (restartable; credentials,
//!   channels, apply/status/wait);
//! - [`fake_agent`]: agents that speak the real protocol and fail or hang on demand;
//! - [`fake_controller`]: a scripted controller for the agent's tests and benchmark;
//! - [`fake_node`]: a fake WSO2 home for the agent's process and health tests;
//! - [`db`]: real MariaDB and PostgreSQL databases, created fresh and dropped after;
//! - [`ca`]: credentials, certificates minted with rcgen for edge cases, a throwaway CA;
//! - [`plans`]: the test plans and packs, the repository's examples, report assertions;
//! - [`specs`]: MachineSpecs and NodeSpecs exactly as the controller sends them;
//! - [`messages`]: agent messages sent by hand; [`sim`]: the simulated JVM; [`wait`]: bounded
//!   waits.
//!
//! A normal library used only as a dev-dependency: crates it depends on may use it from their
//! integration tests and benchmarks, never from `#[cfg(test)]` code in their `src/` (that would
//! link a second copy of them).

pub mod ca;
pub mod controller;
pub use apim_e2e::db;
pub mod fake_agent;
pub mod fake_controller;
pub mod fake_node;
pub mod messages;
pub mod plans;
pub mod sim;
pub mod specs;
pub mod wait;
