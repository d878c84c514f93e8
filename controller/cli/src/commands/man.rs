//! `apimctl man [--out DIR]`: the man page (roff), generated from the command line's
//! definition: `apimctl(1)` on stdout, or with `--out` one page per command into a directory
//! (`apimctl.1`, `apimctl-status.1`, …).

use std::io::Write;
use std::path::PathBuf;

use clap::CommandFactory;

use crate::cli::{Cli, Exit};
use crate::error::CliError;

/// `apimctl man`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write one page per command into DIR (created if missing) instead of apimctl(1) to
    /// stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Runs `apimctl man`.
pub fn run(args: Args, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let cmd = Cli::command();
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(CliError::io(&dir))?;
            pages(cmd.disable_help_subcommand(true), &dir).map_err(CliError::io(&dir))?;
            let _ = writeln!(stdout, "wrote the man pages to {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            page_of(cmd)
                .render(&mut page)
                .and_then(|()| stdout.write_all(&page))
                .map_err(CliError::io("stdout".as_ref()))?;
        }
    }
    Ok(Exit::Success)
}

/// The page of `cmd`, titled in capitals as man pages are (`APIMCTL`, `APIMCTL-STATUS`).
fn page_of(cmd: clap::Command) -> clap_mangen::Man {
    let man = clap_mangen::Man::new(cmd);
    let title = man.get_filename().trim_end_matches(".1").to_uppercase();
    man.title(title)
        .source(format!("apimctl {}", env!("CARGO_PKG_VERSION")))
}

/// Writes the page of `cmd` and of each of its subcommands (`apimctl-token-create.1`, …).
fn pages(mut cmd: clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        pages(sub, dir)?;
    }
    page_of(cmd).generate_to(dir).map(drop)
}
