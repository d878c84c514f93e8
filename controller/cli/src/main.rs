//! `apimctl`: the operator's command line, and `apimctl controller run`, the controller daemon.
//!
//! - [`cli`]: the command line, the dispatch, exit codes and the printing of errors;
//! - [`commands`]: one module per command, with its arguments;
//! - [`help`]: the examples and exit codes at the end of every command's `--help`;
//! - [`prepare`]: loading a plan, and the step `apply` and `plan` share before they call;
//! - [`output`]: how the output looks (tables, lines, render text, live bars, JSON);
//! - [`client`]: the connection to the controller (settings, mTLS channel, pack upload);
//! - [`reach`]: why the controller could not be reached, said so an operator can act;
//! - [`prompt`]: confirmation for destructive commands;
//! - [`error`]: [`error::CliError`], every way a command fails, and how it is reported.

mod cli;
mod client;
mod commands;
mod error;
mod help;
mod output;
mod prepare;
mod prompt;
mod reach;
#[cfg(test)]
mod snapshot_tests;

/// The controller daemon runs in this binary. With a thousand agents, glibc's malloc kept
/// several times the live heap (per-thread arenas holding what an apply or a rollout freed);
/// mimalloc returns freed pages to the system (measured with `apim-scale`, docs/operations.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cli::main());
}
