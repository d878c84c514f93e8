//! `apimctl render PLAN`: what each node will get (deployment.toml, hosts block, commands,
//! start order), printed with secrets masked, or written with `--out DIR` as one folder per
//! node and one hosts file per machine (0600: the files hold the real secrets).

use std::io::Write;
use std::path::{Path, PathBuf};

use apim_plan::diag::{Report, Severity};
use apim_plan::render::ClusterRender;
use apim_plan::secrets::EnvSource;

use crate::cli::Exit;
use crate::error::CliError;
use crate::output;
use crate::prepare::{Loaded, load_plan};

/// `apimctl render`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan file.
    plan: PathBuf,
    /// Only this node.
    #[arg(long)]
    node: Option<String>,
    /// Write one folder per node (deployment.toml, commands) and one hosts file per machine
    /// under DIR instead of printing. Files hold real secrets and are written 0600.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Fail (exit 1, nothing written) when the render has warnings: keys a node's pack never
    /// reads, placeholder hosts left from a pack's file, nodes a provided certificate does not
    /// name.
    #[arg(long)]
    strict: bool,
    /// Print secrets instead of masking them.
    #[arg(long)]
    show_secrets: bool,
    /// Do not check the packs' sha256 (e.g. to render an example plan). Packs that are present
    /// are still read for their base files; missing ones are named, and their nodes rendered
    /// without the product's defaults.
    #[arg(long)]
    skip_pack_check: bool,
}

/// Runs `apimctl render`.
pub fn run(
    args: Args,
    env: &dyn EnvSource,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Exit, CliError> {
    let opts = apim_plan::validate::Options {
        verify_packs: !args.skip_pack_check,
    };
    let loaded = load_plan(&args.plan, env, opts, stderr)?;
    let provided = loaded.provided_findings();
    let Loaded { plan, text, .. } = loaded;
    let packs = crate::prepare::local_packs(&plan, stderr);
    let cluster = apim_plan::render::render(&plan, env, &packs)?;
    let mut findings = apim_plan::lint::check(&plan, &cluster, &packs);
    findings.extend(provided);
    if !findings.is_empty() {
        let mut report = Report {
            path: args.plan.display().to_string(),
            source: text,
            diagnostics: findings.into_iter().map(|f| f.diagnostic).collect(),
        };
        if args.strict {
            for d in &mut report.diagnostics {
                d.severity = Severity::Error;
            }
            return Err(CliError::InvalidPlan(report));
        }
        let _ = write!(stderr, "{}", report.render());
    }
    let only = args.node.as_deref();
    if let Some(name) = only
        && cluster.node(name).is_none()
    {
        return Err(CliError::UnknownNode(name.to_string()));
    }
    match &args.out {
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
            let text = output::render::cluster(&cluster, only, args.show_secrets);
            let _ = write!(stdout, "{text}");
        }
    }
    Ok(Exit::Success)
}

/// Writes under `dir`: per node (or only `only`) `NODE/deployment.toml` and
/// `NODE/commands.txt`, per machine with such a node `MACHINE.hosts`, and `start-order.txt`.
/// Every file 0600, secrets in clear.
/// A node or machine name as one plain path component under the output folder (validation
/// already allows only safe names; this keeps `--out` inside its folder whatever happens).
fn component<'a>(dir: &Path, name: &'a str) -> Result<&'a str, CliError> {
    if apim_plan::validate::is_safe_name(name) {
        Ok(name)
    } else {
        Err(CliError::io(dir)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{:?} is not a safe file name", name),
        )))
    }
}

fn write_out(cluster: &ClusterRender, only: Option<&str>, dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(CliError::io(dir))?;
    for m in &cluster.machines {
        let mut any = false;
        for n in m.nodes.iter().filter(|n| only.is_none_or(|o| o == n.name)) {
            any = true;
            let nd = dir.join(component(dir, &n.name)?);
            std::fs::create_dir_all(&nd).map_err(CliError::io(&nd))?;
            write_private(&nd.join("deployment.toml"), &n.deployment_toml)?;
            let header = output::render::node_header(cluster, n);
            write_private(&nd.join("commands.txt"), &header)?;
        }
        if let (Some(b), None) = (&m.balancer, only) {
            any = true;
            let machine = component(dir, &m.name)?;
            let bd = dir.join(format!("{machine}.load-balancer"));
            std::fs::create_dir_all(&bd).map_err(CliError::io(&bd))?;
            write_private(&bd.join("nginx.conf"), &b.nginx_conf)?;
            write_private(
                &bd.join("commands.txt"),
                &output::render::balancer(&m.name, b),
            )?;
        }
        if any {
            let machine = component(dir, &m.name)?;
            write_private(&dir.join(format!("{machine}.hosts")), &m.hosts_text())?;
        }
    }
    let order = output::render::start_order(cluster);
    write_private(&dir.join("start-order.txt"), &order)
}

fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    apim_atomic::write_atomic(path, contents.as_bytes(), 0o600)
        .map_err(|e| CliError::io(path)(e.into()))
}
