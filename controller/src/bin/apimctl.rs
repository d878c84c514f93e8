//! `apimctl`: the operator's command line (and, later, the controller daemon).

use clap::Parser;

fn main() {
    let cli = apim_controller::cli::Cli::parse();
    let code = apim_controller::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
