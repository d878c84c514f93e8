//! The text of `render`: per node a commented header (install, java, JVM options and memory,
//! optimize, start, stop, readiness, certificate, tier), its `deployment.toml` and its machine's
//! hosts block; then the start order. `render --out` writes the same header and start order into
//! its files.

use apim_plan::plan::Issuer;
use apim_plan::render::{ClusterRender, NodeRender};

/// The whole render of `cluster` (or of the node `only`), secrets masked unless `show_secrets`.
pub fn cluster(cluster: &ClusterRender, only: Option<&str>, show_secrets: bool) -> String {
    let mut s = String::new();
    for m in &cluster.machines {
        for n in m.nodes.iter().filter(|n| only.is_none_or(|o| o == n.name)) {
            s.push_str(&node_header(cluster, n));
            s.push_str("\n# ---- deployment.toml ----\n");
            s.push_str(if show_secrets {
                &n.deployment_toml
            } else {
                &n.deployment_toml_masked
            });
            s.push_str(&format!(
                "\n# ---- hosts block of machine {} ----\n",
                m.name
            ));
            s.push_str(&m.hosts_text());
            s.push('\n');
        }
        // The balancer is shown with the whole cluster (`--node` picks one node only).
        if let (Some(b), None) = (&m.balancer, only) {
            s.push_str(&balancer(&m.name, b));
            s.push_str(&format!(
                "\n# ---- hosts block of machine {} ----\n",
                m.name
            ));
            s.push_str(&m.hosts_text());
            s.push('\n');
        }
    }
    s.push_str(&start_order(cluster));
    s
}

/// A machine's load balancer: a commented header (folder, commands, certificate, probes) and
/// its complete `nginx.conf`.
pub fn balancer(machine: &str, b: &apim_plan::render::BalancerRender) -> String {
    let mut s = format!("# ==== load balancer (nginx) on machine {machine} ====\n");
    s.push_str(&format!(
        "# folder:    {} (nginx prefix and working directory)\n",
        b.root
    ));
    s.push_str(&format!("# check:     {}\n", b.check_argv.join(" ")));
    s.push_str(&format!("# start:     {}\n", b.start_argv.join(" ")));
    s.push_str(&format!("# reload:    {}\n", b.reload_argv.join(" ")));
    s.push_str(&format!(
        "# cert:      CN={} SAN={} (cluster CA)\n",
        b.cert_names.first().map_or("", String::as_str),
        b.cert_names.join(",")
    ));
    for p in &b.probes {
        let expect = if p.expect_status == 0 {
            "any status below 500".to_string()
        } else {
            p.expect_status.to_string()
        };
        s.push_str(&format!(
            "# serves:    {} when GET {} (via {}) -> {expect}\n",
            p.role, p.url, p.connect
        ));
    }
    s.push_str(&format!(
        "\n# ---- {} ----\n",
        apim_plan::render::balancer::CONF_FILE
    ));
    s.push_str(&b.nginx_conf);
    s
}

/// A node's commented header: what is installed where, how it is optimized, started, stopped
/// and recognised as ready, its certificate, and its tier.
pub fn node_header(cluster: &ClusterRender, n: &NodeRender) -> String {
    let mut s = format!(
        "# ==== node {} ({}) on machine {}, {} offset {} ====\n",
        n.name, n.role, n.machine, n.hostname, n.offset
    );
    s.push_str(&format!(
        "# install:   {} into {} (sha256 {})\n",
        n.pack_top_dir,
        n.install_dir,
        short(&n.pack_sha256)
    ));
    s.push_str(&match &n.base_file {
        Some(f) => format!("# base:      {f} (the plan merged onto it)\n"),
        None => "# base:      none: the pack was not read, so its own defaults are not shown\n"
            .to_string(),
    });
    s.push_str(&format!("# java_home: {}\n", n.java_home));
    s.push_str(&format!("# jvm:       {}\n", jvm_line(n)));
    if let Some(o) = &n.optimizer {
        s.push_str(&format!(
            "# optimize:  {}   (once, after unpacking)\n",
            o.display()
        ));
    }
    s.push_str(&format!(
        "# start:     {}   (in {})\n",
        n.start.display(),
        n.carbon_home
    ));
    s.push_str(&format!("# stop:      {}\n", n.stop.display()));
    let ports: Vec<String> = n.readiness.tcp_ports.iter().map(u16::to_string).collect();
    s.push_str(&format!(
        "# ready:     \"{}\" in {}; ports {}\n",
        n.readiness.log_line,
        n.readiness.log_file,
        ports.join(",")
    ));
    for h in &n.readiness.http {
        s.push_str(&format!(
            "#            GET {} -> {}\n",
            h.url, h.expect_status
        ));
    }
    s.push_str(&match n.tls.issuer {
        Issuer::ClusterCa => format!(
            "# cert:      CN={} SAN={}\n",
            n.tls.common_name,
            n.tls.sans.join(",")
        ),
        Issuer::Provided => format!(
            "# cert:      the provided keystore's `{}` (must name {})\n",
            n.tls.alias,
            n.tls.sans.join(",")
        ),
        Issuer::PackDefault => "# cert:      the pack's own (CN=localhost)\n".to_string(),
    });
    for l in &n.libs {
        s.push_str(&format!(
            "# driver:    {} into {} (sha256 {})\n",
            l.file_name,
            l.dir,
            short(&l.sha256)
        ));
    }
    for d in &n.databases {
        let init = match &d.init {
            Some(i) => format!(
                "; creates its schema if empty from {}",
                i.scripts.join(", ")
            ),
            None => String::new(),
        };
        s.push_str(&format!(
            "# database:  {} at {}:{} (checked before staging){init}\n",
            d.id, d.host, d.port
        ));
    }
    for f in &n.files {
        let when = if f.before_each_start {
            "before each start"
        } else {
            "with the configuration"
        };
        let mode = if f.secret { "0600, not shown" } else { "0644" };
        s.push_str(&format!("# file:      {} ({mode}; {when})\n", f.path));
    }
    if let Some(sh) = &n.shared {
        s.push_str(&match &sh.how {
            apim_plan::render::SharedHow::Sync { dirs } => format!(
                "# shares:    {} with the other nodes of {} (synchronised by apimctl)\n",
                dirs.join(", "),
                sh.group
            ),
            apim_plan::render::SharedHow::Mount {
                dir,
                source,
                fstype,
                options,
            } => format!(
                "# shares:    {dir} with the other nodes of {}: {source} mounted there (-t {fstype}{}) before it starts\n",
                sh.group,
                if options.is_empty() {
                    String::new()
                } else {
                    format!(" -o {options}")
                }
            ),
        });
    }
    let deps = if n.depends_on.is_empty() {
        "nothing".to_string()
    } else {
        n.depends_on.join(", ")
    };
    s.push_str(&format!(
        "# tier {}:    waits for {deps}\n",
        tier_of(cluster, &n.name)
    ));
    s
}

/// `JAVA_OPTS="…"` (or the scripts' defaults) and what the node needs of its machine's memory.
fn jvm_line(n: &NodeRender) -> String {
    let opts = match n.jvm.java_opts_value() {
        Some(v) => format!("JAVA_OPTS=\"{v}\""),
        None => "the start scripts' heap (-Xms256m -Xmx1024m)".to_string(),
    };
    format!(
        "{opts}; needs {} MiB of memory",
        apim_plan::catalogue::jvm::mib(n.jvm.memory_bytes)
    )
}

/// The start order, one tier per line.
pub fn start_order(cluster: &ClusterRender) -> String {
    let mut s = String::from("# ==== start order ====\n");
    for (i, t) in cluster.tiers.iter().enumerate() {
        s.push_str(&format!("tier {}: {}\n", i + 1, t.join(", ")));
    }
    s
}

/// The 1-based tier `node` starts in (0 when in none).
fn tier_of(cluster: &ClusterRender, node: &str) -> usize {
    cluster
        .tiers
        .iter()
        .position(|t| t.iter().any(|n| n == node))
        .map_or(0, |i| i + 1)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
