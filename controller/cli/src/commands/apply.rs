//! `apimctl apply PLAN`: validates, uploads missing packs, stores the plan as a new generation
//! and follows the rollout until it ends: live bars in a terminal, new status lines otherwise,
//! one JSON status at the end with `-o json`. Exit 0 when the rollout succeeded (or nothing
//! changed), 1 when it did not.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use apim_plan::secrets::EnvSource;
use apim_proto::v1::operator_service_client::OperatorServiceClient;
use apim_proto::v1::{ApplyRequest, RolloutState, WatchRequest};
use tonic::transport::Channel;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::bars::LiveBars;
use crate::output::{self, Format, json, lines};
use crate::prepare::{Packs, Ready, prepare};

/// `apimctl apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan file.
    plan: PathBuf,
    /// Refuse unless the cluster is still at this revision (from `apimctl plan`).
    #[arg(long)]
    plan_revision: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// Refuse the plan when its render has warnings (keys a node's pack never reads,
    /// placeholder hosts left from a pack's file).
    #[arg(long)]
    strict: bool,
    /// Return once the plan is stored, without following the rollout.
    #[arg(long)]
    no_wait: bool,
}

/// Runs `apimctl apply`.
pub async fn run(
    args: Args,
    settings: Settings,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Exit, CliError> {
    let Ready {
        channel,
        text,
        secrets,
        provided_files,
    } = prepare(&settings, &args.plan, Packs::Upload, env, stderr).await?;
    let mut op = client::operator(channel);
    let resp = op
        .apply(ApplyRequest {
            plan_toml: text,
            plan_path: args.plan.display().to_string(),
            expected_cluster_revision: args.plan_revision,
            author: std::env::var("USER").unwrap_or_default(),
            resolved_secrets: secrets,
            strict: args.strict,
            provided_files,
        })
        .await
        .map_err(CliError::Refused)?
        .into_inner();
    for l in lines::warnings(&resp.warnings) {
        let _ = writeln!(stderr, "{l}");
    }
    let format = args.output;
    if resp.rollout_id.is_empty() || args.no_wait {
        started(resp.generation, &resp.rollout_id, format, stdout);
        return Ok(Exit::Success);
    }
    if format == Format::Text {
        started(resp.generation, &resp.rollout_id, format, stdout);
    }
    follow(&mut op, resp.generation, &resp.rollout_id, format, stdout).await
}

/// Says that `generation` was stored and its rollout `rollout_id` started, or that it changes
/// nothing (`rollout_id` empty): a line, or the one JSON document of `apply --no-wait` and of
/// an apply that changes nothing.
pub(crate) fn started(generation: u64, rollout_id: &str, format: Format, stdout: &mut dyn Write) {
    let _ = match (format, rollout_id) {
        (Format::Json, "") => writeln!(stdout, "{}", json::apply_unchanged(generation)),
        (Format::Json, id) => writeln!(stdout, "{}", json::apply_started(generation, id)),
        (Format::Text, "") => writeln!(stdout, "generation {generation}: nothing to change"),
        (Format::Text, id) => writeln!(stdout, "generation {generation}: rollout {id} started"),
    };
}

/// Follows rollout `rollout_id` until it ends; prints its last status lines (or status JSON)
/// and its result.
pub(crate) async fn follow(
    op: &mut OperatorServiceClient<Channel>,
    generation: u64,
    rollout_id: &str,
    format: Format,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut stream = op.watch(WatchRequest {}).await?.into_inner();
    let mut bars = match format {
        Format::Text => LiveBars::for_terminal(),
        Format::Json => None,
    };
    let mut last_lines: Vec<String> = Vec::new();
    // The rollout's message as last printed (lines only: the bars show it as their header).
    let mut last_message = String::new();
    let mut following = rollout_id.to_owned();
    // Set once the rollout (of `generation`) rolled back: the controller rolls the last success
    // out again as a newer generation, followed to its end; the command still failed.
    let mut rolled_back = false;
    // The bars' elapsed times keep counting between changes (in a terminal only: lines and
    // JSON print changes only).
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let status = tokio::select! {
            message = stream.message() => message?.ok_or(CliError::WatchClosed)?,
            _ = tick.tick(), if bars.is_some() => {
                if let Some(b) = &mut bars {
                    b.tick(SystemTime::now());
                }
                continue;
            }
        };
        let Some(r) = status.rollout.clone() else {
            continue;
        };
        // A newer rollout while ours has not ended here: ours ended in between (a rollback
        // rolls the last success out as a new generation in the same step). How it ended is in
        // the history.
        if !rolled_back
            && r.id != following
            && r.generation > generation
            && let Some(ended) = how_it_ended(op, &following).await?
        {
            if format == Format::Text {
                let _ = writeln!(stdout, "{}", ended_line(&ended));
            }
            if ended.state() != RolloutState::RolledBack {
                return Ok(Exit::Failed);
            }
            rolled_back = true;
        }
        if rolled_back && r.id != following && r.generation > generation {
            if format == Format::Text {
                let _ = writeln!(stdout, "following {} (the rollback)", r.id);
            }
            following = r.id.clone();
        }
        if r.id != following {
            continue;
        }
        let lines = lines::status_lines(&status, SystemTime::now());
        match (&mut bars, format) {
            (Some(b), _) => b.update(&status, &r, SystemTime::now()),
            (None, Format::Text) => {
                // What the rollout is doing or waiting for ("starting tier 2", "gw-1 is
                // healthy; waiting for vm-lb to serve gateway (...)"), when it changes; its
                // end is printed once below.
                if r.message != last_message && active(r.state()) {
                    let _ = writeln!(
                        stdout,
                        "rollout {}: {}",
                        r.id,
                        apim_proto::text::printable(&r.message)
                    );
                    last_message = r.message.clone();
                }
                for l in lines.iter().filter(|l| !last_lines.contains(l)) {
                    let _ = writeln!(stdout, "{l}");
                }
            }
            (None, Format::Json) => {}
        }
        last_lines = lines;
        let state = r.state();
        if active(state) {
            continue;
        }
        if state == RolloutState::RolledBack && !rolled_back {
            if format == Format::Text {
                let _ = writeln!(stdout, "{}", ended_line(&r));
            }
            rolled_back = true;
            continue;
        }
        if let Some(b) = bars {
            b.finish();
        }
        match format {
            Format::Json => {
                let _ = writeln!(stdout, "{}", json::status(&status));
            }
            Format::Text => {
                for l in &last_lines {
                    let _ = writeln!(stdout, "{l}");
                }
                let _ = writeln!(stdout, "{}", ended_line(&r));
            }
        }
        return Ok(if state == RolloutState::Succeeded && !rolled_back {
            Exit::Success
        } else {
            Exit::Failed
        });
    }
}

/// Whether a rollout in `state` is still going.
fn active(state: RolloutState) -> bool {
    matches!(
        state,
        RolloutState::Pending
            | RolloutState::Staging
            | RolloutState::Starting
            | RolloutState::RollingBack
    )
}

/// How rollout `followed` ended, from the history (`None`: not found).
async fn how_it_ended(
    op: &mut OperatorServiceClient<Channel>,
    followed: &str,
) -> Result<Option<apim_proto::v1::Rollout>, CliError> {
    let history = op
        .history(apim_proto::v1::HistoryRequest { limit: 0 })
        .await?
        .into_inner();
    Ok(history
        .generations
        .into_iter()
        .filter_map(|g| g.rollout)
        .find(|r| r.id == followed))
}

/// `rollout rollout-7: succeeded (generation 7 is healthy)`.
fn ended_line(r: &apim_proto::v1::Rollout) -> String {
    format!(
        "rollout {}: {} ({})",
        r.id,
        output::state_name(r.state()),
        apim_proto::text::printable(&r.message)
    )
}
