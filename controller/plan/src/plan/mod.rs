//! The plan an operator writes (`plan.toml`): its typed model ([`model`]: one type per section,
//! every value with its span) and its parser (one function per section, on the schema walker
//! [`walk`]).
//!
//! Parsing never stops at the first problem: [`parse()`] returns the best model it could build
//! plus every diagnostic, and [`crate::validate`] adds the cross-field checks. The format is
//! documented in `docs/plan.md`.

pub mod model;
mod parser;
pub mod walk;

pub use crate::catalogue::{DbType, StoreType};
pub use model::{
    Admin, Analytics, ArtifactShare, Cluster, Database, DbInit, Distribution, DriftMode, Driver,
    GatewayArtifacts, GatewayEnvironment, HeapSize, Issuer, JvmScope, JvmSettings, LoadBalancer,
    Machine, Node, NodeJvmSettings, OnFailure, Override, Plan, Rollout, Scope, Secret,
    SecretSource, SecureVault, StartOrder, Tls, resolve_path,
};
pub use parser::{parse, parse_duration};
pub use walk::At;
