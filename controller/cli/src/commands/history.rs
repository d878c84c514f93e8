//! `apimctl history` (the stored plan generations) and `apimctl rollback [--to N]` (a new
//! generation equal to an earlier one, rolled out and followed like `apply`).

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::{DiffRequest, HistoryRequest, PlanResponse, RollbackRequest};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, json, lines, tables};

/// `apimctl history`.
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

/// `apimctl diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The older generation.
    from: u64,
    /// The newer one (default: the latest).
    to: Option<u64>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
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
    let _ = match args.output {
        Format::Json => writeln!(stdout, "{}", json::history(&r.generations)),
        Format::Text => tables::or_empty(
            &tables::history(&r.generations, std::time::SystemTime::now()),
            "no generation applied yet",
        )
        .iter()
        .try_for_each(|l| writeln!(stdout, "{l}")),
    };
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
    if r.rollout_id.is_empty() || args.no_wait {
        super::apply::started(r.generation, &r.rollout_id, args.output, stdout);
        return Ok(Exit::Success);
    }
    if args.output == Format::Text {
        super::apply::started(r.generation, &r.rollout_id, args.output, stdout);
    }
    super::apply::follow(&mut op, r.generation, &r.rollout_id, args.output, stdout).await
}

/// Runs `apimctl diff`: the plan text's diff, then each node's changes as `plan` shows them.
pub async fn diff(
    args: DiffArgs,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .diff(DiffRequest {
            from_generation: args.from,
            to_generation: args.to.unwrap_or(0),
        })
        .await?
        .into_inner();
    let nodes = PlanResponse {
        changes: r.changes.clone(),
        ..PlanResponse::default()
    };
    match args.output {
        Format::Json => {
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::json!({
                    "from": r.from_generation, "to": r.to_generation,
                    "plan_diff": r.plan_diff, "nodes": json::plan(&nodes)["changes"],
                    "note": r.note,
                })
            );
        }
        Format::Text => {
            let _ = writeln!(
                stdout,
                "generation {} -> {}: plan",
                r.from_generation, r.to_generation
            );
            if r.plan_diff.is_empty() {
                let _ = writeln!(stdout, "  (the same plan text)");
            }
            for l in &r.plan_diff {
                let _ = writeln!(stdout, "  {}", printable(l));
            }
            let _ = writeln!(stdout, "nodes");
            for l in lines::plan(&nodes)
                .iter()
                .filter(|l| !l.starts_with("cluster revision:"))
            {
                let _ = writeln!(stdout, "{l}");
            }
            if !r.note.is_empty() {
                let _ = writeln!(stdout, "note: {}", printable(&r.note));
            }
        }
    }
    Ok(Exit::Success)
}
