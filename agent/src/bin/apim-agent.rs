//! `apim-agent`: the apimctl agent daemon (a systemd `Type=notify` service on every VM).
//!
//! Settings come from a TOML file (`--config`, default `/etc/apim-agent/agent.toml` when it
//! exists) and flags (flags win). The join token is read from `--token-file` or the
//! `APIM_AGENT_TOKEN` environment variable, is needed on the first start only, and is never
//! logged or accepted on the command line itself.

use std::path::PathBuf;
use std::process::ExitCode;

use apim_agent::daemon;
use apim_agent::daemon::config::{
    AgentConfig, DEFAULT_CONFIG_FILE, DEFAULT_STATE_DIR, FileConfig, LogFormat, parse_endpoints,
    read_token_file,
};
use apim_agent::daemon::error::DaemonError;
use clap::Parser;

/// The apimctl agent: converges this VM to the machine spec the controller streams to it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Controller address, host:port; several controllers comma-separated (tried in order,
    /// the next on a failed connect or a dropped stream).
    #[arg(long)]
    controller: Option<String>,
    /// Name every controller's certificate must carry (default: the host of each address of
    /// --controller).
    #[arg(long)]
    server_name: Option<String>,
    /// This machine's name in the plan.
    #[arg(long)]
    machine: Option<String>,
    /// State dir: identity, ledger, node records, pack cache.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Prefix for the spec's absolute install dirs (default "/").
    #[arg(long)]
    install_root: Option<PathBuf>,
    /// The hosts file whose managed block the agent owns (default /etc/hosts).
    #[arg(long)]
    hosts_file: Option<PathBuf>,
    /// File holding the one-time join token (first start only). Alternatively set
    /// APIM_AGENT_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Seconds between two drift checks of every node (default 60; 0: only when `apimctl
    /// check` asks).
    #[arg(long)]
    drift_interval_secs: Option<u64>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

// Runs once at startup; the error's size does not matter here.
#[allow(clippy::result_large_err)]
fn build_config(cli: Cli) -> Result<(AgentConfig, LogFormat), DaemonError> {
    let file = match &cli.config {
        Some(p) => FileConfig::load(p)?,
        None if std::path::Path::new(DEFAULT_CONFIG_FILE).exists() => {
            FileConfig::load(std::path::Path::new(DEFAULT_CONFIG_FILE))?
        }
        None => FileConfig::default(),
    };
    let missing = |what: &str| DaemonError::Config {
        reason: format!("{what} is required (flag or config file)"),
    };
    let address = cli
        .controller
        .or(file.controller)
        .ok_or_else(|| missing("--controller"))?;
    let server_name = cli.server_name.or(file.server_name);
    let endpoints = parse_endpoints(&address, server_name.as_deref())?;
    let machine = cli
        .machine
        .or(file.machine)
        .ok_or_else(|| missing("--machine"))?;
    let mut config = AgentConfig::new(endpoints[0].clone(), machine);
    config.endpoints = endpoints;
    config.state_dir = cli
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if let Some(r) = cli.install_root.or(file.install_root) {
        config.install_root = r;
    }
    if let Some(h) = cli.hosts_file.or(file.hosts_file) {
        config.hosts_file = h;
    }
    if let Some(s) = cli.drift_interval_secs.or(file.drift_interval_secs) {
        config.timings.drift_interval = std::time::Duration::from_secs(s);
    }
    config.token_file = cli.token_file.or(file.token_file);
    config.token = match &config.token_file {
        // A machine enrolled already needs no token; one put there later re-admits it.
        Some(p) if !p.exists() => None,
        Some(p) => Some(read_token_file(p)?),
        None => std::env::var("APIM_AGENT_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
    };
    // Node scripts run with a cleared environment (process.rs), so APIM_AGENT_TOKEN never
    // reaches them.
    Ok((
        config,
        cli.log_format.or(file.log_format).unwrap_or_default(),
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, format) = match build_config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apim-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(format);
    tracing::info!(config = ?config, "apim-agent starting");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apim-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(daemon::run(config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "apim-agent failed");
            eprintln!("apim-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
