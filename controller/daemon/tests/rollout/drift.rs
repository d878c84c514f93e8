//! Drift over real gRPC/mTLS with fake agents. `OperatorService.CheckDrift`: every connected
//! agent is asked and its fresh report is what the answer shows; a node filter asks only its
//! machine; an unknown node is NOT_FOUND; an agent that is away is said not to be checked.
//! Repair: with `[rollout] drift = "repair"` applied, a drifted node is restarted once through
//! the gated path, as a generation of its own; with `report`, nothing is done.

use apim_proto::v1::{CheckDriftRequest, Drift, HistoryRequest, RolloutState};
use apim_testkit::plans::plan_v3;
use apim_testkit::wait::eventually;
use tonic::Code;

use super::{Controller, pack, start_agents, started};

fn drift_of(s: &apim_proto::v1::ClusterStatus, node: &str) -> Vec<Drift> {
    s.machines
        .iter()
        .flat_map(|m| &m.nodes)
        .find(|n| n.node == node)
        .map(|n| n.drift.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_drift_asks_the_agents_and_answers_with_their_fresh_reports() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, _log) = start_agents(&c);
    c.apply(&plan_v3(&sha, "", "halt", "30s"))
        .await
        .expect("apply");
    c.wait_rollout(RolloutState::Succeeded).await;
    let mut op = c.operator().await;

    let resp = op
        .check_drift(CheckDriftRequest::default())
        .await
        .expect("check")
        .into_inner();
    assert_eq!(resp.machines.len(), 5, "{resp:?}");
    assert!(resp.machines.iter().all(|m| m.checked), "{resp:?}");
    let status = resp.status.expect("status");
    assert!(drift_of(&status, "gw-1").is_empty());

    // Drift the agent has not reported yet: the check's fresh report carries it.
    let edited = Drift {
        file: "repository/conf/deployment.toml".into(),
        problem: "changed".into(),
        changed_keys: vec!["server.offset".into()],
        ..Drift::default()
    };
    agents["vm-gw-1"]
        .faults
        .lock()
        .unwrap()
        .drift
        .insert("gw-1".into(), vec![edited.clone()]);
    let resp = op
        .check_drift(CheckDriftRequest {
            nodes: vec!["gw-1".into()],
        })
        .await
        .expect("check gw-1")
        .into_inner();
    assert_eq!(resp.machines.len(), 1, "only gw-1's machine: {resp:?}");
    assert_eq!(resp.machines[0].machine, "vm-gw-1");
    assert!(resp.machines[0].checked);
    assert_eq!(
        drift_of(&resp.status.expect("status"), "gw-1"),
        vec![edited]
    );

    // An unknown node names itself.
    let err = op
        .check_drift(CheckDriftRequest {
            nodes: vec!["gw-9".into()],
        })
        .await
        .expect_err("unknown node");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("gw-9"), "{err:?}");

    // An agent that is away is not checked, and says so.
    agents["vm-km-1"].disconnect();
    eventually("vm-km-1 unreachable", || {
        c.state.agent("vm-km-1").is_some_and(|a| !a.connected)
    })
    .await;
    let resp = op
        .check_drift(CheckDriftRequest::default())
        .await
        .expect("check")
        .into_inner();
    let km = resp
        .machines
        .iter()
        .find(|m| m.machine == "vm-km-1")
        .expect("vm-km-1 listed");
    assert!(
        !km.checked && km.message.contains("not connected"),
        "{km:?}"
    );
    assert_eq!(resp.machines.iter().filter(|m| m.checked).count(), 4);
}

fn edited() -> Vec<Drift> {
    vec![Drift {
        file: "repository/conf/deployment.toml".into(),
        problem: "changed".into(),
        changed_keys: vec!["server.offset".into()],
        ..Drift::default()
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_drift_repair_a_drifted_node_is_restarted_once_through_the_gated_path() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, log) = start_agents(&c);
    // `report` first: a drifted node is shown, not touched.
    let plan = plan_v3(&sha, "", "halt", "30s");
    c.apply(&plan).await.expect("apply");
    c.wait_rollout(RolloutState::Succeeded).await;
    assert_eq!(started(&log).len(), 5);
    agents["vm-gw-1"].set_drift("gw-1", edited());
    eventually("gw-1 reported drifted", || {
        c.state.agent("vm-gw-1").is_some_and(|a| {
            a.last_status.is_some_and(|r| {
                r.nodes
                    .iter()
                    .any(|n| n.node == "gw-1" && !n.drift.is_empty())
            })
        })
    })
    .await;

    // `repair`, applied with nothing else changed: no node is touched by the apply itself; the
    // controller restarts gw-1 (only it) through a generation of its own, which clears its drift.
    let repair = plan.replacen(
        "on_failure = \"halt\"",
        "on_failure = \"halt\"\ndrift = \"repair\"",
        1,
    );
    assert_ne!(repair, plan);
    let (generation, id) = c.apply(&repair).await.expect("apply repair");
    assert_eq!((generation, id.as_str()), (1, ""), "nothing to change");
    eventually("gw-1 restarted by the repair", || started(&log).len() == 6).await;
    let status = c.wait_rollout(RolloutState::Succeeded).await;
    assert_eq!(status.generation, 2, "{status:?}");
    assert_eq!(&started(&log)[5..], ["gw-1"]);
    let history = c
        .operator()
        .await
        .history(HistoryRequest::default())
        .await
        .expect("history")
        .into_inner();
    let g2 = &history.generations[0];
    assert_eq!(g2.generation, 2);
    assert!(
        g2.author.starts_with("controller (drift repair)"),
        "{:?}",
        g2.author
    );
    eventually("gw-1's drift cleared", || {
        c.state.agent("vm-gw-1").is_some_and(|a| {
            a.last_status
                .is_some_and(|r| r.nodes.iter().all(|n| n.drift.is_empty()))
        })
    })
    .await;
    assert_eq!(started(&log).len(), 6, "one repair for one drift");
}
