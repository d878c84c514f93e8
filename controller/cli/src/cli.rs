//! The `apimctl` command line.
//!
//! Offline commands: `validate` (every problem with `file:line:col`) and `render` (what each node
//! will get). Controller commands (over mTLS with an operator certificate, see
//! [`crate::client`]): `apply`, `plan`, `status`, `agents`, `token create`, `revoke`. On the
//! controller host: `controller run` and `controller operator-cert`.
//!
//! Exit codes: 0 success, 1 errors in the plan or the command; `plan` exits 2 when something
//! would change.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use apim_plan::render::{self, ClusterRender};
use apim_plan::secrets::{EnvSource, ProcessEnv};
use apim_plan::validate;

/// apimctl provisions distributed WSO2 API Manager deployments from one plan file.
#[derive(Debug, Parser)]
#[command(name = "apimctl", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How to reach the controller.
    #[command(flatten)]
    pub connection: crate::client::Settings,
}

/// `apimctl controller …`.
#[derive(Debug, Subcommand)]
pub enum ControllerCommand {
    /// Run the controller daemon.
    Run {
        /// The configuration file.
        #[arg(long, default_value = apim_controller::run::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log format: text or json.
        #[arg(long, default_value = "text")]
        log_format: String,
    },
    /// Issue an operator certificate from the CA files (run on the controller host).
    OperatorCert {
        /// The operator's name (its certificate identity).
        #[arg(long)]
        name: String,
        /// Where to write operator.pem, operator-key.pem (0600) and ca.pem.
        #[arg(long)]
        out: PathBuf,
        /// The controller's data directory.
        #[arg(long, default_value = apim_controller::run::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// `apimctl token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token for a machine.
    Create {
        /// The machine the token enrolls.
        #[arg(long)]
        machine: String,
        /// Lifetime, e.g. 1h or 30m (default: the controller's).
        #[arg(long)]
        ttl: Option<String>,
    },
}

/// apimctl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a plan offline and report every problem with file:line:col.
    Validate {
        /// The plan file.
        plan: PathBuf,
        /// Do not read the packs to check their sha256 (e.g. to check an example plan).
        #[arg(long)]
        skip_pack_check: bool,
    },
    /// Show what each node will get: deployment.toml, hosts block, commands, start order.
    Render {
        /// The plan file.
        plan: PathBuf,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Write one folder per node (deployment.toml, commands) and one hosts file per machine
        /// under DIR instead of printing. Files hold real secrets and are written 0600.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print secrets instead of masking them.
        #[arg(long)]
        show_secrets: bool,
        /// Do not read the packs to check their sha256 (e.g. to render an example plan).
        #[arg(long)]
        skip_pack_check: bool,
    },
    /// Validate, upload missing packs, store the plan and roll it out; follow until done.
    Apply {
        /// The plan file.
        plan: PathBuf,
        /// Refuse unless the cluster is still at this revision (from `apimctl plan`).
        #[arg(long)]
        plan_revision: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: crate::output::Format,
        /// Return once the plan is stored, without following the rollout.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show what applying the plan would change; exit 0 nothing, 2 changes, 1 error.
    Plan {
        /// The plan file.
        plan: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: crate::output::Format,
    },
    /// Every machine and node: phase, step, generation, elapsed, last error.
    Status {
        /// Keep printing on every change.
        #[arg(long)]
        watch: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: crate::output::Format,
    },
    /// Every enrolled agent.
    Agents {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: crate::output::Format,
    },
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke a machine's certificate and close its stream.
    Revoke {
        /// The machine.
        machine: String,
    },
    /// The controller daemon and its host-side tools.
    #[command(subcommand)]
    Controller(ControllerCommand),
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let env = ProcessEnv;
    let connection = cli.connection;
    let result = match cli.command {
        Command::Validate {
            plan,
            skip_pack_check,
        } => cmd_validate(&plan, &env, options(skip_pack_check), stdout, stderr),
        Command::Render {
            plan,
            node,
            out,
            show_secrets,
            skip_pack_check,
        } => cmd_render(
            &plan,
            RenderArgs {
                only: node.as_deref(),
                out: out.as_deref(),
                show_secrets,
            },
            &env,
            options(skip_pack_check),
            stdout,
            stderr,
        ),
        Command::Controller(c) => crate::remote::controller(c, stdout, stderr),
        other => crate::remote::run(other, connection, &env, stdout, stderr),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            1
        }
    }
}

/// Errors of the CLI itself (the plan's own problems are diagnostics, not these).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Reading the plan or writing output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The plan could not be rendered.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// `--node` names no node.
    #[error("no node named `{0}` in the plan")]
    UnknownNode(String),
    /// Talking to the controller failed.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] apim_controller::run::DaemonError),
    /// Anything else the command could not do (never contains secrets).
    #[error("{0}")]
    Other(String),
}

fn options(skip_pack_check: bool) -> validate::Options {
    validate::Options {
        verify_packs: !skip_pack_check,
    }
}

struct RenderArgs<'a> {
    only: Option<&'a str>,
    out: Option<&'a Path>,
    show_secrets: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn cmd_validate(
    path: &Path,
    env: &dyn EnvSource,
    opts: validate::Options,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let Some(plan) = crate::prepare::load_plan(path, env, opts, stderr)? else {
        return Ok(1);
    };
    let _ = writeln!(
        stdout,
        "{}: ok ({} {}, {} machines, {} nodes)",
        path.display(),
        plan.cluster.name.value,
        plan.cluster.product.value,
        plan.machines.len(),
        plan.nodes.len()
    );
    Ok(0)
}

fn cmd_render(
    path: &Path,
    args: RenderArgs<'_>,
    env: &dyn EnvSource,
    opts: validate::Options,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let RenderArgs {
        only,
        out,
        show_secrets,
    } = args;
    let Some(plan) = crate::prepare::load_plan(path, env, opts, stderr)? else {
        return Ok(1);
    };
    let cluster = render::render(&plan, env)?;
    if let Some(name) = only
        && cluster.node(name).is_none()
    {
        return Err(CliError::UnknownNode(name.to_string()));
    }
    match out {
        Some(dir) => {
            write_out(&cluster, only, dir)?;
            let _ = writeln!(
                stdout,
                "wrote {} to {}",
                only.unwrap_or("every node"),
                dir.display()
            );
        }
        None => {
            let _ = write!(
                stdout,
                "{}",
                crate::output::render::cluster(&cluster, only, show_secrets)
            );
        }
    }
    Ok(0)
}

fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    apim_plan::files::write_private(path, contents.as_bytes()).map_err(io_err(path))
}

fn write_out(cluster: &ClusterRender, only: Option<&str>, dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for m in &cluster.machines {
        let mut any = false;
        for n in m.nodes.iter().filter(|n| only.is_none_or(|o| o == n.name)) {
            any = true;
            let nd = dir.join(&n.name);
            std::fs::create_dir_all(&nd).map_err(io_err(&nd))?;
            write_private(&nd.join("deployment.toml"), &n.deployment_toml)?;
            write_private(
                &nd.join("commands.txt"),
                &crate::output::render::node_header(cluster, n),
            )?;
        }
        if any {
            write_private(&dir.join(format!("{}.hosts", m.name)), &m.hosts_text())?;
        }
    }
    write_private(
        &dir.join("start-order.txt"),
        &crate::output::render::start_order(cluster),
    )
}
