//! The rollout engine end to end over real gRPC/mTLS on 127.0.0.1, with fake agents that speak
//! the real agent protocol: tier order, no-op re-apply, single-node change, halt and rollback,
//! a controller restart mid-rollout, an agent that disconnects, and plans that are refused.
//! (One test binary, to keep link time down.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use apim_plan::render::ClusterRender;
use apim_proto::v1::{NodePhase, RolloutState};
use tonic::Code;

use apim_testkit::controller::Controller;
use apim_testkit::fake_agent::{Event, FakeAgent};
use apim_testkit::plans::{V3_MACHINES, plan_v3, secrets, tiny_pack};
use apim_testkit::wait::eventually;

mod drift;
mod history;
mod packs;
mod provided;

/// The 3.x pack the test plans name.
fn pack() -> Vec<u8> {
    tiny_pack("wso2am-3.2.0")
}

type Log = Arc<Mutex<Vec<(String, Event)>>>;

fn start_agents(c: &Controller) -> (BTreeMap<String, FakeAgent>, Log) {
    let log: Log = Arc::default();
    let agents = V3_MACHINES
        .iter()
        .map(|m| (m.to_string(), FakeAgent::start(c, m, Arc::clone(&log))))
        .collect();
    (agents, log)
}

fn render(plan: &str) -> ClusterRender {
    apim_testkit::specs::render(plan).cluster
}

/// Node names in the order they were started.
fn started(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .map(|(_, Event::Started { node, .. })| node.clone())
        .collect()
}

fn held(agents: &BTreeMap<String, FakeAgent>) -> BTreeMap<String, u64> {
    agents
        .iter()
        .map(|(m, a)| (m.clone(), a.held_generation()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_roll_out_in_tier_order_reapply_is_a_no_op_and_one_change_touches_one_node() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, log) = start_agents(&c);
    let plan = plan_v3(&sha, "", "halt", "30s");

    let (generation, id) = c.apply(&plan).await.expect("apply");
    assert_eq!(generation, 1);
    assert!(!id.is_empty());
    let status = c.wait_rollout(RolloutState::Succeeded).await;
    for m in &status.machines {
        assert!(m.reachable, "{} reachable", m.machine);
        for n in &m.nodes {
            assert_eq!(n.phase(), NodePhase::Healthy, "{}", n.node);
        }
    }
    let order = started(&log);
    let unique: BTreeSet<&String> = order.iter().collect();
    assert_eq!(order.len(), 5, "each node started once: {order:?}");
    assert_eq!(unique.len(), 5);
    let cluster = render(&plan);
    assert!(cluster.tiers.len() > 1, "the 3.x plan has several tiers");
    for n in cluster.nodes() {
        let me = order.iter().position(|x| *x == n.name).expect("started");
        for d in &n.depends_on {
            let dep = order.iter().position(|x| x == d).expect("dep started");
            assert!(dep < me, "{d} must start before {}: {order:?}", n.name);
        }
    }

    // Re-applying the same plan stores nothing, pushes nothing, restarts nothing.
    let before = held(&agents);
    let (again, id) = c.apply(&plan).await.expect("re-apply");
    assert_eq!((again, id.as_str()), (1, ""));
    assert_eq!(held(&agents), before);
    assert_eq!(started(&log).len(), 5);

    // One gateway override: only the gateway restarts, only its machine gets a new spec.
    let changed = plan_v3(
        &sha,
        "[apim.cors]\nallow_origins = \"https://portal.example.com\"",
        "halt",
        "30s",
    );
    let (g2, _) = c.apply(&changed).await.expect("apply change");
    assert_eq!(g2, 2);
    let status = c.wait_rollout(RolloutState::Succeeded).await;
    assert_eq!(status.rollout.expect("rollout").generation, 2);
    let order = started(&log);
    assert_eq!(
        &order[5..],
        ["gw-1"],
        "only the gateway restarts: {order:?}"
    );
    let after = held(&agents);
    for (m, g) in &after {
        if m == "vm-gw-1" {
            assert!(*g > before[m]);
        } else {
            assert_eq!(*g, before[m], "{m} untouched");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_keeps_dependents_staged_and_rollback_restores_the_previous_generation() {
    // halt: the publisher fails; nothing that depends on it starts.
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, log) = start_agents(&c);
    agents["vm-pub-1"]
        .faults
        .lock()
        .unwrap()
        .fail
        .insert("pub-1".into());
    let plan = plan_v3(&sha, "", "halt", "30s");
    c.apply(&plan).await.expect("apply");
    let status = c.wait_rollout(RolloutState::Failed).await;
    let message = status.rollout.expect("rollout").message;
    assert!(
        message.contains("pub-1") && message.contains("server exited"),
        "{message}"
    );
    let cluster = render(&plan);
    let order = started(&log);
    for n in cluster.nodes() {
        if n.depends_on.iter().any(|d| d == "pub-1") {
            assert!(
                !order.contains(&n.name),
                "{} must not start: {order:?}",
                n.name
            );
            let phase = status
                .machines
                .iter()
                .flat_map(|m| &m.nodes)
                .find(|s| s.node == n.name)
                .expect("status")
                .phase();
            assert_eq!(phase, NodePhase::Staged, "{} stays staged", n.name);
        }
    }
    // A new apply is allowed after a halted rollout.
    drop(agents);

    // rollback: generation 1 healthy, generation 2's gateway fails, gateway returns to 1.
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, log) = start_agents(&c);
    c.apply(&plan_v3(&sha, "", "rollback", "30s"))
        .await
        .expect("apply 1");
    c.wait_rollout(RolloutState::Succeeded).await;
    let old_digest = log
        .lock()
        .unwrap()
        .iter()
        .find_map(|(_, Event::Started { node, digest })| (node == "gw-1").then(|| digest.clone()))
        .expect("gw-1 started");
    agents["vm-gw-1"]
        .faults
        .lock()
        .unwrap()
        .fail_unless
        .insert("gw-1".into(), old_digest.clone());
    let changed = plan_v3(
        &sha,
        "[apim.cors]\nallow_origins = \"https://portal.example.com\"",
        "rollback",
        "30s",
    );
    c.apply(&changed).await.expect("apply 2");
    // Generation 2 ends rolled back, and generation 3 (equal to 1) rolls out in its place.
    let status = c.wait_rollout(RolloutState::Succeeded).await;
    let r = status.rollout.expect("rollout");
    assert_eq!((r.id.as_str(), r.generation), ("rollout-3", 3), "{r:?}");
    let failed = c
        .state
        .store()
        .read(|tx| tx.rollouts_by_generation())
        .expect("store")
        .remove(&2)
        .expect("rollout-2");
    assert_eq!(failed.state, apim_controller::rollout::Phase::RolledBack);
    assert!(failed.message.contains("gw-1"), "{}", failed.message);
    assert!(
        failed.message.contains("as generation 3"),
        "{}",
        failed.message
    );
    // The gateway's machine got the previous spec again, at a higher generation.
    let spec = c.state.desired_spec("vm-gw-1").expect("spec");
    assert_eq!(spec.nodes[0].config_digest, old_digest);
    assert_eq!(spec.plan_generation, 3);
    let log = log.lock().unwrap();
    let last = log
        .iter()
        .rev()
        .find(|(_, e)| matches!(e, Event::Started { node, .. } if node == "gw-1"))
        .expect("events");
    assert_eq!(
        last.1,
        Event::Started {
            node: "gw-1".into(),
            digest: old_digest
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_mid_rollout_resumes_without_starting_anything_twice() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, log) = start_agents(&c);
    let plan = plan_v3(&sha, "", "halt", "5m");
    let cluster = render(&plan);
    // Hang the first node of the second tier: the rollout is mid-way when we kill it.
    let hung = cluster.tiers[1][0].clone();
    let hung_machine = cluster.node(&hung).expect("node").machine.clone();
    agents[&hung_machine]
        .faults
        .lock()
        .unwrap()
        .hang
        .insert(hung.clone());
    c.apply(&plan).await.expect("apply");
    eventually("the hung node was released", || {
        started(&log).contains(&hung)
    })
    .await;
    let before = started(&log);

    let c = c.restart().await;
    // The agents reconnect to the same address on their own.
    eventually("agents reconnect", || {
        V3_MACHINES
            .iter()
            .all(|m| c.state.agent(m).is_some_and(|a| a.connected))
    })
    .await;
    assert_eq!(
        started(&log),
        before,
        "nothing restarted by the restart itself"
    );
    agents[&hung_machine].unhang(&hung);
    c.wait_rollout(RolloutState::Succeeded).await;
    let order = started(&log);
    let unique: BTreeSet<&String> = order.iter().collect();
    assert_eq!(
        order.len(),
        5,
        "no node started twice, none skipped: {order:?}"
    );
    assert_eq!(unique.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_agent_shows_unreachable_and_converges_when_it_returns() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, log) = start_agents(&c);
    c.apply(&plan_v3(&sha, "", "halt", "30s"))
        .await
        .expect("apply");
    c.wait_rollout(RolloutState::Succeeded).await;

    agents["vm-gw-1"].disconnect();
    eventually("the gateway machine is unreachable", || {
        c.state.agent("vm-gw-1").is_some_and(|a| !a.connected)
    })
    .await;
    let status = c.status().await;
    let gw = status
        .machines
        .iter()
        .find(|m| m.machine == "vm-gw-1")
        .expect("machine");
    assert!(!gw.reachable);
    assert!(gw.unreachable_since.is_some());

    let changed = plan_v3(
        &sha,
        "[apim.cors]\nallow_origins = \"https://portal.example.com\"",
        "halt",
        "30s",
    );
    c.apply(&changed).await.expect("apply change");
    let status = c.wait_rollout(RolloutState::Staging).await;
    assert_eq!(status.generation, 2);
    assert_eq!(started(&log).len(), 5, "nothing starts while it is away");

    agents["vm-gw-1"].reconnect();
    c.wait_rollout(RolloutState::Succeeded).await;
    assert_eq!(&started(&log)[5..], ["gw-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_plans_change_nothing() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (agents, log) = start_agents(&c);
    c.apply(&plan_v3(&sha, "", "halt", "30s"))
        .await
        .expect("apply");
    c.wait_rollout(RolloutState::Succeeded).await;
    let before = held(&agents);

    // Malformed TOML.
    let err = c.apply("[cluster\nname = 1").await.expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = apim_proto::error_details(&err).expect("details");
    assert!(
        details
            .errors
            .iter()
            .all(|e| e.line >= 1 && e.file == "plan.toml")
    );

    // Valid TOML the controller rejects: a node on an unknown machine.
    let bad =
        plan_v3(&sha, "", "halt", "30s").replace("machine = \"vm-gw-1\"", "machine = \"vm-nope\"");
    let err = c.apply(&bad).await.expect_err("unknown machine");
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = apim_proto::error_details(&err).expect("details");
    assert!(
        details
            .errors
            .iter()
            .any(|e| e.message.contains("vm-nope") && e.line > 1)
    );

    // A pack the controller does not have.
    let missing = plan_v3(&"1".repeat(64), "", "halt", "30s");
    let err = c.apply(&missing).await.expect_err("missing pack");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        apim_proto::error_details(&err).expect("details").errors[0].code,
        "plan.pack_missing"
    );

    // A missing secret (the CLI did not send it).
    let mut req_secrets = secrets();
    req_secrets.remove("env:DB_PW");
    let err = c
        .operator()
        .await
        .apply(apim_proto::v1::ApplyRequest {
            plan_toml: plan_v3(&sha, "# changed", "halt", "30s"),
            plan_path: "plan.toml".into(),
            expected_cluster_revision: None,
            author: String::new(),
            resolved_secrets: req_secrets,
            strict: false,
            provided_files: Default::default(),
        })
        .await
        .expect_err("missing secret");
    assert_eq!(err.code(), Code::InvalidArgument);

    // A stale reviewed revision.
    let err = c
        .operator()
        .await
        .apply(apim_proto::v1::ApplyRequest {
            plan_toml: plan_v3(
                &sha,
                "[apim.cors]\nallow_origins = \"https://portal.example.com\"",
                "halt",
                "30s",
            ),
            plan_path: "plan.toml".into(),
            expected_cluster_revision: Some("stale".into()),
            author: String::new(),
            resolved_secrets: secrets(),
            strict: false,
            provided_files: Default::default(),
        })
        .await
        .expect_err("stale revision");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let status = c.status().await;
    assert_eq!(status.generation, 1, "no generation was stored");
    assert_eq!(held(&agents), before, "no machine got a new spec");
    assert_eq!(started(&log).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_masks_the_old_and_the_new_secrets_in_every_diff_line() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let (_agents, _log) = start_agents(&c);
    let plan = plan_v3(&sha, "", "halt", "30s");
    c.apply(&plan).await.expect("apply");
    c.wait_rollout(RolloutState::Succeeded).await;

    // Every secret changes; the diff shows old and new lines of each.
    let mut secrets = secrets();
    secrets.insert("env:ADMIN_PW".into(), "admin-NEW-secret".into());
    secrets.insert("env:DB_PW".into(), "db-NEW-secret".into());
    secrets.insert("env:KS_PW".into(), "ks-NEW-secret".into());
    let resp = c
        .operator()
        .await
        .plan(apim_proto::v1::PlanRequest {
            plan_toml: plan.clone(),
            plan_path: "plan.toml".into(),
            resolved_secrets: secrets,
            strict: false,
            provided_files: Default::default(),
        })
        .await
        .expect("plan")
        .into_inner();
    let lines: Vec<&String> = resp
        .changes
        .iter()
        .flat_map(|c| c.deployment_toml_diff.iter().chain(&c.hosts_diff))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('-') && l.contains("password")),
        "the old password lines are in the diff: {lines:?}"
    );
    for secret in [
        "admin-secret",
        "db-secret",
        "ks-secret",
        "admin-NEW-secret",
        "db-NEW-secret",
        "ks-NEW-secret",
    ] {
        for l in &lines {
            assert!(!l.contains(secret), "{secret} shown in the diff: {l}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_pack_of_another_release_is_refused_before_any_machine_is_touched() {
    let c = Controller::start().await;
    let (agents, _log) = start_agents(&c);
    let sha = c.store_pack(&tiny_pack("wso2am-4.2.0"));
    let status = c
        .apply(&plan_v3(&sha, "", "halt", "30s"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = apim_proto::error_details(&status).expect("details");
    assert!(
        details.errors[0]
            .message
            .contains("its top directory is `wso2am-4.2.0`, the release needs `wso2am-3.2.0`"),
        "{details:?}"
    );
    assert_eq!(
        (details.errors[0].line, details.errors[0].column),
        (8, 20),
        "at the pack's path"
    );
    assert!(c.state.desired_specs().is_empty(), "nothing pushed");
    assert!(held(&agents).values().all(|g| *g == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_pack_never_reads_is_a_warning_and_strict_refuses_the_plan() {
    let c = Controller::start().await;
    // A pack whose product reads what the renderer writes for the plan, and nothing else.
    let docs = render(&plan_v3(&"0".repeat(64), "", "halt", "30s"));
    let template =
        apim_testkit::plans::template_reading(docs.nodes().map(|n| n.deployment_toml.as_str()));
    let sha = c.store_pack(&apim_testkit::plans::pack_with("wso2am-3.2.0", &[template]));
    let plan = plan_v3(
        &sha,
        "[apim.cors]\nallow_orgins = \"https://x.example.com\"",
        "halt",
        "30s",
    );
    let line = plan[..plan.find("allow_orgins").unwrap()].lines().count() as u32 + 1;
    let request = |strict| apim_proto::v1::ApplyRequest {
        plan_toml: plan.clone(),
        plan_path: "plan.toml".into(),
        expected_cluster_revision: None,
        author: String::new(),
        resolved_secrets: secrets(),
        strict,
        provided_files: Default::default(),
    };

    let err = c
        .operator()
        .await
        .apply(request(true))
        .await
        .expect_err("strict");
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = apim_proto::error_details(&err).expect("details");
    assert_eq!(details.errors.len(), 1, "{details:?}");
    let e = &details.errors[0];
    assert_eq!(
        (e.code.as_str(), e.file.as_str(), e.line, e.column),
        ("render.unknown_key", "plan.toml", line, 1)
    );
    assert!(e.message.contains("`apim.cors.allow_orgins`"), "{e:?}");
    assert_eq!(e.hint, "did you mean `apim.cors.allow_origins`?");
    assert_eq!(c.status().await.generation, 0, "nothing was stored");

    let dry = c
        .operator()
        .await
        .plan(apim_proto::v1::PlanRequest {
            plan_toml: plan.clone(),
            plan_path: "plan.toml".into(),
            resolved_secrets: secrets(),
            strict: false,
            provided_files: Default::default(),
        })
        .await
        .expect("plan")
        .into_inner();
    assert_eq!(dry.warnings, details.errors);

    let applied = c
        .operator()
        .await
        .apply(request(false))
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(applied.generation, 1);
    assert_eq!(applied.warnings, details.errors);

    // A dry run of a plan whose pack is not stored yet says its nodes had no base file.
    let dry = c
        .operator()
        .await
        .plan(apim_proto::v1::PlanRequest {
            plan_toml: plan_v3(&"1".repeat(64), "", "halt", "30s"),
            plan_path: "plan.toml".into(),
            resolved_secrets: secrets(),
            strict: true,
            provided_files: Default::default(),
        })
        .await
        .expect("plan")
        .into_inner();
    // (No agent runs here: the first rollout is still staging, and `plan` says so.)
    let codes: Vec<&str> = dry.warnings.iter().map(|w| w.code.as_str()).collect();
    assert_eq!(
        codes,
        ["render.no_base", "plan.rollout_in_flight"],
        "{:?}",
        dry.warnings
    );
    assert!(
        dry.warnings[1]
            .message
            .contains("rollout-1 (generation 1) is in flight"),
        "{:?}",
        dry.warnings
    );
}

/// The controller's memory pre-flight: a machine whose agent reported less memory than its
/// nodes need refuses `plan` and `apply` with an error at the machine's entry, before anything
/// is stored or pushed; once the plan fits, it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_without_the_memory_its_nodes_need_refuses_the_plan_before_anything_is_pushed() {
    let c = Controller::start().await;
    let sha = c.store_pack(&pack());
    let log: Log = Arc::default();
    const GIB: u64 = 1 << 30;
    let agents: BTreeMap<String, FakeAgent> = V3_MACHINES
        .iter()
        .map(|m| {
            // vm-gw-1 has 1 GiB; the others 8 GiB.
            let memory = if *m == "vm-gw-1" { GIB } else { 8 * GIB };
            let a = FakeAgent::start_with_memory(&c, m, Arc::clone(&log), memory);
            (m.to_string(), a)
        })
        .collect();
    eventually("every agent reported its facts", || {
        V3_MACHINES.iter().all(|m| {
            c.state
                .agent(m)
                .and_then(|a| a.facts)
                .is_some_and(|f| f.memory_bytes > 0)
        })
    })
    .await;

    // The gateway has the scripts' default heap (1 GiB): it needs 1639 MiB.
    let plan = plan_v3(&sha, "", "halt", "30s");
    let err = c.apply(&plan).await.expect_err("not enough memory");
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = apim_proto::error_details(&err).expect("details");
    assert_eq!(details.errors.len(), 1, "{details:?}");
    let e = &details.errors[0];
    assert_eq!(e.code, "plan.memory");
    assert!(
        e.message.contains(
            "machine `vm-gw-1` has 1024 MiB of memory (as its agent last reported) and its nodes \
             need 1639 MiB together: gw-1 1639 MiB"
        ),
        "{e:?}"
    );
    let (line, col) = apim_plan::diag::line_col(&plan, plan.find("\"vm-gw-1\"").unwrap());
    assert_eq!(
        (e.file.as_str(), e.line, e.column),
        ("plan.toml", line as u32, col as u32),
        "at the machine's entry"
    );
    assert!(c.state.desired_specs().is_empty(), "nothing pushed");
    assert!(held(&agents).values().all(|g| *g == 0));
    assert!(c.status().await.rollout.is_none(), "nothing stored");

    // `apimctl plan` says the same.
    let err = c
        .operator()
        .await
        .plan(apim_proto::v1::PlanRequest {
            plan_toml: plan.clone(),
            plan_path: "plan.toml".into(),
            resolved_secrets: secrets(),
            strict: false,
            provided_files: Default::default(),
        })
        .await
        .expect_err("plan refused too");
    let details = apim_proto::error_details(&err).expect("details");
    assert_eq!(details.errors[0].code, "plan.memory");

    // A smaller gateway heap fits: 256m + 512 MiB + a tenth = 794 MiB.
    let fits = format!("{plan}\n[jvm.\"node:gw-1\"]\nheap_max = \"256m\"\n");
    c.apply(&fits).await.expect("apply");
    c.wait_rollout(RolloutState::Succeeded).await;
    let gw = c.state.desired_specs()["vm-gw-1"].nodes[0].clone();
    assert_eq!(
        gw.memory_bytes,
        apim_plan::catalogue::jvm::memory_need(256 << 20)
    );
    assert_eq!(gw.env[0].name, "JAVA_OPTS");
    assert_eq!(gw.env[0].value, "-Xmx256m");
}
