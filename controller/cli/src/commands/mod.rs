//! One module per `apimctl` command, each with its clap arguments and its `run`.
//!
//! Offline: [`validate`], [`render`], [`completions`], [`man`]. Against the controller (over
//! mTLS with an operator certificate, see [`crate::client`]): [`apply`], [`plan`], [`status`],
//! [`agents`], [`token`], [`revoke`], [`renew_cert`], [`rollout`], [`history`] (rollback and
//! diff), [`nodes`] (restart, stop, start), [`packs`], [`show`], [`logs`], [`destroy`],
//! [`check`] (drift), [`controllers`] (the controllers, which one leads). On the controller host: [`controller`] (`controller run`, the daemon, and
//! `controller operator-cert`).

pub mod agents;
pub mod apply;
pub mod check;
pub mod completions;
pub mod controller;
pub mod controllers;
pub mod destroy;
pub mod history;
pub mod logs;
pub mod man;
pub mod nodes;
pub mod packs;
pub mod plan;
pub mod render;
pub mod renew_cert;
pub mod revoke;
pub mod rollout;
pub mod show;
pub mod status;
pub mod token;
pub mod validate;
