//! What a test cluster looks like: the topologies, their nodes, and the plan they make.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{Result, io};
use crate::simpack::{Filler, PackKind};

/// The seed topologies a cluster can be laid out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// WSO2 API Manager 3.2.0, five profiles, one machine each.
    V3FiveNode,
    /// [`Topology::V3FiveNode`] with a second gateway (`gw-2`, on `vm-gw-2`): gateways in HA,
    /// which share their deployed APIs (`[gateway_artifacts]`).
    V3TwoGateways,
    /// WSO2 API Manager 4.5.0 split packs in HA: two control planes, two traffic managers,
    /// two gateways, one machine each.
    V45Ha,
    /// WSO2 API Manager 3.2.0 at scale: this many machines, each running all five profiles
    /// (offsets 0-4), every role behind a load balancer (benchmarks: 10 machines = 50 nodes).
    V3Wide(u8),
    /// WSO2 API Manager 4.`minor`.0 (4.0–4.4, one all-in-one pack) distributed: a control
    /// plane, a traffic manager and a gateway, one machine each. The same layout at another
    /// `minor` is an upgrade (see [`super::Cluster::use_topology`]).
    V4 {
        /// 0 to 4.
        minor: u8,
    },
}

/// The 4.0–4.4 releases [`Topology::V4`] lays out, by minor.
const V4_RELEASES: [(&str, &str); 5] = [
    ("wso2am-4.0.0", "4.0.0"),
    ("wso2am-4.1.0", "4.1.0"),
    ("wso2am-4.2.0", "4.2.0"),
    ("wso2am-4.3.0", "4.3.0"),
    ("wso2am-4.4.0", "4.4.0"),
];

/// The release of a [`Topology::V4`] (`minor` past 4 is a test's mistake).
fn v4(minor: u8) -> (&'static str, &'static str) {
    *V4_RELEASES
        .get(usize::from(minor))
        .unwrap_or_else(|| panic!("Topology::V4 covers 4.0 to 4.4, not 4.{minor}"))
}

/// One node of a topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDef {
    /// Node name.
    pub name: String,
    /// Its machine's name.
    pub machine: String,
    /// Portable role.
    pub role: String,
    /// Its hostname.
    pub hostname: String,
    /// `gateway_id` (4.5 gateways).
    pub gateway_id: Option<String>,
    /// Port offset.
    pub offset: u16,
}

impl Topology {
    /// The product string of the plan.
    pub fn product(self) -> &'static str {
        match self {
            Topology::V3FiveNode | Topology::V3TwoGateways | Topology::V3Wide(_) => "wso2am-3.2.0",
            Topology::V45Ha => "wso2am-4.5.0",
            Topology::V4 { minor } => v4(minor).0,
        }
    }

    /// A JDK version the product supports (3.2, 4.0 and 4.1 run on 8 or 11, 4.2 on 11 or 17,
    /// 4.3 to 4.5 on 11 to 21).
    pub fn java_version(self) -> &'static str {
        match self {
            Topology::V3FiveNode | Topology::V3TwoGateways | Topology::V3Wide(_) => "11.0.21",
            Topology::V4 { minor: 0 | 1 } => "11.0.21",
            Topology::V45Ha | Topology::V4 { .. } => "17.0.9",
        }
    }

    /// The packs' keystore format (`[tls] keystore_type`).
    pub fn keystore_type(self) -> &'static str {
        match self {
            Topology::V3FiveNode | Topology::V3TwoGateways | Topology::V3Wide(_) => "JKS",
            Topology::V4 { minor } if minor < 4 => "JKS",
            Topology::V45Ha | Topology::V4 { .. } => "PKCS12",
        }
    }

    /// `[load_balancers]`: (role, LB hostname) for every role with several nodes.
    pub fn load_balancers(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Topology::V3FiveNode | Topology::V4 { .. } => Vec::new(),
            Topology::V3TwoGateways => vec![("gateway", "gw.wso2.com")],
            Topology::V45Ha => vec![
                ("control-plane", "api.am.wso2.com"),
                ("traffic-manager", "tm.am.wso2.com"),
                ("gateway", "gw.wso2.com"),
            ],
            Topology::V3Wide(_) => vec![
                ("key-manager", "km.wso2.com"),
                ("traffic-manager", "tm.wso2.com"),
                ("publisher", "pub.wso2.com"),
                ("devportal", "dp.wso2.com"),
                ("gateway", "gw.wso2.com"),
            ],
        }
    }

    /// (distribution key, pack kind, version) of every pack the plan needs.
    pub fn packs(self) -> Vec<(&'static str, PackKind, &'static str)> {
        match self {
            Topology::V3FiveNode | Topology::V3TwoGateways | Topology::V3Wide(_) => {
                vec![("default", PackKind::AllInOne, "3.2.0")]
            }
            Topology::V45Ha => vec![
                ("control-plane", PackKind::ApiControlPlane, "4.5.0"),
                ("gateway", PackKind::UniversalGateway, "4.5.0"),
                ("traffic-manager", PackKind::TrafficManager, "4.5.0"),
            ],
            Topology::V4 { minor } => vec![("default", PackKind::AllInOne, v4(minor).1)],
        }
    }

    /// Every node: one machine each (`vm-<node>`), or five per machine for [`Topology::V3Wide`].
    pub fn nodes(self) -> Vec<NodeDef> {
        const V3: [(&str, &str); 5] = [
            ("km", "key-manager"),
            ("tm", "traffic-manager"),
            ("pub", "publisher"),
            ("dp", "devportal"),
            ("gw", "gateway"),
        ];
        if let Topology::V3Wide(machines) = self {
            let mut v = Vec::new();
            for m in 1..=machines {
                for (offset, (short, role)) in (0u16..).zip(V3) {
                    v.push(NodeDef {
                        name: format!("{short}-{m}"),
                        machine: format!("vm-{m}"),
                        role: role.to_string(),
                        hostname: format!("{short}-{m}.wso2.com"),
                        gateway_id: None,
                        offset,
                    });
                }
            }
            return v;
        }
        let list: &[(&str, &str, &str, Option<&str>)] = match self {
            Topology::V3FiveNode => &[
                ("km-1", "key-manager", "km.wso2.com", None),
                ("tm-1", "traffic-manager", "tm.wso2.com", None),
                ("pub-1", "publisher", "pub.wso2.com", None),
                ("dp-1", "devportal", "dp.wso2.com", None),
                ("gw-1", "gateway", "gw.wso2.com", None),
            ],
            Topology::V3TwoGateways => &[
                ("km-1", "key-manager", "km.wso2.com", None),
                ("tm-1", "traffic-manager", "tm.wso2.com", None),
                ("pub-1", "publisher", "pub.wso2.com", None),
                ("dp-1", "devportal", "dp.wso2.com", None),
                ("gw-1", "gateway", "gw-1.wso2.com", None),
                ("gw-2", "gateway", "gw-2.wso2.com", None),
            ],
            Topology::V45Ha => &[
                ("cp-1", "control-plane", "apim-cp-1", None),
                ("cp-2", "control-plane", "apim-cp-2", None),
                ("tm-1", "traffic-manager", "traffic-manager-1", None),
                ("tm-2", "traffic-manager", "traffic-manager-2", None),
                ("gw-1", "gateway", "gateway-1", Some("gateway_00")),
                ("gw-2", "gateway", "gateway-2", Some("gateway_01")),
            ],
            Topology::V4 { .. } => &[
                ("cp-1", "control-plane", "cp.wso2.com", None),
                ("tm-1", "traffic-manager", "tm.wso2.com", None),
                ("gw-1", "gateway", "gw.wso2.com", None),
            ],
            Topology::V3Wide(_) => &[],
        };
        list.iter()
            .map(|(n, r, h, g)| NodeDef {
                name: (*n).to_string(),
                machine: format!("vm-{n}"),
                role: (*r).to_string(),
                hostname: (*h).to_string(),
                gateway_id: g.map(str::to_string),
                offset: 0,
            })
            .collect()
    }
}

/// How to lay a cluster out.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The topology.
    pub topology: Topology,
    /// A name unique among concurrently running clusters: it picks the 127.x addresses.
    pub name: String,
    /// The simulated servers' delay between start and ready.
    pub startup_delay_ms: u64,
    /// Padding for realistically sized packs (benchmarks).
    pub filler: Option<Filler>,
    /// Extra lines for the controller's configuration file, e.g. `agent_cert_ttl = "15s"`.
    pub controller_settings: Vec<String>,
    /// Machines as hosts: every machine, and the controller, in its own network namespace on
    /// a private bridge, every machine in its own mount namespace where the agent edits the
    /// real `/etc/hosts` path (see [`crate::netns`]; needs root).
    pub namespaces: bool,
}

impl ClusterOptions {
    /// Options for `topology` with a short simulated start delay.
    pub fn new(topology: Topology, name: impl Into<String>) -> ClusterOptions {
        ClusterOptions {
            topology,
            name: name.into(),
            startup_delay_ms: 200,
            filler: None,
            controller_settings: Vec::new(),
            namespaces: false,
        }
    }
}

/// What varies between the plans a test applies to one cluster.
#[derive(Debug, Clone)]
pub struct PlanParams {
    /// `[rollout] on_failure`: `halt` or `rollback`.
    pub on_failure: String,
    /// `[rollout] health_timeout`.
    pub health_timeout: String,
    /// `[rollout] max_parallel`.
    pub max_parallel: u32,
    /// `[overrides]` entries: (scope, deployment.toml fragment).
    pub overrides: Vec<(String, String)>,
    /// `[secure_vault] enabled`.
    pub secure_vault: bool,
    /// The databases on a real server; `None`: the packs' own H2 (each node its own copy).
    pub database: Option<ServerDb>,
    /// `run_as` per machine: (machine, Unix user); the servers there run as that user.
    pub run_as: Vec<(String, String)>,
    /// `[load_balancers]` placed on a machine: (role, machine); apimctl installs NGINX there.
    /// The other roles' LB names resolve to their first node's machine.
    pub balancers: Vec<(String, String)>,
}

/// A plan's databases on a real MySQL/MariaDB or PostgreSQL server (reached as `db.wso2.com`,
/// [`super::Cluster::database_address`]).
#[derive(Debug, Clone)]
pub struct ServerDb {
    /// `mysql` or `postgres`.
    pub db_type: &'static str,
    /// The server's port on 127.0.0.1.
    pub port: u16,
    /// `[databases.apim_db]`: name, user, password.
    pub apim: (String, String, String),
    /// `[databases.shared_db]`: name, user, password.
    pub shared: (String, String, String),
    /// `init = "if-empty"`.
    pub init: bool,
    /// The driver jar `[drivers]` names (file name, bytes); `None`: no `[drivers]`.
    pub driver: Option<(String, Vec<u8>)>,
}

/// `[drivers]` and `[databases.*]` for `db` (H2 when `None`).
fn database_section(db: Option<&ServerDb>) -> String {
    let Some(db) = db else {
        return ["apim_db", "shared_db"]
            .iter()
            .map(|id| {
                format!(
                    "\n[databases.{id}]\ntype = \"h2\"\nusername = \"wso2carbon\"\n\
                     password = {{ file = \"secrets/h2-password\" }}\n"
                )
            })
            .collect();
    };
    let mut s = String::new();
    if let Some((file, bytes)) = &db.driver {
        s.push_str(&format!(
            "\n[drivers]\n{} = {{ path = \"drivers/{file}\", sha256 = \"{}\" }}\n",
            db.db_type,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
        ));
    }
    for (id, (name, user, _)) in [("apim_db", &db.apim), ("shared_db", &db.shared)] {
        s.push_str(&format!(
            "\n[databases.{id}]\ntype = \"{}\"\nhost = \"db.wso2.com\"\nport = {}\nname = \"{name}\"\n\
             username = \"{user}\"\npassword = {{ file = \"secrets/{id}-password\" }}\n",
            db.db_type, db.port
        ));
        if db.init {
            s.push_str("init = \"if-empty\"\n");
        }
    }
    s
}

impl Default for PlanParams {
    fn default() -> Self {
        PlanParams {
            on_failure: "halt".into(),
            health_timeout: "2m".into(),
            max_parallel: 2,
            overrides: Vec::new(),
            secure_vault: false,
            database: None,
            run_as: Vec::new(),
            balancers: Vec::new(),
        }
    }
}

impl super::Cluster {
    /// The plan text for `params`.
    pub fn plan_text(&self, params: &PlanParams) -> String {
        let mut s = format!(
            r#"# Generated by the apim-e2e harness: {topology:?} on loopback.
[cluster]
name = "apim-e2e"
product = "{product}"
install_dir = "/opt/wso2"
java_home = "/usr/lib/jvm/java-17-openjdk-amd64"

[distributions]
"#,
            topology = self.topology,
            product = self.topology.product()
        );
        for (key, p) in &self.packs {
            s.push_str(&format!(
                "{key} = {{ path = \"dist/{}\", sha256 = \"{}\" }}\n",
                p.path
                    .file_name()
                    .map_or(String::new(), |f| f.to_string_lossy().into_owned()),
                p.sha256
            ));
        }
        s.push_str(
            r#"
[admin]
username = "admin"
password = { file = "secrets/admin-password" }

[hosts]
"#,
        );
        s.push_str(&format!(
            "\"db.wso2.com\" = \"{}\"\n",
            self.database_address()
        ));
        s.push_str(&database_section(params.database.as_ref()));
        // The packs keep the `.jks` names; from 4.4 on their content is PKCS12.
        s.push_str(&format!(
            "\n[tls]\nissuer = \"cluster-ca\"\nkeystore_type = \"{}\"\nkeystore_file = \"wso2carbon.jks\"\nkeystore_password = {{ file = \"secrets/keystore-password\" }}\n",
            self.topology.keystore_type()
        ));
        // Without a placed balancer, each LB name resolves to the role's first node's machine.
        let lbs = self.topology.load_balancers();
        if !lbs.is_empty() {
            s.push_str("\n[load_balancers]\n");
        }
        for (role, hostname) in lbs {
            if let Some((_, machine)) = params.balancers.iter().find(|(r, _)| r == role) {
                s.push_str(&format!(
                    "{role} = {{ hostname = \"{hostname}\", machine = \"{machine}\" }}\n"
                ));
                continue;
            }
            let n = self.topology.nodes().into_iter().find(|n| n.role == role);
            let addr = n
                .and_then(|n| self.machine_of(&n.name).ok().map(|m| m.address))
                .unwrap_or(Ipv4Addr::LOCALHOST);
            s.push_str(&format!(
                "{role} = {{ hostname = \"{hostname}\", address = \"{addr}\" }}\n"
            ));
        }
        for m in &self.machines {
            s.push_str(&format!(
                "\n[[machines]]\nname = \"{}\"\naddress = \"{}\"\njava_home = {:?}\n",
                m.name,
                m.address,
                m.jdk.display().to_string()
            ));
            if let Some((_, user)) = params.run_as.iter().find(|(name, _)| *name == m.name) {
                s.push_str(&format!("run_as = \"{user}\"\n"));
            }
        }
        for n in self.topology.nodes() {
            s.push_str(&format!(
                "\n[[nodes]]\nname = \"{}\"\nmachine = \"{}\"\nrole = \"{}\"\nhostname = \"{}\"\noffset = {}\n",
                n.name, n.machine, n.role, n.hostname, n.offset
            ));
            if let Some(g) = &n.gateway_id {
                s.push_str(&format!("gateway_id = \"{g}\"\n"));
            }
        }
        let env = if matches!(self.topology, Topology::V45Ha | Topology::V4 { .. }) {
            "\n[[gateway_environments]]\nname = \"Default\"\ntype = \"hybrid\"\nlabel = \"Default\"\n"
        } else {
            "\n[[gateway_environments]]\nname = \"Production and Sandbox\"\ntype = \"hybrid\"\n"
        };
        s.push_str(env);
        s.push_str(&format!(
            "\n[rollout]\nmax_parallel = {}\nhealth_timeout = \"{}\"\non_failure = \"{}\"\n",
            params.max_parallel, params.health_timeout, params.on_failure
        ));
        if params.secure_vault {
            s.push_str("\n[secure_vault]\nenabled = true\n");
        }
        if !params.overrides.is_empty() {
            s.push_str("\n[overrides]\n");
            for (scope, text) in &params.overrides {
                s.push_str(&format!("\"{scope}\" = '''\n{}\n'''\n", text.trim_end()));
            }
        }
        s
    }

    /// Writes the plan for `params` as `<root>/<file>` and returns its path.
    pub fn write_plan(&self, file: &str, params: &PlanParams) -> Result<PathBuf> {
        let root = self.root();
        let secrets = root.join("secrets");
        std::fs::create_dir_all(&secrets).map_err(io("create", &secrets))?;
        let mut files = vec![(secrets.join("h2-password"), b"wso2carbon".to_vec())];
        if let Some(db) = &params.database {
            files.push((
                secrets.join("apim_db-password"),
                db.apim.2.clone().into_bytes(),
            ));
            files.push((
                secrets.join("shared_db-password"),
                db.shared.2.clone().into_bytes(),
            ));
            if let Some((name, bytes)) = &db.driver {
                let dir = root.join("drivers");
                std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                files.push((dir.join(name), bytes.clone()));
            }
        }
        for (path, bytes) in files {
            std::fs::write(&path, bytes).map_err(io("write", &path))?;
        }
        let p = root.join(file);
        std::fs::write(&p, self.plan_text(params)).map_err(io("write", &p))?;
        Ok(p)
    }
}
