//! `apimctl token create --machine NAME [--ttl 1h]`: prints a one-time join token the agent on
//! that machine enrolls with.

use std::io::Write;

use apim_proto::v1::CreateTokenRequest;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;

/// `apimctl token …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a one-time join token for a machine.
    #[command(after_long_help = crate::help!(
        [
            "apimctl token create --machine vm-gw-1",
            "apimctl token create --machine vm-gw-1 --ttl 30m > token   # then to the machine's /etc/apim-agent/token"
        ],
        crate::exit_codes_controller!()
    ))]
    Create(CreateArgs),
}

/// `apimctl token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The machine the token enrolls.
    #[arg(long)]
    machine: String,
    /// Lifetime, e.g. 1h or 30m (default: the controller's).
    #[arg(long)]
    ttl: Option<String>,
}

/// Runs `apimctl token …`.
pub async fn run(
    command: Command,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let Command::Create(CreateArgs { machine, ttl }) = command;
    // 0 asks for the controller's default.
    let ttl_s = match ttl {
        Some(t) => apim_plan::plan::parse_duration(&t)
            .ok_or(CliError::BadDuration(t))?
            .as_secs(),
        None => 0,
    };
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .create_token(CreateTokenRequest { machine, ttl_s })
        .await?
        .into_inner();
    let _ = writeln!(stdout, "{}", r.token);
    Ok(Exit::Success)
}
