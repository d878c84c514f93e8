//! `apimctl show NODE`: what a node runs according to the controller — its configuration files
//! with every secret masked, its commands, its machine's hosts block — and what its agent last
//! reported.

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::{ShowNodeRequest, ShowNodeResponse};
use serde_json::json;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, phase_name, rfc3339, since};

/// `apimctl show`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node.
    node: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// Runs `apimctl show`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let shown = op
        .show_node(ShowNodeRequest { node: args.node })
        .await
        .map_err(CliError::Refused)?
        .into_inner();
    let text = match args.output {
        Format::Json => format!("{}\n", to_json(&shown)),
        Format::Text => text(&shown),
    };
    let _ = stdout.write_all(text.as_bytes());
    Ok(Exit::Success)
}

fn to_json(s: &ShowNodeResponse) -> serde_json::Value {
    json!({
        "node": s.node, "machine": s.machine, "role": s.role, "product": s.product,
        "plan_generation": s.plan_generation, "spec_generation": s.spec_generation,
        "desired": s.desired,
        "pack": {"file": s.pack_file, "sha256": s.pack_sha256},
        "install_dir": s.install_dir, "config_digest": s.config_digest, "log_dir": s.log_dir,
        "files": s.files.iter().map(|f| json!({
            "path": f.path, "content": f.content, "secret": f.secret,
        })).collect::<Vec<_>>(),
        "start": s.start_argv, "stop": s.stop_argv, "env": s.env,
        "hosts_block": s.hosts_block,
        "reachable": s.reachable,
        "status": s.status.as_ref().map(|n| json!({
            "phase": phase_name(n.phase()), "step": n.step, "pid": n.pid,
            "restarts": n.restarts, "running": n.running, "last_error": n.last_error,
            "config_digest": n.config_digest, "generation": n.plan_generation,
            "spec_generation": n.generation,
            "since": since(n.phase_since.as_ref()).map(rfc3339),
        })),
    })
}

/// The text form: a summary, then each file under a header line.
fn text(s: &ShowNodeResponse) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "node {} on {} ({}, {})",
        s.node, s.machine, s.role, s.product
    ));
    line(format!(
        "desired:        {} (plan generation {}, spec generation {})",
        s.desired, s.plan_generation, s.spec_generation
    ));
    line(format!(
        "pack:           {} sha256 {}",
        s.pack_file, s.pack_sha256
    ));
    line(format!("install dir:    {}", s.install_dir));
    line(format!("log folder:     {}", s.log_dir));
    line(format!("config digest:  {}", s.config_digest));
    let agent = if s.reachable {
        "connected"
    } else {
        "not connected"
    };
    match &s.status {
        Some(n) => {
            let pid = n.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
            line(format!(
                "reported:       {} (pid {pid}, restarts {}, plan generation {}); agent {agent}",
                phase_name(n.phase()),
                n.restarts,
                n.plan_generation
            ));
            if !n.step.is_empty() {
                line(format!("step:           {}", printable(&n.step)));
            }
            if !n.last_error.is_empty() {
                line(format!("last error:     {}", printable(&n.last_error)));
            }
            if !n.config_digest.is_empty() && n.config_digest != s.config_digest {
                line(format!(
                    "runs digest:    {} (not the one above: it has not converged)",
                    n.config_digest
                ));
            }
        }
        None => line(format!("reported:       nothing yet; agent {agent}")),
    }
    line(format!(
        "start:          {}",
        printable(&s.start_argv.join(" "))
    ));
    line(format!(
        "stop:           {}",
        printable(&s.stop_argv.join(" "))
    ));
    for e in &s.env {
        line(format!("env:            {}", printable(e)));
    }
    for f in &s.files {
        line(String::new());
        if f.secret {
            line(format!("# ---- {} (secret: not shown) ----", f.path));
        } else {
            line(format!("# ---- {} ----", f.path));
            for l in f.content.lines() {
                line(printable(l).into_owned());
            }
        }
    }
    out.push('\n');
    out.push_str(&format!(
        "# ---- /etc/hosts managed block on {} ----\n",
        s.machine
    ));
    for h in &s.hosts_block {
        out.push_str(&format!("{}\n", printable(h)));
    }
    out
}
