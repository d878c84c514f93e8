//! End-to-end node operations and rollbacks (issue 16): `apimctl restart | stop | start` and
//! `apimctl rollback --to N` through the gated rollout path, on real processes. See
//! `apim_e2e::cluster`. Waits poll a condition with a generous timeout as a failure guard.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apim_e2e::cluster::{
    Cluster, PlanParams, STARTED_LINE, STARTING_LINE, Topology, all_healthy, log_times, node_phase,
    output_text, rollout_state, started, status_nodes,
};
use apim_e2e::probe::http_get;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn apimctl_ok(c: &Cluster, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = c.apimctl(args)?;
    assert!(
        out.status.success(),
        "apimctl {args:?}: {}",
        output_text(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every node's server pid.
fn pids(c: &Cluster) -> Result<BTreeMap<String, Vec<u32>>, Box<dyn std::error::Error>> {
    let mut out = BTreeMap::new();
    for n in c.node_names() {
        out.insert(n.clone(), c.server_pids(&n)?);
    }
    Ok(out)
}

/// The n-th (0-based) time `node` logged `needle`.
fn nth(
    c: &Cluster,
    node: &str,
    needle: &str,
    n: usize,
) -> Result<String, Box<dyn std::error::Error>> {
    log_times(&c.node_log(node)?, needle)
        .get(n)
        .cloned()
        .ok_or_else(|| format!("{node} logged `{needle}` fewer than {} times", n + 1).into())
}

/// Asserts that the `n`-th starts of two HA peers did not overlap: the later one started only
/// after the earlier one was ready again.
fn one_at_a_time(c: &Cluster, a: &str, b: &str, n: usize) -> TestResult {
    let (sa, sb) = (nth(c, a, STARTING_LINE, n)?, nth(c, b, STARTING_LINE, n)?);
    let (first, second, second_start) = if sa <= sb { (a, b, sb) } else { (b, a, sa) };
    let ready = nth(c, first, STARTED_LINE, n)?;
    assert!(
        second_start >= ready,
        "{second} started at {second_start} before its peer {first} was ready again at {ready}"
    );
    Ok(())
}

/// `restart --role gateway` restarts both gateways one at a time while some gateway answers
/// every request; `stop` keeps a node stopped through a later apply until `start`; history
/// records each operation; unknown names are refused.
#[test]
fn restart_role_keeps_the_role_served_and_stop_survives_an_apply_until_start() -> TestResult {
    let c = started(Topology::V45Ha, "e2e_node_ops", 100)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let plan_arg = plan.to_str().ok_or("path")?;
    apimctl_ok(&c, &["apply", plan_arg])?;
    let before = pids(&c)?;
    let gateways: Vec<SocketAddr> = ["gw-1", "gw-2"]
        .iter()
        .map(|g| c.machine_of(g).map(|m| SocketAddr::from((m.address, 9763))))
        .collect::<Result<_, _>>()?;

    // A client asking the gateways, round after round, while they restart.
    let done = Arc::new(AtomicBool::new(false));
    let (rounds, missed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let probe = {
        let (done, rounds, missed) = (done.clone(), rounds.clone(), missed.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let served = gateways
                    .iter()
                    .any(|g| http_get(*g, "/services/Version").is_ok_and(|r| r.status == 200));
                rounds.fetch_add(1, Ordering::SeqCst);
                if !served {
                    missed.fetch_add(1, Ordering::SeqCst);
                }
                // The client's pace, not a synchronisation.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let shown = apimctl_ok(&c, &["restart", "--role", "gateway"]);
    done.store(true, Ordering::SeqCst);
    probe.join().map_err(|_| "probe thread panicked")?;
    let shown = shown?;
    assert!(shown.contains("restarting gw-1, gw-2"), "{shown}");
    let (rounds, missed) = (rounds.load(Ordering::SeqCst), missed.load(Ordering::SeqCst));
    assert!(rounds >= 5, "the client asked throughout ({rounds} rounds)");
    assert_eq!(
        missed, 0,
        "no gateway answered in {missed} of {rounds} rounds"
    );

    let after = pids(&c)?;
    for (node, was) in &before {
        if node.starts_with("gw-") {
            assert_ne!(&after[node], was, "{node} restarted");
            assert_eq!(after[node].len(), 1, "{node} runs one server");
            assert_eq!(c.start_count(node)?, 2, "{node} started twice in all");
        } else {
            assert_eq!(&after[node], was, "{node} untouched");
        }
    }
    one_at_a_time(&c, "gw-1", "gw-2", 1)?;

    // Stop one gateway; a later apply of the same plan leaves it stopped.
    let shown = apimctl_ok(&c, &["stop", "gw-2", "--yes"])?;
    assert!(shown.contains("stopping gw-2"), "{shown}");
    let s = c.status()?;
    assert_eq!(node_phase(&s, "gw-2"), Some("stopped"), "{s}");
    assert!(c.server_pids("gw-2")?.is_empty(), "gw-2 has no server");
    let out = c.apimctl(&["plan", plan_arg])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing to change: {}",
        output_text(&out)
    );
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(c.server_pids("gw-2")?.is_empty(), "gw-2 stays stopped");

    // Start it again; every node is healthy.
    apimctl_ok(&c, &["start", "gw-2"])?;
    let s = c.status()?;
    assert!(all_healthy(&s, &c.node_names()), "{s}");
    assert_eq!(c.server_pids("gw-2")?.len(), 1);

    // The history says who did what.
    let history = apimctl_ok(&c, &["history"])?;
    for op in ["(restart gw-1, gw-2)", "(stop gw-2)", "(start gw-2)"] {
        assert!(history.contains(op), "{op} in:\n{history}");
    }
    // Names are checked.
    let out = c.apimctl(&["restart", "gw-9"])?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("no node `gw-9`"),
        "{}",
        output_text(&out)
    );
    let out = c.apimctl(&["stop", "--role", "no-such-role", "--yes"])?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    Ok(())
}

/// `rollback --to 1` after generation 2 changed every node: a new generation equal to 1, rolled
/// out in start-tier order with HA peers one at a time; `diff 1 2` shows what generation 2
/// changed.
#[test]
fn rollback_to_n_rolls_out_in_tier_order_with_ha_peers_one_at_a_time() -> TestResult {
    let c = started(Topology::V45Ha, "e2e_rollback_to", 100)?;
    let p1 = c.write_plan("p1.toml", &PlanParams::default())?;
    let p2 = c.write_plan(
        "p2.toml",
        &PlanParams {
            overrides: vec![("all".into(), "[apimsim]\nstartup_delay_ms = 150".into())],
            ..PlanParams::default()
        },
    )?;
    apimctl_ok(&c, &["apply", p1.to_str().ok_or("path")?])?;
    let digests = |s: &serde_json::Value| -> BTreeMap<String, String> {
        status_nodes(s)
            .into_iter()
            .map(|(_, n)| {
                (
                    n["node"].as_str().unwrap_or_default().to_string(),
                    n["config_digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let first = digests(&c.status()?);
    apimctl_ok(&c, &["apply", p2.to_str().ok_or("path")?])?;

    let diff = apimctl_ok(&c, &["diff", "1", "2"])?;
    assert!(diff.contains("+startup_delay_ms = 150"), "{diff}");
    assert!(
        diff.contains("~ gw-1 (vm-gw-1): update, restarts"),
        "{diff}"
    );

    let shown = apimctl_ok(&c, &["rollback", "--to", "1"])?;
    assert!(shown.contains("generation 3"), "{shown}");
    let s = c.status()?;
    assert_eq!(rollout_state(&s), Some("succeeded"), "{s}");
    assert_eq!(
        digests(&s),
        first,
        "every node back on generation 1's configuration"
    );
    // Third start of every node (apply 1, apply 2, rollback): peers one at a time, and every
    // node after the nodes of the tiers before it.
    for (a, b) in [("cp-1", "cp-2"), ("tm-1", "tm-2"), ("gw-1", "gw-2")] {
        one_at_a_time(&c, a, b, 2)?;
    }
    let deps = c.dependencies(&p1)?;
    for (node, ds) in &deps {
        let start = nth(&c, node, STARTING_LINE, 2)?;
        for d in ds {
            let ready = nth(&c, d, STARTED_LINE, 2)?;
            assert!(
                start >= ready,
                "{node} started at {start} before {d} was ready at {ready}"
            );
        }
    }
    let history = apimctl_ok(&c, &["history"])?;
    assert!(history.contains("(rollback to generation 1)"), "{history}");
    Ok(())
}

/// `on_failure = "rollback"`: generation 2 fails on its last tier and ends rolled back;
/// generation 3, equal to generation 1, is rolled out through the gated path in its place and
/// every node is back on its previous configuration.
#[test]
fn never_healthy_node_with_rollback_returns_every_touched_node() -> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_rollback", 100)?;
    let good = PlanParams {
        on_failure: "rollback".into(),
        health_timeout: "12s".into(),
        ..PlanParams::default()
    };
    let plan1 = c.write_plan("plan1.toml", &good)?;
    apimctl_ok(&c, &["apply", plan1.to_str().ok_or("path")?])?;
    let s1 = c.status()?;
    // Per node: (plan generation, config digest) of the good rollout.
    let before: BTreeMap<String, (Option<u64>, String)> = status_nodes(&s1)
        .into_iter()
        .map(|(_, n)| {
            (
                n["node"].as_str().unwrap_or_default().to_string(),
                (
                    n["generation"].as_u64(),
                    n["config_digest"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect();
    assert!(
        before.values().all(|(g, _)| *g == Some(1)),
        "every node on plan generation 1: {before:?}"
    );

    // Every node changes; the gateway (last tier) never becomes ready.
    let bad = PlanParams {
        overrides: vec![
            ("all".into(), "[apimsim]\nstartup_delay_ms = 120".into()),
            ("node:gw-1".into(), "[apimsim]\nnever_ready = true".into()),
        ],
        ..good
    };
    let plan2 = c.write_plan("plan2.toml", &bad)?;
    let out = c.apply(&plan2)?;
    assert_ne!(
        out.status.code(),
        Some(0),
        "apply fails: {}",
        output_text(&out)
    );
    // The failed generation 2 rolls back as generation 3, equal to generation 1, rolled out
    // through the gated path.
    let s = c.wait_status(
        "every node back on the previous configuration and healthy",
        |s| {
            rollout_state(s) == Some("succeeded")
                && s["rollout"]["generation"].as_u64() == Some(3)
                && all_healthy(s, &c.node_names())
                && status_nodes(s).iter().all(|(_, n)| {
                    before
                        .get(n["node"].as_str().unwrap_or_default())
                        .is_some_and(|(_, d)| n["config_digest"].as_str() == Some(d.as_str()))
                })
        },
    )?;
    // `apply -o json` followed the rollback to its end: its one document is rollout-3's.
    let followed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        followed["rollout"]["id"],
        "rollout-3",
        "{}",
        output_text(&out)
    );
    let history = c.apimctl(&["history", "-o", "json"])?;
    let history: serde_json::Value = serde_json::from_slice(&history.stdout)?;
    let by_gen = |g: u64| {
        history["generations"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["generation"] == g).cloned())
            .unwrap_or_default()
    };
    assert_eq!(by_gen(2)["rollout"]["state"], "rolled-back", "{history}");
    assert!(
        by_gen(3)["author"]
            .as_str()
            .is_some_and(|a| a.contains("rollback of generation 2 to generation 1")),
        "{history}"
    );
    let _ = &s;
    // The first tiers really were touched (started on the new generation, then restored).
    assert!(
        c.node_names()
            .iter()
            .any(|n| c.start_count(n).unwrap_or(0) > 1),
        "some node was restarted by the failed rollout"
    );
    for n in c.node_names() {
        assert_eq!(c.server_pids(&n)?.len(), 1, "{n} runs one server");
        let toml = c.node_files(&n, "deployment.toml")?;
        assert!(
            toml.iter().all(|f| !std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains("startup_delay_ms = 120")),
            "{n} no longer has the new generation's config"
        );
    }
    Ok(())
}
