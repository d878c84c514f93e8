//! The rollout's decisions as a pure function: [`decide`] takes the record, the world as the
//! controller sees it ([`World`]: target and pushed specs, what agents report, the
//! time) and returns a [`Decision`]; it performs no I/O. The engine carries decisions out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::{DesiredRun, MachineSpec, NodePhase, NodeStatus, ServiceStatus};

use super::served::{self, Served};
use super::{Phase, RolloutRecord};

/// A node's last report: its status, and whether its agent is connected now.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// What the agent last said about the node.
    pub status: NodeStatus,
    /// Whether the agent's stream is open.
    pub connected: bool,
}

/// Everything [`decide`] looks at besides the record.
#[derive(Debug, Clone, Copy)]
pub struct World<'a> {
    /// The rollout's target spec of every machine (every node desired RUNNING, or STOPPED when
    /// the operator stopped it).
    pub targets: &'a BTreeMap<String, MachineSpec>,
    /// The spec pushed to each machine now.
    pub pushed: &'a BTreeMap<String, Arc<MachineSpec>>,
    /// The last report of each node, by (machine, node).
    pub reports: &'a BTreeMap<(String, String), NodeReport>,
    /// The last report of each managed service (a load balancer), by (machine, service).
    pub services: &'a BTreeMap<(String, String), ServiceStatus>,
    /// The machines whose agent's stream is open.
    pub connected: &'a BTreeSet<String>,
    /// Now, unix milliseconds.
    pub now_ms: i64,
}

/// When to decide again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// At once: the record moved on.
    Again,
    /// When something changes, or after this long at the latest.
    Wait(Option<Duration>),
}

/// What [`decide`] wants done. The record, the pushed specs and the baseline are written in one
/// transaction, so a release and the spec that carries it are never apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The record after this step (unchanged when nothing happened).
    pub record: RolloutRecord,
    /// Specs to store and push to their machines.
    pub push: Vec<MachineSpec>,
    /// A new baseline (the rollout succeeded).
    pub baseline: Option<Vec<MachineSpec>>,
    /// When to decide again.
    pub next: Next,
    /// Machines whose agent should report now (`ReportNow`): balancers whose fresh probes the
    /// rollout waits for. The engine asks each at most once per `served::POLL` (a second).
    pub ask: Vec<String>,
}

impl Decision {
    fn wait(r: RolloutRecord, after: Option<Duration>) -> Self {
        Decision {
            record: r,
            push: Vec::new(),
            baseline: None,
            next: Next::Wait(after),
            ask: Vec::new(),
        }
    }

    fn again(r: RolloutRecord, push: Vec<MachineSpec>) -> Self {
        Decision {
            record: r,
            push,
            baseline: None,
            next: Next::Again,
            ask: Vec::new(),
        }
    }
}

/// What the load balancer gate of one pass found: the first wait (for the rollout's message)
/// and the balancers to ask for fresh probes.
#[derive(Default)]
struct Gate {
    message: Option<String>,
    ask: BTreeSet<String>,
}

impl Gate {
    /// Records that `lb` does not serve `role` yet (`why`, already escaped).
    fn waiting(&mut self, lb: &str, role: &str, why: &str, after: Option<&str>) {
        if self.message.is_none() {
            let after = after.map_or(String::new(), |n| format!("{n} is healthy; "));
            self.message = Some(format!("{after}waiting for {lb} to serve {role} ({why})"));
        }
        self.ask.insert(lb.to_owned());
    }
}

/// Whether every balancer fronting `role` serves it with a probe newer than `since_ms`.
/// `Err` is the failure message once `deadline_ms` passed (only while the balancer's agent is
/// connected: an unreachable one is waited for).
fn gate_role(
    world: &World<'_>,
    gate: &mut Gate,
    role: &str,
    since_ms: i64,
    deadline_ms: i64,
    node: Option<&str>,
    timeout_s: u64,
) -> Result<bool, String> {
    let mut all = true;
    for front in served::fronting(world, role) {
        let why = match served::served(world, front, role, since_ms) {
            Served::Yes => continue,
            Served::No(why) => {
                if world.now_ms > deadline_ms {
                    let after =
                        node.map_or(String::new(), |n| format!(" after {n} became healthy"));
                    return Err(format!(
                        "load balancer on {} did not serve {role} within {timeout_s}s{after}: {why}",
                        front.machine
                    ));
                }
                why
            }
            Served::Unreachable => "its agent is unreachable".into(),
        };
        all = false;
        gate.waiting(front.machine, role, &why, node);
    }
    Ok(all)
}

/// The next step of rollout `r` in `world`.
pub fn decide(r: &RolloutRecord, world: &World<'_>) -> Decision {
    let r = r.clone();
    match r.state {
        Phase::Staging => stage(r, world),
        Phase::Starting => release(r, world),
        // The engine rolls the baseline out as a new generation ([`super::restore_baseline`]).
        Phase::RollingBack => Decision::wait(r, None),
        Phase::Succeeded | Phase::Failed | Phase::RolledBack | Phase::Destroyed => {
            Decision::wait(r, None)
        }
    }
}

fn next_generation(world: &World<'_>, machine: &str) -> u64 {
    world.pushed.get(machine).map_or(0, |s| s.generation) + 1
}

/// Whether the rollout's target stops `node` (`apimctl stop`).
fn stopping(world: &World<'_>, machine: &str, node: &str) -> bool {
    world
        .targets
        .get(machine)
        .and_then(|s| s.nodes.iter().find(|n| n.name == node))
        .is_some_and(|n| n.desired() == DesiredRun::Stopped)
}

fn report<'w>(world: &'w World<'_>, machine: &str, node: &str) -> Option<&'w NodeReport> {
    world.reports.get(&(machine.to_owned(), node.to_owned()))
}

/// Staging: push every changed machine once (changed nodes STAGED, the rest RUNNING), then wait
/// until every changed node reports STAGED (or HEALTHY on its target) for that push.
fn stage(mut r: RolloutRecord, world: &World<'_>) -> Decision {
    if r.machines.values().any(|g| *g == 0) {
        let mut specs = Vec::new();
        for (machine, generation) in r.machines.iter_mut() {
            let mut spec = world
                .targets
                .get(machine)
                .cloned()
                .unwrap_or_else(|| MachineSpec {
                    machine: machine.clone(),
                    ..MachineSpec::default()
                });
            for n in &mut spec.nodes {
                let changed = r.nodes.get(&n.name).is_some_and(|p| p.changed);
                // A node the operator stopped is stopped now; the rest run or stage.
                if n.desired() != DesiredRun::Stopped {
                    n.desired = if changed {
                        DesiredRun::Staged
                    } else {
                        DesiredRun::Running
                    }
                    .into();
                }
            }
            spec.generation = next_generation(world, machine);
            spec.plan_generation = r.generation;
            *generation = spec.generation;
            specs.push(spec);
        }
        tracing::info!(rollout = %r.id, machines = specs.len(), "staging pushed");
        return Decision::again(r, specs);
    }
    let mut waiting = 0;
    for (name, p) in &r.nodes {
        if !p.changed {
            continue;
        }
        let stage_gen = r.machines.get(&p.machine).copied().unwrap_or(0);
        match report(world, &p.machine, name) {
            Some(rep) if rep.status.generation >= stage_gen => {
                let phase = rep.status.phase();
                if phase == NodePhase::Failed {
                    let (name, why) = (name.clone(), rep.status.last_error.clone());
                    return fail(r, &name, &why);
                }
                let ok = if stopping(world, &p.machine, name) {
                    phase == NodePhase::Stopped
                } else {
                    phase == NodePhase::Staged
                        || (phase == NodePhase::Healthy
                            && rep.status.config_digest == p.target_digest)
                };
                if !ok {
                    waiting += 1;
                }
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return Decision::wait(r, None);
    }
    // Stopped nodes are done: nothing releases them.
    for (name, p) in r.nodes.iter_mut() {
        if p.changed && stopping(world, &p.machine, name) {
            p.done = true;
        }
    }
    r.state = Phase::Starting;
    r.tier = 0;
    r.message = "starting tier 1".into();
    tracing::info!(rollout = %r.id, "every changed node staged");
    Decision::again(r, Vec::new())
}

/// Starting: mark released nodes done or failed, move through finished tiers, succeed after
/// the last, and release what the limits allow in the current tier.
fn release(mut r: RolloutRecord, world: &World<'_>) -> Decision {
    let now = world.now_ms;
    let timeout_ms = (r.health_timeout_s * 1000) as i64;
    let mut deadline: Option<i64> = None;
    let mut dirty = false;
    let mut gate = Gate::default();
    let names: Vec<String> = r.nodes.keys().cloned().collect();
    for name in &names {
        let p = &r.nodes[name];
        let Some(at) = p.released_at_ms else { continue };
        if p.done {
            continue;
        }
        let rep = report(world, &p.machine, name);
        let connected = rep.is_some_and(|rep| rep.connected);
        let mut healthy_at = p.healthy_at_ms;
        if let Some(rep) = rep
            && rep.status.generation >= p.release_generation
        {
            let phase = rep.status.phase();
            if phase == NodePhase::Healthy
                && rep.status.config_digest == p.target_digest
                && healthy_at.is_none()
            {
                tracing::info!(rollout = %r.id, node = %name, "node healthy");
                healthy_at = Some(now);
                if let Some(p) = r.nodes.get_mut(name) {
                    p.healthy_at_ms = Some(now);
                }
                dirty = true;
            }
            if phase == NodePhase::Failed {
                let why = rep.status.last_error.clone();
                return fail(r, name, &why);
            }
        }
        // Healthy: done once every balancer fronting its role serves the role again, with a
        // probe newer than the restart (so the balancer's pool holds it before a peer goes).
        if let Some(since) = healthy_at {
            let role = r.nodes[name].role.clone();
            let deadline_ms = since + timeout_ms;
            match gate_role(
                world,
                &mut gate,
                &role,
                since,
                deadline_ms,
                Some(name),
                r.health_timeout_s,
            ) {
                Ok(true) => {
                    if !served::fronting(world, &role).is_empty() {
                        tracing::info!(rollout = %r.id, node = %name, %role, "the balancer serves the role again");
                    }
                    if let Some(p) = r.nodes.get_mut(name) {
                        p.done = true;
                    }
                    dirty = true;
                }
                Ok(false) => {
                    deadline = Some(deadline.map_or(deadline_ms, |x| x.min(deadline_ms)));
                }
                Err(message) => return fail_with(r, message),
            }
            continue;
        }
        if connected && now - at > timeout_ms {
            let why = format!("not healthy within {}s", r.health_timeout_s);
            return fail(r, name, &why);
        }
        let d = at + timeout_ms;
        deadline = Some(deadline.map_or(d, |x| x.min(d)));
    }
    while (r.tier as usize) < r.tiers.len() {
        let tier = &r.tiers[r.tier as usize];
        let all_done = tier
            .iter()
            .all(|n| r.nodes.get(n).is_none_or(|p| !p.changed || p.done));
        if !all_done {
            break;
        }
        r.tier += 1;
        r.message = format!("starting tier {}", r.tier + 1);
        dirty = true;
    }
    if r.tier as usize >= r.tiers.len() {
        return settle(r, world);
    }
    let per_machine = pick_releases(&mut r, now);
    if per_machine.is_empty() {
        if dirty {
            return Decision::again(r, Vec::new());
        }
        let message = gate
            .message
            .take()
            .unwrap_or_else(|| format!("starting tier {}", r.tier + 1));
        if r.message != message {
            r.message = message;
        }
        let wait = deadline.map(|d| Duration::from_millis((d - now).max(0) as u64 + 10));
        return gate_wait(r, gate, wait);
    }
    let mut specs = Vec::new();
    for (machine, released) in &per_machine {
        let Some(mut spec) = world.pushed.get(machine).map(|s| MachineSpec::clone(s)) else {
            continue;
        };
        for n in &mut spec.nodes {
            if released.contains(&n.name) {
                n.desired = DesiredRun::Running.into();
            }
        }
        spec.generation += 1;
        for name in released {
            if let Some(p) = r.nodes.get_mut(name) {
                p.release_generation = spec.generation;
            }
            tracing::info!(rollout = %r.id, node = %name, %machine, generation = spec.generation, "node released");
        }
        specs.push(spec);
    }
    Decision::again(r, specs)
}

/// The changed, unreleased nodes of the current tier that may start now: at most
/// `max_parallel` in flight, and one at a time of a role that already had running nodes (HA
/// peers restart one by one). Marks them released at `now`; returns them by machine.
fn pick_releases(r: &mut RolloutRecord, now: i64) -> BTreeMap<String, Vec<String>> {
    let in_flight = |r: &RolloutRecord, role: Option<&str>| {
        r.nodes
            .values()
            .filter(|p| p.released_at_ms.is_some() && !p.done)
            .filter(|p| role.is_none_or(|x| p.role == x))
            .count()
    };
    let tier = r.tiers[r.tier as usize].clone();
    let mut per_machine: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in &tier {
        let Some(p) = r.nodes.get(name) else { continue };
        if !p.changed || p.released_at_ms.is_some() {
            continue;
        }
        if in_flight(r, None) >= r.max_parallel as usize {
            break;
        }
        let role = p.role.clone();
        if r.ha_roles.contains(&role) && in_flight(r, Some(&role)) >= 1 {
            continue;
        }
        let machine = p.machine.clone();
        if let Some(p) = r.nodes.get_mut(name) {
            p.released_at_ms = Some(now);
        }
        per_machine.entry(machine).or_default().push(name.clone());
    }
    per_machine
}

/// A wait, polling (and asking balancers for fresh probes) while the gate waits on one.
fn gate_wait(r: RolloutRecord, gate: Gate, wait: Option<Duration>) -> Decision {
    let mut d = Decision::wait(r, wait);
    if !gate.ask.is_empty() {
        d.next = Next::Wait(Some(wait.map_or(served::POLL, |w| w.min(served::POLL))));
        d.ask = gate.ask.into_iter().collect();
    }
    d
}

/// Every tier is done: the rollout succeeds once every role a balancer fronts is served (the
/// balancer's own first install counts), with a probe newer than the last restart of the role
/// in this rollout; a balancer that does not serve within the health timeout fails it.
fn settle(mut r: RolloutRecord, world: &World<'_>) -> Decision {
    let now = world.now_ms;
    let settled = *r.settled_at_ms.get_or_insert(now);
    let deadline_ms = settled + (r.health_timeout_s * 1000) as i64;
    let mut gate = Gate::default();
    let mut all = true;
    for role in served::fronted_roles(world) {
        let since = r
            .nodes
            .values()
            .filter(|p| p.role == role)
            .filter_map(|p| p.healthy_at_ms)
            .max()
            .unwrap_or(i64::MIN);
        match gate_role(
            world,
            &mut gate,
            role,
            since,
            deadline_ms,
            None,
            r.health_timeout_s,
        ) {
            Ok(served) => all &= served,
            Err(message) => return fail_with(r, message),
        }
    }
    if all {
        return succeed(r, world);
    }
    if let Some(message) = gate.message.take()
        && r.message != message
    {
        r.message = message;
    }
    let wait = Duration::from_millis((deadline_ms - now).max(0) as u64 + 10);
    gate_wait(r, gate, Some(wait))
}

/// Every tier is done: the targets become the baseline a later rollback restores (each saying
/// which plan generation it came from).
fn succeed(mut r: RolloutRecord, world: &World<'_>) -> Decision {
    r.state = Phase::Succeeded;
    r.message = format!("generation {} is healthy", r.generation);
    let baseline = world
        .targets
        .values()
        .cloned()
        .map(|mut s| {
            s.plan_generation = r.generation;
            s
        })
        .collect();
    tracing::info!(rollout = %r.id, "rollout succeeded");
    Decision {
        record: r,
        push: Vec::new(),
        baseline: Some(baseline),
        next: Next::Wait(None),
        ask: Vec::new(),
    }
}

fn fail(r: RolloutRecord, node: &str, why: &str) -> Decision {
    let machine = r.nodes.get(node).map_or("", |p| p.machine.as_str());
    let message = format!("node {node} on {machine} failed: {why}");
    fail_with(r, message)
}

/// The rollout fails with `message`: it halts, or rolls back, as the plan says.
fn fail_with(mut r: RolloutRecord, message: String) -> Decision {
    tracing::warn!(rollout = %r.id, error = %message, rollback = r.rollback, "rollout failed");
    r.message = message;
    r.state = if r.rollback {
        Phase::RollingBack
    } else {
        Phase::Failed
    };
    Decision::again(r, Vec::new())
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
