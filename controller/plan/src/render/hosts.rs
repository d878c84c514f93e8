//! The hosts block every machine gets.

use std::net::IpAddr;

use super::HostsEntry;
use crate::plan::Plan;

/// The hosts block every machine gets: node hostnames, LBs with an address or a machine, and
/// `[hosts]`.
pub(super) fn hosts_block(plan: &Plan) -> Vec<HostsEntry> {
    let mut entries: Vec<HostsEntry> = Vec::new();
    let mut add = |address: IpAddr, name: &str| {
        if entries
            .iter()
            .any(|e| e.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        {
            return;
        }
        match entries.iter_mut().find(|e| e.address == address) {
            Some(e) => e.names.push(name.to_string()),
            None => entries.push(HostsEntry {
                address,
                names: vec![name.to_string()],
            }),
        }
    };
    for m in &plan.machines {
        for n in plan
            .nodes
            .iter()
            .filter(|n| n.machine.value == m.name.value)
        {
            add(m.address.value, &n.hostname.value);
        }
    }
    for lb in plan.load_balancers.values() {
        let placed = lb
            .machine
            .as_ref()
            .and_then(|m| plan.machine(&m.value))
            .map(|m| m.address.value);
        if let Some(a) = placed.or(lb.address.as_ref().map(|a| a.value)) {
            add(a, &lb.hostname.value);
        }
    }
    for (name, addr) in &plan.hosts {
        add(addr.value, &name.value);
    }
    entries
}
