//! `apimctl packs` (the controller's artifact store: packs and driver jars, and which stored
//! generations use each) and `apimctl packs prune` (removes what no retained generation needs,
//! after a confirmation).

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::{ArtifactInfo, ListArtifactsRequest, PruneArtifactsRequest};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::Format;
use crate::prompt::{self, Yes};

/// `apimctl packs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `prune`, or nothing to list.
    #[command(subcommand)]
    command: Option<Command>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// `apimctl packs …`.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Remove stored artifacts no retained generation needs (retained: restorable, current,
    /// rolling out; also what a machine's spec names). Asks first unless --yes.
    #[command(after_long_help = crate::help!(
        ["apimctl packs prune --dry-run", "apimctl packs prune 3f2a9c1d --yes"],
        crate::exit_codes_controller!()
    ))]
    Prune(PruneArgs),
}

/// `apimctl packs prune`.
#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// Only these artifacts (a sha256 or a unique prefix of at least 8 characters); each must be
    /// unneeded. Default: every unneeded artifact.
    sha256: Vec<String>,
    /// Confirmation.
    #[command(flatten)]
    yes: Yes,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// Runs `apimctl packs [prune]`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    match args.command {
        None => list(args.output, settings, stdout).await,
        Some(Command::Prune(p)) => prune(p, settings, stdout).await,
    }
}

/// `1.4 GiB`, `310 KiB`, `12 B`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn json(a: &ArtifactInfo) -> serde_json::Value {
    serde_json::json!({
        "sha256": a.sha256, "size": a.size, "name": a.name, "kind": a.kind,
        "generations": a.generations, "retained_by": a.retained_by,
        "current": a.current, "in_spec": a.in_spec,
        "prunable": a.retained_by.is_empty() && !a.in_spec,
    })
}

/// What keeps an artifact, for the table.
fn keeps(a: &ArtifactInfo) -> String {
    let mut why = Vec::new();
    if a.current {
        why.push("current".to_string());
    }
    let older: Vec<String> = a
        .retained_by
        .iter()
        .filter(|g| !a.current || a.generations.last() != Some(g))
        .map(u64::to_string)
        .collect();
    if !older.is_empty() {
        why.push(format!("retained by {}", older.join(",")));
    }
    if a.in_spec {
        why.push("in a spec".into());
    }
    if why.is_empty() {
        "prunable".into()
    } else {
        why.join("; ")
    }
}

fn list_of(v: &[u64]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    }
}

fn table(rows: &[ArtifactInfo], stdout: &mut dyn Write) {
    let _ = writeln!(
        stdout,
        "{:<14}  {:>10}  {:<6}  {:<32}  {:<12}  USE",
        "SHA256", "SIZE", "KIND", "NAME", "GENERATIONS"
    );
    for a in rows {
        let kind = if a.kind.is_empty() { "-" } else { &a.kind };
        let name = if a.name.is_empty() { "-" } else { &a.name };
        let _ = writeln!(
            stdout,
            "{:<14}  {:>10}  {:<6}  {:<32}  {:<12}  {}",
            &a.sha256[..a.sha256.len().min(12)],
            size(a.size),
            printable(kind),
            printable(name),
            list_of(&a.generations),
            keeps(a)
        );
    }
}

async fn list(
    output: Format,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let r = op
        .list_artifacts(ListArtifactsRequest::default())
        .await?
        .into_inner();
    match output {
        Format::Json => {
            let rows: Vec<_> = r.artifacts.iter().map(json).collect();
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::json!({
                    "current_generation": r.current_generation, "artifacts": rows,
                })
            );
        }
        Format::Text => {
            if r.artifacts.is_empty() {
                let _ = writeln!(stdout, "no artifacts stored");
            } else {
                table(&r.artifacts, stdout);
                let total: u64 = r.artifacts.iter().map(|a| a.size).sum();
                let _ = writeln!(
                    stdout,
                    "{} artifact(s), {} (current generation {})",
                    r.artifacts.len(),
                    size(total),
                    r.current_generation
                );
            }
        }
    }
    Ok(Exit::Success)
}

/// The full digests `wanted` names: each a digest or a unique prefix (8+ characters) of one.
fn resolve(wanted: &[String], stored: &[ArtifactInfo]) -> Result<Vec<String>, CliError> {
    wanted
        .iter()
        .map(|w| {
            let w = w.trim().to_ascii_lowercase();
            if w.len() < 8 || !w.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CliError::BadArgument(format!(
                    "`{}` is not a sha256 or a prefix of at least 8 hex characters",
                    printable(&w)
                )));
            }
            let hits: Vec<&ArtifactInfo> =
                stored.iter().filter(|a| a.sha256.starts_with(&w)).collect();
            match hits.as_slice() {
                [one] => Ok(one.sha256.clone()),
                [] => Err(CliError::BadArgument(format!(
                    "no stored artifact matches `{w}`"
                ))),
                _ => Err(CliError::BadArgument(format!(
                    "`{w}` matches {} artifacts; give more of the sha256",
                    hits.len()
                ))),
            }
        })
        .collect()
}

async fn prune(
    args: PruneArgs,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let wanted = if args.sha256.is_empty() {
        Vec::new()
    } else {
        let stored = op
            .list_artifacts(ListArtifactsRequest::default())
            .await?
            .into_inner()
            .artifacts;
        resolve(&args.sha256, &stored)?
    };
    // What would go, as the controller sees it now; only that is removed after the answer.
    let plan = op
        .prune_artifacts(PruneArtifactsRequest {
            sha256: wanted,
            dry_run: true,
        })
        .await?
        .into_inner();
    let report = |removed: &[ArtifactInfo], freed: u64, dry_run: bool, out: &mut dyn Write| {
        match args.output {
            Format::Json => {
                let rows: Vec<_> = removed.iter().map(json).collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "dry_run": dry_run, "removed": rows, "freed_bytes": freed,
                    })
                );
            }
            Format::Text if removed.is_empty() => {
                let _ = writeln!(out, "nothing to prune");
            }
            Format::Text => {
                table(removed, out);
                let verb = if dry_run { "would remove" } else { "removed" };
                let _ = writeln!(out, "{verb} {} artifact(s), {}", removed.len(), size(freed));
            }
        }
    };
    if plan.removed.is_empty() || args.dry_run {
        report(&plan.removed, plan.freed_bytes, true, stdout);
        return Ok(Exit::Success);
    }
    if !args.yes.yes {
        let mut err = std::io::stderr();
        table(&plan.removed, &mut err);
    }
    prompt::require(
        "packs prune",
        &format!(
            "Remove these {} artifact(s) ({}) from the controller?",
            plan.removed.len(),
            size(plan.freed_bytes)
        ),
        args.yes.yes,
    )?;
    let done = op
        .prune_artifacts(PruneArtifactsRequest {
            sha256: plan.removed.iter().map(|a| a.sha256.clone()).collect(),
            dry_run: false,
        })
        .await?
        .into_inner();
    report(&done.removed, done.freed_bytes, false, stdout);
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sha: &str) -> ArtifactInfo {
        ArtifactInfo {
            sha256: sha.into(),
            ..ArtifactInfo::default()
        }
    }

    #[test]
    fn prefixes_resolve_to_one_stored_digest() {
        let stored = [
            info(&"ab".repeat(32)),
            info(&format!("abcd{}", "0".repeat(60))),
        ];
        assert_eq!(
            resolve(&["ABABABAB".into()], &stored).unwrap(),
            ["ab".repeat(32)]
        );
        for (arg, says) in [
            ("abab", "at least 8"),
            ("zzzzzzzzzz", "at least 8"),
            ("ffffffff", "no stored artifact"),
        ] {
            let e = resolve(&[arg.into()], &stored).unwrap_err().to_string();
            assert!(e.contains(says), "{arg}: {e}");
        }
        let two = [
            info(&"ab".repeat(32)),
            info(&format!("abababab{}", "1".repeat(56))),
        ];
        let e = resolve(&["abababab".into()], &two).unwrap_err().to_string();
        assert!(e.contains("matches 2 artifacts"), "{e}");
    }

    #[test]
    fn the_use_column_says_what_keeps_an_artifact() {
        let mut a = info(&"a".repeat(64));
        assert_eq!(keeps(&a), "prunable");
        a.generations = vec![2, 3];
        a.retained_by = vec![2, 3];
        a.current = true;
        a.in_spec = true;
        assert_eq!(keeps(&a), "current; retained by 2; in a spec");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12), "12 B");
    }
}
