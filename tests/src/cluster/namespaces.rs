//! Machines as hosts ([`super::ClusterOptions::namespaces`]): the cluster's side of
//! [`crate::netns`]. Every machine and the controller get a network namespace on a private
//! bridge; every machine's mount namespace has its own `/etc/hosts` (the file
//! [`super::MachineInfo::hosts_file`], bind-mounted over the real path). The agent and the
//! controller are started inside their namespaces with `nsenter`, and `apimctl` runs in the
//! controller's (the operator works on the controller host). Faults: [`Cluster::partition`],
//! [`Cluster::heal`], [`Cluster::delay_link`], [`Cluster::throttle_link`],
//! [`Cluster::kill_machine`].

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::{Cluster, ClusterError, MachineInfo, Result, io};
use crate::netns::{self, HostDef, Network};

/// The controller's host name in the network.
pub const CONTROLLER_HOST: &str = "controller";

/// The `10.250.<subnet>.0/24` of a cluster called `name` (any value works: the range exists
/// only inside the cluster's own namespaces; a per-name one keeps logs telling clusters apart).
pub(super) fn subnet_for(name: &str) -> u8 {
    let h = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    h.to_le_bytes()[0]
}

/// The address of machine `index` (1-based) of cluster `name` in namespaces mode.
pub(super) fn machine_address(name: &str, index: u8) -> Ipv4Addr {
    netns::address(subnet_for(name), index)
}

/// The private hosts file of a machine: a copy of this host's `/etc/hosts` (its foreign lines
/// must survive the agent's edits, as on a VM).
pub(super) fn seed_hosts_file(path: &Path) -> Result<()> {
    match std::fs::copy(netns::ETC_HOSTS, path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(path, "127.0.0.1 localhost\n").map_err(io("write", path))
        }
        Err(e) => Err(io("copy /etc/hosts to", path)(e)),
    }
}

/// The network of `machines` (in order: host `i` is machine `i`) and the controller (last).
pub(super) fn create_network(root: &Path, name: &str, machines: &[MachineInfo]) -> Result<Network> {
    let mut defs: Vec<HostDef> = machines
        .iter()
        .map(|m| HostDef {
            name: m.name.clone(),
            hosts_file: Some(m.hosts_file.clone()),
        })
        .collect();
    defs.push(HostDef {
        name: CONTROLLER_HOST.into(),
        hosts_file: None,
    });
    let net = Network::create(&root.join("ns"), subnet_for(name), &defs)?;
    for (m, h) in machines.iter().zip(&net.hosts) {
        if m.address != h.address {
            return Err(ClusterError::Build(format!(
                "machine {} planned at {} but its namespace has {}",
                m.name, m.address, h.address
            )));
        }
    }
    Ok(net)
}

impl Cluster {
    /// The namespaces, when the cluster runs as hosts.
    pub fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }

    fn need_network(&self) -> Result<&Network> {
        self.network.as_ref().ok_or_else(|| {
            ClusterError::Build(
                "this cluster runs on loopback; faults need ClusterOptions::namespaces".into(),
            )
        })
    }

    /// A command running `program` on `host` (a machine, or [`CONTROLLER_HOST`]): inside its
    /// namespaces when the cluster has them, else as is.
    pub(super) fn command_on(&self, host: &str, program: &Path) -> Command {
        match self.network.as_ref().and_then(|n| n.host(host).ok()) {
            Some(h) => {
                let mut c = Command::new("nsenter");
                c.args(h.nsenter_args()).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Pulls `machine`'s cable: its link goes down at the bridge; its agent and servers keep
    /// running, cut off from every other host.
    pub fn partition(&self, machine: &str) -> Result<()> {
        self.machine(machine)?;
        Ok(self.need_network()?.link_down(machine)?)
    }

    /// Plugs `machine`'s cable back in.
    pub fn heal(&self, machine: &str) -> Result<()> {
        self.machine(machine)?;
        Ok(self.need_network()?.link_up(machine)?)
    }

    /// Delays every packet leaving `machine` by `delay_ms` (`tc netem`; the kernel must have
    /// it).
    pub fn delay_link(&self, machine: &str, delay_ms: u32) -> Result<()> {
        self.machine(machine)?;
        Ok(self.need_network()?.netem(machine, delay_ms, 0)?)
    }

    /// Shapes `machine`'s link to `kbit` kbit/s each way (`tc tbf`).
    pub fn throttle_link(&self, machine: &str, kbit: u32) -> Result<()> {
        self.machine(machine)?;
        Ok(self.need_network()?.throttle(machine, kbit)?)
    }

    /// Removes the delay or shaping of `machine`'s link.
    pub fn clear_link(&self, machine: &str) -> Result<()> {
        self.machine(machine)?;
        Ok(self.need_network()?.clear_link(machine)?)
    }

    /// Kills `machine`: every process in its namespaces at once (agent and servers); returns
    /// how many there were.
    pub fn kill_machine(&mut self, machine: &str) -> Result<usize> {
        self.machine(machine)?;
        let n = self.need_network()?.kill_host(machine)?;
        if let Some(mut c) = self.agents.remove(machine) {
            let _ = c.wait();
        }
        Ok(n)
    }
}
