//! `apimctl completions SHELL`: the shell completion script, generated from the command line's
//! definition (so it always knows every command and flag).

use std::io::Write;

use clap::CommandFactory;

use crate::cli::{Cli, Exit};
use crate::error::CliError;

/// `apimctl completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Runs `apimctl completions`: the script on stdout.
pub fn run(args: Args, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "apimctl", &mut script);
    stdout
        .write_all(&script)
        .map_err(CliError::io("stdout".as_ref()))?;
    Ok(Exit::Success)
}
