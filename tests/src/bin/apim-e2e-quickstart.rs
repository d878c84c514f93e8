//! `apim-e2e-quickstart`: the engine of `deploy/quickstart.sh`.
//!
//! `apim-e2e-quickstart up DIR` lays out (or reuses) the 3.x five-node cluster in DIR, starts
//! whatever of it is not running (controller, one agent per simulated machine), applies the
//! plan, prints `apimctl status`, and exits 0 once every node is healthy, leaving everything
//! running (pids in `DIR/pids/`). `apim-e2e-quickstart down DIR` stops it all.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use apim_e2e::cluster::{
    self, Cluster, ClusterError, ClusterOptions, PlanParams, Topology, all_healthy,
};

fn usage() -> ExitCode {
    eprintln!("usage: apim-e2e-quickstart up|down DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, dir] = args.as_slice() else {
        return usage();
    };
    let dir = PathBuf::from(dir);
    let result = match cmd.as_str() {
        "up" => up(&dir),
        "down" => down(&dir),
        _ => return usage(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

fn down(dir: &Path) -> Result<ExitCode, ClusterError> {
    if !dir.exists() {
        println!("nothing to stop: {} does not exist", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let n = cluster::stop_detached(dir)?;
    println!(
        "stopped the quickstart cluster in {} ({n} daemons and their servers)",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn up(dir: &Path) -> Result<ExitCode, ClusterError> {
    let mut opts = ClusterOptions::new(Topology::V3FiveNode, "apimctl-quickstart");
    opts.startup_delay_ms = 500;
    println!("laying out the simulated cluster in {}", dir.display());
    let mut c = Cluster::create_in(dir, &opts)?;
    c.keep_running();
    if c.running_pid("controller").is_none() {
        println!("starting the controller on {}", c.controller_addr);
        c.start_controller()?;
    } else {
        println!("the controller is already running on {}", c.controller_addr);
        c.wait_controller()?;
    }
    c.ensure_operator_cert()?;
    let machines: Vec<String> = c.machines.iter().map(|m| m.name.clone()).collect();
    for m in &machines {
        if c.running_pid(&format!("agent-{m}")).is_none() {
            let addr = c.machine(m)?.address;
            println!("starting the agent of {m} ({addr})");
            c.start_agent(m)?;
        }
    }
    c.wait_agents_connected()?;
    let env = c.write_client_env()?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    println!("applying {}", plan.display());
    let mut apply = c.apimctl_cmd();
    apply.arg("apply").arg(&plan);
    let code = apply
        .status()
        .map_err(|e| ClusterError::Build(format!("running apimctl apply: {e}")))?;
    println!();
    // Nodes the agents restarted (a re-run after `--down`: the plan itself is unchanged) may
    // still be starting: wait for them, bounded by the harness's patience.
    let names = c.node_names();
    let healthy = c
        .wait_status("every node healthy", |s| all_healthy(s, &names))
        .is_ok();
    let mut status = c.apimctl_cmd();
    status.arg("status");
    let _ = status.status();
    println!();
    if healthy && code.success() {
        println!("every node is healthy. To use apimctl against this cluster:");
        println!("  . {}", env.display());
        println!("  apimctl status");
        println!("Stop it all with: deploy/quickstart.sh --down");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "not every node is healthy; logs are in {}/logs and under {}/machines",
            dir.display(),
            dir.display()
        );
        Ok(ExitCode::FAILURE)
    }
}
