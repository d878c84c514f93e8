//! `apimctl agents`: every enrolled agent, connected or not, with when it was last seen, when
//! its certificate expires, and whether it is revoked; one table, or one JSON document
//! (`{"agents": [...]}`).

use std::io::Write;

use apim_proto::v1::ListAgentsRequest;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, json, tables};

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
    let _ = match args.output {
        Format::Json => writeln!(stdout, "{}", json::agents(&r.agents)),
        Format::Text => tables::or_empty(
            &tables::agents(&r.agents, std::time::SystemTime::now()),
            "no agent enrolled yet (apimctl token create --machine NAME)",
        )
        .iter()
        .try_for_each(|l| writeln!(stdout, "{l}")),
    };
    Ok(Exit::Success)
}
