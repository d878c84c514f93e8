//! `apimctl history` (the stored plan generations) and `apimctl rollback [--to N]` (a new
//! generation equal to an earlier one, rolled out and followed like `apply`).

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::{GenerationInfo, HistoryRequest, RollbackRequest};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, state_name};

/// `apimctl history`.
///
/// Example: apimctl history -n 5
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// At most this many generations, newest first.
    #[arg(short = 'n', long, default_value_t = 20)]
    limit: u32,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// `apimctl rollback`.
///
/// Example: apimctl rollback --to 3
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The generation to return to (default: the newest earlier one that rolled out).
    #[arg(long)]
    to: Option<u64>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// Return once the generation is stored, without following the rollout.
    #[arg(long)]
    no_wait: bool,
}

fn when(g: &GenerationInfo) -> String {
    g.created_at
        .as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Runs `apimctl history`.
pub async fn history(
    args: HistoryArgs,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .history(HistoryRequest { limit: args.limit })
        .await?
        .into_inner();
    match args.output {
        Format::Json => {
            let rows: Vec<_> = r
                .generations
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "generation": g.generation, "author": g.author, "created_at": when(g),
                        "plan_path": g.plan_path, "changed_nodes": g.changed_nodes,
                        "restorable": g.restorable,
                        "rollout": g.rollout.as_ref().map(|r| serde_json::json!({
                            "id": r.id, "state": state_name(r.state()), "message": r.message,
                        })),
                    })
                })
                .collect();
            let _ = writeln!(stdout, "{}", serde_json::json!({ "generations": rows }));
        }
        Format::Text => {
            for g in &r.generations {
                let outcome = g
                    .rollout
                    .as_ref()
                    .map_or_else(|| "no rollout".to_string(), |r| state_name(r.state()));
                let changed = if g.changed_nodes.is_empty() {
                    "-".to_string()
                } else {
                    g.changed_nodes.join(",")
                };
                let destroy = g
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.state() == apim_proto::v1::RolloutState::Destroyed);
                let kept = if g.restorable || destroy {
                    ""
                } else {
                    "  (secrets forgotten)"
                };
                let _ = writeln!(
                    stdout,
                    "{:>4}  {}  {:<10}  changed {}  by {}{kept}",
                    g.generation,
                    when(g),
                    outcome,
                    printable(&changed),
                    printable(&g.author)
                );
            }
        }
    }
    Ok(Exit::Success)
}

/// Runs `apimctl rollback`.
pub async fn rollback(
    args: RollbackArgs,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .rollback(RollbackRequest {
            to_generation: args.to.unwrap_or(0),
        })
        .await?
        .into_inner();
    if r.rollout_id.is_empty() {
        let _ = writeln!(stdout, "generation {}: nothing to change", r.generation);
        return Ok(Exit::Success);
    }
    if args.output == Format::Text {
        let _ = writeln!(
            stdout,
            "generation {}: rollout {} started",
            r.generation, r.rollout_id
        );
    }
    if args.no_wait {
        return Ok(Exit::Success);
    }
    super::apply::follow(&mut op, &r.rollout_id, args.output, stdout).await
}
