//! `apimctl status [--watch]`: every machine and node with its phase, plan generation,
//! restarts, pid, time in the phase, step and last error. With `--watch`, again on every
//! change until the controller ends the stream or nobody reads the output any more: in a
//! terminal the screen is redrawn in place (and its times tick every second); piped, one
//! block of timestamped lines per change; with `-o json`, one document per change.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use apim_proto::v1::{ClusterStatus, StatusRequest, WatchRequest};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, json, tables, watch};

/// `apimctl status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep showing the status on every change: redrawn in place in a terminal, one block of
    /// timestamped lines per change when piped, one JSON document per change with -o json.
    #[arg(long)]
    watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// How `--watch` shows each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// One JSON document per change.
    Json,
    /// The terminal redrawn in place.
    Screen,
    /// Timestamped plain lines.
    Lines,
}

/// Runs `apimctl status`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    if !args.watch {
        let s = op.status(StatusRequest {}).await?.into_inner();
        let text = match args.output {
            Format::Json => format!("{}\n", json::status(&s)),
            Format::Text => lines(tables::status(&s, SystemTime::now())),
        };
        let _ = stdout.write_all(text.as_bytes());
        return Ok(Exit::Success);
    }
    let view = match args.output {
        Format::Json => View::Json,
        Format::Text if std::io::stdout().is_terminal() => View::Screen,
        Format::Text => View::Lines,
    };
    let mut stream = op.watch(WatchRequest {}).await?.into_inner();
    // The screen's times tick between changes; the other views print changes only.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<ClusterStatus> = None;
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(s) = message? else { break };
                if !show(&s, view, stdout)? {
                    break;
                }
                last = Some(s);
            }
            _ = tick.tick(), if view == View::Screen => {
                if let Some(s) = &last
                    && !show(s, view, stdout)?
                {
                    break;
                }
            }
        }
    }
    Ok(Exit::Success)
}

/// Prints one change in `view`; `false` when the reader went away (`status --watch | grep -m1
/// …`), which ends the watch as a success.
fn show(status: &ClusterStatus, view: View, stdout: &mut dyn Write) -> Result<bool, CliError> {
    let now = SystemTime::now();
    let text = match view {
        View::Json => format!("{}\n", json::status(status)),
        View::Screen => watch::screen(status, now),
        View::Lines => lines(watch::block(status, now)),
    };
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(source) => Err(CliError::Io {
            path: "stdout".into(),
            source,
        }),
    }
}

fn lines(lines: Vec<String>) -> String {
    lines.into_iter().map(|l| l + "\n").collect()
}
