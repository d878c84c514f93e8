//! A node's render apart from its `deployment.toml`: where it is installed, the commands that
//! optimize, start and stop it, when it counts as ready, the certificate it needs, and its JVM.

use std::net::IpAddr;

use super::{
    CommandSpec, HttpCheck, NodeDatabase, NodeFile, NodeJvm, NodeLib, NodeRender, NodeTls,
    Readiness, Sensitive, SharedFolders, SharedHow,
};
use crate::catalogue::{Port, Role, RoleProfile, jvm, layout, readiness_ports};
use crate::plan::{ArtifactShare, Issuer, Machine, Node, Plan};

/// What the renderer has made for a node before it is assembled.
pub(super) struct NodeParts {
    /// The pack file the document was merged onto, if any.
    pub base_file: Option<String>,
    /// The full `deployment.toml`.
    pub deployment_toml: String,
    /// The same with secrets masked.
    pub deployment_toml_masked: String,
    /// Nodes that must be ready first.
    pub depends_on: Vec<String>,
    /// The keystores' password.
    pub keystore_password: String,
    /// The truststore's password.
    pub truststore_password: String,
    /// The secure vault is on.
    pub vault: bool,
    /// Jars placed in the carbon home.
    pub libs: Vec<NodeLib>,
    /// The databases the node uses.
    pub databases: Vec<NodeDatabase>,
}

/// Assembles a node's render.
pub(super) fn node_render(plan: &Plan, node: &Node, parts: NodeParts) -> NodeRender {
    let product = plan.cluster.product.value;
    let machine = plan
        .machine(&node.machine.value)
        .expect("validated: node machine exists");
    let profile = product
        .role_profile(node.role.value)
        .expect("validated: role exists");
    let top_dir = product.pack_top_dir(profile.pack);
    let base_install = machine
        .install_dir
        .as_ref()
        .unwrap_or(&plan.cluster.install_dir)
        .value
        .trim_end_matches('/')
        .to_string();
    let install_dir = format!("{base_install}/{}", node.name.value);
    let carbon_home = format!("{install_dir}/{top_dir}");
    let files = if parts.vault {
        super::vault::files(plan, &parts.keystore_password)
    } else {
        Vec::new()
    };
    NodeRender {
        name: node.name.value.clone(),
        role: node.role.value,
        machine: machine.name.value.clone(),
        hostname: node.hostname.value.clone(),
        offset: node.offset.value,
        pack: profile.pack,
        pack_top_dir: top_dir,
        pack_sha256: plan
            .distributions
            .get(&profile.pack)
            .map(|d| d.sha256.value.to_ascii_lowercase())
            .unwrap_or_default(),
        install_dir,
        carbon_home,
        java_home: machine
            .java_home
            .as_ref()
            .unwrap_or(&plan.cluster.java_home)
            .value
            .clone(),
        run_as: machine
            .run_as
            .as_ref()
            .or(plan.cluster.run_as.as_ref())
            .map(|u| u.value.clone()),
        config_digest: config_digest(&parts.deployment_toml, &files, &parts.libs),
        files,
        libs: parts.libs,
        databases: parts.databases,
        base_file: parts.base_file,
        deployment_toml: parts.deployment_toml,
        deployment_toml_masked: parts.deployment_toml_masked,
        optimizer: optimizer(&profile),
        start: CommandSpec::plain(profile.start_argv()),
        stop: CommandSpec::plain(profile.stop_argv()),
        readiness: readiness(plan, node, machine, &profile),
        depends_on: parts.depends_on,
        tls: tls(
            plan,
            node,
            parts.keystore_password,
            parts.truststore_password,
        ),
        jvm: node_jvm(plan, node),
        shared: shared_folders(plan, node),
    }
}

/// The node's `JAVA_OPTS` from its merged `[jvm]` scopes, and its memory need.
fn node_jvm(plan: &Plan, node: &Node) -> NodeJvm {
    let merged = plan.jvm_for(node);
    let mut java_opts = Vec::new();
    if let Some((min, _)) = &merged.heap_min {
        java_opts.push(jvm::heap_min_arg(&min.value.text));
    }
    if let Some((max, _)) = &merged.heap_max {
        java_opts.push(jvm::heap_max_arg(&max.value.text));
    }
    java_opts.extend(merged.options.iter().map(|o| o.value.clone()));
    let heap_max = merged
        .heap_max
        .as_ref()
        .map_or(jvm::DEFAULT_HEAP_MAX, |(h, _)| h.value.bytes);
    NodeJvm {
        java_opts,
        heap_max,
        memory_bytes: jvm::memory_need(heap_max),
    }
}

/// sha256 of the configuration a restart applies: the document, and the files and jars written
/// with it when there are any (a node without such files digests as it always has).
fn config_digest(toml: &str, files: &[NodeFile], libs: &[NodeLib]) -> String {
    let with_config: Vec<&NodeFile> = files.iter().filter(|f| !f.before_each_start).collect();
    if with_config.is_empty() && libs.is_empty() {
        return crate::digest(toml.as_bytes());
    }
    let mut all = toml.as_bytes().to_vec();
    let parts = with_config
        .iter()
        .flat_map(|f| [f.path.as_bytes(), f.content.0.as_bytes()])
        .chain(libs.iter().flat_map(|l| {
            [
                l.dir.as_bytes(),
                l.file_name.as_bytes(),
                l.sha256.as_bytes(),
            ]
        }));
    for part in parts {
        all.extend((part.len() as u64).to_le_bytes());
        all.extend(part);
    }
    crate::digest(&all)
}

/// The profile optimizer, for roles that run it.
fn optimizer(profile: &RoleProfile) -> Option<CommandSpec> {
    profile.optimizer_argv().map(|argv| CommandSpec {
        argv,
        success_marker: Some(layout::OPTIMIZER_SUCCESS.to_string()),
        failure_markers: vec![layout::OPTIMIZER_FAILURE.to_string()],
    })
}

/// The ready line, the role's ports at the node's offset, `/services/Version` (which must name
/// the pack's product) and, for gateways that have it, the startup health check.
fn readiness(plan: &Plan, node: &Node, machine: &Machine, profile: &RoleProfile) -> Readiness {
    let product = plan.cluster.product.value;
    let offset = node.offset.value;
    let address = machine.address.value;
    let host = match address {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    };
    let mut http = vec![HttpCheck {
        url: format!(
            "http://{host}:{}{}",
            Port::Http.at(offset),
            layout::VERSION_PATH
        ),
        expect_status: 200,
        expect_body: Some(product.server_name(profile.pack)),
        tls_insecure: false,
    }];
    if node.role.value == Role::Gateway && product.has_gateway_healthcheck() {
        http.push(HttpCheck {
            url: format!(
                "https://{host}:{}{}",
                Port::Https.at(offset),
                layout::GATEWAY_HEALTHCHECK_PATH
            ),
            expect_status: 200,
            expect_body: None,
            tls_insecure: true,
        });
    }
    Readiness {
        log_file: layout::LOG_FILE.to_string(),
        log_line: layout::READY_LINE.to_string(),
        address,
        tcp_ports: readiness_ports(product, node.role.value)
            .into_iter()
            .map(|p| p.at(offset))
            .collect(),
        http,
        timeout_secs: plan.rollout.health_timeout.as_secs(),
    }
}

/// The node's certificate (CN = its hostname; SANs add its role's load balancer) and keystores.
fn tls(
    plan: &Plan,
    node: &Node,
    keystore_password: String,
    truststore_password: String,
) -> NodeTls {
    NodeTls {
        issuer: plan.tls.issuer.value,
        store_type: plan.tls.keystore_type,
        keystore_file: plan.tls.keystore_file.clone(),
        alias: plan.tls.keystore_alias.clone(),
        common_name: node.hostname.value.clone(),
        sans: cert_names(plan, node),
        primary_keystore_file: primary_keystore_file(plan),
        primary_alias: plan.tls.primary_alias.clone(),
        truststore_file: plan.tls.truststore_file.clone(),
        keystore_password: Sensitive(keystore_password),
        truststore_password: Sensitive(truststore_password),
    }
}

/// The names a node's certificate must carry: its hostname, then its role's load balancer
/// hostname (clients that come through the LB verify that name).
pub fn cert_names(plan: &Plan, node: &Node) -> Vec<String> {
    let lb = plan
        .load_balancers
        .get(&node.role.value)
        .map(|lb| lb.hostname.value.clone());
    std::iter::once(node.hostname.value.clone())
        .chain(lb)
        .collect()
}

/// The shared primary keystore's file name: only the cluster CA makes one; provided and shipped
/// keystores double as primary (they are the same file on every node).
pub(super) fn primary_keystore_file(plan: &Plan) -> Option<String> {
    let tls = &plan.tls;
    (tls.issuer.value == Issuer::ClusterCa).then(|| {
        tls.primary_keystore_file
            .clone()
            .unwrap_or_else(|| tls.keystore_type.primary_keystore_file().to_string())
    })
}

/// What a 3.x gateway shares with the gateways of the same environments: its deployed APIs,
/// synchronised by apimctl (the default) or on the operator's shared file system. `None` for
/// every other node, and for a gateway synchronised with no peer.
fn shared_folders(plan: &Plan, node: &Node) -> Option<SharedFolders> {
    if node.role.value != Role::Gateway || !plan.cluster.product.value.gateways_share_artifacts() {
        return None;
    }
    let envs_of = |n: &Node| -> Vec<&str> {
        plan.gateway_environments
            .iter()
            .filter(|e| {
                e.gateways
                    .as_ref()
                    .is_none_or(|l| l.iter().any(|g| g.value == n.name.value))
            })
            .map(|e| e.name.value.as_str())
            .collect()
    };
    let mine = envs_of(node);
    let peers = plan
        .nodes_of(Role::Gateway)
        .filter(|n| envs_of(n) == mine)
        .count();
    let group = format!("gateway/{}", mine.join("+"));
    let share = plan.gateway_artifacts.as_ref().map(|a| &a.share);
    let how = match share {
        Some(ArtifactShare::Mount {
            source,
            fstype,
            options,
        }) => SharedHow::Mount {
            dir: layout::GATEWAY_SHARED_DIR.to_string(),
            source: source.value.clone(),
            fstype: fstype.value.clone(),
            options: options
                .as_ref()
                .map(|o| o.value.clone())
                .unwrap_or_default(),
        },
        Some(ArtifactShare::Sync) | None if peers > 1 => SharedHow::Sync {
            dirs: layout::GATEWAY_SYNCED_DIRS.map(String::from).to_vec(),
        },
        _ => return None,
    };
    Some(SharedFolders { group, how })
}
