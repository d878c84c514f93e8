//! [`CliError`]: every way a command can fail, and [`ErrorReport`]: how one is reported (its
//! code, message, hints, details and exit code), as text or as the `-o json` error document.
//! [`crate::cli::run`] is the one place one is printed.

use std::path::PathBuf;

use apim_plan::diag::Report;
use serde_json::{Value, json};

use crate::cli::exit;
use crate::client::ClientError;

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
    /// The controller ended `apply`'s watch before the rollout finished.
    #[error("the controller closed the watch stream")]
    WatchClosed,
    /// The daemon (or its CA) failed.
    #[error(transparent)]
    Daemon(#[from] apim_controller::run::DaemonError),
    /// The async runtime could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    /// A destructive command found no terminal to ask on and no `--yes`.
    #[error(
        "{what} needs confirmation and standard input is not a terminal: pass --yes to confirm"
    )]
    NeedsConfirmation {
        /// What was asked, e.g. "revoke vm-gw-1".
        what: String,
    },
    /// The operator answered no to a confirmation.
    #[error("{what}: not confirmed, nothing done")]
    NotConfirmed {
        /// What was asked.
        what: String,
    },
    /// A command-line argument names nothing the controller has (or is malformed).
    #[error("{0}")]
    BadArgument(String),
}

impl CliError {
    /// Whether the message is diagnostics that carry their own `error:` labels; any other
    /// message is printed as `error: MESSAGE`.
    pub fn is_diagnostics(&self) -> bool {
        matches!(self, CliError::InvalidPlan(_) | CliError::Refused(_))
    }

    /// The error with what the connection `files` were, for a call the controller refused
    /// because of the operator certificate (so the report can name the files).
    pub fn with_files(self, files: crate::reach::Files) -> Self {
        let rejected = |status: &tonic::Status| {
            matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            )
        };
        match self {
            CliError::Client(ClientError::Rpc { status }) | CliError::Refused(status)
                if rejected(&status) =>
            {
                CliError::Client(ClientError::Rejected { status, files })
            }
            e => e,
        }
    }

    /// How this error is reported: code, message, hints, details, exit code.
    pub fn report(&self) -> ErrorReport {
        let mut r = ErrorReport::new(self.code(), self.to_string(), self.exit_code());
        match self {
            CliError::InvalidPlan(report) => {
                let (errors, warnings) = report.counts();
                r.message = format!("{}: {errors} error(s), {warnings} warning(s)", report.path);
                r.details = report
                    .diagnostics
                    .iter()
                    .map(|d| {
                        let (line, column) =
                            apim_plan::diag::line_col(&report.source, d.span.start);
                        Detail {
                            severity: severity(d.severity),
                            message: d.message.clone(),
                            hint: d.hint.clone().unwrap_or_default(),
                            file: report.path.clone(),
                            line,
                            column,
                            ..Detail::default()
                        }
                    })
                    .collect();
            }
            CliError::Refused(status)
            | CliError::Client(ClientError::Rpc { status })
            | CliError::Client(ClientError::Rejected { status, .. }) => {
                r.message = apim_proto::text::printable(status.message()).into_owned();
                if let Some(d) = apim_proto::error_details(status) {
                    r.details = d.errors.iter().map(Detail::from_proto).collect();
                }
                for d in &r.details {
                    if !d.hint.is_empty() && !r.hints.contains(&d.hint) {
                        r.hints.push(d.hint.clone());
                    }
                }
                if let CliError::Client(ClientError::Rejected { files, .. }) = self {
                    let cert = files
                        .cert
                        .as_ref()
                        .map_or("(none)".into(), |p| p.display().to_string());
                    r.hints.push(format!(
                        "the controller refused the operator certificate {cert}: renew it \
                         with `apimctl renew-cert` before it expires, or issue one on the \
                         controller host with `apimctl controller operator-cert`"
                    ));
                    r.hints.push(files.hint());
                    r.controller = Some(json!({
                        "ca": files.ca, "cert": files.cert, "key": files.key,
                    }));
                }
            }
            CliError::Client(ClientError::Unreachable(u)) => {
                r.hints = u.hints();
                r.controller = Some(json!({
                    "address": u.address,
                    "addresses": u.addresses(),
                    "listening": u.listening == crate::reach::Listening::Yes,
                    "ca": u.files.ca, "cert": u.files.cert, "key": u.files.key,
                }));
            }
            _ => {}
        }
        r.text = self.is_diagnostics().then(|| self.to_string());
        r
    }

    /// The stable code of the JSON error document.
    fn code(&self) -> String {
        match self {
            CliError::InvalidPlan(_) => "invalid_plan".into(),
            CliError::Refused(s) => grpc_code(s.code()),
            CliError::Io { .. } | CliError::Hashing { .. } => "io".into(),
            CliError::Render(_) => "render".into(),
            CliError::Secret(_) => "secret".into(),
            CliError::UnknownNode(_) => "unknown_node".into(),
            CliError::BadDuration(_) => "bad_duration".into(),
            CliError::Client(c) => match c {
                ClientError::Missing { .. } | ClientError::Config { .. } => "config".into(),
                ClientError::Connect { .. } => "config".into(),
                ClientError::Read { .. } => "io".into(),
                ClientError::Unreachable(u) if u.is_tls() => "tls".into(),
                ClientError::Unreachable(_) => "unreachable".into(),
                ClientError::Rejected { status, .. } | ClientError::Rpc { status } => {
                    grpc_code(status.code())
                }
            },
            CliError::WatchClosed => "watch_closed".into(),
            CliError::Daemon(_) => "daemon".into(),
            CliError::Runtime(_) => "runtime".into(),
            CliError::NeedsConfirmation { .. } => "confirmation_required".into(),
            CliError::NotConfirmed { .. } => "not_confirmed".into(),
            CliError::BadArgument(_) => "bad_argument".into(),
        }
    }

    /// The exit code: 3 when the controller could not be reached, 2 for a destructive
    /// command without a terminal or `--yes` (a usage error, like clap's), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Client(ClientError::Unreachable(_)) => exit::UNREACHABLE,
            CliError::NeedsConfirmation { .. } => exit::USAGE,
            _ => exit::FAILED,
        }
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

/// `invalid_argument`, `failed_precondition`, … (a gRPC code in snake case).
fn grpc_code(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn severity(s: apim_plan::diag::Severity) -> String {
    match s {
        apim_plan::diag::Severity::Error => "error".into(),
        apim_plan::diag::Severity::Warning => "warning".into(),
    }
}

/// An error as it is reported, as text (`error: MESSAGE` and `  hint: …` lines on stderr) or
/// as the one JSON document of a `-o json` command (on stdout):
/// `{"error": {"code", "message", "hint", "details": [...], "exit_code"}}`, with a
/// `controller` object (address, whether anything listens, the files used) when the
/// controller could not be reached or refused the certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReport {
    /// A stable code: `invalid_plan`, `unreachable`, `tls`, `config`, `io`, a gRPC code in
    /// snake case for what the controller refused (`failed_precondition`, …), ….
    pub code: String,
    /// What went wrong, one line.
    pub message: String,
    /// What to check or do, one line each.
    pub hints: Vec<String>,
    /// One entry per problem (a plan's diagnostics, the controller's error details).
    pub details: Vec<Detail>,
    /// Facts about the connection, for connection errors.
    pub controller: Option<Value>,
    /// The process exit code.
    pub exit: i32,
    /// Text that carries its own `error:` labels (a plan's diagnostics, a refusal), printed as
    /// it is instead of `error: MESSAGE`.
    text: Option<String>,
}

/// One problem of an [`ErrorReport`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Detail {
    /// `error` or `warning`.
    pub severity: String,
    /// A stable code from the controller (`plan.unknown_machine`, …), empty when none.
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, empty when there is nothing useful to say.
    pub hint: String,
    /// The file, empty when not file-bound.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The dotted path of the field, empty when unknown.
    pub field_path: String,
}

impl Detail {
    fn from_proto(d: &apim_proto::v1::ErrorDetail) -> Self {
        let p = |s: &str| apim_proto::text::printable(s).into_owned();
        Detail {
            severity: "error".into(),
            code: p(&d.code),
            message: p(&d.message),
            hint: p(&d.hint),
            file: p(&d.file),
            line: d.line as usize,
            column: d.column as usize,
            field_path: p(&d.field_path),
        }
    }
}

impl ErrorReport {
    /// A report with no hint or detail.
    pub fn new(code: impl Into<String>, message: impl Into<String>, exit: i32) -> Self {
        ErrorReport {
            code: code.into(),
            message: message.into(),
            hints: Vec::new(),
            details: Vec::new(),
            controller: None,
            exit,
            text: None,
        }
    }

    /// The text on stderr: the diagnostics as they are, or `error: MESSAGE` and one
    /// `  hint: …` line per hint. Ends with a newline.
    pub fn text(&self) -> String {
        let mut s = match &self.text {
            Some(t) => t.clone(),
            None => format!("error: {}", self.message),
        };
        for h in &self.hints {
            let line = format!("  hint: {h}");
            if !s.contains(&line) {
                s.push('\n');
                s.push_str(&line);
            }
        }
        s.push('\n');
        s
    }

    /// The JSON error document.
    pub fn json(&self) -> Value {
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "hint": (!self.hints.is_empty()).then(|| self.hints.join("\n")),
            "details": self.details,
            "exit_code": self.exit,
        });
        if let Some(c) = &self.controller {
            error["controller"] = c.clone();
        }
        json!({ "error": error })
    }
}
