//! The load balancer gate of a rollout, pure like [`super::decide`]: a role is *fronted* when a
//! managed service of the target specs probes it (a balancer's probe is named after the role it
//! fronts), and it is *served* only when that balancer, running its target configuration,
//! answered for the role in a probe round that began after a given time (a peer's restart).
//! Probe times are the controller's (`ServiceStatus.probed_at_ms`), so no clocks need agree.

use std::collections::BTreeSet;
use std::time::Duration;

use apim_proto::text::printable;
use apim_proto::v1::ManagedService;

use super::World;

/// How often a rollout waiting on a balancer looks again (and asks its agent for a report):
/// the agent probes about once a second.
pub const POLL: Duration = Duration::from_secs(1);

/// At most this much of a probe's detail (agent text) goes into a rollout message.
const DETAIL_MAX: usize = 200;

/// A balancer of the target specs.
#[derive(Debug, Clone, Copy)]
pub struct Front<'w> {
    /// Its machine.
    pub machine: &'w str,
    /// Its managed service.
    pub service: &'w ManagedService,
}

/// Every balancer of the target specs that fronts `role`.
pub fn fronting<'w>(world: &World<'w>, role: &str) -> Vec<Front<'w>> {
    let targets = world.targets;
    targets
        .iter()
        .flat_map(|(machine, spec)| {
            spec.services
                .iter()
                .filter(|s| s.probes.iter().any(|p| p.name == role))
                .map(move |service| Front {
                    machine: machine.as_str(),
                    service,
                })
        })
        .collect()
}

/// Every role some balancer of the target specs fronts.
pub fn fronted_roles<'w>(world: &World<'w>) -> BTreeSet<&'w str> {
    let targets = world.targets;
    targets
        .values()
        .flat_map(|s| &s.services)
        .flat_map(|s| &s.probes)
        .map(|p| p.name.as_str())
        .collect()
}

/// Whether a balancer serves a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// It answered for the role in a probe round newer than asked.
    Yes,
    /// Not (yet): why, escaped for an operator's terminal.
    No(String),
    /// Its agent is not connected: nothing can be known (waited for, never a failure).
    Unreachable,
}

/// Whether balancer `front` serves `role` with a probe round that began after `since_ms`.
pub fn served(world: &World<'_>, front: Front<'_>, role: &str, since_ms: i64) -> Served {
    if !world.connected.contains(front.machine) {
        return Served::Unreachable;
    }
    let key = (front.machine.to_owned(), front.service.name.clone());
    let Some(status) = world.services.get(&key) else {
        return Served::No("its agent has not reported the balancer yet".into());
    };
    let error = || {
        if status.last_error.is_empty() {
            String::new()
        } else {
            format!(": {}", clip(&status.last_error))
        }
    };
    if status.digest != front.service.digest {
        return Served::No(format!("its configuration is not applied yet{}", error()));
    }
    if !status.running {
        return Served::No(format!("it is not running{}", error()));
    }
    let Some(probe) = status.probes.iter().find(|p| p.name == role) else {
        return Served::No(format!("no probe result for {role} yet"));
    };
    if !probe.ok {
        return Served::No(format!("probe: {}", clip(&probe.detail)));
    }
    match status.probed_at_ms {
        Some(at) if at > since_ms => Served::Yes,
        _ => Served::No("no probe newer than the restart yet".into()),
    }
}

/// Agent text, escaped and cut short.
fn clip(s: &str) -> String {
    let s = printable(s);
    match s.char_indices().nth(DETAIL_MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}
