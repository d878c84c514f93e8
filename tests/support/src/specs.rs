//! NodeSpecs and MachineSpecs made the way the controller makes them: a plan is validated
//! (`apim_plan::validate::check`), rendered (`apim_plan::render::render`) and turned into what
//! its agents receive (`apim_controller::spec::machine_spec`, with certificates issued by a
//! product PKI in a temp dir when the plan's `[tls] issuer` is `cluster-ca`). Write the plan as
//! text ([`render`]) or with a [`PlanBuilder`] for the usual shapes; per-test edits of a spec
//! end with [`digest`], as the controller's own do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use apim_controller::pki::ProductPki;
use apim_controller::spec::{self, SpecInputs};
use apim_e2e::simpack::PackInfo;
use apim_plan::catalogue::{PackKind, Product, Role};
use apim_plan::plan::Issuer;
use apim_plan::render::{ClusterRender, NodeRender};
use apim_plan::secrets::ResolvedSecrets;
use apim_plan::validate::{self, Options};
use apim_proto::v1::{DesiredRun, MachineSpec, NodeSpec};
use tempfile::TempDir;

use crate::plans::{secrets, tiny_pack};

/// A rendered plan, ready to give out the specs its agents would receive.
pub struct Rendered {
    /// The render.
    pub cluster: ClusterRender,
    /// Pack sizes by sha256 (the specs' `pack.size`; unknown packs are 0, as on a controller).
    pub pack_sizes: BTreeMap<String, u64>,
    /// The product PKI (`cluster-ca` plans only) and the temp dir it lives in, made when a spec
    /// is first asked for.
    pki: OnceLock<Option<(TempDir, ProductPki)>>,
}

/// Validates and renders `text` as the controller does an applied plan (packs are not read;
/// secrets are the test plans' [`secrets`]). Panics with the report if the plan is invalid.
pub fn render(text: &str) -> Rendered {
    let env = ResolvedSecrets(secrets().into_iter().collect());
    let (plan, report) = validate::check(
        Path::new("plan.toml"),
        text,
        &env,
        Options {
            verify_packs: false,
        },
    );
    let plan = plan.unwrap_or_else(|| panic!("{}\n{text}", report.render()));
    Rendered {
        cluster: apim_plan::render::render(&plan, &env, &apim_plan::pack::PackSet::none())
            .expect("render"),
        pack_sizes: BTreeMap::new(),
        pki: OnceLock::new(),
    }
}

impl Rendered {
    fn pki(&self) -> Option<&ProductPki> {
        self.pki
            .get_or_init(|| {
                let cluster = &self.cluster;
                cluster
                    .nodes()
                    .any(|n| n.tls.issuer == Issuer::ClusterCa)
                    .then(|| {
                        let dir = tempfile::tempdir().expect("pki dir");
                        let pki = ProductPki::load_or_create(dir.path(), &cluster.cluster)
                            .expect("product PKI");
                        (dir, pki)
                    })
            })
            .as_ref()
            .map(|(_, pki)| pki)
    }

    /// The spec of `machine` at `generation` (also its plan generation), every node RUNNING.
    pub fn machine(&self, machine: &str, generation: u64) -> MachineSpec {
        let running = |_: &NodeRender| DesiredRun::Running;
        let inputs = SpecInputs {
            generation,
            plan_generation: generation,
            pack_sizes: &self.pack_sizes,
            pki: self.pki(),
            provided: None,
            issue: true,
            desired: &running,
            restarts: &BTreeMap::new(),
        };
        spec::machine_spec(&self.cluster, machine, &inputs)
            .expect("node certificates")
            .unwrap_or_else(|| panic!("the plan has no machine `{machine}`"))
    }

    /// The spec of node `name`, RUNNING.
    pub fn node(&self, name: &str) -> NodeSpec {
        let machine = self
            .cluster
            .node(name)
            .unwrap_or_else(|| panic!("the plan has no node `{name}`"))
            .machine
            .clone();
        self.machine(&machine, 1)
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .expect("the node is on its machine")
    }
}

/// Sets `spec.config_digest` as the controller does (after a test changed the spec).
pub fn digest(spec: &mut NodeSpec) {
    spec.config_digest = spec::config_digest(spec);
}

/// A small spec for `machine` at `generation`: a 3.x key manager per name in `nodes` (offsets
/// 0, 1, …), the cluster's other roles on another machine, the packs' own keystores.
pub fn spec(machine: &str, generation: u64, nodes: &[&str]) -> MachineSpec {
    let mut plan = PlanBuilder::new("3.2.0")
        .issuer("pack-default")
        .machine(machine, [10, 0, 0, 11]);
    for (offset, name) in (0u16..).zip(nodes) {
        plan = plan.node(name, machine, "key-manager", offset);
    }
    plan.with_peers("vm-peers", [10, 0, 0, 99])
        .render()
        .machine(machine, generation)
}

/// One `[[nodes]]` entry.
#[derive(Clone, Debug)]
struct NodeLine {
    name: String,
    machine: String,
    role: Role,
    offset: u16,
}

/// A plan for the usual test shapes: one release, machines, nodes with a role (or the
/// release's profile name) and an offset, `hostname = "<node>.test"`, databases and secrets
/// from [`secrets`], a load balancer `<role>.lb.test` for every role with several nodes, and
/// `[overrides]` (`[apimsim]` switches for the simulated servers go there).
#[derive(Clone, Debug)]
pub struct PlanBuilder {
    product: Product,
    java_home: String,
    issuer: String,
    machines: Vec<(String, IpAddr)>,
    nodes: Vec<NodeLine>,
    packs: BTreeMap<PackKind, (String, u64)>,
    overrides: Vec<(String, String)>,
}

impl PlanBuilder {
    /// A plan of API Manager `release` (`"4.2.0"`), with the cluster CA issuing keystores and
    /// [`tiny_pack`]s as its packs.
    pub fn new(release: &str) -> PlanBuilder {
        let product = Product::parse(&format!("wso2am-{release}")).expect("a supported release");
        let packs = product
            .packs()
            .into_iter()
            .map(|kind| {
                let bytes = tiny_pack(&product.pack_top_dir(kind));
                (kind, (apim_plan::digest(&bytes), bytes.len() as u64))
            })
            .collect();
        PlanBuilder {
            product,
            java_home: "/usr/lib/jvm/java-17".into(),
            issuer: "cluster-ca".into(),
            machines: Vec::new(),
            nodes: Vec::new(),
            packs,
            overrides: Vec::new(),
        }
    }

    /// `[cluster] java_home`.
    pub fn java_home(mut self, path: impl AsRef<Path>) -> Self {
        self.java_home = path.as_ref().display().to_string();
        self
    }

    /// `[tls] issuer`: `cluster-ca` (keystores in the specs) or `pack-default` (none).
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// A machine at `address`.
    pub fn machine(mut self, name: &str, address: impl Into<IpAddr>) -> Self {
        self.machines.push((name.into(), address.into()));
        self
    }

    /// A node on `machine`; `role` is a plan role or, for readability next to the product's
    /// docs, the release's profile name (`gateway-worker` on 4.2 is the `gateway` role).
    pub fn node(mut self, name: &str, machine: &str, role: &str, offset: u16) -> Self {
        let role = self.role(role);
        self.nodes.push(NodeLine {
            name: name.into(),
            machine: machine.into(),
            role,
            offset,
        });
        self
    }

    /// The pack of `kind` (its sha256 and size) instead of a [`tiny_pack`].
    pub fn pack(mut self, kind: PackKind, sha256: &str, size: u64) -> Self {
        self.packs.insert(kind, (sha256.into(), size));
        self
    }

    /// A simulated pack (`apim_e2e::simpack`) as the release's pack with the same top directory.
    pub fn sim_pack(self, pack: &PackInfo) -> Self {
        let kind = self
            .product
            .packs()
            .into_iter()
            .find(|k| self.product.pack_top_dir(*k) == pack.top_dir)
            .unwrap_or_else(|| panic!("{} ships no pack `{}`", self.product, pack.top_dir));
        self.pack(kind, &pack.sha256, pack.size)
    }

    /// An `[overrides]` entry: `scope` is `all`, `role:<role>` or `node:<name>`.
    pub fn overrides(mut self, scope: &str, toml: &str) -> Self {
        self.overrides.push((scope.into(), toml.into()));
        self
    }

    /// One node of every role the release requires and the plan lacks, on a new `machine`
    /// (offsets 0, 1, …): the peers a node under test is wired to.
    pub fn with_peers(mut self, machine: &str, address: impl Into<IpAddr>) -> Self {
        let missing: Vec<Role> = self
            .product
            .required_roles()
            .iter()
            .copied()
            .filter(|r| !self.nodes.iter().any(|n| n.role == *r))
            .collect();
        self = self.machine(machine, address);
        for (offset, role) in (0u16..).zip(missing) {
            self.nodes.push(NodeLine {
                name: format!("peer-{role}"),
                machine: machine.into(),
                role,
                offset,
            });
        }
        self
    }

    fn role(&self, name: &str) -> Role {
        let product = self.product;
        product
            .roles()
            .iter()
            .copied()
            .find(|r| {
                r.as_str() == name
                    || product
                        .role_profile(*r)
                        .is_some_and(|p| p.optimizer_profile == Some(name))
            })
            .unwrap_or_else(|| panic!("{product} has no role or profile `{name}`"))
    }

    /// The plan's text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = write!(
            w,
            "[cluster]\nname = \"apim-test\"\nproduct = \"{}\"\ninstall_dir = \"/opt/wso2\"\n\
             java_home = {:?}\n\n[distributions]\n",
            self.product, self.java_home
        );
        for (kind, (sha, _)) in &self.packs {
            let top = self.product.pack_top_dir(*kind);
            let _ = writeln!(
                w,
                "{} = {{ path = \"dist/{top}.zip\", sha256 = \"{sha}\" }}",
                kind.plan_key()
            );
        }
        w.push_str("\n[admin]\nusername = \"admin\"\npassword = { env = \"ADMIN_PW\" }\n");
        for db in ["apim_db", "shared_db"] {
            let _ = write!(
                w,
                "\n[databases.{db}]\ntype = \"h2\"\nusername = \"wso2carbon\"\n\
                 password = {{ env = \"DB_PW\" }}\n"
            );
        }
        let _ = write!(w, "\n[tls]\nissuer = \"{}\"\n", self.issuer);
        if self.issuer != "pack-default" {
            w.push_str("keystore_password = { env = \"KS_PW\" }\n");
        }
        let mut lbs: Vec<Role> = self.nodes.iter().map(|n| n.role).collect();
        lbs.sort();
        lbs.dedup();
        lbs.retain(|r| self.nodes.iter().filter(|n| n.role == *r).count() > 1);
        if !lbs.is_empty() {
            w.push_str("\n[load_balancers]\n");
            for r in lbs {
                let _ = writeln!(w, "{r} = \"{r}.lb.test\"");
            }
        }
        for (name, address) in &self.machines {
            let _ = write!(
                w,
                "\n[[machines]]\nname = \"{name}\"\naddress = \"{address}\"\n"
            );
        }
        for n in &self.nodes {
            let _ = write!(
                w,
                "\n[[nodes]]\nname = \"{0}\"\nmachine = \"{1}\"\nrole = \"{2}\"\n\
                 hostname = \"{0}.test\"\noffset = {3}\n",
                n.name, n.machine, n.role, n.offset
            );
        }
        if !self.overrides.is_empty() {
            w.push_str("\n[overrides]\n");
            for (scope, toml) in &self.overrides {
                let _ = write!(w, "\"{scope}\" = '''\n{toml}'''\n");
            }
        }
        s
    }

    /// Validates and renders the plan ([`render`]), with the packs' sizes known.
    pub fn render(&self) -> Rendered {
        let mut r = render(&self.text());
        r.pack_sizes = self.packs.values().cloned().collect();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_ca_plan_gives_keystores_and_the_controllers_digest() {
        let rendered = PlanBuilder::new("4.5.0")
            .machine("vm-1", [10, 0, 0, 1])
            .node("gw-1", "vm-1", "gateway", 0)
            .node("gw-2", "vm-1", "gateway", 10)
            .with_peers("vm-peers", [10, 0, 0, 2])
            .render();
        let spec = rendered.machine("vm-1", 3);
        assert_eq!((spec.generation, spec.nodes.len()), (3, 2));
        let gw = &spec.nodes[0];
        assert_eq!(gw.role, "gateway");
        assert!(gw.pack.as_ref().is_some_and(|p| p.size > 0));
        let ks = gw.keystores.as_ref().expect("cluster-ca keystores");
        assert_eq!(ks.node_chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let mut again = gw.clone();
        again.config_digest.clear();
        digest(&mut again);
        assert_eq!(again.config_digest, gw.config_digest);
        assert!(
            gw.deployment_toml.contains("gateway.lb.test"),
            "two gateways get an LB"
        );
    }

    #[test]
    fn a_profile_name_is_its_role_and_pack_default_has_no_keystores() {
        let gw = PlanBuilder::new("4.2.0")
            .issuer("pack-default")
            .machine("vm-1", [10, 0, 0, 1])
            .node("tm-1", "vm-1", "traffic-manager", 2)
            .node("gw-1", "vm-1", "gateway-worker", 1)
            .with_peers("vm-peers", [10, 0, 0, 2])
            .render()
            .node("gw-1");
        assert_eq!(gw.role, "gateway");
        assert!(gw.keystores.is_none());
        assert_eq!(
            gw.start.expect("start").argv,
            ["bin/api-manager.sh", "-Dprofile=gateway-worker", "start"]
        );
    }
}
