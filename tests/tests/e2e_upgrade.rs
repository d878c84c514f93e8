//! End-to-end upgrades: a distributed 4.3.0 cluster (control plane, traffic manager, gateway;
//! real controller, agents and simulated servers) is upgraded to 4.4.0 with the same topology
//! and rolled back to 4.3.0, and at every step every node is healthy, runs exactly one server
//! from the expected home, and never had two servers at once (the simulated server fails its
//! startup on ports another holds, and the logs show each old server halted before the new one
//! started); the way back reuses the 4.3.0 trees without unpacking them again. `apimctl packs`
//! then lists both packs as needed by the retained history and refuses to prune them.
//!
//! Waits poll a condition with a generous timeout as a failure guard; nothing sleeps to
//! synchronise.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use apim_e2e::cluster::{
    Cluster, PlanParams, STARTED_LINE, STARTING_LINE, Topology, all_healthy, log_times,
    rollout_state, status_nodes,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

const V43: Topology = Topology::V4 { minor: 3 };
const V44: Topology = Topology::V4 { minor: 4 };

fn text(out: &std::process::Output) -> String {
    apim_e2e::cluster::output_text(out)
}

/// The value of the server's `-Dcarbon.home=` argument: the home it runs from.
fn home_of(pid: u32) -> Res<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .find_map(|a| a.strip_prefix("-Dcarbon.home="))
        .map(PathBuf::from)
        .ok_or_else(|| format!("pid {pid} names no carbon.home").into())
}

/// The node's tree of `version` under its machine's install root.
fn tree(c: &Cluster, node: &str, version: &str) -> Res<PathBuf> {
    let m = c.machine_of(node)?;
    Ok(m.install_root
        .join("opt/wso2")
        .join(node)
        .join(format!("wso2am-{version}")))
}

/// (inode, mtime in ns) of a file: unpacking a tree again replaces both.
fn identity(p: &Path) -> Res<(u64, i64)> {
    let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// Every node is healthy on plan generation `generation` and runs exactly one live server,
/// from its `version` tree; returns each node's server pid.
fn one_server_each_from(c: &Cluster, version: &str, generation: u64) -> Res<BTreeMap<String, u32>> {
    let s = c.status()?;
    assert!(all_healthy(&s, &c.node_names()), "not all healthy: {s}");
    for (_, n) in status_nodes(&s) {
        assert_eq!(n["generation"].as_u64(), Some(generation), "{n}");
        assert_eq!(n["running"].as_bool(), Some(true), "{n}");
    }
    let mut pids = BTreeMap::new();
    for node in c.node_names() {
        let live = c.server_pids(&node)?;
        assert_eq!(live.len(), 1, "{node} runs exactly one server: {live:?}");
        let home = home_of(live[0])?;
        assert_eq!(
            home,
            tree(c, &node, version)?,
            "{node} runs from its {version} tree"
        );
        pids.insert(node, live[0]);
    }
    Ok(pids)
}

/// The server log of `node`'s `version` tree.
fn log(c: &Cluster, node: &str, version: &str) -> Res<String> {
    let p = tree(c, node, version)?.join("repository/logs/wso2carbon.log");
    Ok(std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?)
}

/// From the servers' own logs: `node`'s server in the `from` tree halted (its last
/// "Halting JVM") before the server in the `to` tree started (its last "Starting"), and the new
/// one became ready without ever failing to bind a port.
fn halted_before_started(c: &Cluster, node: &str, from: &str, to: &str) -> TestResult {
    let old = log(c, node, from)?;
    let new = log(c, node, to)?;
    let halted = log_times(&old, "Halting JVM");
    let started = log_times(&new, STARTING_LINE);
    let (Some(h), Some(s)) = (halted.last(), started.last()) else {
        return Err(format!(
            "{node}: no halt in {from} ({halted:?}) or start in {to} ({started:?})"
        )
        .into());
    };
    assert!(
        h <= s,
        "{node}: the {to} server started at {s} while the {from} server ran until {h}"
    );
    assert!(
        !new.contains("Failed to start connector") && !old.contains("Failed to start connector"),
        "{node}: a server found its ports taken:\n{new}"
    );
    assert!(
        !log_times(&new, STARTED_LINE).is_empty(),
        "{node}: {to} never ready"
    );
    Ok(())
}

#[test]
fn a_4_3_cluster_upgrades_to_4_4_and_back_with_one_server_per_node_throughout() -> TestResult {
    let mut c = apim_e2e::cluster::started(V43, "e2e_upgrade", 200)?;
    let params = PlanParams::default();

    // Generation 1: 4.3.0.
    let plan43 = c.write_plan("plan-4.3.toml", &params)?;
    let out = c.apply(&plan43)?;
    assert!(out.status.success(), "apply 4.3.0: {}", text(&out));
    let pids43 = one_server_each_from(&c, "4.3.0", 1)?;
    let mut kept = BTreeMap::new();
    for node in c.node_names() {
        let t = tree(&c, &node, "4.3.0")?;
        kept.insert(
            node.clone(),
            (
                identity(&t.join("bin/version.txt"))?,
                identity(&t.join(".apimctl-optimized"))?,
            ),
        );
    }

    // Generation 2: 4.4.0, the same topology. `plan` says every node changes.
    c.use_topology(V44)?;
    let plan44 = c.write_plan("plan-4.4.toml", &params)?;
    let out = c.apimctl(&["plan", plan44.to_str().ok_or("path")?])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = c.apply(&plan44)?;
    assert!(out.status.success(), "apply 4.4.0: {}", text(&out));
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(rollout_state(&applied), Some("succeeded"), "{applied}");
    let pids44 = one_server_each_from(&c, "4.4.0", 2)?;
    for node in c.node_names() {
        assert!(
            !c.server_pids(&node)?.contains(&pids43[&node]),
            "{node}'s 4.3.0 server is gone"
        );
        halted_before_started(&c, &node, "4.3.0", "4.4.0")?;
        assert!(
            tree(&c, &node, "4.3.0")?.is_dir(),
            "{node} keeps its previous tree"
        );
    }

    // Generation 3: back to 4.3.0 with `apimctl rollback` — the kept trees, not unpacked again.
    let out = c.apimctl(&["rollback", "--to", "1", "-o", "json"])?;
    assert!(out.status.success(), "rollback: {}", text(&out));
    let back = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&back), Some("succeeded"), "{back}");
    let pids43b = one_server_each_from(&c, "4.3.0", 3)?;
    for node in c.node_names() {
        assert!(
            !c.server_pids(&node)?.contains(&pids44[&node]),
            "{node}'s 4.4.0 server is gone"
        );
        assert_ne!(pids43b[&node], pids43[&node], "{node} started again");
        halted_before_started(&c, &node, "4.4.0", "4.3.0")?;
        let t = tree(&c, &node, "4.3.0")?;
        assert_eq!(
            (
                identity(&t.join("bin/version.txt"))?,
                identity(&t.join(".apimctl-optimized"))?
            ),
            kept[&node],
            "{node} switched back to its 4.3.0 tree without unpacking it"
        );
        assert_eq!(
            log_times(&log(&c, &node, "4.3.0")?, STARTING_LINE).len(),
            2,
            "{node}: the 4.3.0 tree served twice"
        );
    }

    // The store holds both packs; the retained history needs both, so nothing is pruned.
    let out = c.apimctl(&["packs", "-o", "json"])?;
    assert!(out.status.success(), "{}", text(&out));
    let packs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(packs["current_generation"], 3, "{packs}");
    let by_name = |name: &str| {
        packs["artifacts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == name)
            .cloned()
            .ok_or_else(|| format!("no {name} in {packs}"))
    };
    let p43 = by_name("wso2am-4.3.0.zip")?;
    let p44 = by_name("wso2am-4.4.0.zip")?;
    assert_eq!(p43["generations"], serde_json::json!([1, 3]), "{p43}");
    assert_eq!(
        (p43["current"].as_bool(), p43["kind"].as_str()),
        (Some(true), Some("pack"))
    );
    assert_eq!(p44["generations"], serde_json::json!([2]), "{p44}");
    assert_eq!(p44["prunable"].as_bool(), Some(false), "{p44}");
    let sha44 = p44["sha256"].as_str().ok_or("sha256")?.to_string();
    let out = c.apimctl(&["packs", "prune", &sha44, "--yes"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still needed"),
        "{}",
        text(&out)
    );
    let out = c.apimctl(&["packs", "prune", "--yes"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to prune"),
        "{}",
        text(&out)
    );
    // Each agent keeps the current and previous packs in its cache: 4.3.0 and 4.4.0.
    for m in &c.machines {
        let cached: Vec<String> = std::fs::read_dir(m.state_dir.join("cache"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".zip"))
            .collect();
        assert_eq!(cached.len(), 2, "{}: {cached:?}", m.name);
    }
    Ok(())
}
