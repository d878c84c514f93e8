//! Several controllers on one store: a second (third…) controller process beside the first,
//! with its own port and data directory and a copy of the first one's store key, and the
//! address list agents and `apimctl` then fail over along.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};

use super::process::kill_child;
use super::{Cluster, ClusterError, Result, free_port, io, polls};

/// A controller process beside the first.
pub struct ExtraController {
    /// Its name (logs `controller-<name>.log`, data `controller-data-<name>`).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    pub(super) child: Option<Child>,
}

impl Cluster {
    /// Starts another controller named `name` on the first one's store (its `[store]`): same
    /// settings, its own port and data directory, a copy of the store key. Waits until it
    /// listens. The first controller must have started once (it made the key).
    pub fn add_controller(&mut self, name: &str) -> Result<SocketAddr> {
        if self.network.is_some() {
            return Err(ClusterError::Build(
                "several controllers run on loopback only, not with ClusterOptions::namespaces"
                    .into(),
            ));
        }
        let root = self.root().to_path_buf();
        let first = std::fs::read_to_string(root.join("controller.toml"))
            .map_err(io("read", &root.join("controller.toml")))?;
        let port = free_port()?;
        let data = root.join(format!("controller-data-{name}"));
        let text: String = first
            .lines()
            .map(|l| {
                if l.starts_with("id = ") {
                    String::new()
                } else if l.starts_with("listen = ") {
                    format!("listen = \"127.0.0.1:{port}\"")
                } else if l.starts_with("data_dir = ") {
                    format!("data_dir = {:?}", data.display().to_string())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!("id = {name:?}\n{text}\n");
        let config = root.join(format!("controller-{name}.toml"));
        std::fs::write(&config, text).map_err(io("write", &config))?;
        copy_private(
            &root.join("controller-data").join("store.key"),
            &data.join("store.key"),
        )?;
        let mut cmd = Command::new(&self.bins.apimctl);
        cmd.args(["controller", "run", "--config"]).arg(&config);
        let child = self.spawn(&format!("controller-{name}"), cmd)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.extra_controllers.push(ExtraController {
            name: name.to_owned(),
            addr,
            child: Some(child),
        });
        polls("the added controller to listen", || {
            crate::probe::tcp_open(addr).then_some(())
        })?;
        Ok(addr)
    }

    /// SIGKILLs the added controller `name`.
    pub fn kill_added_controller(&mut self, name: &str) {
        if let Some(c) = self
            .extra_controllers
            .iter_mut()
            .find(|c| c.name == name)
            .and_then(|c| c.child.take())
        {
            kill_child(c);
        }
    }

    /// Agents started from now on, and `apimctl`, use every controller: the first, then the
    /// added ones, in that order.
    pub fn use_every_controller(&mut self) {
        let mut list = vec![self.controller_addr.to_string()];
        list.extend(self.extra_controllers.iter().map(|c| c.addr.to_string()));
        self.controller_list = Some(list.join(","));
    }

    /// The address list agents and `apimctl` dial.
    pub fn controller_list(&self) -> String {
        self.controller_list
            .clone()
            .unwrap_or_else(|| self.controller_addr.to_string())
    }
}

fn copy_private(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let bytes = std::fs::read(from).map_err(io("read", from))?;
    if let Some(dir) = to.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
    }
    super::write_private(to, &bytes)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", to))
        .map_err(|e: ClusterError| e)
}
