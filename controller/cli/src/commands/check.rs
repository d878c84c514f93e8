//! `apimctl check [--node N]…`: every connected agent checks its nodes for drift now (files,
//! keystores, hosts block and installed tree against what it wrote); prints the drifted nodes
//! and what differs (files and TOML keys, never values).
//!
//! Exit codes: 0 every asked node was checked and none drifted; 1 drift found, or a machine
//! could not be checked (not connected, no answer in time, a node busy converging; the output
//! says which), or an error.

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::{CheckDriftRequest, CheckDriftResponse, ClusterStatus};
use serde_json::json;

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::{Format, drift};

/// `apimctl check`.
///
/// Example: apimctl check --node gw-1
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Check only this node (repeatable; default: every node).
    #[arg(long = "node", value_name = "NODE")]
    nodes: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// Runs `apimctl check`.
pub async fn run(args: Args, settings: Settings, stdout: &mut dyn Write) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let resp = op
        .check_drift(CheckDriftRequest {
            nodes: args.nodes.clone(),
        })
        .await?
        .into_inner();
    let status = resp.status.clone().unwrap_or_default();
    let status = only(status, &args.nodes);
    let drifted = drift::drifted(&status);
    let unchecked = resp.machines.iter().filter(|m| !m.checked).count();
    let _ = match args.output {
        Format::Json => writeln!(stdout, "{}", to_json(&resp, &status)),
        Format::Text => text(&resp, &status)
            .iter()
            .try_for_each(|l| writeln!(stdout, "{l}")),
    };
    Ok(if drifted.is_empty() && unchecked == 0 {
        Exit::Success
    } else {
        Exit::Failed
    })
}

/// The status with only the asked nodes (all when none was named).
fn only(mut status: ClusterStatus, nodes: &[String]) -> ClusterStatus {
    if !nodes.is_empty() {
        for m in &mut status.machines {
            m.nodes.retain(|n| nodes.contains(&n.node));
        }
        status.machines.retain(|m| !m.nodes.is_empty());
    }
    status
}

fn text(resp: &CheckDriftResponse, status: &ClusterStatus) -> Vec<String> {
    let mut lines = drift::section(status);
    for m in resp.machines.iter().filter(|m| !m.checked) {
        lines.push(format!(
            "{}: not checked: {}",
            printable(&m.machine),
            printable(&m.message)
        ));
    }
    let nodes: usize = status.machines.iter().map(|m| m.nodes.len()).sum();
    let drifted = drift::drifted(status).len();
    lines.push(if drifted == 0 {
        format!("no drift on {nodes} node(s)")
    } else {
        format!("{drifted} of {nodes} node(s) drifted")
    });
    lines
}

fn to_json(resp: &CheckDriftResponse, status: &ClusterStatus) -> serde_json::Value {
    let nodes: Vec<_> = status
        .machines
        .iter()
        .flat_map(|m| {
            m.nodes.iter().map(move |n| {
                json!({"machine": m.machine, "node": n.node, "drift": drift::json(&n.drift)})
            })
        })
        .collect();
    let machines: Vec<_> = resp
        .machines
        .iter()
        .map(|m| json!({"machine": m.machine, "checked": m.checked, "message": m.message}))
        .collect();
    json!({
        "drifted": drift::drifted(status).iter().map(|(_, n)| n.node.clone()).collect::<Vec<_>>(),
        "nodes": nodes,
        "machines": machines,
    })
}
