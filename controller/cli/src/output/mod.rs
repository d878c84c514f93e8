//! How apimctl's output looks. Commands decide what to say; these modules decide how it looks:
//!
//! - [`table`]: aligned columns with a header, for any listing (widths from the cells, every
//!   cell escaped);
//! - [`tables`]: the tables of `status`, `agents` and `history`;
//! - [`time`]: human times for tables (`3m12s`, `2m ago`, `in 23h`), against an injected now;
//! - [`watch`]: `status --watch` in text (redrawn in a terminal, timestamped lines piped);
//! - [`lines`]: `apply`'s node lines, the changes of `plan`, and the controller's refusals;
//! - [`render`]: the text of `render` (and of the files `render --out` writes);
//! - [`bars`]: `apply`'s live progress in a terminal;
//! - [`json`]: every `-o json` shape;
//! - [`drift`]: drifted nodes, files and keys (`status`, `check`).
//!
//! Here: the [`Format`] flag, and the names and times both text and JSON use.

use std::time::SystemTime;

use apim_proto::v1::{ChangeKind, NodePhase, RolloutState};

pub mod bars;
pub mod drift;
pub mod json;
pub mod lines;
pub mod render;
pub mod table;
pub mod tables;
pub mod time;
pub mod watch;

/// Output format of the controller commands (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// JSON, for scripts.
    Json,
}

/// A rollout state as the operator reads it: `staging`, `rolling-back`, `succeeded`, ….
pub fn state_name(s: RolloutState) -> String {
    s.as_str_name()
        .trim_start_matches("ROLLOUT_STATE_")
        .to_lowercase()
        .replace('_', "-")
}

/// A node phase as the operator reads it: `pending`, `fetching`, `healthy`, ….
pub fn phase_name(p: NodePhase) -> String {
    match p {
        NodePhase::Unspecified => "pending".into(),
        p => p
            .as_str_name()
            .trim_start_matches("NODE_PHASE_")
            .to_lowercase(),
    }
}

/// A planned change as the operator reads it: `create`, `update`, `delete`, `unchanged`.
pub fn kind_name(k: ChangeKind) -> String {
    k.as_str_name()
        .trim_start_matches("CHANGE_KIND_")
        .to_lowercase()
}

/// A protobuf timestamp as a `SystemTime`; `None` when absent or out of range.
pub fn since(ts: Option<&apim_proto::prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|t| SystemTime::try_from(*t).ok())
}

/// A time as RFC 3339 (UTC), as JSON shows every time.
pub fn rfc3339(t: SystemTime) -> String {
    ::time::OffsetDateTime::from(t)
        .format(&::time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
