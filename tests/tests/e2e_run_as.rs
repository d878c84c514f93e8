//! End-to-end: the plan's `run_as`. A real system user is created for the test (and removed at
//! its end), one machine of a 4.2 cluster runs its node as that user, and the test checks what
//! the agent left on disk (owner and mode of the install tree, `deployment.toml`, the
//! keystores, the logs, the hosts file, the agent's own state) and that the server process
//! runs as that user with no other group, before and after a configuration change restarts it.
//!
//! Needs root (it creates a user and the agent must be root to switch to it): the test fails,
//! saying so, when it is not.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use apim_e2e::cluster::{Cluster, PlanParams, Topology, all_healthy, output_text};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A system user made for this test, deleted (with its group) on drop, also on panic.
struct SystemUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl SystemUser {
    fn create(name: &str) -> Result<SystemUser, Box<dyn std::error::Error>> {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "the run_as test needs root: it creates a system user with useradd and \
                        the agent must be root to run a server as another user"
                    .into(),
            );
        }
        let out = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
            .arg(name)
            .output()?;
        if !out.status.success() {
            return Err(format!("useradd {name}: {}", output_text(&out)).into());
        }
        // From here on, dropping the value removes the user whatever happens.
        let mut u = SystemUser {
            name: name.to_owned(),
            uid: 0,
            gid: 0,
        };
        let pw = nix::unistd::User::from_name(name)?.ok_or("useradd made no user")?;
        u.uid = pw.uid.as_raw();
        u.gid = pw.gid.as_raw();
        assert_ne!(u.uid, 0, "a system user is not root");
        Ok(u)
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        match Command::new("userdel").arg(&self.name).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("userdel {}: {}", self.name, output_text(&o)),
            Err(e) => eprintln!("userdel {}: {e}", self.name),
        }
    }
}

/// Every path under `dir` (itself included), not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The node's home: the folder holding `repository/conf/deployment.toml`.
fn home_of(c: &Cluster, node: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let tomls = c.node_files(node, "deployment.toml")?;
    let homes: BTreeSet<PathBuf> = tomls
        .iter()
        .filter(|p| p.ends_with("repository/conf/deployment.toml"))
        .filter_map(|p| Some(p.parent()?.parent()?.parent()?.to_path_buf()))
        .collect();
    assert_eq!(homes.len(), 1, "{node} has one home: {homes:?}");
    Ok(homes.into_iter().next().ok_or("no home")?)
}

fn mode(p: &Path) -> std::io::Result<u32> {
    Ok(std::fs::symlink_metadata(p)?.permissions().mode() & 0o7777)
}

/// A process's ids as `/proc/<pid>/status` gives them.
type Ids = (Vec<u32>, Vec<u32>, Vec<u32>);

/// `/proc/<pid>/status`'s `Uid:`, `Gid:` and `Groups:` fields.
fn ids_of(pid: u32) -> Result<Ids, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok((field("Uid:"), field("Gid:"), field("Groups:")))
}

/// The one live server of `node`.
fn server_pid(c: &Cluster, node: &str) -> Result<u32, Box<dyn std::error::Error>> {
    let pids = c.server_pids(node)?;
    assert_eq!(pids.len(), 1, "{node} runs one server: {pids:?}");
    Ok(pids[0])
}

/// What the agent wrote for `node` (run as `user`) on disk, and its server's ids.
fn check_node_as(c: &Cluster, node: &str, user: &SystemUser) -> TestResult {
    let home = home_of(c, node)?;
    // The whole tree is the user's: the server writes logs, tmp, its pid file and its
    // databases there, and nothing in it may stay root's (the agent's lock, markers, jars).
    let mut wrong = Vec::new();
    for p in walk(&home) {
        let md = std::fs::symlink_metadata(&p)?;
        if md.uid() != user.uid || md.gid() != user.gid {
            wrong.push(format!("{} {}:{}", p.display(), md.uid(), md.gid()));
        }
        if md.file_type().is_symlink() {
            continue;
        }
        assert_eq!(
            md.permissions().mode() & 0o022,
            0,
            "{} is writable by group or others ({:o})",
            p.display(),
            md.permissions().mode()
        );
    }
    assert!(
        wrong.is_empty(),
        "{node}: not owned by {} ({}:{}):\n{}",
        user.name,
        user.uid,
        user.gid,
        wrong.join("\n")
    );
    // Secrets: the configuration and the keystores the agent wrote are the user's alone.
    let toml = home.join("repository/conf/deployment.toml");
    assert_eq!(mode(&toml)?, 0o600, "{}", toml.display());
    let security = home.join("repository/resources/security");
    let keystore = security.join("wso2carbon.jks");
    assert_eq!(mode(&keystore)?, 0o600, "{}", keystore.display());
    // The truststore holds certificates only: readable, written by its owner alone (the walk
    // above checked it is the user's and not writable by anyone else).
    let trust = security.join("client-truststore.jks");
    assert_eq!(mode(&trust)? & 0o7133, 0, "{}", trust.display());
    // The server's own log, written by the server as the user.
    let log = home.join("repository/logs/wso2carbon.log");
    let md = std::fs::metadata(&log)?;
    assert_eq!(
        (md.uid(), md.gid()),
        (user.uid, user.gid),
        "{}",
        log.display()
    );
    assert!(
        std::fs::read_to_string(&log)?.contains(apim_e2e::cluster::STARTED_LINE),
        "{}",
        log.display()
    );
    // The parents of the home stay root's and closed to the user: it cannot swap its tree.
    let m = c.machine_of(node)?;
    let mut dir = home.parent();
    while let Some(d) = dir {
        if d == m.install_root {
            break;
        }
        let md = std::fs::metadata(d)?;
        assert_eq!(md.uid(), 0, "{} is root's", d.display());
        assert_eq!(md.permissions().mode() & 0o022, 0, "{}", d.display());
        dir = d.parent();
    }
    // The hosts file is the machine's (root's, readable by every server), not the user's.
    let hosts = std::fs::metadata(&m.hosts_file)?;
    assert_eq!(hosts.uid(), 0, "{}", m.hosts_file.display());
    assert_eq!(
        hosts.permissions().mode() & 0o777,
        0o644,
        "{}",
        m.hosts_file.display()
    );
    assert!(
        std::fs::read_to_string(&m.hosts_file)?.contains("# BEGIN apimctl managed block"),
        "the agent wrote its block"
    );
    // The agent's state (records, identity) is root's and closed to the user.
    for p in walk(&m.state_dir) {
        let md = std::fs::symlink_metadata(&p)?;
        assert_eq!(md.uid(), 0, "{} is root's", p.display());
        assert_eq!(
            md.permissions().mode() & 0o022,
            0,
            "{} is writable by group or others",
            p.display()
        );
    }
    // The server runs as the user: real, effective, saved and fs ids, and no other group.
    let pid = server_pid(c, node)?;
    let (uids, gids, groups) = ids_of(pid)?;
    assert_eq!(uids, vec![user.uid; 4], "{node}'s server (pid {pid}) Uid");
    assert_eq!(gids, vec![user.gid; 4], "{node}'s server (pid {pid}) Gid");
    assert!(
        groups.iter().all(|g| *g == user.gid),
        "{node}'s server keeps no other group: {groups:?}"
    );
    Ok(())
}

#[test]
fn run_as_user_owns_every_file_of_its_node_and_runs_its_server() -> TestResult {
    let user = SystemUser::create(&format!("apimra{}", std::process::id()))?;
    let c = apim_e2e::cluster::started(Topology::V4 { minor: 2 }, "e2e_run_as", 200)?;
    // A real machine's JDK and install root are reachable by the run_as user; the test's temp
    // root is 0700, so open it for traversal only (nothing in it becomes readable by listing).
    std::fs::set_permissions(c.root(), std::fs::Permissions::from_mode(0o711))?;
    let node = "gw-1";
    let machine = c.machine_of(node)?.name.clone();
    let params = PlanParams {
        run_as: vec![(machine.clone(), user.name.clone())],
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    let s = c.status()?;
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    check_node_as(&c, node, &user)?;
    // The other machines have no run_as: their servers run as the agent (root).
    for other in c.node_names().into_iter().filter(|n| n != node) {
        let (uids, _, _) = ids_of(server_pid(&c, &other)?)?;
        assert_eq!(uids, vec![0; 4], "{other} runs as the agent's user");
    }

    // A configuration change rewrites deployment.toml and restarts the server: still the
    // user's, still 0600, the new server still runs as the user.
    let before = server_pid(&c, node)?;
    let params = PlanParams {
        overrides: vec![(
            format!("node:{node}"),
            "[apimsim]\nstartup_delay_ms = 150".into(),
        )],
        ..params
    };
    let plan2 = c.write_plan("plan2.toml", &params)?;
    let out = c.apply(&plan2)?;
    assert!(out.status.success(), "apply 2: {}", output_text(&out));
    let after = server_pid(&c, node)?;
    assert_ne!(before, after, "{node} restarted for its new configuration");
    let toml = std::fs::read_to_string(home_of(&c, node)?.join("repository/conf/deployment.toml"))?;
    assert!(toml.contains("startup_delay_ms = 150"), "{toml}");
    assert_eq!(c.start_count(node)?, 2, "{node} started twice");
    check_node_as(&c, node, &user)?;
    drop(c);
    Ok(())
}
