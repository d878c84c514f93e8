//! `apimctl rollout abort`: stops the rollout in flight where it stands.

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::AbortRolloutRequest;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, state_name};

/// `apimctl rollout`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Stop the rollout in flight: nothing more is staged or released (nodes already released
    /// keep converging). Apply a plan afterwards to go on (the previous one included).
    #[command(after_long_help = crate::help!(
        ["apimctl rollout abort", "apimctl rollout abort --id rollout-7 -o json"],
        crate::exit_codes_controller!()
    ))]
    Abort(AbortArgs),
}

/// `apimctl rollout abort`.
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    /// Abort only if this is the rollout in flight (as `apimctl status` names it).
    #[arg(long)]
    id: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// Runs `apimctl rollout …`.
pub async fn run(
    command: Command,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let Command::Abort(args) = command;
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .abort_rollout(AbortRolloutRequest {
            rollout_id: args.id.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let state = state_name(r.state());
    let _ = match args.output {
        Format::Json => writeln!(
            stdout,
            "{}",
            serde_json::json!({
                "id": r.id, "generation": r.generation, "state": state,
                "tier": r.tier, "message": r.message,
            })
        ),
        Format::Text => writeln!(
            stdout,
            "{} (generation {}): {state}: {}",
            r.id,
            r.generation,
            printable(&r.message)
        ),
    };
    Ok(Exit::Success)
}
