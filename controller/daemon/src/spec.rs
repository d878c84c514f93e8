//! From a rendered cluster to the wire: the `apimctl.v1.MachineSpec` each agent executes.
//!
//! The agent knows nothing about WSO2: every path, command, port and check it needs is in here.

use std::collections::BTreeMap;

use apim_proto::v1::{
    ArtifactRef, CommandSpec as WireCommand, DatabaseInit, DatabaseUse, DbEngine, DesiredRun,
    EnvVar, HostsEntry as WireHosts, HttpProbe, LibJar, MachineSpec, ManagedService,
    NodeFile as WireFile, NodeSpec, Readiness as WireReadiness, ServiceFile, ServiceProbe,
    SharedMount, SyncedFolders,
};

use crate::pki::{PkiError, ProductPki};
use apim_plan::catalogue::{jvm, layout};
use apim_plan::plan::Issuer;
use apim_plan::provided::ProvidedStores;
use apim_plan::render::{
    BalancerRender, ClusterRender, CommandSpec, NodeRender, SharedFolders, SharedHow, balancer,
};

/// Where the renderer's `deployment.toml` goes, relative to the carbon home.
pub const DEPLOYMENT_TOML_PATH: &str = layout::CONFIG_FILE;

/// How long the optimizer and the start/stop scripts may run (they return at once when healthy).
const SCRIPT_TIMEOUT_S: u32 = 300;

fn command(c: &CommandSpec) -> WireCommand {
    WireCommand {
        argv: c.argv.clone(),
        success_marker: c.success_marker.clone(),
        failure_markers: c.failure_markers.clone(),
        timeout_s: SCRIPT_TIMEOUT_S,
    }
}

/// What, besides the render, goes into a machine's spec.
pub struct SpecInputs<'a> {
    /// The machine spec's own generation (strictly increasing per machine).
    pub generation: u64,
    /// The plan generation the render came from.
    pub plan_generation: u64,
    /// Pack sizes by sha256, when known.
    pub pack_sizes: &'a BTreeMap<String, u64>,
    /// Issues node certificates (`None`: keystores are left to the pack).
    pub pki: Option<&'a ProductPki>,
    /// The plan's provided keystores, checked (`issuer = "provided"`).
    pub provided: Option<&'a ProvidedStores>,
    /// Whether certificates missing from the PKI are issued (false: a dry run previews them).
    pub issue: bool,
    /// Whether each node should run now (the rollout releases nodes tier by tier).
    pub desired: &'a dyn Fn(&NodeRender) -> DesiredRun,
    /// Each node's restart counter (`apimctl restart`); absent: 0.
    pub restarts: &'a BTreeMap<String, u64>,
}

/// The spec of one node.
pub fn node_spec(
    cluster: &ClusterRender,
    node: &NodeRender,
    inputs: &SpecInputs<'_>,
) -> Result<NodeSpec, PkiError> {
    let (pack_sizes, pki) = (inputs.pack_sizes, inputs.pki);
    let keystores = match (node.tls.issuer, pki) {
        (Issuer::Provided, _) => inputs
            .provided
            .map(|stores| crate::pki::provided_keystore_spec(node, stores)),
        (_, Some(p)) => p.keystore_spec(node, inputs.issue)?,
        (_, None) => None,
    };
    let r = &node.readiness;
    let mut spec = NodeSpec {
        name: node.name.clone(),
        role: node.role.to_string(),
        product: cluster.product.to_string(),
        pack: Some(ArtifactRef {
            sha256: node.pack_sha256.clone(),
            size: pack_sizes.get(&node.pack_sha256).copied().unwrap_or(0),
            file_name: format!("{}.zip", node.pack_top_dir),
            top_dir: node.pack_top_dir.clone(),
        }),
        install_dir: node.install_dir.clone(),
        java_home: node.java_home.clone(),
        run_as_user: node.run_as.clone().unwrap_or_default(),
        deployment_toml: node.deployment_toml.clone(),
        deployment_toml_path: DEPLOYMENT_TOML_PATH.to_string(),
        optimizer: node.optimizer.as_ref().map(command),
        start: Some(command(&node.start)),
        stop: Some(command(&node.stop)),
        env: env(node),
        readiness: Some(WireReadiness {
            log_file: r.log_file.clone(),
            log_line: r.log_line.clone(),
            tcp_ports: r.tcp_ports.iter().map(|p| u32::from(*p)).collect(),
            http_urls: r
                .http
                .iter()
                .map(|h| HttpProbe {
                    url: h.url.clone(),
                    expect_status: u32::from(h.expect_status),
                    tls_insecure: h.tls_insecure,
                    expect_body: h.expect_body.clone(),
                })
                .collect(),
            timeout_s: u32::try_from(r.timeout_secs).unwrap_or(u32::MAX),
            address: r.address.to_string(),
        }),
        keystores,
        config_digest: String::new(),
        desired: (inputs.desired)(node).into(),
        java_min: cluster.product.jdk_range().0,
        java_max: cluster.product.jdk_range().1,
        process: Some(server_process(&layout::SERVER_PROCESS)),
        memory_bytes: node.jvm.memory_bytes,
        files: node
            .files
            .iter()
            .map(|f| WireFile {
                path: f.path.clone(),
                content: f.content.0.clone(),
                secret: f.secret,
                before_each_start: f.before_each_start,
            })
            .collect(),
        libs: node
            .libs
            .iter()
            .map(|l| LibJar {
                artifact: Some(ArtifactRef {
                    sha256: l.sha256.clone(),
                    size: pack_sizes.get(&l.sha256).copied().unwrap_or(0),
                    file_name: l.file_name.clone(),
                    top_dir: String::new(),
                }),
                dir: l.dir.clone(),
            })
            .collect(),
        databases: node.databases.iter().map(database_use).collect(),
        restart_seq: inputs.restarts.get(&node.name).copied().unwrap_or(0),
        log_dir: layout::LOG_DIR.to_string(),
        shared: node.shared.as_ref().map(shared_folders),
    };
    spec.config_digest = config_digest(&spec);
    Ok(spec)
}

/// The node's environment: `JAVA_OPTS` (its heap and JVM options, which the start scripts add
/// to the JVM's command line) when the plan sets any. The agent hands it to the node's commands
/// as one variable; the value is not secret (plans are told not to put secrets in options).
fn env(node: &NodeRender) -> Vec<EnvVar> {
    node.jvm
        .java_opts_value()
        .map(|value| EnvVar {
            name: jvm::JAVA_OPTS.to_string(),
            value,
            secret: false,
        })
        .into_iter()
        .collect()
}

/// A database the node uses, with its schema's creation on the one node that does it.
fn database_use(d: &apim_plan::render::NodeDatabase) -> DatabaseUse {
    DatabaseUse {
        id: d.id.clone(),
        host: d.host.clone(),
        port: u32::from(d.port),
        init: d.init.as_ref().map(|i| DatabaseInit {
            engine: match i.db_type {
                apim_plan::plan::DbType::Postgres => DbEngine::Postgres,
                _ => DbEngine::Mysql,
            }
            .into(),
            database: i.database.clone(),
            username: i.username.clone(),
            password: i.password.0.clone(),
            scripts: i.scripts.clone(),
        }),
    }
}

/// The node's shared folders on the wire.
fn shared_folders(s: &SharedFolders) -> apim_proto::v1::SharedFolders {
    use apim_proto::v1::shared_folders::How;
    let how = match &s.how {
        SharedHow::Sync { dirs } => How::Sync(SyncedFolders { dirs: dirs.clone() }),
        SharedHow::Mount {
            dir,
            source,
            fstype,
            options,
        } => How::Mount(SharedMount {
            dir: dir.clone(),
            source: source.clone(),
            fstype: fstype.clone(),
            options: options.clone(),
        }),
    };
    apim_proto::v1::SharedFolders {
        group: s.group.clone(),
        how: Some(how),
    }
}

/// How the agent recognises the node's server process.
fn server_process(p: &layout::ServerProcess) -> apim_proto::v1::ServerProcess {
    apim_proto::v1::ServerProcess {
        pid_file: p.pid_file.into(),
        main_class: p.main_class.into(),
        home_arg_prefix: p.home_arg_prefix.into(),
        home_env: p.home_env.into(),
    }
}

/// What a running node was started with: its `deployment.toml`, its environment (`JAVA_OPTS`),
/// the files written with its configuration, keystores, and its restart counter. When it changes
/// the node restarts; nothing else in the spec (commands, readiness checks) needs a restart. A
/// node without environment (or restarts) digests as before it had one.
pub fn config_digest(spec: &NodeSpec) -> String {
    let mut bytes = spec.deployment_toml.as_bytes().to_vec();
    for e in &spec.env {
        bytes.extend_from_slice(b"\0env\0");
        bytes.extend_from_slice(e.name.as_bytes());
        bytes.push(b'=');
        bytes.extend_from_slice(e.value.as_bytes());
    }
    // The jars placed with it (a node without any digests as before).
    for l in &spec.libs {
        bytes.extend_from_slice(b"\0lib\0");
        bytes.extend_from_slice(l.dir.as_bytes());
        bytes.push(0);
        if let Some(a) = &l.artifact {
            bytes.extend_from_slice(a.file_name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(a.sha256.as_bytes());
        }
    }
    // The files written with the configuration (a node without any digests as before).
    for f in spec.files.iter().filter(|f| !f.before_each_start) {
        bytes.extend_from_slice(b"\0file\0");
        bytes.extend_from_slice(f.path.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(f.content.as_bytes());
    }
    if let Some(k) = &spec.keystores {
        for part in [
            &k.keystore_file,
            &k.alias,
            &k.password,
            &k.node_key_pem,
            &k.node_chain_pem,
            &k.primary_key_pem,
            &k.truststore_file,
            &k.truststore_password,
        ] {
            bytes.push(0);
            bytes.extend_from_slice(part.as_bytes());
        }
        for t in &k.trusted {
            bytes.push(0);
            bytes.extend_from_slice(t.alias.as_bytes());
            bytes.extend_from_slice(t.cert_pem.as_bytes());
        }
        // A provided store by its digest: a changed file restarts the node.
        if let Some(p) = &k.provided {
            for part in [&p.keystore_sha256, &p.truststore_sha256] {
                bytes.extend_from_slice(b"\0provided\0");
                bytes.extend_from_slice(part.as_bytes());
            }
        }
    }
    // Shared folders: a new mount must be in place before the node starts again (a node
    // without any digests as before).
    if let Some(sh) = &spec.shared {
        bytes.extend_from_slice(b"\0shared\0");
        bytes.extend_from_slice(&apim_proto::prost::Message::encode_to_vec(sh));
    }
    // `apimctl restart`: a new counter is a new digest, so the agent restarts the node.
    if spec.restart_seq > 0 {
        bytes.extend_from_slice(format!("\0restart\0{}", spec.restart_seq).as_bytes());
    }
    apim_plan::digest(&bytes)
}

/// The spec of one machine at a generation; `None` if the plan has no such machine.
pub fn machine_spec(
    cluster: &ClusterRender,
    machine: &str,
    inputs: &SpecInputs<'_>,
) -> Result<Option<MachineSpec>, PkiError> {
    let Some(m) = cluster.machines.iter().find(|m| m.name == machine) else {
        return Ok(None);
    };
    spec_of(cluster, m, wire_hosts(&m.hosts), inputs).map(Some)
}

/// The spec of every machine of `cluster`, by name: [`machine_spec`] for each, with the hosts
/// block (the same on every machine, and as long as the cluster is large) put in wire form once.
pub fn machine_specs(
    cluster: &ClusterRender,
    inputs: &SpecInputs<'_>,
) -> Result<BTreeMap<String, MachineSpec>, PkiError> {
    let mut out = BTreeMap::new();
    let mut wire: Option<(&[apim_plan::render::HostsEntry], Vec<WireHosts>)> = None;
    for m in &cluster.machines {
        let hosts = match &wire {
            Some((from, w)) if *from == m.hosts.as_slice() => w.clone(),
            _ => {
                let w = wire_hosts(&m.hosts);
                wire = Some((&m.hosts, w.clone()));
                w
            }
        };
        out.insert(m.name.clone(), spec_of(cluster, m, hosts, inputs)?);
    }
    Ok(out)
}

fn wire_hosts(hosts: &[apim_plan::render::HostsEntry]) -> Vec<WireHosts> {
    hosts
        .iter()
        .map(|h| WireHosts {
            address: h.address.to_string(),
            names: h.names.clone(),
        })
        .collect()
}

fn spec_of(
    cluster: &ClusterRender,
    m: &apim_plan::render::MachineRender,
    hosts_block: Vec<WireHosts>,
    inputs: &SpecInputs<'_>,
) -> Result<MachineSpec, PkiError> {
    let nodes = m
        .nodes
        .iter()
        .map(|n| node_spec(cluster, n, inputs))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MachineSpec {
        machine: m.name.clone(),
        generation: inputs.generation,
        plan_generation: inputs.plan_generation,
        hosts_block,
        nodes,
        destroy: false,
        services: m
            .balancer
            .as_ref()
            .map(|b| balancer_service(b, inputs))
            .transpose()?
            .into_iter()
            .collect(),
    })
}

/// The name of the load balancer's managed service on its machine.
pub const BALANCER_SERVICE: &str = "load-balancer";

/// A machine's load balancer as a managed service: its `nginx.conf`, a certificate for its LB
/// hostnames from the cluster CA (re-used until its names change or it nears expiry), the CA to
/// verify the nodes behind it, and a probe per role through it. A dry run (`issue` false)
/// shows a certificate not issued yet as a placeholder.
fn balancer_service(
    b: &BalancerRender,
    inputs: &SpecInputs<'_>,
) -> Result<ManagedService, PkiError> {
    let (chain, key, ca) = match inputs.pki {
        Some(pki) => {
            let first = b.cert_names.first().cloned().unwrap_or_default();
            let material = if inputs.issue {
                Some(pki.node_material(&first, &b.cert_names)?)
            } else {
                pki.stored_material(&first, &b.cert_names)
            };
            match material {
                Some(m) => (m.chain_pem, m.key_pem, pki.ca_pem().to_string()),
                None => (
                    format!(
                        "(a certificate for {} to be issued by apply)\n",
                        b.cert_names.join(",")
                    ),
                    String::new(),
                    pki.ca_pem().to_string(),
                ),
            }
        }
        None => Default::default(),
    };
    let file = |path: &str, content: String, mode: u32, secret: bool| ServiceFile {
        path: path.to_string(),
        content,
        mode,
        secret,
    };
    let mut service = ManagedService {
        name: BALANCER_SERVICE.to_string(),
        root: b.root.clone(),
        files: vec![
            file(balancer::CONF_FILE, b.nginx_conf.clone(), 0o644, false),
            file(balancer::CERT_FILE, chain, 0o644, false),
            file(balancer::KEY_FILE, key, 0o600, true),
            file(balancer::CA_FILE, ca.clone(), 0o644, false),
        ],
        dirs: b.dirs.clone(),
        check_argv: b.check_argv.clone(),
        start_argv: b.start_argv.clone(),
        reload_argv: b.reload_argv.clone(),
        pid_file: balancer::PID_FILE.to_string(),
        probes: b
            .probes
            .iter()
            .map(|p| ServiceProbe {
                name: p.role.to_string(),
                url: p.url.clone(),
                connect: p.connect.clone(),
                ca_pem: ca.clone(),
                expect_status: u32::from(p.expect_status),
            })
            .collect(),
        digest: String::new(),
    };
    service.digest = service_digest(&service);
    Ok(service)
}

/// The digest of everything in `s` but the digest itself.
pub fn service_digest(s: &ManagedService) -> String {
    use apim_proto::prost::Message as _;
    let bytes = ManagedService {
        digest: String::new(),
        ..s.clone()
    }
    .encode_to_vec();
    apim_plan::digest(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apim_plan::validate::{self, Options};

    fn cluster() -> ClusterRender {
        cluster_with("")
    }

    /// The v45-ha example with `extra` appended.
    fn cluster_with(extra: &str) -> ClusterRender {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/v45-ha.toml");
        let text = std::fs::read_to_string(&path).unwrap() + extra;
        let env = BTreeMap::new();
        let (plan, report) = validate::check(
            &path,
            &text,
            &env,
            Options {
                verify_packs: false,
            },
        );
        apim_plan::render::render(
            &plan.unwrap_or_else(|| panic!("{}", report.render())),
            &env,
            &apim_plan::pack::PackSet::none(),
        )
        .unwrap()
    }

    #[test]
    fn machine_spec_carries_its_nodes_and_hosts_and_reuses_certificates() {
        let c = cluster();
        let dir = tempfile::tempdir().unwrap();
        let pki = ProductPki::load_or_create(dir.path(), &c.cluster).unwrap();
        let sizes: BTreeMap<String, u64> = [("0".repeat(64), 42)].into();
        let run = |_: &NodeRender| DesiredRun::Running;
        let restarts = BTreeMap::new();
        let inputs = |generation| SpecInputs {
            generation,
            plan_generation: 1,
            pack_sizes: &sizes,
            pki: Some(&pki),
            provided: None,
            issue: true,
            desired: &run,
            restarts: &restarts,
        };
        let spec = machine_spec(&c, "vm-gw-2", &inputs(7)).unwrap().unwrap();
        assert_eq!(
            (spec.machine.as_str(), spec.generation, spec.nodes.len()),
            ("vm-gw-2", 7, 1)
        );
        let node = &spec.nodes[0];
        assert_eq!(node.name, "gw-2");
        assert_eq!(
            node.pack.as_ref().unwrap().file_name,
            "wso2am-universal-gw-4.5.0.zip"
        );
        assert_eq!(node.pack.as_ref().unwrap().size, 42);
        assert_eq!(
            node.start.as_ref().unwrap().argv,
            vec!["bin/gateway.sh", "start"]
        );
        assert!(
            node.optimizer.is_none(),
            "the 4.5 gateway pack has no profileSetup.sh"
        );
        let readiness = node.readiness.as_ref().unwrap();
        assert_eq!(readiness.address, "10.0.0.32");
        assert!(readiness.http_urls.iter().any(|h| {
            h.url
                .ends_with(":9443/api/am/gateway/v2/server-startup-healthcheck")
        }));
        assert!(
            spec.hosts_block
                .iter()
                .any(|h| h.address == "10.0.0.11" && h.names == ["apim-cp-1"])
        );
        let ks = node.keystores.as_ref().unwrap();
        assert!(
            ks.node_chain_pem.matches("BEGIN CERTIFICATE").count() == 2,
            "leaf + CA"
        );
        assert_eq!(
            ks.trusted
                .iter()
                .map(|t| t.alias.as_str())
                .collect::<Vec<_>>(),
            ["apimctl-cluster-ca", "gateway_certificate_alias"]
        );
        assert_eq!(ks.password, "wso2carbon");
        assert_eq!(
            (node.java_min, node.java_max),
            (11, 21),
            "4.5 scripts accept JDK 11-21"
        );
        // Paths are relative to the carbon home, where WSO2 reads `[keystore.tls] file_name`.
        assert_eq!(
            ks.keystore_file,
            "repository/resources/security/wso2carbon.jks"
        );
        assert_eq!(
            ks.truststore_file,
            "repository/resources/security/client-truststore.jks"
        );
        assert_eq!(
            ks.primary_keystore_file.as_deref(),
            Some("repository/resources/security/apimctl-primary.jks")
        );
        assert!(
            !format!("{node:?}").contains("BEGIN PRIVATE KEY"),
            "Debug redacts keys"
        );

        // A second apply issues nothing new: same certificates, same digest, no restart.
        let again = machine_spec(&c, "vm-gw-2", &inputs(8)).unwrap().unwrap();
        assert_eq!(again.nodes[0].keystores, node.keystores);
        assert_eq!(again.nodes[0].config_digest, node.config_digest);
        assert_eq!(again.nodes[0].desired(), DesiredRun::Running);
        assert!(machine_spec(&c, "vm-nope", &inputs(1)).unwrap().is_none());

        // Every machine at once is every machine one by one (the hosts block made once).
        let all = machine_specs(&c, &inputs(9)).unwrap();
        assert_eq!(all.len(), c.machines.len());
        for m in &c.machines {
            let one = machine_spec(&c, &m.name, &inputs(9)).unwrap().unwrap();
            assert!(!one.hosts_block.is_empty());
            assert_eq!(all[&m.name], one, "{}", m.name);
        }
    }

    #[test]
    fn the_jvm_reaches_the_node_as_one_java_opts_variable_and_its_memory_need() {
        let sizes = BTreeMap::new();
        let run = |_: &NodeRender| DesiredRun::Running;
        let inputs = SpecInputs {
            generation: 1,
            plan_generation: 1,
            pack_sizes: &sizes,
            pki: None,
            provided: None,
            issue: false,
            desired: &run,
            restarts: &BTreeMap::new(),
        };
        let plain = cluster();
        let before = machine_spec(&plain, "vm-gw-2", &inputs).unwrap().unwrap();
        let node = &before.nodes[0];
        assert!(node.env.is_empty(), "no [jvm]: the scripts' defaults");
        assert_eq!(node.memory_bytes, jvm::memory_need(jvm::DEFAULT_HEAP_MAX));
        // Without environment (and jars) the digest is the deployment.toml's alone, as before
        // [jvm].
        let mut bare = node.clone();
        bare.libs.clear();
        assert_eq!(
            config_digest(&bare),
            apim_plan::digest(node.deployment_toml.as_bytes())
        );
        assert_ne!(
            node.config_digest,
            config_digest(&bare),
            "the driver counts"
        );

        let sized = cluster_with(
            "\n[jvm]\nheap_max = \"2g\"\noptions = [\"-XX:+UseG1GC\"]\n\
             [jvm.\"node:gw-2\"]\nheap_min = \"2g\"\n",
        );
        let after = machine_spec(&sized, "vm-gw-2", &inputs).unwrap().unwrap();
        let node = &after.nodes[0];
        assert_eq!(
            node.env,
            [EnvVar {
                name: "JAVA_OPTS".into(),
                value: "-Xms2g -Xmx2g -XX:+UseG1GC".into(),
                secret: false,
            }]
        );
        assert_eq!(node.memory_bytes, jvm::memory_need(2 << 30));
        assert_eq!(node.deployment_toml, before.nodes[0].deployment_toml);
        assert_ne!(
            node.config_digest, before.nodes[0].config_digest,
            "a JAVA_OPTS change restarts the node"
        );
    }

    #[test]
    fn a_san_change_reissues_the_node_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ProductPki::load_or_create(dir.path(), "c").unwrap();
        let a = pki
            .node_material("gw-1.example.com", &["gw-1.example.com".into()])
            .unwrap();
        let b = pki
            .node_material("gw-1.example.com", &["gw-1.example.com".into()])
            .unwrap();
        assert_eq!(a, b);
        let c = pki
            .node_material(
                "gw-1.example.com",
                &["gw-1.example.com".into(), "gw.example.com".into()],
            )
            .unwrap();
        assert_ne!(a.chain_pem, c.chain_pem);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("nodes/gw-1.example.com/key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_balancer_machine_carries_nginx_as_a_managed_service_with_a_cluster_ca_certificate() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/v45-ha.toml");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "gateway = \"gw.wso2.com\"",
            "gateway = { hostname = \"gw.wso2.com\", machine = \"vm-lb\" }",
        ) + "\n[[machines]]\nname = \"vm-lb\"\naddress = \"10.0.0.99\"\n";
        let env = BTreeMap::new();
        let (plan, report) = validate::check(
            &path,
            &text,
            &env,
            Options {
                verify_packs: false,
            },
        );
        let plan = plan.unwrap_or_else(|| panic!("{}", report.render()));
        let c = apim_plan::render::render(&plan, &env, &apim_plan::pack::PackSet::none()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pki = ProductPki::load_or_create(dir.path(), &c.cluster).unwrap();
        let sizes = BTreeMap::new();
        let run = |_: &NodeRender| DesiredRun::Running;
        let restarts = BTreeMap::new();
        let inputs = |generation, issue| SpecInputs {
            generation,
            plan_generation: 1,
            pack_sizes: &sizes,
            pki: Some(&pki),
            provided: None,
            issue,
            desired: &run,
            restarts: &restarts,
        };
        // A dry run before any apply shows the certificate as to be issued.
        let dry = machine_spec(&c, "vm-lb", &inputs(1, false))
            .unwrap()
            .unwrap();
        let file = |s: &MachineSpec, p: &str| {
            s.services[0]
                .files
                .iter()
                .find(|f| f.path == p)
                .cloned()
                .unwrap()
        };
        assert!(
            file(&dry, balancer::CERT_FILE)
                .content
                .contains("to be issued by apply")
        );

        let spec = machine_spec(&c, "vm-lb", &inputs(2, true))
            .unwrap()
            .unwrap();
        assert!(spec.nodes.is_empty());
        assert_eq!(spec.services.len(), 1);
        let svc = &spec.services[0];
        assert_eq!(svc.name, BALANCER_SERVICE);
        assert_eq!(svc.root, "/opt/wso2/load-balancer");
        assert_eq!(svc.pid_file, "run/nginx.pid");
        assert_eq!(svc.check_argv[0], "/usr/sbin/nginx");
        let conf = file(&spec, balancer::CONF_FILE);
        assert!(conf.content.contains("server_name gw.wso2.com;"));
        assert_eq!(conf.mode, 0o644);
        let key = file(&spec, balancer::KEY_FILE);
        assert!(key.secret && key.mode == 0o600 && key.content.contains("PRIVATE KEY"));
        assert!(
            !format!("{svc:?}").contains("PRIVATE KEY"),
            "the key never reaches a log"
        );
        // The leaf names the LB hostname and chains to the cluster CA the probes trust.
        let chain = file(&spec, balancer::CERT_FILE).content;
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "leaf + CA");
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| format!("{n}"))
            .collect();
        assert!(sans.iter().any(|n| n.contains("gw.wso2.com")), "{sans:?}");
        assert_eq!(file(&spec, balancer::CA_FILE).content, pki.ca_pem());
        assert!(svc.probes.iter().all(|p| p.ca_pem == pki.ca_pem()));
        assert_eq!(svc.probes[0].connect, "10.0.0.99:443");
        // The certificate is re-used: the same service, digest and all, on the next spec.
        let again = machine_spec(&c, "vm-lb", &inputs(3, true))
            .unwrap()
            .unwrap();
        assert_eq!(again.services, spec.services);
        assert_eq!(svc.digest, service_digest(svc));
        // Other machines carry no service, and map the LB name to the balancer.
        let gw = machine_spec(&c, "vm-gw-1", &inputs(2, true))
            .unwrap()
            .unwrap();
        assert!(gw.services.is_empty());
        assert!(
            gw.hosts_block
                .iter()
                .any(|h| h.address == "10.0.0.99" && h.names == ["gw.wso2.com"])
        );
    }
}
