//! End-to-end, on the simulated five-node 3.x cluster (real controller, agents and servers):
//! `apimctl show` (the config a node runs, secrets masked), `apimctl logs` (a tail, a refused
//! path, and `-f` following a line written after it started) and `apimctl destroy` (nothing
//! left on any machine, and the same plan applies again from scratch).
//!
//! Waits poll a condition with a generous timeout as a failure guard; nothing sleeps to
//! synchronise.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;

use apim_e2e::cluster::{
    Cluster, PATIENCE, PLAN_SECRETS, PlanParams, Topology, all_healthy, output_text, rollout_state,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Applies `plan` and asserts the rollout succeeded with every node healthy.
fn apply_ok(c: &Cluster, plan: &Path) -> TestResult {
    let out = c.apply(plan)?;
    assert!(out.status.success(), "apply failed: {}", output_text(&out));
    let s = c.status()?;
    assert!(all_healthy(&s, &c.node_names()), "not all healthy: {s}");
    Ok(())
}

/// Asserts no plan secret is anywhere in `text`.
fn no_secret(what: &str, text: &str) {
    for (file, value) in PLAN_SECRETS {
        assert!(
            !text.contains(value),
            "{what} shows the {file} secret:\n{text}"
        );
    }
}

#[test]
fn show_masks_secrets_and_logs_tails_refuses_and_follows() -> TestResult {
    let c = apim_e2e::cluster::started(Topology::V3FiveNode, "e2e_nodes_show_logs", 100)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    apply_ok(&c, &plan)?;

    // show: the deployment.toml with the admin password masked, the start command, hosts.
    let out = c.apimctl(&["show", "gw-1"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    no_secret("show gw-1", &shown);
    assert!(
        shown.contains("# ---- repository/conf/deployment.toml ----"),
        "{shown}"
    );
    let admin = shown
        .split("[super_admin]")
        .nth(1)
        .ok_or(format!("no [super_admin] table:\n{shown}"))?;
    let admin = admin.split("\n[").next().unwrap_or_default();
    assert!(
        admin.contains("password = \"********\""),
        "admin password not masked:\n{admin}"
    );
    assert!(
        shown.contains("start:          bin/wso2server.sh"),
        "{shown}"
    );
    assert!(shown.contains("reported:       healthy"), "{shown}");
    assert!(shown.contains("gw.wso2.com"), "hosts block:\n{shown}");
    let json = c.apimctl(&["show", "gw-1", "-o", "json"])?;
    assert!(json.status.success(), "{}", output_text(&json));
    let text = String::from_utf8_lossy(&json.stdout).into_owned();
    no_secret("show gw-1 -o json", &text);
    let v: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(v["machine"], "vm-gw-1");
    assert_eq!(v["status"]["phase"], "healthy");
    assert_eq!(v["log_dir"], "repository/logs");
    let unknown = c.apimctl(&["show", "gw-9"])?;
    assert_eq!(unknown.status.code(), Some(1), "{}", output_text(&unknown));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("gw-9"));

    // logs -n 5: at most five lines, each of them from the server log.
    let log_file = c
        .node_files("gw-1", "wso2carbon.log")?
        .pop()
        .ok_or("gw-1 has no server log")?;
    let out = c.apimctl(&["logs", "gw-1", "-n", "5"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let tail = String::from_utf8_lossy(&out.stdout).into_owned();
    let on_disk = std::fs::read_to_string(&log_file)?;
    let lines: Vec<&str> = tail.lines().collect();
    assert!(
        (1..=5).contains(&lines.len()),
        "expected 1 to 5 lines:\n{tail}"
    );
    for l in &lines {
        assert!(
            on_disk.contains(l),
            "{l:?} is not in {}",
            log_file.display()
        );
    }

    // Files outside the node's log folder are refused: by name, and through a symlink.
    let out = c.apimctl(&["logs", "gw-1", "--file", "../../../etc/passwd"])?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(out.stdout.is_empty(), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("file"), "{err}");
    let logs_dir = log_file.parent().ok_or("log folder")?;
    let outside = c.root().join("outside-secret.txt");
    std::fs::write(&outside, "not for the operator\n")?;
    std::os::unix::fs::symlink(&outside, logs_dir.join("escape.log"))?;
    let out = c.apimctl(&["logs", "gw-1", "--file", "escape.log"])?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("leads out of the node's log folder"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not for the operator"));

    // logs -f: the existing tail first, then a line appended after it started.
    let mut cmd = c.apimctl_cmd();
    cmd.args(["logs", "gw-1", "-f", "-n", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(PATIENCE);
    let first = match first {
        Ok(l) => l,
        Err(e) => {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            return Err(format!("no tail from logs -f ({e}): {}", output_text(&out)).into());
        }
    };
    let on_disk = std::fs::read_to_string(&log_file)?;
    assert!(on_disk.contains(&first), "{first:?} is not from the log");
    let marker = format!("apimctl-e2e-follow-marker-{}", std::process::id());
    writeln!(
        std::fs::OpenOptions::new().append(true).open(&log_file)?,
        "TID: [-1234] [] INFO {{e2e}} - {marker} \u{1b}[2J"
    )?;
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut followed = None;
    while followed.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(&marker) => followed = Some(l),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                return Err(
                    format!("the appended line never came ({e}): {}", output_text(&out)).into(),
                );
            }
        }
    }
    let followed = followed.unwrap_or_default();
    assert!(
        followed.ends_with(&format!("{marker} \\e[2J")),
        "the escape sequence reached the terminal unescaped: {followed:?}"
    );
    child.kill()?;
    child.wait()?;
    let _ = reader.join();
    Ok(())
}

/// Live processes whose command line names `home_prefix` as a server's home.
fn servers_under(home_prefix: &Path) -> Vec<u32> {
    let needle = format!("-Dcarbon.home={}", home_prefix.display());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            !zombie
                && String::from_utf8_lossy(&cmdline)
                    .split('\0')
                    .any(|arg| arg.starts_with(&needle))
        })
        .collect()
}

/// Regular files anywhere under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out
}

#[test]
fn destroy_leaves_nothing_behind_and_the_plan_applies_again() -> TestResult {
    let c = apim_e2e::cluster::started(Topology::V3FiveNode, "e2e_nodes_destroy", 100)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    apply_ok(&c, &plan)?;
    for m in &c.machines {
        assert!(
            !servers_under(&m.install_root).is_empty(),
            "{}: no server found before the destroy (the check would prove nothing)",
            m.name
        );
        assert!(
            !files_under(&m.state_dir.join("cache")).is_empty(),
            "{}: no cached pack",
            m.name
        );
        assert!(
            std::fs::read_to_string(&m.hosts_file)?.contains("# BEGIN apimctl managed block"),
            "{}: no hosts block",
            m.name
        );
    }

    // Without a terminal and without --yes: refused (a usage error), nothing done.
    let out = c.apimctl(&["destroy"])?;
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        output_text(&out)
    );
    assert!(
        all_healthy(&c.status()?, &c.node_names()),
        "refused destroy changed something"
    );

    let out = c.apimctl(&["destroy", "--yes"])?;
    assert!(
        out.status.success(),
        "destroy failed: {}",
        output_text(&out)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("every machine destroyed"), "{said}");
    for m in &c.machines {
        assert!(said.contains(&format!("{}: destroyed", m.name)), "{said}");
        let left = files_under(&m.install_root);
        assert!(
            left.is_empty(),
            "{}: files left in the install root: {left:?}",
            m.name
        );
        let cached = files_under(&m.state_dir.join("cache"));
        assert!(
            cached.is_empty(),
            "{}: packs left in the cache: {cached:?}",
            m.name
        );
        let hosts = std::fs::read_to_string(&m.hosts_file)?;
        assert_eq!(hosts, "127.0.0.1 localhost\n", "{}: hosts file", m.name);
        let running = servers_under(&m.install_root);
        assert!(
            running.is_empty(),
            "{}: servers still running: {running:?}",
            m.name
        );
        assert!(
            m.state_dir.join("agent-identity.pem").exists(),
            "{}: the agent must stay enrolled",
            m.name
        );
    }
    let s = c.status()?;
    assert_eq!(rollout_state(&s), Some("destroyed"), "{s}");
    let history = c.apimctl(&["history"])?;
    let history = String::from_utf8_lossy(&history.stdout).into_owned();
    // Under the table's header.
    let newest = history.lines().nth(1).unwrap_or_default();
    assert!(
        newest.contains("destroyed")
            && newest.contains("(destroy)")
            && !newest.contains("secrets forgotten"),
        "history does not show the destroy first:\n{history}"
    );
    // Nothing to show of a destroyed node.
    let out = c.apimctl(&["show", "gw-1"])?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));

    // The same plan again: a first rollout, every node healthy.
    let out = c.apimctl(&["plan", plan.to_str().ok_or("path")?, "-o", "json"])?;
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let kinds: Vec<&str> = changes["changes"]
        .as_array()
        .ok_or("changes")?
        .iter()
        .filter_map(|ch| ch["kind"].as_str())
        .collect();
    assert!(
        kinds.len() == c.node_names().len() && kinds.iter().all(|k| *k == "create"),
        "after a destroy every node is created again: {changes}"
    );
    apply_ok(&c, &plan)?;
    for m in &c.machines {
        assert_eq!(
            servers_under(&m.install_root).len(),
            m.nodes.len(),
            "{}",
            m.name
        );
    }
    Ok(())
}
