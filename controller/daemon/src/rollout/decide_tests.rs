//! [`decide`] without I/O: records, reports and times made up in memory.

use std::collections::{BTreeMap, BTreeSet};

use apim_proto::v1::{
    DesiredRun, MachineSpec, ManagedService, NodePhase, NodeSpec, NodeStatus, ProbeStatus,
    ServiceProbe, ServiceStatus,
};

use super::*;
use crate::rollout::NodeProgress;

/// Two tiers: km (tier 1), gw-1 and gw-2 (tier 2, HA gateways), each on its own machine.
fn record(ha: bool, max_parallel: u32) -> RolloutRecord {
    let node = |machine: &str, role: &str| NodeProgress {
        machine: machine.into(),
        role: role.into(),
        changed: true,
        target_digest: format!("digest-{machine}"),
        released_at_ms: None,
        release_generation: 0,
        done: false,
        healthy_at_ms: None,
    };
    RolloutRecord {
        id: "rollout-2".into(),
        generation: 2,
        state: Phase::Staging,
        tier: 0,
        message: "staging".into(),
        rollback: false,
        max_parallel,
        health_timeout_s: 60,
        tiers: vec![vec!["km".into()], vec!["gw-1".into(), "gw-2".into()]],
        ha_roles: if ha {
            BTreeSet::from(["gateway".to_string()])
        } else {
            BTreeSet::new()
        },
        nodes: BTreeMap::from([
            ("km".into(), node("vm-km", "key-manager")),
            ("gw-1".into(), node("vm-gw-1", "gateway")),
            ("gw-2".into(), node("vm-gw-2", "gateway")),
        ]),
        machines: ["vm-km", "vm-gw-1", "vm-gw-2"]
            .into_iter()
            .map(|m| (m.to_string(), 0))
            .collect(),
        settled_at_ms: None,
    }
}

fn spec(machine: &str, node: &str, role: &str, generation: u64) -> MachineSpec {
    MachineSpec {
        machine: machine.into(),
        generation,
        nodes: vec![NodeSpec {
            name: node.into(),
            role: role.into(),
            config_digest: format!("digest-{machine}"),
            desired: DesiredRun::Running.into(),
            ..NodeSpec::default()
        }],
        ..MachineSpec::default()
    }
}

fn targets() -> BTreeMap<String, MachineSpec> {
    [
        spec("vm-km", "km", "key-manager", 0),
        spec("vm-gw-1", "gw-1", "gateway", 0),
        spec("vm-gw-2", "gw-2", "gateway", 0),
    ]
    .into_iter()
    .map(|s| (s.machine.clone(), s))
    .collect()
}

fn status(node: &str, generation: u64, phase: NodePhase, digest: &str) -> NodeStatus {
    NodeStatus {
        node: node.into(),
        generation,
        phase: phase.into(),
        config_digest: digest.into(),
        ..NodeStatus::default()
    }
}

struct Fixture {
    targets: BTreeMap<String, MachineSpec>,
    pushed: BTreeMap<String, std::sync::Arc<MachineSpec>>,
    reports: BTreeMap<(String, String), NodeReport>,
    services: BTreeMap<(String, String), ServiceStatus>,
    connected: BTreeSet<String>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            targets: targets(),
            pushed: BTreeMap::new(),
            reports: BTreeMap::new(),
            services: BTreeMap::new(),
            connected: BTreeSet::new(),
        }
    }

    fn world(&self, now_ms: i64) -> World<'_> {
        World {
            targets: &self.targets,
            pushed: &self.pushed,
            reports: &self.reports,
            services: &self.services,
            connected: &self.connected,
            now_ms,
        }
    }

    fn report(&mut self, machine: &str, s: NodeStatus, connected: bool) {
        self.reports.insert(
            (machine.into(), s.node.clone()),
            NodeReport {
                status: s,
                connected,
            },
        );
    }

    /// What the engine does with a decision: pushed specs become the machines' specs.
    fn apply(&mut self, d: &Decision) {
        for s in &d.push {
            self.pushed
                .insert(s.machine.clone(), std::sync::Arc::new(s.clone()));
        }
    }
}

fn desired(spec: &MachineSpec) -> DesiredRun {
    spec.nodes[0].desired()
}

#[test]
fn staging_pushes_every_changed_machine_once_then_waits_for_staged_reports() {
    let mut f = Fixture::new();
    f.pushed
        .insert("vm-km".into(), spec("vm-km", "km", "key-manager", 4).into());
    let r = record(false, 2);
    let d = decide(&r, &f.world(0));
    assert_eq!(d.next, Next::Again);
    assert_eq!(d.push.len(), 3);
    let by_machine: BTreeMap<&str, &MachineSpec> =
        d.push.iter().map(|s| (s.machine.as_str(), s)).collect();
    assert_eq!(
        by_machine["vm-km"].generation, 5,
        "after what the machine holds"
    );
    assert_eq!(by_machine["vm-gw-1"].generation, 1);
    assert!(d.push.iter().all(|s| desired(s) == DesiredRun::Staged));
    assert!(d.push.iter().all(|s| s.plan_generation == 2));
    assert_eq!(d.record.machines["vm-km"], 5);
    f.apply(&d);

    // Nothing reported yet for those generations: wait, write nothing.
    let r = d.record;
    let d = decide(&r, &f.world(10));
    assert_eq!((d.next, d.push.len()), (Next::Wait(None), 0));
    assert_eq!(d.record, r);

    // A report for an OLDER generation does not count.
    f.report("vm-km", status("km", 4, NodePhase::Staged, ""), true);
    f.report("vm-gw-1", status("gw-1", 1, NodePhase::Staged, ""), true);
    f.report("vm-gw-2", status("gw-2", 1, NodePhase::Staged, ""), true);
    assert_eq!(decide(&r, &f.world(20)).record.state, Phase::Staging);

    // Every changed node staged (one already healthy on its target counts too): start.
    f.report(
        "vm-km",
        status("km", 5, NodePhase::Healthy, "digest-vm-km"),
        true,
    );
    let d = decide(&r, &f.world(30));
    assert_eq!(d.record.state, Phase::Starting);
    assert_eq!(
        (d.record.tier, d.record.message.as_str()),
        (0, "starting tier 1")
    );
    assert_eq!(d.next, Next::Again);
}

#[test]
fn a_failed_node_halts_or_rolls_back_as_the_record_says() {
    let mut f = Fixture::new();
    let mut r = record(false, 2);
    r.machines.values_mut().for_each(|g| *g = 1);
    let mut failed = status("gw-2", 1, NodePhase::Failed, "");
    failed.last_error = "disk full".into();
    f.report("vm-gw-2", failed, true);
    let d = decide(&r, &f.world(0));
    assert_eq!(d.record.state, Phase::Failed);
    assert_eq!(d.record.message, "node gw-2 on vm-gw-2 failed: disk full");
    r.rollback = true;
    assert_eq!(decide(&r, &f.world(0)).record.state, Phase::RollingBack);
}

/// A record in Starting with every machine staged at generation 1.
fn starting(ha: bool, max_parallel: u32) -> (Fixture, RolloutRecord) {
    let mut f = Fixture::new();
    for (m, s) in targets() {
        let mut s = s;
        s.generation = 1;
        s.nodes[0].desired = DesiredRun::Staged.into();
        f.pushed.insert(m, std::sync::Arc::new(s));
    }
    let mut r = record(ha, max_parallel);
    r.machines.values_mut().for_each(|g| *g = 1);
    r.state = Phase::Starting;
    (f, r)
}

#[test]
fn tiers_start_in_order_and_success_records_the_baseline() {
    let (mut f, r) = starting(false, 5);
    // Tier 1 only: the key manager is released with a new generation of its machine.
    let d = decide(&r, &f.world(1_000));
    assert_eq!(d.push.len(), 1);
    assert_eq!(d.push[0].machine, "vm-km");
    assert_eq!(
        (d.push[0].generation, desired(&d.push[0])),
        (2, DesiredRun::Running)
    );
    assert_eq!(d.record.nodes["km"].released_at_ms, Some(1_000));
    assert_eq!(d.record.nodes["km"].release_generation, 2);
    f.apply(&d);
    let r = d.record;

    // Waiting for it: nothing new, and a deadline at its health timeout.
    let d = decide(&r, &f.world(2_000));
    assert!(d.push.is_empty());
    assert_eq!(
        d.next,
        Next::Wait(Some(std::time::Duration::from_millis(59_010)))
    );

    // Healthy on another digest is not done; on the target it is, and tier 2 goes (both
    // gateways: no HA limit for a role that had no running nodes).
    f.report("vm-km", status("km", 2, NodePhase::Healthy, "old"), true);
    assert!(!decide(&r, &f.world(3_000)).record.nodes["km"].done);
    f.report(
        "vm-km",
        status("km", 2, NodePhase::Healthy, "digest-vm-km"),
        true,
    );
    let d = decide(&r, &f.world(3_000));
    assert!(d.record.nodes["km"].done);
    assert_eq!(d.record.tier, 1);
    let released: Vec<&str> = d.push.iter().map(|s| s.machine.as_str()).collect();
    assert_eq!(released, ["vm-gw-1", "vm-gw-2"]);
    f.apply(&d);
    let r = d.record;

    f.report(
        "vm-gw-1",
        status("gw-1", 2, NodePhase::Healthy, "digest-vm-gw-1"),
        true,
    );
    f.report(
        "vm-gw-2",
        status("gw-2", 2, NodePhase::Healthy, "digest-vm-gw-2"),
        true,
    );
    let d = decide(&r, &f.world(4_000));
    assert_eq!(d.record.state, Phase::Succeeded);
    assert_eq!(d.record.message, "generation 2 is healthy");
    let baseline = d.baseline.expect("a baseline");
    assert_eq!(baseline.len(), 3);
    assert!(baseline.iter().all(|s| s.plan_generation == 2));
    assert_eq!(d.next, Next::Wait(None));
}

#[test]
fn ha_peers_start_one_at_a_time_and_max_parallel_caps_the_rest() {
    let (mut f, mut r) = starting(true, 5);
    r.tier = 1;
    r.nodes.get_mut("km").unwrap().changed = false;
    let d = decide(&r, &f.world(0));
    assert_eq!(d.push.len(), 1, "one gateway at a time: {:?}", d.push);
    assert_eq!(d.push[0].machine, "vm-gw-1");
    f.apply(&d);

    let (f2, mut r2) = starting(false, 1);
    r2.tier = 1;
    r2.nodes.get_mut("km").unwrap().changed = false;
    let d2 = decide(&r2, &f2.world(0));
    assert_eq!(d2.push.len(), 1, "max_parallel = 1");

    // Once gw-1 is healthy, gw-2 follows.
    let r = d.record;
    f.report(
        "vm-gw-1",
        status("gw-1", 2, NodePhase::Healthy, "digest-vm-gw-1"),
        true,
    );
    let d = decide(&r, &f.world(10));
    assert_eq!(d.push.len(), 1);
    assert_eq!(d.push[0].machine, "vm-gw-2");
}

#[test]
fn the_health_timeout_fails_a_node_only_while_its_agent_is_connected() {
    let (mut f, r) = starting(false, 5);
    let d = decide(&r, &f.world(0));
    f.apply(&d);
    let r = d.record;
    f.report("vm-km", status("km", 2, NodePhase::Starting, ""), false);
    let d = decide(&r, &f.world(61_000));
    assert_eq!(
        d.record.state,
        Phase::Starting,
        "an unreachable agent is waited for"
    );
    f.report("vm-km", status("km", 2, NodePhase::Starting, ""), true);
    let d = decide(&r, &f.world(61_000));
    assert_eq!(d.record.state, Phase::Failed);
    assert!(
        d.record.message.ends_with("not healthy within 60s"),
        "{}",
        d.record.message
    );
}

#[test]
fn a_rollback_is_left_to_the_engine_which_rolls_the_baseline_out_as_a_new_generation() {
    let (f, mut r) = starting(false, 5);
    r.state = Phase::RollingBack;
    let d = decide(&r, &f.world(0));
    assert_eq!((d.record, d.push.len(), d.next), (r, 0, Next::Wait(None)));
}

#[test]
fn a_node_the_operator_stops_is_stopped_at_staging_and_never_released() {
    let mut f = Fixture::new();
    let mut r = record(false, 5);
    // km stops; everything else is changed and staged as usual.
    for s in f.targets.values_mut() {
        for n in &mut s.nodes {
            if n.name == "km" {
                n.desired = DesiredRun::Stopped.into();
            }
        }
    }
    let d = decide(&r, &f.world(0));
    let km = d
        .push
        .iter()
        .find(|s| s.machine == "vm-km")
        .expect("vm-km pushed");
    assert_eq!(desired(km), DesiredRun::Stopped);
    r = d.record;
    for s in &d.push {
        f.pushed
            .insert(s.machine.clone(), std::sync::Arc::new(s.clone()));
        for n in &s.nodes {
            let phase = if n.name == "km" {
                NodePhase::Stopped
            } else {
                NodePhase::Staged
            };
            f.report(&s.machine, status(&n.name, s.generation, phase, ""), true);
        }
    }
    let d = decide(&r, &f.world(0));
    assert_eq!(d.record.state, Phase::Starting);
    assert!(d.record.nodes["km"].done, "a stopped node is done");
    let d = decide(&d.record, &f.world(0));
    assert!(
        d.push
            .iter()
            .flat_map(|s| &s.nodes)
            .all(|n| n.name != "km" || n.desired() == DesiredRun::Stopped),
        "km is never released"
    );
}

#[test]
fn a_finished_rollout_decides_nothing() {
    let f = Fixture::new();
    for state in [Phase::Succeeded, Phase::Failed, Phase::RolledBack] {
        let mut r = record(false, 1);
        r.state = state;
        let d = decide(&r, &f.world(0));
        assert_eq!((d.record, d.push.len(), d.next), (r, 0, Next::Wait(None)));
    }
}

// ---- the load balancer gate ----------------------------------------------------------------

/// The targets plus a balancer on vm-lb fronting the gateways (a probe named after the role).
fn with_balancer(f: &mut Fixture) {
    let mut lb = MachineSpec {
        machine: "vm-lb".into(),
        ..MachineSpec::default()
    };
    lb.services.push(ManagedService {
        name: "load-balancer".into(),
        digest: "lb-digest".into(),
        probes: vec![ServiceProbe {
            name: "gateway".into(),
            ..ServiceProbe::default()
        }],
        ..ManagedService::default()
    });
    f.targets.insert("vm-lb".into(), lb);
    f.connected = ["vm-km", "vm-gw-1", "vm-gw-2", "vm-lb"]
        .into_iter()
        .map(String::from)
        .collect();
}

/// The balancer's report: its digest, and the gateway probe's result from a round at `at`.
fn lb_report(f: &mut Fixture, digest: &str, ok: bool, detail: &str, at: Option<i64>) {
    f.services.insert(
        ("vm-lb".into(), "load-balancer".into()),
        ServiceStatus {
            name: "load-balancer".into(),
            running: true,
            digest: digest.into(),
            probes: vec![ProbeStatus {
                name: "gateway".into(),
                ok,
                detail: detail.into(),
            }],
            probed_at_ms: at,
            ..ServiceStatus::default()
        },
    );
}

/// Gateways (HA) in tier 2 behind the balancer; gw-1 released at 0 and healthy at 1 000.
fn gw1_healthy(rollback: bool) -> (Fixture, RolloutRecord) {
    let (mut f, mut r) = starting(true, 5);
    with_balancer(&mut f);
    r.rollback = rollback;
    r.tier = 1;
    r.nodes.get_mut("km").unwrap().changed = false;
    lb_report(&mut f, "lb-digest", true, "HTTP 404", Some(-5));
    let d = decide(&r, &f.world(0));
    assert_eq!(d.push.len(), 1);
    f.apply(&d);
    f.report(
        "vm-gw-1",
        status("gw-1", 2, NodePhase::Healthy, "digest-vm-gw-1"),
        true,
    );
    let d = decide(&d.record, &f.world(1_000));
    assert_eq!(d.record.nodes["gw-1"].healthy_at_ms, Some(1_000));
    assert!(
        !d.record.nodes["gw-1"].done,
        "not done before the balancer serves"
    );
    assert!(d.push.is_empty(), "gw-2 waits: {:?}", d.push);
    (f, d.record)
}

#[test]
fn an_ha_peer_waits_for_the_balancer_to_serve_its_role_again_before_the_next_goes() {
    let (mut f, r) = gw1_healthy(false);
    // A served probe from before the restart does not count: wait, ask vm-lb for a report,
    // and look again within a second.
    lb_report(&mut f, "lb-digest", true, "HTTP 404", Some(900));
    let d = decide(&r, &f.world(1_100));
    assert!(d.push.is_empty());
    assert_eq!(
        d.record.message,
        "gw-1 is healthy; waiting for vm-lb to serve gateway (no probe newer than the restart yet)"
    );
    assert_eq!(d.ask, ["vm-lb"]);
    assert_eq!(d.next, Next::Wait(Some(served::POLL)));
    let r = d.record;

    // A newer round that does not answer: still waiting, and the message says why.
    lb_report(&mut f, "lb-digest", false, "HTTP 502", Some(1_500));
    let d = decide(&r, &f.world(1_600));
    assert!(d.push.is_empty());
    assert_eq!(
        d.record.message,
        "gw-1 is healthy; waiting for vm-lb to serve gateway (probe: HTTP 502)"
    );

    // Served again by a round newer than the restart: gw-1 is done and gw-2 goes.
    lb_report(&mut f, "lb-digest", true, "HTTP 404", Some(1_700));
    let d = decide(&d.record, &f.world(1_800));
    assert!(d.record.nodes["gw-1"].done);
    assert_eq!(d.push.len(), 1);
    assert_eq!(d.push[0].machine, "vm-gw-2");
    assert!(d.ask.is_empty());
}

#[test]
fn a_balancer_that_does_not_serve_within_the_health_timeout_fails_the_step_per_policy() {
    for rollback in [false, true] {
        let (mut f, r) = gw1_healthy(rollback);
        // Agent text in the probe detail reaches the message escaped.
        lb_report(
            &mut f,
            "lb-digest",
            false,
            "HTTP 502\n\u{1b}[2Jforged",
            Some(2_000),
        );
        let d = decide(&r, &f.world(61_000));
        assert_eq!(d.record.state, Phase::Starting, "not before the timeout");
        let d = decide(&d.record, &f.world(61_001));
        assert_eq!(
            d.record.state,
            if rollback {
                Phase::RollingBack
            } else {
                Phase::Failed
            }
        );
        assert_eq!(
            d.record.message,
            "load balancer on vm-lb did not serve gateway within 60s after gw-1 became healthy: \
             probe: HTTP 502\\n\\e[2Jforged"
        );
        assert!(d.push.is_empty(), "gw-2 is never released");
    }

    // A balancer whose agent is unreachable is waited for, not failed.
    let (mut f, r) = gw1_healthy(false);
    f.connected.remove("vm-lb");
    let d = decide(&r, &f.world(120_000));
    assert_eq!(d.record.state, Phase::Starting);
    assert_eq!(
        d.record.message,
        "gw-1 is healthy; waiting for vm-lb to serve gateway (its agent is unreachable)"
    );
    assert!(d.push.is_empty());
}

#[test]
fn the_rollout_is_done_only_once_every_fronted_role_is_served_by_its_target_balancer() {
    // Every tier done (the balancer's first install: nothing was restarted behind it).
    let setup = || {
        let (mut f, mut r) = starting(false, 5);
        with_balancer(&mut f);
        r.tier = 2;
        for p in r.nodes.values_mut() {
            p.done = true;
        }
        lb_report(&mut f, "old-digest", false, "connect: refused", Some(10));
        f.services
            .get_mut(&("vm-lb".to_string(), "load-balancer".to_string()))
            .unwrap()
            .last_error = "check refused the configuration: nginx: [emerg]".into();
        (f, r)
    };
    let (mut f, r) = setup();
    let d = decide(&r, &f.world(5_000));
    assert_eq!(d.record.state, Phase::Starting);
    assert_eq!(d.record.settled_at_ms, Some(5_000));
    assert_eq!(
        d.record.message,
        "waiting for vm-lb to serve gateway (its configuration is not applied yet: check refused \
         the configuration: nginx: [emerg])"
    );
    assert_eq!(d.ask, ["vm-lb"]);
    assert!(d.baseline.is_none());
    let r = d.record;

    // Its target configuration applied and answering: succeeded.
    lb_report(&mut f, "lb-digest", true, "HTTP 404", Some(5_500));
    let d = decide(&r, &f.world(6_000));
    assert_eq!(d.record.state, Phase::Succeeded);
    assert!(d.baseline.is_some());

    // Never served: failed after the health timeout, counted from when every tier was done.
    let (f, r) = setup();
    let d = decide(&r, &f.world(5_000));
    let d = decide(&d.record, &f.world(65_001));
    assert_eq!(d.record.state, Phase::Failed);
    assert_eq!(
        d.record.message,
        "load balancer on vm-lb did not serve gateway within 60s: its configuration is not \
         applied yet: check refused the configuration: nginx: [emerg]"
    );
}

#[test]
fn a_role_no_balancer_fronts_is_done_when_healthy() {
    let (mut f, mut r) = starting(true, 5);
    with_balancer(&mut f);
    r.nodes.get_mut("gw-1").unwrap().changed = false;
    r.nodes.get_mut("gw-2").unwrap().changed = false;
    let d = decide(&r, &f.world(0));
    f.apply(&d);
    f.report(
        "vm-km",
        status("km", 2, NodePhase::Healthy, "digest-vm-km"),
        true,
    );
    // The key manager is not behind the balancer; the gateways (fronted, unchanged) are
    // served by a probe from any time once the rollout settles.
    lb_report(&mut f, "lb-digest", true, "HTTP 404", Some(-1));
    let d = decide(&d.record, &f.world(10));
    assert!(d.record.nodes["km"].done);
    let d = decide(&d.record, &f.world(20));
    assert_eq!(d.record.state, Phase::Succeeded, "{}", d.record.message);
}
