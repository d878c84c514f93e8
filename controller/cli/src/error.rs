//! [`CliError`]: every way a command can fail. [`crate::cli::run`] is the one place one is
//! printed (and turned into exit code 1).

use std::path::PathBuf;

use apim_plan::diag::Report;

/// Everything a command can fail with.
///
/// Two variants are the operator's diagnostics rather than one message: [`CliError::InvalidPlan`]
/// and [`CliError::Refused`] print lines that carry their own `error:` labels (see
/// [`CliError::is_diagnostics`]); every other variant is one message.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The plan has errors: its diagnostics (`file:line:col: error: …`, the source line, the
    /// hint, the count).
    #[error("{}", without_last_newline(.0.render()))]
    InvalidPlan(Report),
    /// The controller refused the plan: its details, one `error:` (and `hint:`) per problem.
    #[error("{}", crate::output::lines::refusal(.0))]
    Refused(tonic::Status),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Hashing a pack failed before it could read the pack.
    #[error("hashing {}: {source}", path.display())]
    Hashing {
        /// The pack.
        path: PathBuf,
        /// The task's failure.
        source: tokio::task::JoinError,
    },
    /// The plan could not be rendered.
    #[error(transparent)]
    Render(#[from] apim_plan::render::RenderError),
    /// A secret of the plan could not be resolved (the message names it, never its value).
    #[error("{0}")]
    Secret(String),
    /// `render --node` names no node.
    #[error("no node named `{0}` in the plan")]
    UnknownNode(String),
    /// `token create --ttl` is not a duration.
    #[error("`{0}` is not a duration")]
    BadDuration(String),
    /// Talking to the controller failed.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// A destructive command was not confirmed (no terminal to ask on, and no `--yes`).
    #[error("{0}")]
    Unconfirmed(String),
    /// The controller ended `apply`'s watch before the rollout finished.
    #[error("the controller closed the watch stream")]
    WatchClosed,
    /// The daemon (or its CA) failed.
    #[error(transparent)]
    Daemon(#[from] apim_controller::run::DaemonError),
    /// The async runtime could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CliError {
    /// Whether the message is diagnostics that carry their own `error:` labels; any other
    /// message is printed as `error: MESSAGE`.
    pub fn is_diagnostics(&self) -> bool {
        matches!(self, CliError::InvalidPlan(_) | CliError::Refused(_))
    }

    /// A failed read or write of `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
        move |source| CliError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A failed call to the controller, printed as `error: MESSAGE`.
impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Client(status.into())
    }
}

fn without_last_newline(text: String) -> String {
    match text.strip_suffix('\n') {
        Some(t) => t.to_string(),
        None => text,
    }
}
