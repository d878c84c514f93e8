//! `apimctl controller run`: the controller daemon (its configuration file, its logs); and
//! `apimctl controller operator-cert`: an operator certificate issued from the CA files, on the
//! controller host.

use std::io::Write;
use std::path::PathBuf;

use apim_controller::run::{DEFAULT_CONFIG, DEFAULT_DATA_DIR, DaemonConfig, DaemonError};

use crate::cli::{Exit, runtime};
use crate::error::CliError;

/// `apimctl controller …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the controller daemon.
    #[command(after_long_help = crate::help!(
        [
            "apimctl controller run --config /etc/apimctl/controller.toml",
            "apimctl controller run --config controller.toml --log-format json"
        ],
        crate::exit_codes_daemon!()
    ))]
    Run(RunArgs),
    /// Issue an operator certificate from the CA files (run on the controller host).
    #[command(after_long_help = crate::help!(
        ["apimctl controller operator-cert --name alice --out ~/.config/apimctl/"],
        crate::exit_codes_daemon!()
    ))]
    OperatorCert(OperatorCertArgs),
}

/// `apimctl controller run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

/// `apimctl controller operator-cert`.
#[derive(Debug, clap::Args)]
pub struct OperatorCertArgs {
    /// The operator's name (its certificate identity).
    #[arg(long)]
    name: String,
    /// Where to write operator.pem, operator-key.pem (0600) and ca.pem.
    #[arg(long)]
    out: PathBuf,
    /// The controller's data directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

/// Runs `apimctl controller …`.
pub fn run(command: Command, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    match command {
        Command::Run(args) => daemon(args),
        Command::OperatorCert(args) => operator_cert(args, stdout),
    }
}

/// Runs the daemon until it stops.
fn daemon(args: RunArgs) -> Result<Exit, CliError> {
    apim_controller::run::init_logging(args.log_format == "json");
    let config = DaemonConfig::load(&args.config)?;
    runtime()?.block_on(apim_controller::run::run(config))?;
    Ok(Exit::Success)
}

/// Writes `operator.pem`, `operator-key.pem` and `ca.pem` (all 0600) into `--out`.
fn operator_cert(args: OperatorCertArgs, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let OperatorCertArgs {
        name,
        out,
        data_dir,
    } = args;
    let ca = apim_certs::ControlPlaneCa::load_or_create(&apim_controller::run::ca_dir(&data_dir))
        .map_err(DaemonError::Ca)?;
    let issued = ca
        .issue_operator_cert(&name, apim_certs::DEFAULT_OPERATOR_CERT_TTL)
        .map_err(DaemonError::Ca)?;
    std::fs::create_dir_all(&out).map_err(CliError::io(&out))?;
    let write = |file: &str, text: &str| {
        let path = out.join(file);
        apim_atomic::write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|e| CliError::io(&path)(e.into()))
    };
    write("operator.pem", &issued.cert.cert_pem)?;
    write("operator-key.pem", issued.key_pem())?;
    write("ca.pem", ca.cert_pem())?;
    let _ = writeln!(
        stdout,
        "wrote {0}/operator.pem, {0}/operator-key.pem and {0}/ca.pem (expires {1})",
        out.display(),
        issued.cert.not_after
    );
    Ok(Exit::Success)
}
