//! Machines as hosts ([`super::ClusterOptions::namespaces`]): the cluster's side of
//! [`crate::netns`]. Every machine and the controller get a network namespace on a private
//! bridge; every machine's mount namespace has its own `/etc/hosts` (the file
//! [`super::MachineInfo::hosts_file`], bind-mounted over the real path). The agent and the
//! controller are started inside their namespaces with `nsenter`, and `apimctl` runs in the
//! controller's (the operator works on the controller host). Faults: [`Cluster::partition`],
//! [`Cluster::heal`], [`Cluster::delay_link`], [`Cluster::throttle_link`],
//! [`Cluster::kill_machine`].

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Cluster, ClusterError, MachineInfo, Result, io};
use crate::netns::{self, HostDef, Network};

/// The controller's host name in the network.
pub const CONTROLLER_HOST: &str = "controller";

/// FNV-1a of `bytes`: a stable short digest for names.
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2166136261u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(16777619)
    })
}

/// The `10.250.<subnet>.0/24` of a cluster called `name` (any value works: the range exists
/// only inside the cluster's own namespaces; a per-name one keeps logs telling clusters apart).
pub(super) fn subnet_for(name: &str) -> u8 {
    fnv(name.as_bytes()).to_le_bytes()[0]
}

/// The namespace-name prefix of the network a cluster laid out in `root` keeps
/// ([`Cluster::create_in`], the quickstart): the same on every run in that folder, so a re-run
/// adopts it and `--down` finds it (`/run/netns/<prefix>-hub`, `<prefix>-1`, …).
pub fn kept_network_prefix(root: &Path) -> String {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    format!("apimqs{:08x}", fnv(root.as_os_str().as_encoded_bytes()))
}

/// Takes down the network kept for a cluster in `root`, and what is left of it (processes in
/// its namespaces, mounts, namespaces, bridge and links); returns how many network namespaces
/// it deleted (0 when it has none, without needing root).
pub fn remove_kept_network(root: &Path) -> Result<usize> {
    let root = root.canonicalize().map_err(io("resolve", root))?;
    Ok(Network::remove(
        &root.join("ns"),
        &kept_network_prefix(&root),
    )?)
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

/// The network of `machines` (in order: host `i` is machine `i`) and the controller (last);
/// `kept`: one that outlives this process, adopted when it is already there
/// ([`kept_network_prefix`]).
pub(super) fn create_network(
    root: &Path,
    name: &str,
    machines: &[MachineInfo],
    kept: bool,
) -> Result<Network> {
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
    let net = if kept {
        Network::persistent(
            &root.join("ns"),
            &kept_network_prefix(root),
            subnet_for(name),
            &defs,
        )?
    } else {
        Network::create(&root.join("ns"), subnet_for(name), &defs)?
    };
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

    /// Where the plan's `db.wso2.com` resolves: 127.0.0.1, or as hosts the controller host,
    /// where [`Cluster::forward_database`] makes a server on this host's loopback reachable.
    pub fn database_address(&self) -> Ipv4Addr {
        self.network
            .as_ref()
            .and_then(|n| n.host(CONTROLLER_HOST).ok())
            .map_or(Ipv4Addr::LOCALHOST, |h| h.address)
    }

    /// As hosts: makes the database server on this host's `127.0.0.1:port` reachable from the
    /// machines at [`Cluster::database_address`]`:port` (a forwarder process, `program args`,
    /// which must call [`crate::netns::forward_tcp`] and print one line once listening; its
    /// pid goes in `<root>/pids/db-forward.pid`, its log in `<root>/logs/`). Reuses one that
    /// runs already. Returns its pid.
    pub fn forward_database(&self, mut cmd: Command, port: u16) -> Result<u32> {
        let net = self.need_network()?;
        if let Some(pid) = self.running_pid("db-forward") {
            return Ok(pid);
        }
        let ns = net.host(CONTROLLER_HOST)?.netns_path();
        cmd.arg(&ns)
            .arg(format!("{}:{port}", self.database_address()))
            .arg(format!("127.0.0.1:{port}"));
        let mut child = self.spawn_reporting("db-forward", cmd)?;
        let pid = child.id();
        // Its first line says it listens (or it ended: the error is in its log).
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|o| std::io::BufRead::read_line(&mut std::io::BufReader::new(o), &mut line));
        if !matches!(read, Some(Ok(n)) if n > 0) {
            let _ = child.wait();
            return Err(ClusterError::Build(format!(
                "the database forwarder did not start; see {}",
                self.root().join("logs").join("db-forward.log").display()
            )));
        }
        Ok(pid)
    }

    /// Writes `<root>/apimctl`, a script that runs `apimctl` in the controller's network
    /// namespace (the only place its address is reachable) with the operator's settings of
    /// `env` (see [`Cluster::write_client_env`]); needs root, as `nsenter` does.
    pub fn write_controller_wrapper(&self, env: &Path) -> Result<PathBuf> {
        let ns = self.need_network()?.host(CONTROLLER_HOST)?.netns_path();
        let text = format!(
            "#!/bin/sh\n# apimctl in the quickstart controller's network namespace (machines as \
             hosts); needs root.\nset -e\n. {env}\nexec nsenter --net={ns} -- {bin} \"$@\"\n",
            env = shell_quote(&env.to_string_lossy()),
            ns = shell_quote(&ns.to_string_lossy()),
            bin = shell_quote(&self.bins.apimctl.to_string_lossy()),
        );
        let p = self.root().join("apimctl");
        std::fs::write(&p, text).map_err(io("write", &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &p))?;
        Ok(p)
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

    /// Drops `pct` percent of `machine`'s packets both ways, at random (nftables).
    pub fn lose_packets(&self, machine: &str, pct: u32) -> Result<()> {
        self.machine(machine)?;
        Ok(self.need_network()?.lose_packets(machine, pct)?)
    }

    /// Removes the delay, shaping or loss of `machine`'s link.
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

/// `s` as one word for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
