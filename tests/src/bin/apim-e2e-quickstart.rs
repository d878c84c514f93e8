//! `apim-e2e-quickstart`: the engine of `deploy/quickstart.sh`.
//!
//! `apim-e2e-quickstart up DIR` lays out (or reuses) the 3.x five-node cluster in DIR, starts
//! whatever of it is not running (controller, one agent per simulated machine), applies the
//! plan, prints `apimctl status`, and exits 0 once every node is healthy, leaving everything
//! running (pids in `DIR/pids/`). `apim-e2e-quickstart down DIR` stops it all.
//!
//! `up DIR --hosts` (root only) makes every simulated machine a host: its own network namespace
//! on a private bridge and its own mount namespace, where its agent edits the real `/etc/hosts`
//! path (a private copy is mounted there); the controller in its own network namespace. The
//! namespaces outlive this process (a re-run adopts them) and `down` removes them; `DIR/apimctl`
//! runs apimctl in the controller's namespace. Not root: it refuses, saying plain `up` works.
//!
//! `up DIR --db mariadb|postgres` puts the cluster's databases on the local server (it must be
//! running; the message says how to start one when it is not): the databases `apimqs_apim` and
//! `apimqs_shared` and their owners are made when missing, and apimctl creates the schemas
//! (`init = "if-empty"`) with the simulated JDBC driver in `[drivers]`. With `--hosts` the
//! machines reach it through the controller host: a forwarder (`forward-db`, internal) listens
//! in the controller's namespace and connects to the server on this host's loopback.

use std::path::Path;
use std::process::ExitCode;

use apim_e2e::cluster::{
    self, Cluster, ClusterError, ClusterOptions, PlanParams, ServerDb, Topology, all_healthy,
};
use apim_e2e::db::{self, Engine};

fn usage() -> ExitCode {
    eprintln!("usage: apim-e2e-quickstart up DIR [--hosts] [--db mariadb|postgres] | down DIR");
    ExitCode::from(2)
}

/// What `up` was asked for.
struct UpArgs {
    engine: Option<Engine>,
    hosts: bool,
}

/// `up`'s flags, in any order; `None` on anything else.
fn parse_up(flags: &[String]) -> Option<UpArgs> {
    let mut up = UpArgs {
        engine: None,
        hosts: false,
    };
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        match f.as_str() {
            "--hosts" if !up.hosts => up.hosts = true,
            "--db" if up.engine.is_none() => {
                up.engine = Some(match it.next()?.as_str() {
                    "mariadb" | "mysql" => Engine::MariaDb,
                    "postgres" | "postgresql" => Engine::Postgres,
                    _ => return None,
                });
            }
            _ => return None,
        }
    }
    Some(up)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, dir] if cmd == "down" => down(Path::new(dir)),
        // Internal (`up --hosts --db`): the database forwarder; DIR names it as the cluster's.
        [cmd, _dir, ns, listen, to] if cmd == "forward-db" => {
            return forward_db(Path::new(ns), listen, to);
        }
        [cmd, dir, flags @ ..] if cmd == "up" => match parse_up(flags) {
            Some(a) => up(Path::new(dir), &a),
            None => return usage(),
        },
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

/// Serves the machines' connections to the database server on this host until killed.
fn forward_db(ns: &Path, listen: &str, to: &str) -> ExitCode {
    let (Ok(listen), Ok(to)) = (listen.parse(), to.parse()) else {
        return usage();
    };
    let ready = || {
        println!("forwarding {listen} (in {}) to {to}", ns.display());
        let _ = std::io::Write::flush(&mut std::io::stdout());
    };
    match apim_e2e::netns::forward_tcp(ns, listen, to, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: database forwarder: {e}");
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
    // Machines as hosts (`--hosts`): their namespaces, mounts, bridge and links.
    let ns = cluster::remove_kept_network(dir)?;
    if ns > 0 {
        println!(
            "removed its network: {ns} network namespaces with their bridge, links and mounts"
        );
    }
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

/// The file saying how the cluster in a quickstart folder was laid out: `hosts` (`--hosts`) or
/// `loopback`; a folder from before it was written is `loopback`.
const MODE_FILE: &str = "quickstart-mode";

fn mode_name(hosts: bool) -> &'static str {
    if hosts { "hosts" } else { "loopback" }
}

/// Refuses to lay a cluster out in `dir` in another mode than the one it holds (addresses,
/// the controller's configuration and enrolments differ).
fn check_mode(dir: &Path, hosts: bool) -> Result<(), String> {
    let want = mode_name(hosts);
    let file = dir.join(MODE_FILE);
    let had = match std::fs::read_to_string(&file) {
        Ok(t) => Some(t.trim().to_string()),
        Err(_) if dir.join("controller.toml").exists() => Some("loopback".to_string()),
        Err(_) => None,
    };
    match had {
        None => Ok(()),
        Some(m) if m == want => Ok(()),
        Some(m) => Err(format!(
            "{} holds a quickstart cluster laid out {}: run `deploy/quickstart.sh --down`, then \
             remove that folder (or set APIM_QUICKSTART_DIR to another one) to start it {}",
            dir.display(),
            if m == "hosts" {
                "with --hosts"
            } else {
                "without --hosts"
            },
            if hosts {
                "with --hosts"
            } else {
                "without --hosts"
            },
        )),
    }
}

/// Why `--hosts` cannot run here, before anything is laid out: it needs root.
fn hosts_refused() -> Option<String> {
    (!nix::unistd::geteuid().is_root()).then(|| {
        "--hosts needs root: it gives every simulated machine its own network and mount \
         namespace (CAP_SYS_ADMIN, CAP_NET_ADMIN), and this runs as a regular user. Run it as \
         root, or run plain `deploy/quickstart.sh`, which works without root (every machine on \
         its own 127.x address with a private hosts file)"
            .to_string()
    })
}

fn up(dir: &Path, args: &UpArgs) -> Result<ExitCode, ClusterError> {
    if args.hosts
        && let Some(why) = hosts_refused()
    {
        eprintln!("quickstart: {why}");
        return Ok(ExitCode::FAILURE);
    }
    if let Err(why) = check_mode(dir, args.hosts) {
        eprintln!("quickstart: {why}");
        return Ok(ExitCode::FAILURE);
    }
    let engine = args.engine;
    let mut opts = ClusterOptions::new(Topology::V3FiveNode, "apimctl-quickstart");
    opts.startup_delay_ms = 500;
    opts.namespaces = args.hosts;
    println!("laying out the simulated cluster in {}", dir.display());
    let mut c = match Cluster::create_in(dir, &opts) {
        Err(ClusterError::Namespaces(e)) => {
            eprintln!(
                "quickstart: --hosts: the kernel refused the machines' namespaces: {e}. Plain \
                 `deploy/quickstart.sh` works without them (and without root)"
            );
            return Ok(ExitCode::FAILURE);
        }
        other => other?,
    };
    // Laid out: the folder is of this mode now.
    let mode = c.root().join(MODE_FILE);
    std::fs::write(&mode, format!("{}\n", mode_name(args.hosts))).map_err(|source| {
        ClusterError::Io {
            what: "write",
            path: mode.clone(),
            source,
        }
    })?;
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
            let place = if args.hosts {
                "its own network and mount namespace"
            } else {
                "loopback"
            };
            println!("starting the agent of {m} ({addr}, {place})");
            c.start_agent(m)?;
        }
    }
    c.wait_agents_connected()?;
    let env = c.write_client_env()?;
    let wrapper = match c.network() {
        Some(_) => Some(c.write_controller_wrapper(&env)?),
        None => None,
    };
    let database = match engine {
        Some(e) => {
            let d = server_databases(dir, e)?;
            println!(
                "databases apimqs_apim and apimqs_shared on the local {} server (port {})",
                d.db_type, d.port
            );
            if c.network().is_some() {
                // The machines' loopback is their own: they reach the server through the
                // controller host.
                let mut fwd = std::process::Command::new(
                    std::env::current_exe()
                        .map_err(|e| ClusterError::Build(format!("this executable: {e}")))?,
                );
                fwd.arg("forward-db").arg(c.root());
                c.forward_database(fwd, d.port)?;
                println!(
                    "the machines reach it as db.wso2.com, {}:{} (forwarded from the controller's \
                     namespace to 127.0.0.1:{})",
                    c.database_address(),
                    d.port,
                    d.port
                );
            }
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
        match (&wrapper, c.network()) {
            (Some(w), Some(net)) => {
                let ctl = net.host(cluster::CONTROLLER_HOST)?;
                println!(
                    "  {} status        (apimctl in the controller's network namespace, as root)",
                    w.display()
                );
                println!("or by hand:");
                println!("  . {}", env.display());
                println!(
                    "  nsenter --net={} -- apimctl status",
                    ctl.netns_path().display()
                );
                println!("Each machine's namespaces (its agent edits /etc/hosts in its own):");
                for h in &net.hosts {
                    if let Some(mnt) = &h.mount_ns {
                        println!(
                            "  {:<9} {:<14} nsenter --net={} --mount={} -- cat /etc/hosts",
                            h.name,
                            h.address,
                            h.netns_path().display(),
                            mnt.display()
                        );
                    }
                }
            }
            _ => {
                println!("  . {}", env.display());
                println!("  apimctl status");
            }
        }
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
