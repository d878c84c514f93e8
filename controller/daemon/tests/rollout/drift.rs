//! `OperatorService.CheckDrift` over real gRPC/mTLS with fake agents: every connected agent is
//! asked and its fresh report is what the answer shows; a node filter asks only its machine; an
//! unknown node is NOT_FOUND; an agent that is away is said not to be checked.

use apim_proto::v1::{CheckDriftRequest, Drift, RolloutState};
use apim_testkit::plans::plan_v3;
use apim_testkit::wait::eventually;
use tonic::Code;

use super::{Controller, pack, start_agents};

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
