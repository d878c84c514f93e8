//! [`decide`] without I/O: records, reports and times made up in memory.

use std::collections::{BTreeMap, BTreeSet};

use apim_proto::v1::{DesiredRun, MachineSpec, NodePhase, NodeSpec, NodeStatus};

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
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            targets: targets(),
            pushed: BTreeMap::new(),
            reports: BTreeMap::new(),
        }
    }

    fn world(&self, now_ms: i64) -> World<'_> {
        World {
            targets: &self.targets,
            pushed: &self.pushed,
            reports: &self.reports,
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
