//! Load balancers placed on machines: validation (file:line:col) and the rendered nginx.conf.

use std::collections::BTreeMap;

use apim_plan::pack::PackSet;
use apim_plan::render::{self, BalancerRender};
use apim_plan::validate::{self, Options};
use apim_testkit::plans::{Fixture, expect_error};

/// The base plan with a balancer machine and `lbs` as `[load_balancers]`; cp-2 and gw-2 make
/// two-node pools (gw-2 at offset 2 on vm-2's neighbour vm-3).
fn plan(f: &Fixture, lbs: &str) -> String {
    let extra = format!(
        r#"
[[machines]]
name = "vm-3"
address = "10.0.0.3"

[[machines]]
name = "vm-lb"
address = "10.0.0.9"

[[nodes]]
name = "cp-2"
machine = "vm-3"
role = "control-plane"
hostname = "cp2.example.com"

[[nodes]]
name = "gw-2"
machine = "vm-3"
role = "gateway"
hostname = "gw2.example.com"
offset = 2

[load_balancers]
{lbs}
"#
    );
    format!("{}{extra}", f.base_plan())
}

const PLACED: &str = r#"control-plane = { hostname = "api.example.com", machine = "vm-lb" }
gateway = { hostname = "gw-lb.example.com", machine = "vm-lb" }"#;

fn balancer_of(
    f: &Fixture,
    text: &str,
    machine: &str,
) -> (Option<BalancerRender>, render::ClusterRender) {
    let path = f.dir.path().join("plan.toml");
    std::fs::write(&path, text).unwrap();
    let env = BTreeMap::new();
    let (p, report) = validate::check(&path, text, &env, Options::default());
    let p = p.unwrap_or_else(|| panic!("{}", report.render()));
    let c = render::render(&p, &env, &PackSet::none()).unwrap();
    let m = c.machines.iter().find(|m| m.name == machine).unwrap();
    (m.balancer.clone(), c)
}

#[test]
fn a_placed_balancer_is_valid_and_renders_one_nginx_conf() {
    let f = Fixture::new();
    let text = plan(&f, PLACED);
    let (lb, c) = balancer_of(&f, &text, "vm-lb");
    let lb = lb.expect("vm-lb carries the balancer");
    // Machines without a balancer get none.
    assert!(
        c.machines
            .iter()
            .filter(|m| m.name != "vm-lb")
            .all(|m| m.balancer.is_none())
    );
    // Every hosts block maps both LB names to the balancer machine.
    for m in &c.machines {
        let e = m
            .hosts
            .iter()
            .find(|e| e.address.to_string() == "10.0.0.9")
            .unwrap();
        assert_eq!(
            e.names,
            ["gw-lb.example.com", "api.example.com"],
            "{}",
            m.name
        );
    }
    assert_eq!(lb.root, "/opt/wso2/load-balancer");
    assert_eq!(lb.cert_names, ["gw-lb.example.com", "api.example.com"]);
    let conf = &lb.nginx_conf;
    // The control plane's servlet port: sticky (ip_hash), TLS both ways, verified against the
    // cluster CA with the LB name the node certificates carry.
    let cp = section(conf, "upstream control_plane_443 {");
    assert_eq!(
        cp,
        "upstream control_plane_443 {\n        ip_hash;\n        \
         server 10.0.0.1:9443 max_fails=0; # cp-1 (cp.example.com)\n        \
         server 10.0.0.3:9443 max_fails=0; # cp-2 (cp2.example.com)\n    }"
    );
    assert!(conf.contains("listen 10.0.0.9:443 ssl;\n        server_name api.example.com;"));
    assert!(conf.contains("proxy_ssl_name api.example.com;"));
    assert!(conf.contains("proxy_ssl_verify on;"));
    // Gateway API traffic with each node's offset; not sticky.
    let gw = section(conf, "upstream gateway_443 {");
    assert!(!gw.contains("ip_hash"), "{gw}");
    assert!(gw.contains("server 10.0.0.2:8243 "), "{gw}");
    assert!(gw.contains("server 10.0.0.3:8245 "), "offset 2: {gw}");
    assert!(section(conf, "upstream gateway_80 {").contains("10.0.0.3:8282"));
    // WebSocket upgrade headers on 9099/8099.
    assert!(section(conf, "upstream gateway_9099 {").contains("10.0.0.3:9101"));
    assert!(conf.contains("proxy_set_header Upgrade $http_upgrade;"));
    // The event hub's binary ports: plain TCP in `stream`.
    let stream = &conf[conf.find("\nstream {").expect("a stream block")..];
    for port in [5672, 9611, 9711] {
        assert!(
            stream.contains(&format!("upstream control_plane_{port} {{")),
            "{stream}"
        );
        assert!(
            stream.contains(&format!("listen 10.0.0.9:{port};")),
            "{stream}"
        );
    }
    // Without `run_as`, NGINX's own default for its workers.
    assert!(!conf.contains("\nuser "), "{conf}");
    let with_user = plan(&f, PLACED).replace(
        "name = \"vm-lb\"\naddress = \"10.0.0.9\"",
        "name = \"vm-lb\"\naddress = \"10.0.0.9\"\nrun_as = \"www-data\"",
    );
    let (lb2, _) = balancer_of(&f, &with_user, "vm-lb");
    assert!(lb2.unwrap().nginx_conf.contains("\nuser www-data;\n"));
    // Everything NGINX writes stays under its prefix.
    for line in [
        "pid run/nginx.pid;",
        "error_log logs/error.log warn;",
        "proxy_temp_path temp/proxy;",
    ] {
        assert!(conf.contains(line), "{line}");
    }
    let paths = conf
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#') && !l.starts_with("location /"))
        .filter(|l| !l.starts_with("load_module /usr/lib/nginx/modules/"));
    for l in paths {
        assert!(!l.contains(" /"), "no absolute path in the file: {l}");
    }
    // For trying the file by hand: APIM_LB_CONF_OUT=<path>.
    if let Ok(out) = std::env::var("APIM_LB_CONF_OUT") {
        std::fs::write(out, conf).unwrap();
    }
    assert_eq!(
        lb.check_argv,
        [
            "/usr/sbin/nginx",
            "-p",
            "./",
            "-e",
            "logs/error.log",
            "-c",
            "conf/nginx.conf",
            "-t",
            "-q"
        ]
    );
    assert_eq!(lb.reload_argv[7..], ["-s", "reload"]);
    // One probe per role, through the balancer's own address.
    let probes: Vec<(String, String, u16)> = lb
        .probes
        .iter()
        .map(|p| (p.url.clone(), p.connect.clone(), p.expect_status))
        .collect();
    assert_eq!(
        probes,
        [
            (
                "https://gw-lb.example.com/".into(),
                "10.0.0.9:443".into(),
                0
            ),
            (
                "https://api.example.com/services/Version".into(),
                "10.0.0.9:443".into(),
                200
            ),
        ]
    );
}

/// The text from `start` to the closing brace of its block.
fn section<'a>(conf: &'a str, start: &str) -> &'a str {
    let at = conf
        .find(start)
        .unwrap_or_else(|| panic!("`{start}` in:\n{conf}"));
    let end = conf[at..].find("\n    }").unwrap() + at + 6;
    &conf[at..end]
}

#[test]
fn an_unknown_machine_is_named_with_a_near_one() {
    let f = Fixture::new();
    let text = plan(
        &f,
        r#"control-plane = { hostname = "api.example.com", machine = "vm-lbb" }"#,
    );
    let out = expect_error(
        &f.check(&text),
        &text,
        "load balancer `api.example.com` is placed on machine `vm-lbb`, which is not in [[machines]]",
        "\"vm-lbb\"",
    );
    assert!(out.contains("did you mean `vm-lb`?"), "{out}");
}

#[test]
fn two_balancers_on_one_machine_clash_on_a_tcp_port() {
    let f = Fixture::new();
    // Both the control plane and the traffic manager forward the event hub's 5672/9611/9711.
    let lbs = r#"control-plane = { hostname = "api.example.com", machine = "vm-lb" }
traffic-manager = { hostname = "tm-lb.example.com", machine = "vm-lb" }
gateway = { hostname = "gw-lb.example.com", address = "10.0.0.8" }"#;
    let text = plan(&f, lbs);
    let r = f.check(&text);
    let at = text.find("control-plane = { hostname").unwrap();
    let needle = "load balancers for `traffic-manager` and `control-plane` both listen on port 5672 of machine `vm-lb`";
    apim_testkit::plans::expect_error_at(
        &r,
        &text,
        needle,
        text[at..].find("\"vm-lb\"").unwrap() + at,
    );
    // HTTPS on 443 is shared by host name: no clash reported for it.
    assert!(!r.render().contains("port 443"), "{}", r.render());
}

#[test]
fn a_balancer_may_not_listen_where_a_node_of_its_machine_does() {
    let f = Fixture::new();
    // gw-1 (offset 0) on vm-2 opens 9099 and 8099, which the gateway balancer listens on.
    let text = plan(
        &f,
        r#"gateway = { hostname = "gw-lb.example.com", machine = "vm-2" }"#,
    );
    let r = f.check(&text);
    let node = text.find("name = \"gw-1\"").unwrap();
    let _ = node;
    assert!(
        r.render()
            .contains("node `gw-1` uses port 9099 on machine `vm-2`, where the load balancer for `gateway` listens"),
        "{}",
        r.render()
    );
}

#[test]
fn address_and_machine_together_are_refused() {
    let f = Fixture::new();
    let text = plan(
        &f,
        r#"control-plane = { hostname = "api.example.com", address = "10.0.0.9", machine = "vm-lb" }
gateway = "gw-lb.example.com""#,
    );
    expect_error(
        &f.check(&text),
        &text,
        "`load_balancers.control-plane` has both `address` and `machine`",
        "\"10.0.0.9\", machine",
    );
}

#[test]
fn a_placed_balancer_needs_the_cluster_ca() {
    let f = Fixture::new();
    let text = plan(&f, PLACED).replace("[tls]\n", "[tls]\nissuer = \"pack-default\"\n");
    let r = f.check(&text);
    assert!(
        r.render()
            .contains("whose certificate comes from the cluster CA"),
        "{}",
        r.render()
    );
}
