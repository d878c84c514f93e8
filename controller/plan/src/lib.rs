//! apim-plan: what an operator's `plan.toml` means, with no I/O beyond reading the plan's own
//! files: the product catalogue, the plan model and its validator, the renderer, the start order.
//!
//! Flow: [`validate::check`] parses `plan.toml` into a [`plan::Plan`] and reports every problem
//! with its `file:line:col`; [`render::render`] turns a valid plan into a
//! [`render::ClusterRender`] (per machine: hosts block; per node: `deployment.toml`, commands,
//! readiness checks, dependencies); [`graph`] derives the start tiers. The controller daemon turns
//! a render into the specs its agents run; the CLI prints it. [`lint`] checks a render against
//! its packs (keys the product would ignore, placeholder hosts left from the pack's file);
//! [`provided`] reads and checks the keystores a plan provides (`[tls] issuer = "provided"`).
//!
//! Every fact about WSO2 API Manager (releases, roles, scripts, ports, paths, process identity,
//! defaults) is in [`catalogue`], which depends on nothing else here. The other modules depend
//! one way: [`plan`] on the catalogue; [`secrets`] and [`graph`] on the plan; [`validate`] and
//! [`render`] on those (never on each other).

pub mod catalogue;
pub mod diag;
pub mod digest_cache;
pub mod graph;
pub mod lint;
pub mod pack;
pub mod plan;
pub mod provided;
pub mod render;
pub mod secrets;
pub mod validate;

use sha2::{Digest, Sha256};

/// sha256 of bytes, lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
