//! The apimctl controller library: the plan model, offline validation, the renderer that turns a
//! plan into what every WSO2 node needs, and the dependency graph that orders start-up.
//!
//! Flow: [`validate::check`] parses `plan.toml` into a [`plan::Plan`] and reports every problem
//! with its `file:line:col`; [`render::render`] turns a valid plan into a
//! [`render::ClusterRender`] (per machine: hosts block; per node: `deployment.toml`, commands,
//! readiness checks, dependencies); [`graph`] derives the start tiers.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod diag;
pub mod digest_cache;
pub mod files;
pub mod graph;
pub mod pki;
pub mod plan;
pub mod product;
pub mod remote;
pub mod render;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod spec;
pub mod store;
pub mod validate;

use sha2::{Digest, Sha256};

/// sha256 of bytes, lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
