//! `apimctl`: the operator's command line, and `apimctl controller run`, the controller daemon.
//!
//! - [`cli`]: the command line, the dispatch, exit codes and the printing of errors;
//! - [`commands`]: one module per command, with its arguments;
//! - [`prepare`]: loading a plan, and the step `apply` and `plan` share before they call;
//! - [`output`]: how the output looks (lines, render text, live bars, JSON);
//! - [`client`]: the connection to the controller (settings, mTLS channel, pack upload);
//! - [`error`]: [`error::CliError`], every way a command fails.

mod cli;
mod client;
mod commands;
mod error;
mod output;
mod prepare;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
