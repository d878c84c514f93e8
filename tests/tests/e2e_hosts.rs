//! End-to-end with machines as hosts (`ClusterOptions::namespaces`): every simulated machine in
//! its own network namespace on a private bridge and its own mount namespace, where its agent
//! edits the real `/etc/hosts` path (a private copy is mounted there); the controller in its
//! own network namespace. Faults are real: a partition is a link taken down (the agent keeps
//! running), a slow link is shaped with `tc tbf` and a lossy one drops packets with nftables
//! (this kernel has no `tc netem`).
//!
//! Needs root: when the kernel or a tool refuses the namespaces, the cluster fails to start
//! and the test fails saying which command was refused and why.

use std::collections::BTreeMap;

use apim_e2e::cluster::{
    Cluster, ClusterOptions, PlanParams, Topology, all_healthy, node_phase, output_text,
    rollout_state, status_nodes,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The controller notices a lost agent within about twice this.
const KEEPALIVE: &str = "agent_keepalive = \"3s\"";

fn hosts_cluster(topology: Topology, name: &str) -> Result<Cluster, Box<dyn std::error::Error>> {
    let mut opts = ClusterOptions::new(topology, name);
    opts.namespaces = true;
    opts.startup_delay_ms = 200;
    opts.controller_settings.push(KEEPALIVE.into());
    // Shown with its Display: which command the kernel refused, why, and what the tests need.
    let mut c = Cluster::create(&opts).map_err(|e| e.to_string())?;
    c.start().map_err(|e| e.to_string())?;
    Ok(c)
}

/// The managed block of a hosts file: name -> address.
fn block(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("# BEGIN apimctl") {
            inside = true;
        } else if l.starts_with("# END apimctl") {
            inside = false;
        } else if inside && let Some((ip, names)) = l.split_once(char::is_whitespace) {
            for n in names.split_whitespace() {
                map.insert(n.to_owned(), ip.to_owned());
            }
        }
    }
    map
}

/// The network interfaces of the test's own namespace.
fn our_links() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// Whether `machine`'s agent is shown connected in a status JSON.
fn reachable(s: &serde_json::Value, machine: &str) -> Option<bool> {
    s["machines"]
        .as_array()?
        .iter()
        .find(|m| m["machine"] == machine)?["reachable"]
        .as_bool()
}

/// Every machine's own `/etc/hosts` (its file, seen at that path by its agent and servers)
/// has the same managed block, each node and LB name at a bridge address, after the lines of
/// the host's file it was copied from; the host's own `/etc/hosts` (`ours`) is untouched.
fn assert_own_etc_hosts(c: &Cluster, ours: &[u8]) -> TestResult {
    let net = c.network().ok_or("namespaces")?;
    // Every machine's own /etc/hosts got the block: each node and LB name at a bridge address.
    let bridge = format!("10.250.{}.", net.subnet);
    let mut blocks = Vec::new();
    for m in &c.machines {
        let text = std::fs::read_to_string(&m.hosts_file)?;
        assert!(
            text.as_bytes().starts_with(ours),
            "{}: the copied lines stay first and intact:\n{text}",
            m.name
        );
        let b = block(&text);
        for n in c.topology.nodes() {
            let addr = c.machine(&n.machine)?.address.to_string();
            assert_eq!(
                b.get(&n.hostname),
                Some(&addr),
                "{}: {}\n{text}",
                m.name,
                n.hostname
            );
            assert!(addr.starts_with(&bridge), "{addr}");
        }
        for (_, lb) in c.topology.load_balancers() {
            assert!(b.contains_key(lb), "{}: {lb}\n{text}", m.name);
        }
        blocks.push(b);
        // The agent and the servers of this machine see that file at /etc/hosts.
        let pid = c
            .running_pid(&format!("agent-{}", m.name))
            .ok_or("agent pid")?;
        let seen = std::fs::read(format!("/proc/{pid}/root/etc/hosts"))?;
        assert_eq!(
            seen,
            text.as_bytes(),
            "{}: its /etc/hosts is its file",
            m.name
        );
        for node in &m.nodes {
            for spid in c.server_pids(node)? {
                let seen = std::fs::read(format!("/proc/{spid}/root/etc/hosts"))?;
                assert_eq!(
                    seen,
                    text.as_bytes(),
                    "{node}'s server sees its machine's file"
                );
            }
        }
    }
    assert!(
        blocks.windows(2).all(|w| w[0] == w[1]),
        "one block everywhere"
    );
    // This host's /etc/hosts was never touched.
    assert_eq!(
        std::fs::read("/etc/hosts")?,
        ours,
        "the test host's /etc/hosts"
    );
    Ok(())
}

#[test]
fn v45_ha_as_hosts_each_agent_edits_its_own_etc_hosts_and_a_slow_link_is_no_failure() -> TestResult
{
    let ours = std::fs::read("/etc/hosts")?;
    let c = hosts_cluster(Topology::V45Ha, "e2e_hosts_rollout")?;
    // A control plane's and a gateway's links shaped to 256 kbit/s each way (`tc tbf`): the
    // pack crawls in, and every message to and from their agents and their servers' peer
    // traffic queues behind it; none of it may fail the rollout. (`tc netem` delay is what
    // the issue names, but kernels built without CONFIG_NET_SCH_NETEM, this CI's among them,
    // refuse it; shaping is real on every kernel with tbf.)
    let slow = ["vm-cp-1", "vm-gw-2"];
    for m in slow {
        c.throttle_link(m, 256)?;
    }
    // And a traffic manager's link loses one packet in ten, each way, at random (nftables):
    // TCP retransmits; nothing may fail within the health timeout either.
    let lossy = "vm-tm-1";
    c.lose_packets(lossy, 10)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    let s = c.status()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    for (machine, n) in status_nodes(&s) {
        assert_eq!(n["restarts"], 0, "{machine}: no restart: {n}");
        assert!(
            n["last_error"].as_str().unwrap_or_default().is_empty(),
            "{machine}: no error: {n}"
        );
    }
    for n in c.node_names() {
        assert_eq!(c.start_count(&n)?, 1, "{n} started once");
    }
    let net = c.network().ok_or("namespaces")?;
    for m in slow {
        let held = net.throttled_packets(m)?;
        assert!(held > 0, "{m}: the shaper held packets back ({held})");
    }
    let lost = net.lost_packets(lossy)?;
    assert!(lost > 0, "{lossy}: packets were dropped ({lost})");
    println!("{lossy}: {lost} packets dropped at random during the rollout");
    c.clear_link(lossy)?;

    assert_own_etc_hosts(&c, &ours)
}

#[test]
fn a_partitioned_machine_shows_unreachable_the_rollout_waits_and_converges_when_its_link_returns()
-> TestResult {
    let c = hosts_cluster(Topology::V45Ha, "e2e_hosts_partition")?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));

    // A change for both gateways; HA peers go one at a time, and the slow start keeps gw-1
    // starting (gw-2 not yet released) for a while after its restart shows.
    let change = "[apimsim]\nstartup_delay_ms = 3000";
    let params = PlanParams {
        overrides: vec![("role:gateway".into(), change.into())],
        ..PlanParams::default()
    };
    let plan2 = c.write_plan("plan2.toml", &params)?;
    let out = c.apply_no_wait(&plan2)?;
    assert!(
        out.status.success(),
        "apply --no-wait: {}",
        output_text(&out)
    );
    c.wait_status("gw-1 to restart for the change", |_| {
        c.start_count("gw-1").is_ok_and(|n| n == 2)
    })?;
    // Mid-rollout: pull vm-gw-2's cable. Its agent keeps running.
    c.partition("vm-gw-2")?;
    assert_eq!(
        c.start_count("gw-2")?,
        1,
        "gw-2 not restarted before the partition"
    );
    let agent = c.running_pid("agent-vm-gw-2").ok_or("gw-2's agent runs")?;
    let s = c.wait_status("vm-gw-2 to show unreachable", |s| {
        reachable(s, "vm-gw-2") == Some(false)
    })?;
    assert!(
        !s["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["machine"] == "vm-gw-2")
            .ok_or("vm-gw-2 in status")?["unreachable_since"]
            .is_null(),
        "{s}"
    );
    // Everything else goes as far as it can: gw-1 is served with its new configuration...
    let s = c.wait_status("gw-1 healthy again", |s| {
        node_phase(s, "gw-1") == Some("healthy")
    })?;
    // ...and the rollout waits for the cut-off machine: not over, gw-2 untouched, no failure.
    assert!(
        matches!(rollout_state(&s), Some("staging" | "starting")),
        "the rollout waits: {s}"
    );
    assert_eq!(
        c.start_count("gw-2")?,
        1,
        "gw-2 not restarted while cut off"
    );
    assert_eq!(
        c.running_pid("agent-vm-gw-2"),
        Some(agent),
        "a partition, not a kill"
    );
    let apimctl = c.apimctl(&["status"])?;
    let table = String::from_utf8_lossy(&apimctl.stdout);
    assert!(
        table.contains("unreachable for"),
        "the operator sees it: {}",
        output_text(&apimctl)
    );

    // The link returns: the agent reconnects by itself and the rollout converges.
    c.heal("vm-gw-2")?;
    let s = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_eq!(reachable(&s, "vm-gw-2"), Some(true), "{s}");
    for gw in ["gw-1", "gw-2"] {
        assert_eq!(c.start_count(gw)?, 2, "{gw} restarted once for the change");
        let tomls = c.node_files(gw, "deployment.toml")?;
        let text = tomls
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect::<String>();
        assert!(text.contains("startup_delay_ms = 3000"), "{gw}: {text}");
    }
    for n in ["cp-1", "cp-2", "tm-1", "tm-2"] {
        assert_eq!(c.start_count(n)?, 1, "{n} untouched");
    }
    assert_eq!(
        c.running_pid("agent-vm-gw-2"),
        Some(agent),
        "the same agent reconnected"
    );
    Ok(())
}

#[test]
fn a_killed_machine_loses_every_process_at_once_and_its_agent_brings_its_node_back() -> TestResult {
    let mut c = hosts_cluster(Topology::V4 { minor: 2 }, "e2e_hosts_kill")?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    let server = c.server_pids("gw-1")?;
    assert_eq!(server.len(), 1, "gw-1 runs one server");

    // Every process in vm-gw-1's namespaces dies at once: agent and server, no goodbye.
    let killed = c.kill_machine("vm-gw-1")?;
    assert!(killed >= 2, "the agent and the server at least: {killed}");
    let net = c.network().ok_or("namespaces")?;
    assert!(net.pids_in("vm-gw-1")?.is_empty(), "nothing left running");
    assert!(c.server_pids("gw-1")?.is_empty(), "gw-1's server is gone");
    let s = c.wait_status("vm-gw-1 to show unreachable", |s| {
        reachable(s, "vm-gw-1") == Some(false)
    })?;
    assert_eq!(reachable(&s, "vm-cp-1"), Some(true), "{s}");

    // The machine comes back (its agent starts as at boot): the node it should run is
    // started again, the others are not touched.
    c.start_agent("vm-gw-1")?;
    let s = c.wait_status("gw-1 to serve again", |s| {
        reachable(s, "vm-gw-1") == Some(true)
            && node_phase(s, "gw-1") == Some("healthy")
            && c.server_pids("gw-1").is_ok_and(|p| p.len() == 1)
    })?;
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_ne!(c.server_pids("gw-1")?, server, "a new server");
    assert_eq!(c.start_count("gw-1")?, 2, "gw-1 started again once");
    for n in ["cp-1", "tm-1"] {
        assert_eq!(c.start_count(n)?, 1, "{n} untouched");
    }
    Ok(())
}

#[test]
fn v3_five_node_as_hosts_each_agent_edits_its_own_etc_hosts() -> TestResult {
    let ours = std::fs::read("/etc/hosts")?;
    let links = our_links()?;
    let c = hosts_cluster(Topology::V3FiveNode, "e2e_hosts_v3")?;
    assert_eq!(our_links()?, links, "no link added to the test's namespace");
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    let s = c.status()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_own_etc_hosts(&c, &ours)?;
    // The controller listens in its namespace only, not in this one.
    let port = c.controller_addr.port();
    let ctl = c.running_pid("controller").ok_or("controller pid")?;
    assert!(apim_e2e::netns::listening(ctl, port), "in its namespace");
    assert!(
        !apim_e2e::netns::listening(std::process::id(), port),
        "nothing of the cluster listens in the test's namespace"
    );
    // Dropping the cluster removes every namespace it made and every mount.
    let made = c.network().ok_or("namespaces")?.netns_paths();
    let root = c.root().to_string_lossy().into_owned();
    assert_eq!(
        made.len(),
        c.machines.len() + 2,
        "hub, machines, controller"
    );
    drop(c);
    for p in &made {
        assert!(!p.exists(), "{} removed", p.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&root),
        "no mount left under {root}:\n{mounts}"
    );
    Ok(())
}
