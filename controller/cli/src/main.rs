//! `apimctl`: the operator's command line, and `apimctl controller run`, the controller daemon.

mod cli;
mod client;
mod output;
mod prepare;
mod remote;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
