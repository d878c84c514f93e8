//! `apimctl revoke MACHINE`: revokes a machine's certificate and closes its agent's stream,
//! after the operator confirms (or with `--yes`).

use std::io::Write;

use apim_proto::v1::RevokeRequest;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::prompt::{self, Yes};

/// `apimctl revoke`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The machine.
    machine: String,
    /// Confirmation.
    #[command(flatten)]
    yes: Yes,
}

/// Runs `apimctl revoke`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    prompt::require(
        &format!("revoke {}", args.machine),
        &format!(
            "Revoke machine {}? Its agent is cut off at once (its nodes keep running) and can \
             rejoin only with a new join token.",
            apim_proto::text::printable(&args.machine)
        ),
        args.yes.yes,
    )?;
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
