//! One module per `apimctl` command, each with its clap arguments and its `run`.
//!
//! Offline: [`validate`], [`render`]. Against the controller (over mTLS with an operator
//! certificate, see [`crate::client`]): [`apply`], [`plan`], [`status`], [`agents`], [`token`],
//! [`revoke`], [`renew_cert`], [`rollout`], [`history`] (and rollback), [`show`], [`logs`],
//! [`destroy`]. On the controller host: [`controller`] (`controller run`, the daemon, and
//! `controller operator-cert`).

pub mod agents;
pub mod apply;
pub mod controller;
pub mod destroy;
pub mod history;
pub mod logs;
pub mod plan;
pub mod render;
pub mod renew_cert;
pub mod revoke;
pub mod rollout;
pub mod show;
pub mod status;
pub mod token;
pub mod validate;
