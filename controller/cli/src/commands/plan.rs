//! `apimctl plan PLAN`: what applying the plan would change on each node against what the
//! agents report (after the same preparation as `apply`: validation, packs, secrets). Exit 0
//! when nothing would change, 2 when something would, 1 on errors.

use std::io::Write;
use std::path::PathBuf;

use apim_plan::secrets::EnvSource;
use apim_proto::v1::{ChangeKind, PlanRequest};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, json, lines};
use crate::prepare::{Packs, Ready, prepare};

/// `apimctl plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan file.
    plan: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// Refuse the plan when its render has warnings (keys a node's pack never reads,
    /// placeholder hosts left from a pack's file).
    #[arg(long)]
    strict: bool,
}

/// Runs `apimctl plan`.
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
    } = prepare(&settings, &args.plan, Packs::CheckOnly, env, stderr).await?;
    let resp = client::operator(channel)
        .plan(PlanRequest {
            plan_toml: text,
            plan_path: args.plan.display().to_string(),
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
    match args.output {
        Format::Json => {
            let _ = writeln!(stdout, "{}", json::plan(&resp));
        }
        Format::Text => {
            for l in lines::plan(&resp) {
                let _ = writeln!(stdout, "{l}");
            }
        }
    }
    let changed = resp
        .changes
        .iter()
        .any(|c| c.kind() != ChangeKind::Unchanged);
    Ok(if changed {
        Exit::Changes
    } else {
        Exit::Success
    })
}
