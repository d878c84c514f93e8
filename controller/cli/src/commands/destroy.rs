//! `apimctl destroy [--yes] [--no-wait]`: stops every node and removes the install trees,
//! cached packs and managed hosts block on every machine; the agents stay enrolled, and the next
//! `apply` installs from scratch. Asks for confirmation on a terminal; without one, `--yes` is
//! required. Waits (up to `--timeout`) until every machine reported it done and says which are
//! still pending: an unreachable machine is destroyed when its agent reconnects.
//!
//! Exit codes: 0 every machine reported the destroy done (or `--no-wait`); 1 refused, or not
//! every machine done within the timeout.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use apim_proto::text::printable;
use apim_proto::v1::{DestroyProgress, DestroyRequest};
use serde_json::json;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::Format;
use crate::prompt::{self, Yes};

/// `apimctl destroy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Confirmation.
    #[command(flatten)]
    yes: Yes,
    /// Return once the destroy is recorded and sent, without waiting for the machines.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for every machine to report the destroy done, e.g. 90s, 10m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    apim_plan::plan::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 90s, 10m)"))
}

/// Runs `apimctl destroy`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    prompt::require(
        "destroy",
        "Stop every node and remove the install trees, cached packs and managed /etc/hosts \
         block on every machine of the cluster?",
        args.yes.yes,
    )?;
    let mut op = client::operator(settings.connect().await?);
    let mut stream = op
        .destroy(DestroyRequest {
            author: std::env::var("USER").unwrap_or_default(),
        })
        .await
        .map_err(CliError::Refused)?
        .into_inner();
    let Some(mut last) = stream.message().await.map_err(CliError::Refused)? else {
        return Err(CliError::WatchClosed);
    };
    let text = args.output == Format::Text;
    if text {
        let _ = writeln!(
            stdout,
            "generation {}: destroy sent to {} machine(s)",
            last.generation,
            last.machines.len()
        );
    }
    let mut said: BTreeSet<String> = BTreeSet::new();
    if text {
        report_done(&last, &mut said, stdout);
    }
    if args.no_wait {
        return finish(&last, args.output, false, stdout);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        if last.machines.iter().all(|m| m.done) {
            return finish(&last, args.output, true, stdout);
        }
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(p))) => {
                last = p;
                if text {
                    report_done(&last, &mut said, stdout);
                }
            }
            Ok(Ok(None)) => return finish(&last, args.output, true, stdout),
            Ok(Err(status)) => return Err(CliError::Refused(status)),
            Err(_) => return finish(&last, args.output, true, stdout),
        }
    }
}

/// Prints each machine that became done (or reported an error) since the last call.
fn report_done(p: &DestroyProgress, said: &mut BTreeSet<String>, stdout: &mut dyn Write) {
    for m in &p.machines {
        let line = if m.done {
            format!("{}: destroyed", m.machine)
        } else if !m.error.is_empty() {
            format!("{}: not done: {}", m.machine, printable(&m.error))
        } else {
            continue;
        };
        if said.insert(line.clone()) {
            let _ = writeln!(stdout, "{line}");
        }
    }
}

/// The end: every machine done, or which are pending and why.
fn finish(
    p: &DestroyProgress,
    format: Format,
    waited: bool,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let complete = p.machines.iter().all(|m| m.done);
    match format {
        Format::Json => {
            let machines: Vec<_> = p
                .machines
                .iter()
                .map(|m| {
                    json!({"machine": m.machine, "done": m.done, "reachable": m.reachable,
                           "error": m.error})
                })
                .collect();
            let _ = writeln!(
                stdout,
                "{}",
                json!({"generation": p.generation, "complete": complete, "machines": machines})
            );
        }
        Format::Text if complete => {
            let _ = writeln!(
                stdout,
                "every machine destroyed; the agents stay enrolled (apply a plan to install again)"
            );
        }
        Format::Text => {
            let pending: Vec<String> = p
                .machines
                .iter()
                .filter(|m| !m.done)
                .map(|m| {
                    let why = if !m.reachable {
                        "unreachable: destroyed when its agent reconnects".to_owned()
                    } else if !m.error.is_empty() {
                        format!("failed: {}", printable(&m.error))
                    } else {
                        "working".to_owned()
                    };
                    format!("{} ({why})", m.machine)
                })
                .collect();
            let _ = writeln!(stdout, "pending: {}", pending.join(", "));
        }
    }
    Ok(if complete || !waited {
        Exit::Success
    } else {
        Exit::Failed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(
            parse_duration("45").is_err(),
            "a unit is needed, as in the plan"
        );
        assert!(parse_duration("soon").is_err());
    }
}
