//! `apimctl restart | stop | start`: node operations by name, `--role` or `--machine`, rolled
//! out by the controller as a new generation (tiers, health gating, HA peers one at a time) and
//! followed like `apply`.

use std::io::Write;

use apim_proto::text::printable;
use apim_proto::v1::{NodeOperation, OperateNodesRequest};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::Format;
use crate::prompt::{self, Yes};

/// Which nodes, and how to follow.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Node names.
    nodes: Vec<String>,
    /// Every node of this role (repeatable), e.g. `gateway`.
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Every node on this machine (repeatable).
    #[arg(long = "machine", value_name = "MACHINE")]
    machines: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// Return once the generation is stored, without following the rollout.
    #[arg(long)]
    no_wait: bool,
    /// Confirmation (`stop` asks for it).
    #[command(flatten)]
    yes: Yes,
}

/// Runs `apimctl <op>`.
pub async fn run(
    op: NodeOperation,
    args: Args,
    settings: Settings,
    stdout: &mut dyn Write,
) -> Result<Exit, CliError> {
    if op == NodeOperation::Stop {
        let what: Vec<String> = args
            .nodes
            .iter()
            .cloned()
            .chain(args.roles.iter().map(|r| format!("every {r}")))
            .chain(args.machines.iter().map(|m| format!("every node on {m}")))
            .collect();
        let what = apim_proto::text::printable(&what.join(", ")).into_owned();
        prompt::require(
            &format!("stop {what}"),
            &format!("Stop {what}? They stay stopped, through later applies, until started."),
            args.yes.yes,
        )?;
    }
    let mut client = client::operator(settings.connect().await?);
    let r = client
        .operate_nodes(OperateNodesRequest {
            operation: op.into(),
            nodes: args.nodes,
            roles: args.roles,
            machines: args.machines,
        })
        .await?
        .into_inner();
    let nodes: Vec<String> = r.nodes.iter().map(|n| printable(n).into_owned()).collect();
    if r.rollout_id.is_empty() {
        match args.output {
            Format::Json => {
                let _ = writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({"generation": r.generation, "nodes": nodes, "state": "unchanged"})
                );
            }
            Format::Text => {
                let _ = writeln!(
                    stdout,
                    "{}: nothing to change (generation {})",
                    nodes.join(", "),
                    r.generation
                );
            }
        }
        return Ok(Exit::Success);
    }
    if args.output == Format::Text {
        let verb = match op {
            NodeOperation::Stop => "stopping",
            NodeOperation::Start => "starting",
            _ => "restarting",
        };
        let _ = writeln!(
            stdout,
            "{verb} {}: generation {}, rollout {}",
            nodes.join(", "),
            r.generation,
            r.rollout_id
        );
    }
    if args.no_wait {
        if args.output == Format::Json {
            super::apply::started(r.generation, &r.rollout_id, args.output, stdout);
        }
        return Ok(Exit::Success);
    }
    super::apply::follow(
        &mut client,
        r.generation,
        &r.rollout_id,
        args.output,
        stdout,
    )
    .await
}
