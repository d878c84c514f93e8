//! End-to-end: 3.x gateways in HA keep their deployed APIs alike through apimctl (the plan's
//! default `[gateway_artifacts] share = "sync"`): a file written, changed or deleted under one
//! gateway's `synapse-configs` or `executionplans` reaches the other over the agents' own
//! authenticated streams, and a gateway cut off by a partition catches up when its link returns
//! (both ways: what it missed, and what it changed meanwhile).
//!
//! Machines as hosts (namespaces): needs root; when the kernel or a tool refuses the
//! namespaces, the cluster fails to start and the test fails saying which command and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use apim_e2e::cluster::{Cluster, ClusterOptions, PlanParams, Topology, output_text};
use apim_e2e::probe::wait_until;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A failure guard only: the files travel within about a second.
const ARRIVE: Duration = Duration::from_secs(120);

const API: &str = "repository/deployment/server/synapse-configs/default/api/PizzaShack_v1.xml";
const API2: &str = "repository/deployment/server/synapse-configs/default/api/Orders_v2.xml";
const API3: &str = "repository/deployment/server/synapse-configs/default/api/Stock_v1.xml";
const PLAN: &str = "repository/deployment/server/executionplans/custom_policy.siddhiql";

fn home(c: &Cluster, node: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let toml = c
        .node_files(node, "deployment.toml")?
        .into_iter()
        .find(|p| p.ends_with("repository/conf/deployment.toml"))
        .ok_or_else(|| format!("{node}: no deployment.toml"))?;
    Ok(toml
        .ancestors()
        .nth(3)
        .ok_or("a home above repository/conf")?
        .to_path_buf())
}

fn put(home: &Path, rel: &str, text: &str) -> std::io::Result<()> {
    let p = home.join(rel);
    std::fs::create_dir_all(p.parent().unwrap_or(home))?;
    std::fs::write(p, text)
}

/// Waits until `rel` under `home` holds `want` (`None`: is gone).
fn arrives(home: &Path, rel: &str, want: Option<&str>) -> TestResult {
    let p = home.join(rel);
    let ok = wait_until(ARRIVE, Duration::from_millis(100), || {
        std::fs::read_to_string(&p).ok().as_deref() == want
    });
    if ok {
        return Ok(());
    }
    let now = std::fs::read_to_string(&p).ok();
    Err(format!("{}: wanted {want:?}, holds {now:?}", p.display()).into())
}

#[test]
fn a_3x_gateway_pair_shares_its_apis_and_a_partitioned_gateway_catches_up() -> TestResult {
    let mut opts = ClusterOptions::new(Topology::V3Wide(2), "e2e_gw_sync");
    opts.namespaces = true;
    opts.controller_settings
        .push("agent_keepalive = \"3s\"".into());
    let mut c = Cluster::create(&opts).map_err(|e| e.to_string())?;
    c.start().map_err(|e| e.to_string())?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", output_text(&out));
    // The render says what the gateways share and how.
    let render = c.apimctl(&["render", plan.to_str().ok_or("utf-8 path")?])?;
    let text = String::from_utf8_lossy(&render.stdout);
    assert!(
        text.contains("# shares:    repository/deployment/server/synapse-configs")
            && text.contains("synchronised by apimctl"),
        "render shows the shared folders: {}",
        output_text(&render)
    );
    let (g1, g2) = (home(&c, "gw-1")?, home(&c, "gw-2")?);
    assert_ne!(g1, g2);
    // The pack's own files are the group's from the start: alike on both.
    let synapse = "repository/deployment/server/synapse-configs/default/synapse.xml";
    assert_eq!(
        std::fs::read(g1.join(synapse))?,
        std::fs::read(g2.join(synapse))?
    );

    // New, changed, deleted: each reaches the other gateway, both ways.
    put(&g1, API, "<api name=\"PizzaShack\" version=\"1\"/>")?;
    arrives(&g2, API, Some("<api name=\"PizzaShack\" version=\"1\"/>"))?;
    put(
        &g2,
        API,
        "<api name=\"PizzaShack\" version=\"1\" context=\"/pizza\"/>",
    )?;
    arrives(
        &g1,
        API,
        Some("<api name=\"PizzaShack\" version=\"1\" context=\"/pizza\"/>"),
    )?;
    put(&g2, PLAN, "define stream X (a string);")?;
    arrives(&g1, PLAN, Some("define stream X (a string);"))?;
    std::fs::remove_file(g1.join(API))?;
    arrives(&g2, API, None)?;
    // Nothing outside the shared folders travels.
    put(
        &g1,
        "repository/deployment/server/webapps/local.txt",
        "mine",
    )?;

    // Cut vm-2 off (its agent keeps running): what happens on either side meanwhile...
    c.partition("vm-2")?;
    c.wait_status("vm-2 to show unreachable", |s| {
        s["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["machine"] == "vm-2" && !m["unreachable_since"].is_null())
    })?;
    put(&g1, API2, "<api name=\"Orders\" version=\"2\"/>")?;
    std::fs::remove_file(g1.join(PLAN))?;
    put(&g2, API3, "<api name=\"Stock\" version=\"1\"/>")?;
    // ...meets when the link returns.
    c.heal("vm-2")?;
    arrives(&g2, API2, Some("<api name=\"Orders\" version=\"2\"/>"))?;
    arrives(&g2, PLAN, None)?;
    arrives(&g1, API3, Some("<api name=\"Stock\" version=\"1\"/>"))?;
    assert!(
        !g2.join("repository/deployment/server/webapps/local.txt")
            .exists(),
        "webapps are not shared"
    );
    // Status says both are in step with their group again.
    c.wait_status("both gateways in step", |s| {
        ["gw-1", "gw-2"].iter().all(|gw| {
            apim_e2e::cluster::status_nodes(s).iter().any(|(_, n)| {
                n["node"] == *gw
                    && n["shared"]
                        .as_str()
                        .is_some_and(|t| t.contains(": in step at revision "))
            })
        })
    })?;
    assert_eq!(c.start_count("gw-1")?, 1, "no gateway restarted");
    assert_eq!(c.start_count("gw-2")?, 1, "no gateway restarted");
    Ok(())
}
