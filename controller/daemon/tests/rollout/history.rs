//! The rollout history against fake agents: aborting a rollout in flight, and rolling an
//! earlier generation out again as a new one.

use apim_proto::v1::RolloutState;
use apim_testkit::plans::plan_v3;
use apim_testkit::wait::eventually;
use tonic::Code;

use super::{Controller, pack, start_agents, started};

/// `rollout abort`: the rollout in flight stops where it stands (nothing more is pushed), a
/// second abort and an abort of another rollout are refused, and a plan can be applied after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_rollout_pushes_nothing_more_and_a_new_apply_goes_on() {
    use apim_proto::v1::AbortRolloutRequest;
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    // No agent: the rollout stays in staging.
    let plan = plan_v3(&sha, "", "halt", "30s");
    let (generation, id) = c.apply(&plan).await.expect("apply");
    assert_eq!((generation, id.as_str()), (1, "rollout-1"));
    eventually("staging pushed every machine", || {
        c.state.desired_specs().len() == 5
    })
    .await;
    let pushed = c.state.desired_specs();

    let refused = c
        .operator()
        .await
        .abort_rollout(AbortRolloutRequest {
            rollout_id: "rollout-9".into(),
        })
        .await
        .expect_err("not the one in flight");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let r = c
        .operator()
        .await
        .abort_rollout(AbortRolloutRequest {
            rollout_id: "rollout-1".into(),
        })
        .await
        .expect("abort")
        .into_inner();
    assert_eq!(r.state(), RolloutState::Failed);
    assert!(
        r.message.contains("aborted by") && r.message.contains("nothing more"),
        "{r:?}"
    );
    let status = c.wait_rollout(RolloutState::Failed).await;
    assert_eq!(status.rollout.expect("rollout").id, "rollout-1");

    // Agents arriving now get what was pushed, and the engine pushes nothing more.
    let (_agents, _log) = start_agents(&c);
    eventually("agents connected", || c.state.agents().len() == 5).await;
    assert_eq!(c.state.desired_specs(), pushed);

    let again = c
        .operator()
        .await
        .abort_rollout(AbortRolloutRequest::default())
        .await
        .expect_err("nothing in flight");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let details = apim_proto::error_details(&again).expect("details");
    assert_eq!(details.errors[0].code, "rollout.not_in_flight");

    // Applying a plan goes on: the same plan converges the nodes the abort left staged.
    let (generation, id) = c.apply(&plan).await.expect("apply after abort");
    assert_eq!((generation, id.as_str()), (2, "rollout-2"));
    c.wait_rollout(RolloutState::Succeeded).await;
}

/// Waits until rollout `id` succeeded.
pub(crate) async fn wait_succeeded(c: &Controller, id: &str) {
    let want = id.to_string();
    let mut last = String::new();
    for _ in 0..600 {
        let s = c.status().await;
        if let Some(r) = &s.rollout {
            if r.id == want && r.state() == RolloutState::Succeeded {
                return;
            }
            last = format!("{r:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{want} did not succeed: {last}");
}

/// `history` lists every generation (who, what changed, how it ended) and `rollback` rolls an
/// earlier one out again as a new generation through the normal path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_generations_and_rollback_rolls_an_earlier_one_out_as_a_new_one() {
    use apim_proto::v1::{HistoryRequest, RollbackRequest};
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (_agents, log) = start_agents(&c);
    let first = plan_v3(&sha, "", "halt", "30s");
    let (_, id1) = c.apply(&first).await.expect("apply 1");
    wait_succeeded(&c, &id1).await;
    let gw_spec = |c: &Controller| {
        c.state.desired_spec("vm-gw-1").expect("gw spec").nodes[0]
            .deployment_toml
            .clone()
    };
    let gw_first = gw_spec(&c);
    let second = plan_v3(
        &sha,
        "[apim.cors]\nallow_origins = \"https://portal.example.com\"",
        "halt",
        "30s",
    );
    let (_, id2) = c.apply(&second).await.expect("apply 2");
    wait_succeeded(&c, &id2).await;
    assert_ne!(gw_spec(&c), gw_first);

    let r = c
        .operator()
        .await
        .rollback(RollbackRequest::default())
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!((r.generation, r.rollout_id.as_str()), (3, "rollout-3"));
    wait_succeeded(&c, "rollout-3").await;
    assert_eq!(
        gw_spec(&c),
        gw_first,
        "the gateway runs generation 1's configuration"
    );
    let order = started(&log);
    assert_eq!(
        &order[5..],
        ["gw-1", "gw-1"],
        "only the gateway restarted: {order:?}"
    );

    let h = c
        .operator()
        .await
        .history(HistoryRequest::default())
        .await
        .expect("history")
        .into_inner();
    let gens: Vec<u64> = h.generations.iter().map(|g| g.generation).collect();
    assert_eq!(gens, [3, 2, 1], "newest first");
    assert!(
        h.generations[0]
            .author
            .contains("(rollback to generation 1)"),
        "{h:?}"
    );
    assert_eq!(h.generations[1].changed_nodes, ["gw-1"]);
    assert_eq!(h.generations[2].changed_nodes.len(), 5);
    for g in &h.generations {
        let r = g.rollout.as_ref().expect("rollout");
        assert_eq!(r.state(), RolloutState::Succeeded, "{g:?}");
        assert!(g.restorable);
    }

    let err = c
        .operator()
        .await
        .rollback(RollbackRequest { to_generation: 9 })
        .await
        .expect_err("no generation 9");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("there is no generation 9"),
        "{err:?}"
    );
}
