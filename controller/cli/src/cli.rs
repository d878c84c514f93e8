//! The command line: [`Cli`] with every subcommand, [`run`] handing each to its module in
//! [`crate::commands`], and the one mapping from how a command ended to its exit code and
//! message.
//!
//! Exit codes: 0 success, 1 errors in the plan or the command (or a rollout that did not
//! succeed); `plan` exits 2 when something would change.

use std::io::Write;

use clap::{Parser, Subcommand};

use apim_plan::secrets::ProcessEnv;

use crate::client::Settings;
use crate::commands::{
    agents, apply, controller, destroy, history, logs, plan, render, renew_cert, revoke, rollout,
    show, status, token, validate,
};
use crate::error::CliError;

/// apimctl provisions distributed WSO2 API Manager deployments from one plan file.
#[derive(Debug, Parser)]
#[command(name = "apimctl", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
    /// How to reach the controller.
    #[command(flatten)]
    connection: Settings,
}

/// apimctl's subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Check a plan offline and report every problem with file:line:col.
    Validate(validate::Args),
    /// Show what each node will get: deployment.toml, hosts block, commands, start order.
    Render(render::Args),
    /// Validate, upload missing packs, store the plan and roll it out; follow until done.
    Apply(apply::Args),
    /// Show what applying the plan would change; exit 0 nothing, 2 changes, 1 error.
    Plan(plan::Args),
    /// Every machine and node: phase, step, generation, elapsed, last error.
    Status(status::Args),
    /// Every enrolled agent.
    Agents(agents::Args),
    /// Join tokens.
    #[command(subcommand)]
    Token(token::Command),
    /// Revoke a machine's certificate and close its stream.
    Revoke(revoke::Args),
    /// The rollout in flight.
    #[command(subcommand)]
    Rollout(rollout::Command),
    /// The stored plan generations: who, when, what changed, how the rollout ended.
    History(history::HistoryArgs),
    /// Roll out an earlier generation again, as a new one (tiers, health gating, HA).
    Rollback(history::RollbackArgs),
    /// Renew your operator certificate with the current one (before it expires).
    RenewCert(renew_cert::Args),
    /// What a node runs: its deployment.toml (secrets masked), commands, hosts block, status.
    Show(show::Args),
    /// A node's server log through its agent; -f follows it.
    Logs(logs::Args),
    /// Stop every node and remove install trees, cached packs and hosts blocks everywhere.
    Destroy(destroy::Args),
    /// The controller daemon and its host-side tools.
    #[command(subcommand)]
    Controller(controller::Command),
}

/// How a command that ran to its end exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit 0.
    Success,
    /// Exit 1: what was asked did not happen, and the output says so (a rollout that failed).
    Failed,
    /// Exit 2: `plan` found changes.
    Changes,
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let result = dispatch(cli, stdout, &mut *stderr);
    exit_code(result, stderr)
}

/// Runs the command's module.
fn dispatch(cli: Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Result<Exit, CliError> {
    let env = &ProcessEnv;
    let connection = cli.connection;
    match cli.command {
        Command::Validate(args) => validate::run(args, env, stdout, stderr),
        Command::Render(args) => render::run(args, env, stdout, stderr),
        Command::Controller(command) => controller::run(command, stdout),
        Command::Apply(args) => {
            on_controller(connection, |s| apply::run(args, s, env, stdout, stderr))
        }
        Command::Plan(args) => {
            on_controller(connection, |s| plan::run(args, s, env, stdout, stderr))
        }
        Command::Status(args) => on_controller(connection, |s| status::run(args, s, stdout)),
        Command::Agents(args) => on_controller(connection, |s| agents::run(args, s, stdout)),
        Command::Token(command) => on_controller(connection, |s| token::run(command, s, stdout)),
        Command::Revoke(args) => on_controller(connection, |s| revoke::run(args, s, stdout)),
        Command::History(args) => on_controller(connection, |s| history::history(args, s, stdout)),
        Command::Rollback(args) => {
            on_controller(connection, |s| history::rollback(args, s, stdout))
        }
        Command::Rollout(command) => {
            on_controller(connection, |s| rollout::run(command, s, stdout))
        }
        Command::RenewCert(args) => on_controller(connection, |s| renew_cert::run(args, s, stdout)),
        Command::Show(args) => on_controller(connection, |s| show::run(args, s, stdout)),
        Command::Logs(args) => on_controller(connection, |s| logs::run(args, s, stdout, stderr)),
        Command::Destroy(args) => {
            on_controller(connection, |s| destroy::run(args, s, stdout, stderr))
        }
    }
}

/// Runs a command that talks to the controller: the connection settings completed from the
/// client config file, the command on the [`runtime`].
fn on_controller<F, Fut>(connection: Settings, command: F) -> Result<Exit, CliError>
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = Result<Exit, CliError>>,
{
    let settings = connection.with_file()?;
    runtime()?.block_on(command(settings))
}

/// The async runtime the controller commands and the daemon run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// The one mapping from how a command ended to the exit code, and the one place an error is
/// printed: diagnostics as they are, any other error as `error: MESSAGE`.
fn exit_code(result: Result<Exit, CliError>, stderr: &mut dyn Write) -> i32 {
    match result {
        Ok(Exit::Success) => 0,
        Ok(Exit::Failed) => 1,
        Ok(Exit::Changes) => 2,
        Err(e) => {
            let _ = if e.is_diagnostics() {
                writeln!(stderr, "{e}")
            } else {
                writeln!(stderr, "error: {e}")
            };
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn printed(result: Result<Exit, CliError>) -> (i32, String) {
        let mut stderr = Vec::new();
        let code = exit_code(result, &mut stderr);
        (code, String::from_utf8(stderr).expect("utf-8"))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_say_done_failed_or_changes() {
        assert_eq!(printed(Ok(Exit::Success)), (0, String::new()));
        assert_eq!(printed(Ok(Exit::Failed)), (1, String::new()));
        assert_eq!(printed(Ok(Exit::Changes)), (2, String::new()));
    }

    #[test]
    fn an_error_is_printed_once_with_one_label() {
        assert_eq!(
            printed(Err(CliError::UnknownNode("km-9".into()))),
            (1, "error: no node named `km-9` in the plan\n".into())
        );
        assert_eq!(
            printed(Err(CliError::Refused(tonic::Status::unavailable("down")))),
            (1, "error: down\n".into())
        );
        let (_, report) = apim_plan::validate::check(
            std::path::Path::new("p.toml"),
            "[cluster\n",
            &ProcessEnv,
            apim_plan::validate::Options::default(),
        );
        let (code, text) = printed(Err(CliError::InvalidPlan(report.clone())));
        assert_eq!(code, 1);
        assert_eq!(text, report.render(), "diagnostics as they are");
        assert!(text.starts_with("p.toml:1:"), "{text}");
    }
}
