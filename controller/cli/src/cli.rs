//! The command line: [`Cli`] with every subcommand, [`run`] handing each to its module in
//! [`crate::commands`], and the one mapping from how a command ended to its exit code and
//! message (text on stderr, or the JSON error document on stdout with `-o json`).
//!
//! Exit codes ([`exit`]): 0 success; 1 failed (errors in the plan or the command, a rollout
//! that did not succeed, drift that `check` found); 2 usage errors, and `plan` when something would change; 3 the
//! controller could not be reached. Every command's `--help` ends with its examples and exit
//! codes ([`crate::help`]).

use std::io::Write;

use clap::{ArgMatches, Parser, Subcommand};

use apim_plan::secrets::ProcessEnv;

use crate::client::Settings;
use crate::commands::{
    agents, apply, check, completions, controller, controllers, destroy, history, logs, man, nodes,
    packs, plan, render, renew_cert, revoke, rollout, show, status, token, validate,
};
use crate::error::CliError;
use crate::output::Format;
use crate::{
    exit_codes_check, exit_codes_controller, exit_codes_controllers, exit_codes_daemon,
    exit_codes_offline, exit_codes_plan, exit_codes_rollout, help,
};
use apim_proto::v1::NodeOperation;

/// The exit codes, the same for every command (each `--help` says which apply to it).
pub mod exit {
    /// Success (for `plan`: nothing would change).
    pub const SUCCESS: i32 = 0;
    /// What was asked did not happen: errors in the plan or the command, a refusal, a rollout
    /// that did not succeed.
    pub const FAILED: i32 = 1;
    /// A usage error (clap's, or a destructive command with no terminal and no `--yes`).
    pub const USAGE: i32 = 2;
    /// `plan`: something would change (the same number as [`USAGE`], as documented).
    pub const CHANGES: i32 = 2;
    /// The controller could not be reached (nothing listens, no answer, TLS failed).
    pub const UNREACHABLE: i32 = 3;
}

/// apimctl provisions distributed WSO2 API Manager deployments from one plan file.
#[derive(Debug, Parser)]
#[command(name = "apimctl", version, about, long_about = None, after_long_help = crate::help::TOP)]
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
    #[command(after_long_help = help!(
        ["apimctl validate plan.toml", "apimctl validate examples/plan.toml --skip-pack-check"],
        exit_codes_offline!()
    ))]
    Validate(validate::Args),
    /// Show what each node will get: deployment.toml, hosts block, commands, start order.
    #[command(after_long_help = help!(
        ["apimctl render plan.toml --node gw-1", "apimctl render plan.toml --out rendered/"],
        exit_codes_offline!()
    ))]
    Render(render::Args),
    /// Validate, upload missing packs, store the plan and roll it out; follow until done.
    #[command(after_long_help = help!(
        [
            "apimctl apply plan.toml",
            "apimctl apply plan.toml --plan-revision 5f2c9a1e   # as `apimctl plan` printed it",
            "apimctl apply plan.toml --no-wait -o json"
        ],
        exit_codes_rollout!()
    ))]
    Apply(apply::Args),
    /// Show what applying the plan would change; exit 0 nothing, 2 changes, 1 error.
    #[command(after_long_help = help!(
        ["apimctl plan plan.toml", "apimctl plan plan.toml -o json | jq .changes"],
        exit_codes_plan!()
    ))]
    Plan(plan::Args),
    /// Every machine and node: phase, generation, restarts, pid, time in phase, last error.
    #[command(after_long_help = help!(
        [
            "apimctl status",
            "apimctl status --watch",
            "apimctl status --watch | grep -m1 failed",
            "apimctl status -o json | jq '.machines[].nodes[] | {node, phase, pid}'"
        ],
        exit_codes_controller!()
    ))]
    Status(status::Args),
    /// Every enrolled agent: connected or not, last seen, certificate expiry, revoked.
    #[command(after_long_help = help!(
        ["apimctl agents", "apimctl agents -o json | jq '.agents[] | select(.connected | not)'"],
        exit_codes_controller!()
    ))]
    Agents(agents::Args),
    /// Join tokens.
    #[command(subcommand, after_long_help = help!(
        ["apimctl token create --machine vm-gw-1 --ttl 30m"],
        exit_codes_controller!()
    ))]
    Token(token::Command),
    /// Revoke a machine's certificate and close its stream (asks for confirmation).
    #[command(after_long_help = help!(
        ["apimctl revoke vm-gw-1", "apimctl revoke vm-gw-1 --yes   # in a script"],
        exit_codes_controller!()
    ))]
    Revoke(revoke::Args),
    /// The rollout in flight.
    #[command(subcommand, after_long_help = help!(
        ["apimctl rollout abort", "apimctl rollout abort --id rollout-7"],
        exit_codes_controller!()
    ))]
    Rollout(rollout::Command),
    /// The stored plan generations: who, when, what changed, how the rollout ended.
    #[command(after_long_help = help!(
        ["apimctl history", "apimctl history -n 5 -o json"],
        exit_codes_controller!()
    ))]
    History(history::HistoryArgs),
    /// Roll out an earlier generation again, as a new one (tiers, health gating, HA).
    #[command(after_long_help = help!(
        ["apimctl rollback", "apimctl rollback --to 3"],
        exit_codes_rollout!()
    ))]
    Rollback(history::RollbackArgs),
    /// What changed between two stored generations (plan text and each node's configuration).
    #[command(after_long_help = help!(
        ["apimctl diff 3 5", "apimctl diff 3   # against the latest", "apimctl diff 3 5 -o json"],
        exit_codes_controller!()
    ))]
    Diff(history::DiffArgs),
    /// Restart nodes (by name, --role or --machine): HA peers one at a time, gated on health.
    #[command(after_long_help = help!(
        [
            "apimctl restart gw-1",
            "apimctl restart --role gateway",
            "apimctl restart --machine vm-1 --no-wait"
        ],
        exit_codes_rollout!()
    ))]
    Restart(nodes::Args),
    /// Stop nodes (by name, --role or --machine); they stay stopped until started.
    #[command(after_long_help = help!(
        ["apimctl stop gw-2", "apimctl stop --role devportal --yes   # in a script"],
        exit_codes_rollout!()
    ))]
    Stop(nodes::Args),
    /// Start stopped nodes (by name, --role or --machine), tier by tier, gated on health.
    #[command(after_long_help = help!(
        ["apimctl start gw-2", "apimctl start --role devportal"],
        exit_codes_rollout!()
    ))]
    Start(nodes::Args),
    /// Have every agent check its nodes for drift now; print the drifted files and keys.
    #[command(after_long_help = help!(
        ["apimctl check", "apimctl check --node gw-1", "apimctl check -o json | jq .drifted"],
        exit_codes_check!()
    ))]
    Check(check::Args),
    /// The controllers: which one leads rollouts, their versions, heartbeats and lag.
    #[command(after_long_help = help!(
        [
            "apimctl controllers",
            "apimctl controllers --controller ctl-a:7443,ctl-b:7443   # the first that answers",
            "apimctl controllers -o json | jq -r .leader"
        ],
        exit_codes_controllers!()
    ))]
    Controllers(controllers::Args),
    /// Renew your operator certificate with the current one (before it expires).
    #[command(after_long_help = help!(["apimctl renew-cert"], exit_codes_controller!()))]
    RenewCert(renew_cert::Args),
    /// The controller's stored packs and driver jars, and `packs prune` for those no retained
    /// generation needs.
    #[command(after_long_help = help!(
        ["apimctl packs", "apimctl packs -o json", "apimctl packs prune --dry-run", "apimctl packs prune --yes"],
        exit_codes_controller!()
    ))]
    Packs(packs::Args),
    /// What a node runs: its deployment.toml (secrets masked), commands, hosts block, status.
    #[command(after_long_help = help!(
        ["apimctl show gw-1", "apimctl show gw-1 -o json | jq -r '.files[0].content'"],
        exit_codes_controller!()
    ))]
    Show(show::Args),
    /// A node's server log through its agent; -f follows it.
    #[command(after_long_help = help!(
        [
            "apimctl logs km-1 -n 200",
            "apimctl logs gw-1 -f",
            "apimctl logs gw-1 --file http_access.log -n 50"
        ],
        exit_codes_controller!()
    ))]
    Logs(logs::Args),
    /// Stop every node and remove install trees, cached packs and hosts blocks everywhere.
    #[command(after_long_help = help!(
        ["apimctl destroy", "apimctl destroy --yes --timeout 10m   # in a script"],
        exit_codes_rollout!()
    ))]
    Destroy(destroy::Args),
    /// The controller daemon and its host-side tools.
    #[command(subcommand, after_long_help = help!(
        [
            "apimctl controller run --config /etc/apimctl/controller.toml",
            "apimctl controller operator-cert --name alice --out ~/.config/apimctl/"
        ],
        exit_codes_daemon!()
    ))]
    Controller(controller::Command),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_long_help = help!(
        [
            "apimctl completions bash > /etc/bash_completion.d/apimctl",
            "apimctl completions zsh > \"${fpath[1]}/_apimctl\"",
            "apimctl completions fish > ~/.config/fish/completions/apimctl.fish"
        ],
        exit_codes_offline!()
    ))]
    Completions(completions::Args),
    /// Print the man page (roff), or write one page per command into a directory.
    #[command(after_long_help = help!(
        ["apimctl man | man -l -", "apimctl man --out /usr/local/share/man/man1"],
        exit_codes_offline!()
    ))]
    Man(man::Args),
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

/// The output format the command line asks for: `Json` when the command it names has an
/// `-o/--output` set to `json`. Read from the parsed arguments (any command whose `output`
/// argument is a [`Format`] counts), so an error can be reported as JSON too.
pub fn output_format(matches: &ArgMatches) -> Format {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    match m.try_get_one::<Format>("output") {
        Ok(Some(f)) => *f,
        _ => Format::Text,
    }
}

/// Parses the process's arguments (exiting on usage errors, `--help` and `--version` as clap
/// does, exit code 2 for usage errors) and runs the command; returns the exit code.
pub fn main() -> i32 {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let format = output_format(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    run(cli, format, &mut std::io::stdout(), &mut std::io::stderr())
}

/// Runs the CLI; returns the process exit code. `format` is how errors are reported (see
/// [`output_format`]).
pub fn run(cli: Cli, format: Format, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let result = dispatch(cli, stdout, &mut *stderr);
    exit_code(result, format, stdout, stderr)
}

/// Runs the command's module.
fn dispatch(cli: Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Result<Exit, CliError> {
    let env = &ProcessEnv;
    let connection = cli.connection;
    match cli.command {
        Command::Validate(args) => validate::run(args, env, stdout, stderr),
        Command::Render(args) => render::run(args, env, stdout, stderr),
        Command::Controller(command) => controller::run(command, stdout),
        Command::Completions(args) => completions::run(args, stdout),
        Command::Man(args) => man::run(args, stdout),
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
        Command::Diff(args) => on_controller(connection, |s| history::diff(args, s, stdout)),
        Command::Restart(args) => on_controller(connection, |s| {
            nodes::run(NodeOperation::Restart, args, s, stdout)
        }),
        Command::Stop(args) => on_controller(connection, |s| {
            nodes::run(NodeOperation::Stop, args, s, stdout)
        }),
        Command::Start(args) => on_controller(connection, |s| {
            nodes::run(NodeOperation::Start, args, s, stdout)
        }),
        Command::Rollout(command) => {
            on_controller(connection, |s| rollout::run(command, s, stdout))
        }
        Command::RenewCert(args) => on_controller(connection, |s| renew_cert::run(args, s, stdout)),
        Command::Packs(args) => on_controller(connection, |s| packs::run(args, s, stdout)),
        Command::Show(args) => on_controller(connection, |s| show::run(args, s, stdout)),
        Command::Logs(args) => on_controller(connection, |s| logs::run(args, s, stdout, stderr)),
        Command::Destroy(args) => on_controller(connection, |s| destroy::run(args, s, stdout)),
        Command::Check(args) => on_controller(connection, |s| check::run(args, s, stdout)),
        Command::Controllers(args) => {
            on_controller(connection, |s| controllers::run(args, s, stdout, stderr))
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
    let files = crate::reach::Files::of(&settings);
    runtime()?
        .block_on(command(settings))
        .map_err(|e| e.with_files(files))
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
/// printed: as text on stderr (diagnostics as they are, any other error as `error: MESSAGE`
/// and its hints), or with `-o json` as the command's one JSON document on stdout.
fn exit_code(
    result: Result<Exit, CliError>,
    format: Format,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    match result {
        Ok(Exit::Success) => exit::SUCCESS,
        Ok(Exit::Failed) => exit::FAILED,
        Ok(Exit::Changes) => exit::CHANGES,
        Err(e) => {
            let report = e.report();
            let _ = match format {
                Format::Json => writeln!(stdout, "{}", report.json()),
                Format::Text => write!(stderr, "{}", report.text()),
            };
            report.exit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn printed(result: Result<Exit, CliError>) -> (i32, String) {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let code = exit_code(result, Format::Text, &mut stdout, &mut stderr);
        assert!(stdout.is_empty(), "text errors go to stderr");
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
