//! `apim-e2e-quickstart`: the engine of `deploy/quickstart.sh`.
//!
//! `apim-e2e-quickstart up DIR` lays out (or reuses) the 3.x five-node cluster in DIR, starts
//! whatever of it is not running (controller, one agent per simulated machine), applies the
//! plan, prints `apimctl status`, and exits 0 once every node is healthy, leaving everything
//! running (pids in `DIR/pids/`). `apim-e2e-quickstart down DIR` stops it all.
//!
//! `up DIR --db mariadb|postgres` puts the cluster's databases on the local server (it must be
//! running; the message says how to start one when it is not): the databases `apimqs_apim` and
//! `apimqs_shared` and their owners are made when missing, and apimctl creates the schemas
//! (`init = "if-empty"`) with the simulated JDBC driver in `[drivers]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use apim_e2e::cluster::{
    self, Cluster, ClusterError, ClusterOptions, PlanParams, ServerDb, Topology, all_healthy,
};
use apim_e2e::db::{self, Engine};

fn usage() -> ExitCode {
    eprintln!("usage: apim-e2e-quickstart up DIR [--db mariadb|postgres] | down DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dir, engine) = match args.as_slice() {
        [cmd, dir] => (cmd, dir, None),
        [cmd, dir, flag, e] if cmd == "up" && flag == "--db" => match e.as_str() {
            "mariadb" | "mysql" => (cmd, dir, Some(Engine::MariaDb)),
            "postgres" | "postgresql" => (cmd, dir, Some(Engine::Postgres)),
            _ => return usage(),
        },
        _ => return usage(),
    };
    let dir = PathBuf::from(dir);
    let result = match cmd.as_str() {
        "up" => up(&dir, engine),
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

/// The plan's databases on the local server of `engine` (made when missing).
fn server_databases(dir: &Path, engine: Engine) -> Result<ServerDb, ClusterError> {
    let failed = |e: String| ClusterError::Build(format!("databases: {e}"));
    let secret = dir.join("secrets").join("quickstart-db-password");
    let password = match std::fs::read_to_string(&secret) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            let mut bytes = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .map_err(|e| failed(e.to_string()))?;
            let p: String = bytes
                .iter()
                .map(|b| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[usize::from(*b) % 32]))
                .collect();
            std::fs::create_dir_all(secret.parent().unwrap_or(dir))
                .and_then(|()| std::fs::write(&secret, &p))
                .map_err(|e| failed(e.to_string()))?;
            p
        }
    };
    let mut port = 0;
    for name in ["apimqs_apim", "apimqs_shared"] {
        port = db::provision(engine, name, &password).map_err(failed)?;
    }
    let creds = |name: &str| (name.to_string(), name.to_string(), password.clone());
    let (db_type, file, class) = match engine {
        Engine::MariaDb => (
            "mysql",
            "mysql-connector-j-8.4.0.jar",
            "com.mysql.cj.jdbc.Driver",
        ),
        Engine::Postgres => ("postgres", "postgresql-42.7.4.jar", "org.postgresql.Driver"),
    };
    Ok(ServerDb {
        db_type,
        port,
        apim: creds("apimqs_apim"),
        shared: creds("apimqs_shared"),
        init: true,
        driver: Some((file.to_string(), apim_e2e::simpack::driver_jar(class))),
    })
}

fn up(dir: &Path, engine: Option<Engine>) -> Result<ExitCode, ClusterError> {
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
    let database = match engine {
        Some(e) => {
            let d = server_databases(dir, e)?;
            println!(
                "databases apimqs_apim and apimqs_shared on the local {} server (port {})",
                d.db_type, d.port
            );
            Some(d)
        }
        None => None,
    };
    let plan = c.write_plan(
        "plan.toml",
        &PlanParams {
            database,
            ..PlanParams::default()
        },
    )?;
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
