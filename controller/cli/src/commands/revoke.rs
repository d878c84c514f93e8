//! `apimctl revoke MACHINE`: revokes a machine's certificate and closes its agent's stream.

use std::io::Write;

use apim_proto::v1::RevokeRequest;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;

/// `apimctl revoke`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The machine.
    machine: String,
}

/// Runs `apimctl revoke`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .revoke(RevokeRequest {
            machine: args.machine.clone(),
        })
        .await?
        .into_inner();
    let closed = if r.disconnected {
        " (stream closed)"
    } else {
        ""
    };
    let _ = writeln!(stdout, "revoked {}{closed}", args.machine);
    Ok(Exit::Success)
}
