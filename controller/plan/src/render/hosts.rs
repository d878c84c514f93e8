//! The hosts block every machine gets.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::HostsEntry;
use crate::plan::Plan;

/// The hosts block every machine gets: node hostnames, LBs with an address or a machine, and
/// `[hosts]`.
pub(super) fn hosts_block(plan: &Plan) -> Vec<HostsEntry> {
    let mut entries: Vec<HostsEntry> = Vec::new();
    // Names already listed (lowercase) and each address's entry: looked up, not scanned, so a
    // plan of thousands of nodes renders in linear time.
    let mut seen: HashSet<String> = HashSet::new();
    let mut by_address: HashMap<IpAddr, usize> = HashMap::new();
    let mut add = |address: IpAddr, name: &str| {
        if !seen.insert(name.to_ascii_lowercase()) {
            return;
        }
        match by_address.get(&address) {
            Some(&i) => entries[i].names.push(name.to_string()),
            None => {
                by_address.insert(address, entries.len());
                entries.push(HostsEntry {
                    address,
                    names: vec![name.to_string()],
                });
            }
        }
    };
    let mut nodes_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for n in &plan.nodes {
        nodes_of
            .entry(n.machine.value.as_str())
            .or_default()
            .push(&n.hostname.value);
    }
    for m in &plan.machines {
        for hostname in nodes_of.get(m.name.value.as_str()).into_iter().flatten() {
            add(m.address.value, hostname);
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
