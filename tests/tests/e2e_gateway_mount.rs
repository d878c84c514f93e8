//! End-to-end: 3.x gateways in HA sharing `repository/deployment/server` on a file system the
//! operator provides (`[gateway_artifacts] share = "mount"`), with machines as hosts
//! (`ClusterOptions::namespaces`): each machine's agent mounts the share in its own mount
//! namespace, as on separate VMs. The share is a folder of this host, bind-mounted
//! (`fstype = "bind"`): the same code path as NFS (`mount -t nfs`), without a file server.
//!
//! Needs root (namespaces and `mount`): when the kernel or a tool refuses, the cluster fails to
//! start and the test fails saying which command was refused and why.

use std::path::{Path, PathBuf};

use apim_e2e::cluster::{
    Cluster, ClusterOptions, PlanParams, Topology, all_healthy, node_phase, output_text,
    rollout_state, status_nodes,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The shared folder, relative to a gateway's home.
const SHARED: &str = "repository/deployment/server";
/// Synapse's configuration in it, which a gateway cannot start without.
const SYNAPSE_XML: &str = "synapse-configs/default/synapse.xml";
/// The seed marker the agent writes in the share.
const MARKER: &str = ".apimctl-seeded";

fn hosts_cluster(name: &str) -> Result<Cluster, Box<dyn std::error::Error>> {
    let mut opts = ClusterOptions::new(Topology::V3TwoGateways, name);
    opts.namespaces = true;
    opts.startup_delay_ms = 200;
    let mut c = Cluster::create(&opts).map_err(|e| e.to_string())?;
    c.start().map_err(|e| e.to_string())?;
    Ok(c)
}

/// The harness's plan with `[gateway_artifacts]` mounting `source` (a host folder) by bind.
fn mount_plan(c: &Cluster, source: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let mut text = c.plan_text(&PlanParams::default());
    text.push_str(&format!(
        "\n[gateway_artifacts]\nshare = \"mount\"\nfstype = \"bind\"\nsource = \"{}\"\n",
        source.display()
    ));
    // The secrets the harness writes with its plans.
    c.write_plan("base.toml", &PlanParams::default())?;
    let p = c.root().join("plan.toml");
    std::fs::write(&p, text)?;
    Ok(p)
}

/// `node`'s home as this host sees it (from its deployment.toml).
fn home_of(c: &Cluster, node: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let toml = c
        .node_files(node, "deployment.toml")?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{node}: no deployment.toml"))?;
    Ok(toml
        .ancestors()
        .nth(3)
        .ok_or("deployment.toml at repository/conf")?
        .to_path_buf())
}

/// The agent's pid on `node`'s machine.
fn agent_pid(c: &Cluster, node: &str) -> Result<u32, Box<dyn std::error::Error>> {
    let m = c.machine_of(node)?;
    Ok(c.running_pid(&format!("agent-{}", m.name))
        .ok_or_else(|| format!("{}: agent not running", m.name))?)
}

/// `path` as the processes of `pid`'s mount namespace see it.
fn seen_by(pid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether `path` is a mount point in the mount table `mountinfo`.
fn mount_point_in(mountinfo: &str, path: &Path) -> bool {
    let p = path.display().to_string().replace(' ', "\\040");
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// How many files the agents say they copied into the share, all seedings together.
fn seeded_files(c: &Cluster) -> Result<usize, Box<dyn std::error::Error>> {
    const SAID: &str = "shared folder seeded: ";
    let mut n = 0;
    for m in &c.machines {
        let p = c.root().join("logs").join(format!("agent-{}.log", m.name));
        let log = std::fs::read_to_string(&p).unwrap_or_default();
        for (i, _) in log.match_indices(SAID) {
            let rest = &log[i + SAID.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            n += digits.parse::<usize>()?;
        }
    }
    Ok(n)
}

/// The regular files under `dir`, recursively.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

#[test]
fn two_3x_gateways_share_their_deployed_apis_on_a_mount_seeded_once_and_destroy_keeps_it()
-> TestResult {
    let c = hosts_cluster("e2e_gw_mount")?;
    let share = c.root().join("share");
    std::fs::create_dir(&share)?;
    let plan = mount_plan(&c, &share)?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    let s = c.status()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    for (machine, n) in status_nodes(&s) {
        assert_eq!(n["restarts"], 0, "{machine}: no restart: {n}");
    }

    // Seeded once, from the pack: its Synapse configuration and the marker are in the share.
    assert!(share.join(MARKER).is_file(), "seed marker");
    assert!(share.join(SYNAPSE_XML).is_file(), "synapse.xml seeded");
    // Once: every file of the pack's folder was copied in exactly once, whether one gateway
    // seeded it and the other found the marker, or both seeded at the same moment.
    let pack_files = files_under(&home_of(&c, "gw-1")?.join(format!("{SHARED}.pack")));
    assert!(pack_files > 0);
    assert_eq!(seeded_files(&c)?, pack_files, "each file copied once");

    let gws = ["gw-1", "gw-2"];
    let mut folders = Vec::new();
    for gw in gws {
        let home = home_of(&c, gw)?;
        let folder = home.join(SHARED);
        let agent = agent_pid(&c, gw)?;
        // A mount point in the machine's own mount namespace, of the share...
        let theirs = std::fs::read_to_string(format!("/proc/{agent}/mountinfo"))?;
        assert!(
            mount_point_in(&theirs, &folder),
            "{gw}: mounted in its namespace"
        );
        for spid in c.server_pids(gw)? {
            let server = std::fs::read_to_string(format!("/proc/{spid}/mountinfo"))?;
            assert!(
                mount_point_in(&server, &folder),
                "{gw}'s server sees the mount"
            );
        }
        // ...and not in this host's.
        let ours = std::fs::read_to_string("/proc/self/mountinfo")?;
        assert!(
            !mount_point_in(&ours, &folder),
            "{gw}: not mounted on the host"
        );
        // The pack's own copy was set aside beside it, once.
        assert!(
            home.join(format!("{SHARED}.pack"))
                .join(SYNAPSE_XML)
                .is_file(),
            "{gw}: the pack's copy kept aside"
        );
        // The gateway started from the shared Synapse configuration.
        assert!(seen_by(agent, &folder.join(SYNAPSE_XML)).is_file(), "{gw}");
        assert!(seen_by(agent, &folder.join(MARKER)).is_file(), "{gw}");
        folders.push((agent, folder));
    }

    // An API deployed on gw-1 is on gw-2 at once: one file system.
    let (gw1_agent, gw1_folder) = &folders[0];
    let (gw2_agent, gw2_folder) = &folders[1];
    let api = "synapse-configs/default/api/admin--PizzaShack_v1.0.0.xml";
    let body = "<api name=\"admin--PizzaShack\" context=\"/pizzashack/1.0.0\"/>\n";
    let written = seen_by(*gw1_agent, &gw1_folder.join(api));
    std::fs::create_dir_all(written.parent().ok_or("api dir")?)?;
    std::fs::write(&written, body)?;
    assert_eq!(
        std::fs::read_to_string(seen_by(*gw2_agent, &gw2_folder.join(api)))?,
        body,
        "gw-2 sees gw-1's API"
    );
    assert_eq!(
        std::fs::read_to_string(share.join(api))?,
        body,
        "in the share"
    );
    // In this host's namespace the gateways' folders are the empty mount points.
    assert!(
        !gw2_folder.join(api).exists(),
        "the host sees the mount point, not the share"
    );

    // The shared folder's content is every gateway's: no drift for an API deployed in it.
    let out = c.apimctl(&["check"])?;
    assert!(out.status.success(), "no drift: {}", output_text(&out));

    // Destroy: the trees go, each mount is taken off first, the share keeps every file.
    let out = c.apimctl(&["destroy", "--yes"])?;
    assert!(out.status.success(), "destroy: {}", output_text(&out));
    for (agent, folder) in &folders {
        let theirs = std::fs::read_to_string(format!("/proc/{agent}/mountinfo"))?;
        assert!(!mount_point_in(&theirs, folder), "unmounted");
        assert!(!folder.exists(), "the tree is removed");
    }
    assert_eq!(std::fs::read_to_string(share.join(api))?, body, "kept");
    assert!(share.join(SYNAPSE_XML).is_file(), "kept");
    assert!(share.join(MARKER).is_file(), "kept");
    Ok(())
}

/// The error of `node` in a status JSON.
fn last_error(s: &serde_json::Value, node: &str) -> String {
    status_nodes(s)
        .into_iter()
        .find(|(_, n)| n["node"] == node)
        .and_then(|(_, n)| n["last_error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn a_gateway_whose_share_cannot_be_mounted_is_not_started_and_an_unseeded_share_is_caught()
-> TestResult {
    let c = hosts_cluster("e2e_gw_mount_missing")?;
    let share = c.root().join("not-yet");
    let plan = mount_plan(&c, &share)?;
    let out = c.apply(&plan)?;
    assert!(
        !out.status.success(),
        "apply must fail: {}",
        output_text(&out)
    );
    let s = c.wait_status("gw-1 failed on its mount", |s| {
        node_phase(s, "gw-1") == Some("failed") && last_error(s, "gw-1").contains("not mounted")
    })?;
    let err = last_error(&s, "gw-1");
    let folder = home_of(&c, "gw-1")?.join(SHARED);
    assert!(
        err.contains(&folder.display().to_string()) && err.contains(&share.display().to_string()),
        "the operator sees which folder and which source: {err}"
    );
    assert!(err.contains("not started"), "{err}");
    assert_eq!(c.start_count("gw-1")?, 0, "gw-1 never started: {s}");
    assert!(c.server_pids("gw-1")?.is_empty());
    let table = apimctl_status(&c)?;
    assert!(table.contains(&share.display().to_string()), "{table}");

    // The share appears, but an operator's copy that says it was seeded lacks synapse.xml:
    // the agent mounts it (retrying by itself) and does not seed it; the gateway fails to start,
    // as the product does without its Synapse configuration.
    std::fs::create_dir(&share)?;
    std::fs::write(share.join(MARKER), "seeded by hand\n")?;
    c.wait_status("gw-1 started on the unseeded share", |_| {
        c.node_log("gw-1")
            .is_ok_and(|l| l.contains("The synapse.xml location"))
    })?;
    // The server exits at once: the agent sees it die right after the start, or (its exit
    // seen later) never ready.
    let s = c.wait_status("gw-1 failed to start", |s| {
        let err = last_error(s, "gw-1");
        node_phase(s, "gw-1") == Some("failed")
            && (err.contains("not ready") || err.contains("died right after start"))
    })?;
    assert!(c.server_pids("gw-1")?.is_empty(), "{s}");
    assert!(
        !share.join(SYNAPSE_XML).exists(),
        "not seeded over the marker"
    );

    // Without the marker the next retry seeds it, and the gateway serves.
    std::fs::remove_file(share.join(MARKER))?;
    c.wait_status("gw-1 healthy on the seeded share", |s| {
        node_phase(s, "gw-1") == Some("healthy")
    })?;
    assert!(share.join(SYNAPSE_XML).is_file(), "seeded");
    assert!(share.join(MARKER).is_file(), "marked");
    Ok(())
}

/// `apimctl status` as the operator sees it.
fn apimctl_status(c: &Cluster) -> Result<String, Box<dyn std::error::Error>> {
    let out = c.apimctl(&["status"])?;
    Ok(output_text(&out))
}

/// From a mount back to apimctl's own sync: each gateway restarts on its own folder again (the
/// share taken off, the pack's copy put back), and the group's files then travel between them.
#[test]
fn a_plan_that_stops_mounting_gives_each_gateway_its_own_folder_back_and_sync_takes_over()
-> TestResult {
    let c = hosts_cluster("e2e_gw_unmount")?;
    let share = c.root().join("share");
    std::fs::create_dir(&share)?;
    let plan = mount_plan(&c, &share)?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    // The default plan: two gateways of one environment, synchronised by apimctl.
    let plan2 = c.write_plan("plan2.toml", &PlanParams::default())?;
    let out = c.apply(&plan2)?;
    assert!(out.status.success(), "apply sync: {}", output_text(&out));
    let mut homes = Vec::new();
    for gw in ["gw-1", "gw-2"] {
        let home = home_of(&c, gw)?;
        let folder = home.join(SHARED);
        let agent = agent_pid(&c, gw)?;
        let theirs = std::fs::read_to_string(format!("/proc/{agent}/mountinfo"))?;
        assert!(!mount_point_in(&theirs, &folder), "{gw}: unmounted");
        assert!(
            !home.join(format!("{SHARED}.pack")).exists(),
            "{gw}: the pack's copy is back in place"
        );
        assert!(folder.join(SYNAPSE_XML).is_file(), "{gw}: its own folder");
        assert_eq!(c.start_count(gw)?, 2, "{gw}: restarted once for the change");
        homes.push(home);
    }
    assert!(
        share.join(SYNAPSE_XML).is_file(),
        "the share keeps its files"
    );
    let api = format!("{SHARED}/synapse-configs/default/api/Orders_v1.xml");
    let p = homes[0].join(&api);
    std::fs::create_dir_all(p.parent().ok_or("api dir")?)?;
    std::fs::write(&p, "<api name=\"Orders\"/>")?;
    let there = homes[1].join(&api);
    let arrived = apim_e2e::probe::wait_until(
        std::time::Duration::from_secs(120),
        std::time::Duration::from_millis(100),
        || std::fs::read_to_string(&there).is_ok_and(|t| t == "<api name=\"Orders\"/>"),
    );
    assert!(arrived, "gw-1's API reached gw-2 through apimctl");
    Ok(())
}
