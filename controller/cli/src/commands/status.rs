//! `apimctl status [--watch]`: every machine and node with its phase, step, plan generation,
//! time in the phase and last error; with `--watch`, again on every change until the
//! controller ends the stream or nobody reads the output any more.

use std::io::Write;

use apim_proto::v1::{ClusterStatus, StatusRequest, WatchRequest};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, json, lines};

/// `apimctl status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing on every change.
    #[arg(long)]
    watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// Runs `apimctl status`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    if !args.watch {
        let s = op.status(StatusRequest {}).await?.into_inner();
        let _ = print(&s, args.output, stdout);
        return Ok(Exit::Success);
    }
    let mut stream = op.watch(WatchRequest {}).await?.into_inner();
    while let Some(s) = stream.message().await? {
        match print(&s, args.output, stdout).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // The reader has what it wanted (`status --watch | grep -m1 healthy`).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Exit::Success),
            Err(source) => {
                return Err(CliError::Io {
                    path: "stdout".into(),
                    source,
                });
            }
        }
    }
    Ok(Exit::Success)
}

fn print(status: &ClusterStatus, format: Format, stdout: &mut dyn Write) -> std::io::Result<()> {
    match format {
        Format::Json => writeln!(stdout, "{}", json::status(status)),
        Format::Text => lines::status(status)
            .iter()
            .try_for_each(|l| writeln!(stdout, "{l}")),
    }
}
