//! The load balancer of a machine that carries `[load_balancers.<role>] machine`: one complete
//! `nginx.conf` for every balancer placed there, after the WSO2 guides (see
//! [`crate::catalogue::balancer`]).
//!
//! Every path in the file is relative to the NGINX prefix, the balancer's folder under the
//! machine's install dir: the agent runs NGINX with that folder as its working directory and
//! `-p ./`, so its pid file, logs, temp files and certificates stay inside it (and inside the
//! agent's install root). Upstream servers are the nodes' machine addresses (no name resolution
//! when NGINX loads the file) at their ports plus offset; listeners bind the balancer machine's
//! address only.

use std::fmt::Write as _;

use crate::catalogue::Role;
use crate::catalogue::balancer::{self, LbPort, LbProtocol};
use crate::plan::{Issuer, LoadBalancer, Machine, Plan};

/// The balancer folder's name under the machine's install dir.
pub const DIR_NAME: &str = "load-balancer";
/// The configuration file, relative to the balancer folder.
pub const CONF_FILE: &str = "conf/nginx.conf";
/// The pid file, relative to the balancer folder.
pub const PID_FILE: &str = "run/nginx.pid";
/// The error log, relative to the balancer folder.
pub const ERROR_LOG: &str = "logs/error.log";
/// The certificate chain for the LB hostnames (cluster CA), relative to the balancer folder.
/// NGINX reads certificate paths relative to its configuration's folder: the TLS files live
/// under it (see [`in_conf`]).
pub const CERT_FILE: &str = "conf/tls/lb-chain.pem";
/// Its private key (0600).
pub const KEY_FILE: &str = "conf/tls/lb-key.pem";
/// The cluster CA, to verify the nodes behind the balancer.
pub const CA_FILE: &str = "conf/tls/cluster-ca.pem";
/// Folders the balancer writes to.
pub const DIRS: [&str; 5] = ["conf", "conf/tls", "logs", "run", "temp"];

/// A path under `conf/` as NGINX's certificate directives take it (relative to `conf/`).
fn in_conf(path: &str) -> &str {
    path.strip_prefix("conf/").unwrap_or(path)
}

/// One probe through the balancer: the role it stands for, the URL clients use, where to
/// connect, and the status expected (0: any status below 500).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancerProbe {
    /// The role.
    pub role: Role,
    /// URL with the LB hostname.
    pub url: String,
    /// `address:port` of the balancer.
    pub connect: String,
    /// Expected status, 0 for any below 500.
    pub expect_status: u16,
}

/// A machine's balancer, rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancerRender {
    /// The balancer folder (absolute, on the machine): NGINX's prefix and working directory.
    pub root: String,
    /// The complete `nginx.conf` (at [`CONF_FILE`]).
    pub nginx_conf: String,
    /// Folders under `root` NGINX writes to.
    pub dirs: Vec<String>,
    /// The names its certificate carries: every LB hostname placed here, in role order.
    pub cert_names: Vec<String>,
    /// `nginx -t`: checks the written file.
    pub check_argv: Vec<String>,
    /// Starts NGINX (it daemonises and writes [`PID_FILE`]).
    pub start_argv: Vec<String>,
    /// Reloads it gracefully (`-s reload`: new workers, old ones finish their connections).
    pub reload_argv: Vec<String>,
    /// One probe per balanced role.
    pub probes: Vec<BalancerProbe>,
}

fn nginx(extra: &[&str]) -> Vec<String> {
    [
        balancer::NGINX_BINARY,
        "-p",
        "./",
        "-e",
        ERROR_LOG,
        "-c",
        CONF_FILE,
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

fn upstream_name(role: Role, port: LbPort) -> String {
    format!("{}_{}", role.as_str().replace('-', "_"), port.listen)
}

/// The balancer of machine `m`, when the plan places one there.
pub(super) fn render(plan: &Plan, m: &Machine) -> Option<BalancerRender> {
    let lbs: Vec<&LoadBalancer> = plan.balancers_on(&m.name.value).collect();
    if lbs.is_empty() {
        return None;
    }
    let product = plan.cluster.product.value;
    let install_dir = m
        .install_dir
        .as_ref()
        .unwrap_or(&plan.cluster.install_dir)
        .value
        .trim_end_matches('/');
    let root = format!("{install_dir}/{DIR_NAME}");
    let addr = m.address.value;
    let listen = |port: u16| match addr {
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
    };
    let verify = plan.tls.issuer.value == Issuer::ClusterCa;

    let mut http = String::new();
    let mut stream = String::new();
    let mut probes = Vec::new();
    for lb in &lbs {
        let role = lb.role.value;
        let nodes: Vec<_> = plan.nodes_of(role).collect();
        let host = &lb.hostname.value;
        for port in balancer::fronted_ports(product, role) {
            let name = upstream_name(role, port);
            let out = if port.is_stream() {
                &mut stream
            } else {
                &mut http
            };
            let _ = writeln!(
                out,
                "    # {role}: {host}:{} -> nodes' {}",
                port.listen,
                port.backend.base()
            );
            let _ = writeln!(out, "    upstream {name} {{");
            if port.protocol == (LbProtocol::Https { sticky: true }) {
                // The guides' sticky algorithm for NGINX Community: one client, one node.
                let _ = writeln!(out, "        ip_hash;");
            }
            for n in &nodes {
                let node_addr = plan
                    .machine(&n.machine.value)
                    .map(|nm| nm.address.value)
                    .unwrap_or(addr);
                let target = match node_addr {
                    std::net::IpAddr::V6(a) => format!("[{a}]"),
                    std::net::IpAddr::V4(a) => a.to_string(),
                };
                // max_fails=0: a node is never set aside, so a peer back from a rolling
                // restart takes traffic at once, before its partner stops; a node that fails
                // costs a refused (or, at worst, a timed out) connection, then the next answers.
                let _ = writeln!(
                    out,
                    "        server {target}:{} max_fails=0; # {} ({})",
                    port.backend.at(n.offset.value),
                    n.name.value,
                    n.hostname.value
                );
            }
            let _ = writeln!(out, "    }}");
            if port.is_stream() {
                let _ = writeln!(out, "    server {{");
                let _ = writeln!(out, "        listen {};", listen(port.listen));
                let _ = writeln!(out, "        proxy_pass {name};");
                let _ = writeln!(out, "        proxy_connect_timeout 2s;");
                let _ = writeln!(out, "    }}");
                continue;
            }
            let tls = matches!(
                port.protocol,
                LbProtocol::Https { .. } | LbProtocol::WebSocket { tls: true }
            );
            let _ = writeln!(out, "    server {{");
            let ssl = if tls { " ssl" } else { "" };
            let _ = writeln!(out, "        listen {}{ssl};", listen(port.listen));
            let _ = writeln!(out, "        server_name {host};");
            if tls {
                let _ = writeln!(out, "        ssl_certificate {};", in_conf(CERT_FILE));
                let _ = writeln!(out, "        ssl_certificate_key {};", in_conf(KEY_FILE));
            }
            let _ = writeln!(out, "        location / {{");
            let scheme = if tls { "https" } else { "http" };
            let _ = writeln!(out, "            proxy_pass {scheme}://{name};");
            let _ = writeln!(out, "            proxy_http_version 1.1;");
            let _ = writeln!(out, "            proxy_set_header Host $http_host;");
            let _ = writeln!(out, "            proxy_set_header X-Forwarded-Host $host;");
            let _ = writeln!(
                out,
                "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
            );
            let _ = writeln!(
                out,
                "            proxy_set_header X-Forwarded-Proto $scheme;"
            );
            if matches!(port.protocol, LbProtocol::WebSocket { .. }) {
                let _ = writeln!(out, "            proxy_set_header Upgrade $http_upgrade;");
                let _ = writeln!(
                    out,
                    "            proxy_set_header Connection $connection_upgrade;"
                );
                let _ = writeln!(out, "            proxy_read_timeout 1h;");
            } else {
                let _ = writeln!(out, "            proxy_set_header Connection \"\";");
            }
            // A node that refuses, times out or is not serving yet: the next one answers.
            let _ = writeln!(
                out,
                "            proxy_next_upstream error timeout http_502 http_503 http_504;"
            );
            let _ = writeln!(out, "            proxy_connect_timeout 2s;");
            if tls {
                if verify {
                    // Node certificates carry the role's LB hostname (see `cert_names`).
                    let _ = writeln!(out, "            proxy_ssl_verify on;");
                    let _ = writeln!(
                        out,
                        "            proxy_ssl_trusted_certificate {};",
                        in_conf(CA_FILE)
                    );
                } else {
                    let _ = writeln!(out, "            proxy_ssl_verify off;");
                }
                let _ = writeln!(out, "            proxy_ssl_server_name on;");
                let _ = writeln!(out, "            proxy_ssl_name {host};");
            }
            let _ = writeln!(out, "        }}");
            let _ = writeln!(out, "    }}");
        }
        let (path, expect_status) = balancer::served_probe(role);
        let first = balancer::fronted_ports(product, role)
            .into_iter()
            .find(|p| !p.is_stream());
        if let Some(p) = first {
            let scheme = match p.protocol {
                LbProtocol::Https { .. } | LbProtocol::WebSocket { tls: true } => "https",
                _ => "http",
            };
            probes.push(BalancerProbe {
                role,
                url: format!("{scheme}://{host}{path}"),
                connect: listen(p.listen),
                expect_status,
            });
        }
    }

    let names: Vec<String> = lbs
        .iter()
        .map(|lb| format!("{} ({})", lb.hostname.value, lb.role.value))
        .collect();
    let mut conf = String::new();
    let _ = writeln!(
        conf,
        "# Rendered by apimctl for machine {}: {}.",
        m.name.value,
        names.join(", ")
    );
    let _ = writeln!(
        conf,
        "# Paths are relative to the prefix {root} (nginx -p ./, run there)."
    );
    if !stream.is_empty() {
        let _ = writeln!(conf, "load_module {};", balancer::NGINX_STREAM_MODULE);
    }
    // NGINX started by root runs its workers as `nobody` unless told; the plan's `run_as`
    // (the machine's, else the cluster's) names the user instead.
    if let Some(user) = m.run_as.as_ref().or(plan.cluster.run_as.as_ref()) {
        let _ = writeln!(conf, "user {};", user.value);
    }
    let _ = writeln!(conf, "worker_processes auto;");
    let _ = writeln!(conf, "pid {PID_FILE};");
    let _ = writeln!(conf, "error_log {ERROR_LOG} warn;");
    let _ = writeln!(conf, "\nevents {{\n    worker_connections 1024;\n}}");
    if !http.is_empty() {
        let _ = writeln!(conf, "\nhttp {{");
        let _ = writeln!(conf, "    access_log logs/access.log;");
        for (what, dir) in [
            ("client_body", "client_body"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        ] {
            let _ = writeln!(conf, "    {what}_temp_path temp/{dir};");
        }
        let _ = writeln!(
            conf,
            "    map $http_upgrade $connection_upgrade {{\n        default upgrade;\n        '' close;\n    }}"
        );
        conf.push_str(&http);
        let _ = writeln!(conf, "}}");
    }
    if !stream.is_empty() {
        let _ = writeln!(conf, "\nstream {{");
        conf.push_str(&stream);
        let _ = writeln!(conf, "}}");
    }
    Some(BalancerRender {
        root,
        nginx_conf: conf,
        dirs: DIRS.iter().map(|d| d.to_string()).collect(),
        cert_names: lbs.iter().map(|lb| lb.hostname.value.clone()).collect(),
        check_argv: nginx(&["-t", "-q"]),
        start_argv: nginx(&[]),
        reload_argv: nginx(&["-s", "reload"]),
        probes,
    })
}
