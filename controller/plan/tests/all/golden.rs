//! Golden tests: each "Sample configuration" of the two seed guides (3.x five profiles; 4.5 split
//! packs, single and HA) must be contained, key by key and value by value, in the deployment.toml
//! apimctl renders for the node the sample describes, from an example plan under
//! deploy/examples that describes the same cluster through the plan's own fields.
//!
//! Where a sample contradicts its own guide's text, we follow the text; every such place is an
//! [`Exception`] below that states our value and why.

use std::collections::BTreeMap;

use apim_plan::render::{self, ClusterRender};
use apim_plan::validate::{self, Options};
use toml::Value;

use apim_testkit::plans::examples_dir;

/// What we render instead of the sample's value.
enum Expect {
    /// This value.
    Value(Value),
    /// No such key at all.
    Absent,
}

struct Exception {
    path: &'static str,
    ours: Expect,
    why: &'static str,
}

fn s(v: &str) -> Expect {
    Expect::Value(Value::String(v.to_string()))
}

fn render_example(name: &str) -> ClusterRender {
    let (cluster, report, _) = super::example_with(name, "");
    cluster.unwrap_or_else(|| panic!("{name} does not validate:\n{}", report.render()))
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = root;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (
                k,
                Some(rest.trim_end_matches(']').parse::<usize>().unwrap()),
            ),
            None => (part, None),
        };
        v = v.as_table()?.get(key)?;
        if let Some(i) = index {
            v = v.as_array()?.get(i)?;
        }
    }
    Some(v)
}

/// Every key of `sample` must be in `ours` with the same value (tables: recursively; arrays of
/// tables: same length, element by element). Returns the mismatches.
fn contains(
    sample: &Value,
    ours: Option<&Value>,
    path: &str,
    exceptions: &[Exception],
    out: &mut Vec<String>,
) {
    if exceptions.iter().any(|e| e.path == path) {
        return;
    }
    let Some(ours) = ours else {
        out.push(format!("{path}: missing (sample: {sample})"));
        return;
    };
    match (sample, ours) {
        (Value::Table(st), Value::Table(ot)) => {
            for (k, sv) in st {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                contains(sv, ot.get(k), &p, exceptions, out);
            }
        }
        (Value::Array(sa), Value::Array(oa))
            if sa.iter().all(Value::is_table) && !sa.is_empty() =>
        {
            if sa.len() != oa.len() {
                out.push(format!(
                    "{path}: {} entries, sample has {}",
                    oa.len(),
                    sa.len()
                ));
            }
            for (i, sv) in sa.iter().enumerate() {
                contains(sv, oa.get(i), &format!("{path}[{i}]"), exceptions, out);
            }
        }
        _ if sample == ours => {}
        _ => out.push(format!("{path}: ours {ours}, sample {sample}")),
    }
}

fn substitute(v: &mut Value, subst: &[(&str, &str)]) {
    match v {
        Value::String(s) => {
            for (from, to) in subst {
                *s = s.replace(from, to);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, subst)),
        Value::Table(t) => t.iter_mut().for_each(|(_, x)| substitute(x, subst)),
        _ => {}
    }
}

fn golden(
    cluster: &ClusterRender,
    node: &str,
    sample_file: &str,
    subst: &[(&str, &str)],
    exceptions: &[Exception],
) {
    let sample_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(sample_file),
    )
    .unwrap();
    let mut sample: Value = Value::Table(
        sample_text
            .parse()
            .unwrap_or_else(|e| panic!("{sample_file}: {e}")),
    );
    substitute(&mut sample, subst);
    let n = cluster
        .node(node)
        .unwrap_or_else(|| panic!("no node {node}"));
    let ours = Value::Table(n.deployment_toml.parse().unwrap());
    let mut mismatches = Vec::new();
    contains(&sample, Some(&ours), "", exceptions, &mut mismatches);
    for e in exceptions {
        assert!(!e.why.is_empty());
        assert!(
            lookup(&sample, e.path).is_some(),
            "{sample_file}: exception {} names no sample key",
            e.path
        );
        match (&e.ours, lookup(&ours, e.path)) {
            (Expect::Value(v), Some(o)) if v == o => {}
            (Expect::Absent, None) => {}
            (_, got) => mismatches.push(format!("{} (exception: {}): ours {got:?}", e.path, e.why)),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{node} vs {sample_file}:\n  {}\n--- rendered ---\n{}",
        mismatches.join("\n  "),
        n.deployment_toml
    );
}

/// Every 3.x sample but the Key Manager's says `type = "database"`.
const V3_USER_STORE: Exception = Exception {
    path: "user_store.type",
    ours: Expect::Value(Value::String(String::new())), // replaced below
    why: "the Traffic Manager, Publisher and Developer Portal samples say `database` while the Key \
          Manager and Gateway samples (and the shipped 3.2 deployment.toml) say `database_unique_id`; \
          every node reads the same user store in shared_db, so they must agree: we keep the shipped default",
};

fn v3_user_store() -> Exception {
    Exception {
        ours: s("database_unique_id"),
        ..V3_USER_STORE
    }
}

#[test]
fn v3_key_manager() {
    golden(
        &render_example("v3-single.toml"),
        "km-1",
        "v3-key-manager.toml",
        &[],
        &[],
    );
}

#[test]
fn v3_traffic_manager() {
    golden(
        &render_example("v3-single.toml"),
        "tm-1",
        "v3-traffic-manager.toml",
        &[],
        &[v3_user_store()],
    );
}

#[test]
fn v3_publisher() {
    golden(
        &render_example("v3-single.toml"),
        "publisher-1",
        "v3-publisher.toml",
        &[],
        &[v3_user_store()],
    );
}

#[test]
fn v3_devportal() {
    golden(
        &render_example("v3-single.toml"),
        "devportal-1",
        "v3-devportal.toml",
        &[],
        &[
            v3_user_store(),
            Exception {
                path: "server.server_role",
                ours: s("api-devportal"),
                why: "the text starts this node with -Dprofile=api-devportal, and 3.2's config mapper \
                      (infer.json) knows the role `api-devportal`, not `api-store`",
            },
            Exception {
                path: "apim.gateway.environment[0].ws_endpoint",
                ours: s("ws://gw.wso2.com:9103"),
                why: "the gateway runs at offset 4 and its WebSocket port moves with the offset \
                      (ws.use.port.offset); the sample adds the offset to http/https (8284/8247) but not to ws",
            },
            Exception {
                path: "apim.oauth_config.revoke_endpoint",
                ours: s("https://km.wso2.com:9443/oauth2/revoke"),
                why: "the text's revoke endpoint is <key manager>/oauth2/revoke; the sample drops /oauth2",
            },
        ],
    );
}

#[test]
fn v3_gateway() {
    golden(
        &render_example("v3-single.toml"),
        "gateway-1",
        "v3-gateway.toml",
        &[],
        &[],
    );
}

const NODE_IP: &str = "127.0.0.1";

/// The 4.5 samples put every node's node_ip at 127.0.0.1; our plan gives each VM its address.
fn ip_of(cluster: &ClusterRender, node: &str) -> String {
    cluster.node(node).unwrap();
    cluster
        .machines
        .iter()
        .find(|m| m.nodes.iter().any(|n| n.name == node))
        .unwrap()
        .address
        .to_string()
}

fn h2_shared_db() -> Vec<Exception> {
    const WHY: &str = "this sample gives the node an embedded H2 shared_db while the same guide's \
                       control-plane sample uses MySQL and its text (step 2) points every node at the \
                       shared databases; an H2 copy per node would give it its own user store and registry";
    vec![
        Exception {
            path: "database.shared_db.type",
            ours: s("mysql"),
            why: WHY,
        },
        Exception {
            path: "database.shared_db.url",
            ours: Expect::Absent,
            why: WHY,
        },
        Exception {
            path: "database.shared_db.username",
            ours: s("sharedadmin"),
            why: WHY,
        },
        Exception {
            path: "database.shared_db.password",
            ours: s("sharedadmin"),
            why: WHY,
        },
    ]
}

const CP_EVENT_HUB_SERVICE: &str = "the text configures the control plane's own event hub through \
    localhost (service_url = \"https://localhost:${mgt.transport.https.port}/services/\"); the sample \
    names the node or its load balancer instead";

#[test]
fn v45_gateway_single() {
    let c = render_example("v45-single.toml");
    let ip = ip_of(&c, "gw-1");
    golden(
        &c,
        "gw-1",
        "v45-gateway-single.toml",
        &[(NODE_IP, &ip)],
        &h2_shared_db(),
    );
}

#[test]
fn v45_control_plane_single() {
    let c = render_example("v45-single.toml");
    let ip = ip_of(&c, "cp-1");
    golden(
        &c,
        "cp-1",
        "v45-control-plane-single.toml",
        &[(NODE_IP, &ip)],
        &[
            Exception {
                path: "apim.event_hub.service_url",
                ours: s("https://localhost:${mgt.transport.https.port}/services/"),
                why: CP_EVENT_HUB_SERVICE,
            },
            Exception {
                path: "apim.event_hub.event_listening_endpoints",
                ours: Expect::Value(Value::Array(vec![Value::String(
                    "tcp://localhost:5672".into(),
                )])),
                why: "the text has the control plane listen to its own event hub on tcp://localhost:5672 \
                      (the HA sample agrees); the single-node sample names the host",
            },
        ],
    );
}

#[test]
fn v45_traffic_manager_single() {
    let c = render_example("v45-single.toml");
    let ip = ip_of(&c, "tm-1");
    golden(
        &c,
        "tm-1",
        "v45-traffic-manager-single.toml",
        &[(NODE_IP, &ip)],
        &h2_shared_db(),
    );
}

const GW_LB_PLACEHOLDER: (&str, &str) = ("[api-gateway-LB-host]", "gw.wso2.com");

#[test]
fn v45_gateway_ha() {
    let c = render_example("v45-ha.toml");
    let ip = ip_of(&c, "gw-1");
    golden(&c, "gw-1", "v45-gateway-ha.toml", &[(NODE_IP, &ip)], &[]);
}

#[test]
fn v45_control_plane_ha() {
    let c = render_example("v45-ha.toml");
    let ip = ip_of(&c, "cp-1");
    golden(
        &c,
        "cp-1",
        "v45-control-plane-ha.toml",
        &[(NODE_IP, &ip), GW_LB_PLACEHOLDER],
        &[Exception {
            path: "apim.event_hub.service_url",
            ours: s("https://localhost:${mgt.transport.https.port}/services/"),
            why: CP_EVENT_HUB_SERVICE,
        }],
    );
}

#[test]
fn v45_traffic_manager_ha() {
    let c = render_example("v45-ha.toml");
    let ip = ip_of(&c, "tm-1");
    golden(
        &c,
        "tm-1",
        "v45-traffic-manager-ha.toml",
        &[(NODE_IP, &ip)],
        &[],
    );
}

/// The second HA peers are wired to the first: event_duplicate_url points at the other node.
#[test]
fn v45_ha_peers_point_at_each_other() {
    let c = render_example("v45-ha.toml");
    let doc =
        |n: &str| -> Value { Value::Table(c.node(n).unwrap().deployment_toml.parse().unwrap()) };
    let cp2 = doc("cp-2");
    assert_eq!(
        lookup(&cp2, "apim.event_hub.event_duplicate_url")
            .unwrap()
            .as_array()
            .unwrap()[0]
            .as_str(),
        Some("tcp://apim-cp-1:5672")
    );
    let tm2 = doc("tm-2");
    assert_eq!(
        lookup(&tm2, "apim.throttling.event_duplicate_url")
            .unwrap()
            .as_array()
            .unwrap()[0]
            .as_str(),
        Some("tcp://traffic-manager-1:5672")
    );
    let gw2 = doc("gw-2");
    assert_eq!(
        lookup(&gw2, "apim.gateway_notification.gateway_id")
            .unwrap()
            .as_str(),
        Some("gateway_01")
    );
    // Tiers: control planes, then traffic managers, then gateways.
    assert_eq!(
        c.tiers,
        vec![
            vec!["cp-1", "cp-2"],
            vec!["tm-1", "tm-2"],
            vec!["gw-1", "gw-2"]
        ]
    );
}

/// The 3.x HA example: two of everything, LBs in front, url_group per TM, and certificates whose
/// SANs carry the LB hostname.
#[test]
fn v3_ha_wiring() {
    let c = render_example("v3-ha.toml");
    let gw = Value::Table(
        c.node("gateway-1")
            .unwrap()
            .deployment_toml
            .parse()
            .unwrap(),
    );
    assert_eq!(
        lookup(&gw, "server.hostname").unwrap().as_str(),
        Some("gw.wso2.com")
    );
    assert_eq!(
        lookup(&gw, "apim.key_manager.service_url")
            .unwrap()
            .as_str(),
        Some("https://km.wso2.com/services/")
    );
    assert_eq!(
        lookup(&gw, "apim.throttling.url_group")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        lookup(&gw, "apim.cors.allow_origins").unwrap().as_str(),
        Some("https://portal.example.com"),
        "role override merged last"
    );
    assert_eq!(
        lookup(&gw, "transport.http.properties.proxyPort")
            .unwrap()
            .as_integer(),
        Some(80)
    );
    let km = Value::Table(c.node("km-2").unwrap().deployment_toml.parse().unwrap());
    assert_eq!(
        lookup(&km, "event_listener[0].properties.notification_endpoint")
            .unwrap()
            .as_str(),
        Some("https://tm.wso2.com/internal/data/v1/notify")
    );
    let tm1 = Value::Table(c.node("tm-1").unwrap().deployment_toml.parse().unwrap());
    assert_eq!(
        lookup(&tm1, "apim.throttling.event_duplicate_url")
            .unwrap()
            .as_array()
            .unwrap()[0]
            .as_str(),
        Some("tcp://tm2.wso2.com:5672")
    );
    let pubn = Value::Table(
        c.node("publisher-1")
            .unwrap()
            .deployment_toml
            .parse()
            .unwrap(),
    );
    let env = lookup(&pubn, "apim.gateway.environment[0]").unwrap();
    assert_eq!(
        env.get("service_url").unwrap().as_str(),
        Some("https://gw.wso2.com/services/")
    );
    assert_eq!(
        env.get("ws_endpoint").unwrap().as_str(),
        Some("ws://gw.wso2.com:9099")
    );
    assert_eq!(
        c.node("gateway-2").unwrap().tls.sans,
        vec!["gw2.wso2.com", "gw.wso2.com"]
    );
    let hosts = c.machines[0].hosts_text();
    assert!(hosts.contains("10.0.0.100 gw.wso2.com\n"), "{hosts}");
    assert!(hosts.contains("10.0.0.52 gw2.wso2.com\n"), "{hosts}");
    assert_eq!(c.tiers.len(), 3, "{:?}", c.tiers);
}

/// 4.2: a separate key manager, two labelled gateways, PKCS12 keystores, strict start order.
#[test]
fn v42_distributed_wiring() {
    let path = examples_dir().join("v42-distributed.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env: BTreeMap<String, String> = [
        ("APIM_ADMIN_PASSWORD", "pw"),
        ("APIM_ANALYTICS_TOKEN", "tok"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let (plan, report) = validate::check(
        &path,
        &text,
        &env,
        Options {
            verify_packs: false,
        },
    );
    let c = render::render(
        &plan.unwrap_or_else(|| panic!("{}", report.render())),
        &env,
        &apim_plan::pack::PackSet::none(),
    )
    .unwrap();
    let doc =
        |n: &str| -> Value { Value::Table(c.node(n).unwrap().deployment_toml.parse().unwrap()) };
    let cp = doc("cp-1");
    assert_eq!(
        lookup(&cp, "server.server_role").unwrap().as_str(),
        Some("control-plane")
    );
    assert_eq!(
        lookup(&cp, "apim.key_manager.service_url")
            .unwrap()
            .as_str(),
        Some("https://km.wso2.com:9444/services/")
    );
    assert!(
        lookup(&cp, "event_listener").is_none(),
        "the separate key manager owns token revocation"
    );
    assert_eq!(
        lookup(&cp, "apim.gateway.environment")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        lookup(&cp, "database.apim_db.type").unwrap().as_str(),
        Some("postgre")
    );
    assert_eq!(
        lookup(&cp, "keystore.tls.type").unwrap().as_str(),
        Some("PKCS12")
    );
    let km = doc("km-1");
    assert_eq!(
        lookup(&km, "server.server_role").unwrap().as_str(),
        Some("api-key-manager-deprecated")
    );
    assert_eq!(
        lookup(&km, "event_listener[0].properties.notification_endpoint")
            .unwrap()
            .as_str(),
        Some("https://cp.wso2.com:9443/internal/data/v1/notify")
    );
    let gw = doc("gw-sandbox");
    assert_eq!(
        lookup(&gw, "apim.sync_runtime_artifacts.gateway.gateway_labels")
            .unwrap()
            .as_array()
            .unwrap(),
        &vec![Value::String("Sandbox".into())]
    );
    assert_eq!(
        lookup(&gw, "apim.analytics.auth_token").unwrap().as_str(),
        Some("tok")
    );
    assert!(
        c.node("gw-sandbox")
            .unwrap()
            .deployment_toml_masked
            .contains("auth_token = \"********\"")
    );
    // The analytics token goes to the gateways only (4.5 guide step 5, the 4.2 templates).
    for n in ["cp-1", "km-1", "tm-1"] {
        assert!(
            lookup(&doc(n), "apim.analytics").is_none(),
            "{n} gets no [apim.analytics]"
        );
    }
    assert_eq!(
        c.node("km-1").unwrap().start.argv,
        vec![
            "bin/api-manager.sh",
            "-Dprofile=api-key-manager-deprecated",
            "start"
        ]
    );
    assert_eq!(
        c.tiers,
        vec![
            vec!["km-1"],
            vec!["cp-1"],
            vec!["tm-1"],
            vec!["gw-prod", "gw-sandbox"]
        ]
    );
}

/// Renders an example plan after `edit`, with the secrets the examples reference.
fn render_edited(name: &str, edit: impl Fn(String) -> String) -> ClusterRender {
    let path = examples_dir().join(name);
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let env: BTreeMap<String, String> = [
        ("APIM_ADMIN_PASSWORD", "pw"),
        ("APIM_ANALYTICS_TOKEN", "tok"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let (plan, report) = validate::check(
        &path,
        &text,
        &env,
        Options {
            verify_packs: false,
        },
    );
    render::render(
        &plan.unwrap_or_else(|| panic!("{}", report.render())),
        &env,
        &apim_plan::pack::PackSet::none(),
    )
    .unwrap()
}

/// wso2_internals §2: a key manager whose optimizer profile has no OSGi folder (4.3–4.4
/// `api-key-manager-node`, 4.5 ACP `key-manager`) is optimized with it and started without it.
#[test]
fn key_managers_are_optimized_with_their_profile_and_started_without_a_missing_osgi_one() {
    let v44 = render_edited("v42-distributed.toml", |t| {
        t.replace("wso2am-4.2.0", "wso2am-4.4.0")
    });
    let km = v44.node("km-1").unwrap();
    assert_eq!(
        km.optimizer.as_ref().unwrap().argv,
        [
            "bin/profileSetup.sh",
            "-Dprofile=api-key-manager-node",
            "--skipConfigOptimization"
        ]
    );
    assert_eq!(km.start.argv, ["bin/api-manager.sh", "start"]);
    // Its peers keep the profiles their packs have folders for.
    assert_eq!(
        v44.node("gw-prod").unwrap().start.argv,
        ["bin/api-manager.sh", "-Dprofile=gateway-worker", "start"]
    );
    assert_eq!(
        v44.node("cp-1").unwrap().start.argv,
        ["bin/api-manager.sh", "-Dprofile=control-plane", "start"]
    );

    let v45 = render_edited("v45-single.toml", |t| {
        t.replace(
            "[[gateway_environments]]",
            "[[nodes]]\nname = \"km-1\"\nmachine = \"vm-cp\"\nrole = \"key-manager\"\n\
             hostname = \"km.wso2.com\"\noffset = 1\n\n[[gateway_environments]]",
        )
    });
    let km = v45.node("km-1").unwrap();
    assert_eq!(
        km.optimizer.as_ref().unwrap().argv,
        [
            "bin/profileSetup.sh",
            "-Dprofile=key-manager",
            "--skipConfigOptimization"
        ]
    );
    assert_eq!(km.start.argv, ["bin/key-manager.sh", "start"]);
    assert_eq!(km.stop.argv, ["bin/key-manager.sh", "stop"]);
    assert_eq!(
        v45.node("cp-1").unwrap().start.argv,
        ["bin/api-cp.sh", "start"]
    );
}

/// 4.x gateways subscribe to the names of their environments (the control plane deploys to an
/// environment by name); 3.x analytics is switched on where the 3.2 templates configure it.
#[test]
fn gateways_subscribe_to_their_environment_names_and_analytics_goes_where_the_release_has_it() {
    let c = render_edited("v42-distributed.toml", |t| {
        t.replace("label = \"Production\"\n", "")
            .replace("name = \"Production\"", "name = \"External\"")
    });
    let gw = Value::Table(c.node("gw-prod").unwrap().deployment_toml.parse().unwrap());
    assert_eq!(
        lookup(&gw, "apim.sync_runtime_artifacts.gateway.gateway_labels"),
        Some(&Value::Array(vec![Value::String("External".into())]))
    );
    let cp = Value::Table(c.node("cp-1").unwrap().deployment_toml.parse().unwrap());
    assert_eq!(
        lookup(&cp, "apim.gateway.environment[0].name").and_then(Value::as_str),
        Some("External")
    );

    let v3 = render_edited("v3-single.toml", |t| {
        format!("{t}\n[analytics]\nenabled = true\n")
    });
    for (node, configured) in [
        ("km-1", false),
        ("tm-1", false),
        ("publisher-1", true),
        ("devportal-1", true),
        ("gateway-1", true),
    ] {
        let doc = Value::Table(v3.node(node).unwrap().deployment_toml.parse().unwrap());
        let enable = lookup(&doc, "apim.analytics.enable").and_then(Value::as_bool);
        assert_eq!(enable, configured.then_some(true), "{node}");
        assert!(
            lookup(&doc, "apim.analytics.auth_token").is_none(),
            "{node}"
        );
    }
}

/// The 4.2 example sizes every node's heap and the gateways' more.
#[test]
fn the_v42_example_sizes_its_jvms() {
    let c = render_edited("v42-distributed.toml", |t| t);
    assert_eq!(
        c.node("cp-1").unwrap().jvm.java_opts,
        ["-Xms2g", "-Xmx2g", "-XX:+UseG1GC"]
    );
    assert_eq!(
        c.node("gw-prod").unwrap().jvm.java_opts,
        ["-Xms4g", "-Xmx4g", "-XX:+UseG1GC"]
    );
    let vm_cp = c.machines.iter().find(|m| m.name == "vm-cp").unwrap();
    assert_eq!(vm_cp.memory_need().div_ceil(1 << 20), 5530);
}
