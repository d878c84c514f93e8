//! A machine that runs no node, for a load balancer the plan places on it
//! (`[load_balancers.<role>] machine`).

use std::net::Ipv4Addr;

use super::{Cluster, ClusterError, MachineInfo, io};
use crate::fakejdk::{JdkSettings, MachineSettings, make_fake_jdk};

impl Cluster {
    /// Adds machine `name` with no node (its agent starts with the others in
    /// [`Cluster::start`]): the next loopback address of the cluster's range, its own hosts
    /// file, install root and state dir. Returns its address.
    pub fn add_bare_machine(&mut self, name: &str) -> super::Result<Ipv4Addr> {
        let first = self
            .machines
            .first()
            .map(|m| m.address.octets())
            .ok_or_else(|| {
                ClusterError::Build("a bare machine needs the cluster's first".into())
            })?;
        let idx = u8::try_from(self.machines.len() + 1)
            .map_err(|_| ClusterError::Build("too many machines".into()))?;
        let address = Ipv4Addr::new(first[0], first[1], first[2], idx);
        let md = self.root().join("machines").join(name);
        let hosts_file = md.join("hosts");
        std::fs::create_dir_all(&md).map_err(io("create", &md))?;
        std::fs::write(&hosts_file, "127.0.0.1 localhost\n").map_err(io("write", &hosts_file))?;
        let jdk = md.join("jdk");
        let ms = MachineSettings::new(address.into(), &hosts_file);
        let mut js = JdkSettings::new(ms, &self.bins.simjava);
        js.java_version = self.topology.java_version().to_string();
        make_fake_jdk(&jdk, &js)?;
        let install_root = md.join("root");
        std::fs::create_dir_all(&install_root).map_err(io("create", &install_root))?;
        self.machines.push(MachineInfo {
            name: name.to_string(),
            address,
            install_root,
            state_dir: md.join("state"),
            hosts_file,
            jdk,
            nodes: Vec::new(),
        });
        Ok(address)
    }
}
