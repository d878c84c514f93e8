//! The product catalogue: every fact about WSO2 API Manager that apimctl relies on, so that a
//! reader finds each one in one guess.
//!
//! - [`release`]: the supported releases, their product lines and packs (top directories,
//!   server names), the JDKs their scripts accept, what each release has;
//! - [`roles`]: how a portable role runs on a release: pack, start script, optimizer profile and
//!   start arguments, `server_role`, cache domain, start rank, whether it needs `apim_db`;
//! - [`ports`]: the named default ports, offsets, and the ports each role opens or is checked on;
//! - [`layout`]: paths in a carbon home (config, security, log), the ready line, the optimizer
//!   and its markers, the server process's identity, the HTTP paths the server serves;
//! - [`jvm`]: how the start scripts take heap sizes and JVM options (`JAVA_OPTS`), and what a
//!   server needs of its machine's memory;
//! - [`defaults`]: what the packs ship and plans fall back to (admin, user stores, keystores,
//!   CORS, gateway environments); [`database`]: database engines and the packs' H2 URLs;
//! - [`vault`]: the secure vault's files and references;
//! - [`balancer`]: what a load balancer in front of each role forwards (ports, affinity, TCP).
//!
//! Facts come from the product's assembly files, startup scripts and docs (see
//! `docs/plan.md` for the role table). The renderer, the validator, the plan parser and the
//! controller's spec and PKI code take WSO2 facts from here only.

pub mod balancer;
pub mod database;
pub mod defaults;
pub mod jvm;
pub mod layout;
pub mod ports;
pub mod release;
pub mod roles;
pub mod vault;

pub use database::DbType;
pub use defaults::StoreType;
pub use ports::{Port, all_ports, readiness_ports};
pub use release::{PackKind, Product, ProductLine};
pub use roles::{Role, RoleProfile};
