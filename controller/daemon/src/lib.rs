//! apim-controller: the controller daemon — the store, the in-memory state, the rollout engine
//! and the gRPC services agents and operators talk to.
//!
//! Dependencies run one way: [`server`] → [`rollout`] → [`state`] → [`store`] → `apim_plan`.
//! [`spec`] turns a plan's render into the `MachineSpec` each agent executes and [`pki`] issues
//! the product certificates it carries; [`shared`] keeps the files several controllers share in
//! the store; [`run`] is `apimctl controller run`.

pub mod artifacts;
pub mod pki;
pub mod rollout;
pub mod run;
pub mod server;
pub mod shared;
pub mod spec;
pub mod state;
pub mod store;
