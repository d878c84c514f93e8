//! End-to-end drift: a hand edit of one node's `deployment.toml` on the simulated cluster (real
//! controller, agents and servers) is reported by `apimctl check` (exit 1: the node, the file,
//! the keys, never a value) and by `status -o json`; with `[rollout] drift = "repair"` applied,
//! the controller restarts the node through the gated path, which writes the file again, and
//! `check` exits 0. See `apim_e2e::cluster`; waits poll a condition, timeouts are guards only.

use std::path::{Path, PathBuf};

use apim_e2e::cluster::{Cluster, PlanParams, Topology, all_healthy, rollout_state, status_nodes};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const NODE: &str = "gw-1";
const FILE: &str = "repository/conf/deployment.toml";
/// The values the hand edit writes: never shown by any command.
const EDITED_HOST: &str = "hand-edited.example";
const EDITED_VALUE: &str = "e2e-hand-value";

fn text(out: &std::process::Output) -> String {
    apim_e2e::cluster::output_text(out)
}

/// The node's deployment.toml on disk.
fn deployment_toml(c: &Cluster) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let files = c.node_files(NODE, "deployment.toml")?;
    let f = files
        .into_iter()
        .find(|f| f.ends_with(FILE))
        .ok_or("no deployment.toml for the node")?;
    Ok(f)
}

/// Changes `server.hostname` and adds `apimctl_e2e.hand_edit`, as an operator's editor would.
fn hand_edit(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let written = std::fs::read_to_string(path)?;
    let doc: toml::Table = written.parse()?;
    let host = doc["server"]["hostname"]
        .as_str()
        .ok_or("no server.hostname")?
        .to_owned();
    let line = format!("hostname = \"{host}\"");
    assert!(written.contains(&line), "{written}");
    let edited = written.replacen(&line, &format!("hostname = \"{EDITED_HOST}\""), 1)
        + &format!("\n[apimctl_e2e]\nhand_edit = \"{EDITED_VALUE}\"\n");
    std::fs::write(path, edited)?;
    Ok(written)
}

fn no_values(what: &str, shown: &str) {
    for v in [EDITED_HOST, EDITED_VALUE] {
        assert!(!shown.contains(v), "{what} shows the value {v}:\n{shown}");
    }
}

/// `gw-1`'s drift in a status JSON.
fn drift_of(status: &serde_json::Value) -> serde_json::Value {
    status_nodes(status)
        .into_iter()
        .find(|(_, n)| n["node"] == NODE)
        .map(|(_, n)| n["drift"].clone())
        .unwrap_or_default()
}

#[test]
fn a_hand_edit_is_reported_by_key_then_repaired_through_a_gated_restart() -> TestResult {
    let c = apim_e2e::cluster::started(Topology::V3FiveNode, "e2e_drift", 100)?;
    let plan = c.write_plan("plan.toml", &PlanParams::default())?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply: {}", text(&out));
    assert!(all_healthy(&c.status()?, &c.node_names()));

    // Untouched: nothing drifted anywhere.
    let out = c.apimctl(&["check"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no drift on 5 node(s)"),
        "{}",
        text(&out)
    );

    // The hand edit.
    let path = deployment_toml(&c)?;
    let written = hand_edit(&path)?;
    let pids = c.server_pids(NODE)?;
    assert_eq!(pids.len(), 1, "{pids:?}");

    // `check`: exit 1, the node, the file, the keys; not the values.
    let out = c.apimctl(&["check"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!("{NODE} (vm-{NODE}): drifted")),
        "{shown}"
    );
    assert!(shown.contains(&format!("    {FILE}: changed")), "{shown}");
    assert!(shown.contains("changed: server.hostname"), "{shown}");
    assert!(shown.contains("added: apimctl_e2e.hand_edit"), "{shown}");
    assert!(shown.contains("1 of 5 node(s) drifted"), "{shown}");
    no_values("check", &text(&out));
    let out = c.apimctl(&["check", "--node", "km-1"])?;
    assert_eq!(out.status.code(), Some(0), "another node: {}", text(&out));

    // `status -o json` carries it; `status` flags the node.
    let s = c.status()?;
    let drift = drift_of(&s);
    assert_eq!(drift[0]["file"], FILE, "{s}");
    assert_eq!(
        drift[0]["changed_keys"],
        serde_json::json!(["server.hostname"])
    );
    assert_eq!(
        drift[0]["added_keys"],
        serde_json::json!(["apimctl_e2e.hand_edit"])
    );
    no_values("status -o json", &s.to_string());
    let out = c.apimctl(&["status"])?;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("healthy, drifted"), "{shown}");
    no_values("status", &shown);
    assert_eq!(c.server_pids(NODE)?, pids, "report only: nothing restarted");
    assert!(
        std::fs::read_to_string(&path)?.contains(EDITED_HOST),
        "report only: the file keeps the edit"
    );

    // `drift = "repair"`: the same plan otherwise (no node changes), so the apply itself
    // restarts nothing; the controller repairs the drifted node through the gated restart.
    let params = PlanParams::default();
    let repair_text =
        c.plan_text(&params)
            .replacen("[rollout]\n", "[rollout]\ndrift = \"repair\"\n", 1);
    let repair_plan = c.write_plan("plan-repair.toml", &params)?;
    std::fs::write(&repair_plan, repair_text)?;
    let out = c.apply(&repair_plan)?;
    assert!(out.status.success(), "apply repair: {}", text(&out));
    let s = c.wait_status(
        "the drifted node restarted healthy with its file restored",
        |s| {
            let restarted = c.server_pids(NODE).is_ok_and(|p| p.len() == 1 && p != pids);
            restarted
                && all_healthy(s, &c.node_names())
                && rollout_state(s) == Some("succeeded")
                && drift_of(s).as_array().is_some_and(Vec::is_empty)
                && std::fs::read_to_string(&path).is_ok_and(|t| t == written)
        },
    )?;
    assert_eq!(std::fs::read_to_string(&path)?, written, "{s}");
    for n in c.node_names().iter().filter(|n| *n != NODE) {
        assert_eq!(c.start_count(n)?, 1, "{n} was not restarted");
    }
    let out = c.apimctl(&["history", "-o", "json"])?;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        history["generations"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["author"]
                .as_str()
                .is_some_and(|a| a.starts_with("controller (drift repair)")))),
        "the repair is in the history: {history}"
    );

    let out = c.apimctl(&["check"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    Ok(())
}
