//! `apimctl validate PLAN`: checks a plan offline (its provided keystores too) and reports every
//! problem with `file:line:col` and a hint; on success one `ok` line with the cluster's size.

use std::io::Write;
use std::path::PathBuf;

use apim_plan::secrets::EnvSource;

use crate::cli::Exit;
use crate::error::CliError;
use crate::prepare::{Loaded, load_plan};

/// `apimctl validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan file.
    plan: PathBuf,
    /// Do not read the packs to check their sha256 (e.g. to check an example plan).
    #[arg(long)]
    skip_pack_check: bool,
}

/// Runs `apimctl validate`.
pub fn run(
    args: Args,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Exit, CliError> {
    let opts = apim_plan::validate::Options {
        verify_packs: !args.skip_pack_check,
    };
    let loaded = load_plan(&args.plan, env, opts, stderr)?;
    let findings = loaded.provided_findings();
    let Loaded { plan, text, .. } = loaded;
    if !findings.is_empty() {
        let report = apim_plan::diag::Report {
            path: args.plan.display().to_string(),
            source: text,
            diagnostics: findings.into_iter().map(|f| f.diagnostic).collect(),
        };
        let _ = write!(stderr, "{}", report.render());
    }
    let _ = writeln!(
        stdout,
        "{}: ok ({} {}, {} machines, {} nodes)",
        args.plan.display(),
        plan.cluster.name.value,
        plan.cluster.product.value,
        plan.machines.len(),
        plan.nodes.len()
    );
    Ok(Exit::Success)
}
