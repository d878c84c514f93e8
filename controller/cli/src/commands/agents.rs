//! `apimctl agents`: every enrolled agent, connected or not, with when it was last seen, when
//! its certificate expires, and whether it is revoked.

use std::io::Write;

use apim_proto::v1::ListAgentsRequest;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, json, lines};

/// `apimctl agents`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// Runs `apimctl agents`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op.list_agents(ListAgentsRequest {}).await?.into_inner();
    for a in &r.agents {
        let _ = match args.output {
            Format::Json => writeln!(stdout, "{}", json::agent(a)),
            Format::Text => writeln!(stdout, "{}", lines::agent(a)),
        };
    }
    Ok(Exit::Success)
}
