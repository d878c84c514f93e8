//! What a pack ships beyond its layout: the config mapper's key catalogue in the real files'
//! shapes, and the defaults its roles need; a node whose `deployment.toml` drops one of those
//! never becomes ready.

use super::support::*;
use apim_e2e::simpack::Catalogue;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn packs_ship_the_key_catalogue_in_the_real_shapes() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (kind, version) in [
        (PackKind::AllInOne, "3.2.0"),
        (PackKind::AllInOne, "4.2.0"),
        (PackKind::ApiControlPlane, "4.5.0"),
        (PackKind::UniversalGateway, "4.5.0"),
        (PackKind::TrafficManager, "4.5.0"),
    ] {
        let dir = tmp.path().join(format!("{kind}-{version}"));
        let home = unzip(&build(kind, version, &dir), &dir.join("x"));
        let conf = home.join("repository/resources/conf");
        // default.json: flat dotted keys; infer.json: key -> value -> implied keys;
        // key-mappings.json: key -> key or [keys].
        let defaults = json(&conf.join("default.json"));
        let d = defaults.as_object().expect("object");
        assert_eq!(d["keystore.primary.file_name"], "wso2carbon.jks");
        assert_eq!(
            d["keystore.tls.password"],
            "$ref{keystore.primary.password}"
        );
        assert_eq!(
            d["system.parameter.'org.wso2.CipherTransformation'"],
            "RSA/ECB/OAEPwithSHA1andMGF1Padding"
        );
        let infer = json(&conf.join("infer.json"));
        let roles = infer["server.server_role"].as_object().expect("roles");
        assert!(roles.contains_key("default"), "{kind} {version}");
        assert!(roles.values().all(serde_json::Value::is_object));
        let mappings = json(&conf.join("key-mappings.json"));
        assert_eq!(
            mappings["apim.cache.gateway_token.expiry_time"],
            "apim.cache.token_expiry_time"
        );
        let templates = conf.join("templates/repository/conf");
        for t in [
            "carbon.xml.j2",
            "api-manager.xml.j2",
            "identity/identity.xml.j2",
        ] {
            assert!(read(&templates.join(t)).contains("{{"), "{t}");
        }

        let c = Catalogue::read(&home).expect("catalogue");
        for key in [
            "server.hostname",
            "super_admin.password",
            "database.apim_db.hostname",
            "keystore.tls.key_password",
            "apim.throttling.url_group.traffic_manager_urls",
            "event_listener.properties.'header.X-WSO2-KEY-MANAGER'",
            "event_handler.subscriptions",
        ] {
            assert!(c.knows(key), "{kind} {version}: {key}");
        }
        for typo in [
            "apim.throttling.servce_url",
            "keystore.tls.passwd",
            "servr.hostname",
        ] {
            assert!(!c.knows(typo), "{kind} {version}: {typo}");
        }
        assert_eq!(
            c.knows("apim.event_hub.event_listening_endpoints"),
            version != "3.2.0"
        );
    }
}

#[test]
fn shipped_files_carry_the_defaults_their_roles_need() {
    let tmp = tempfile::tempdir().expect("tmp");
    let toml =
        |home: &Path, rel: &str| -> toml::Table { read(&home.join(rel)).parse().expect("toml") };
    let handler = |t: &toml::Table| {
        t.get("event_handler")
            .and_then(|h| h.as_array())
            .is_some_and(|a| {
                a.iter().any(|h| {
                    h["name"].as_str() == Some("userPostSelfRegistration")
                        && h["subscriptions"]
                            .as_array()
                            .is_some_and(|s| s.iter().any(|v| v.as_str() == Some("POST_ADD_USER")))
                })
            })
    };
    let sp = |t: &toml::Table| {
        t.get("service_provider")
            .is_some_and(|s| s.get("sp_name_regex").is_some())
    };
    let tpl = "repository/resources/conf/deployment-templates";

    let h32 = unzip(
        &build(PackKind::AllInOne, "3.2.0", &tmp.path().join("a")),
        &tmp.path().join("a/x"),
    );
    let default32 = toml(&h32, "repository/conf/deployment.toml");
    assert!(handler(&default32) && sp(&default32));
    for (profile, has_handler) in [
        ("api-key-manager", true),
        ("api-devportal", true),
        ("api-publisher", false),
        ("gateway-worker", false),
        ("traffic-manager", false),
    ] {
        let t = toml(&h32, &format!("{tpl}/{profile}.toml"));
        assert_eq!(handler(&t), has_handler, "3.2 {profile}");
        assert!(
            !sp(&t),
            "3.2 {profile}: only the default carries sp_name_regex"
        );
    }

    let h42 = unzip(
        &build(PackKind::AllInOne, "4.2.0", &tmp.path().join("b")),
        &tmp.path().join("b/x"),
    );
    let default42 = toml(&h42, "repository/conf/deployment.toml");
    assert_eq!(
        default42["apim"]["key_manager"]["enable_apikey_subscription_validation"].as_bool(),
        Some(true)
    );
    let cp = toml(&h42, &format!("{tpl}/control-plane.toml"));
    assert!(handler(&cp) && sp(&cp));
    assert!(cp.get("apim").and_then(|a| a.get("key_manager")).is_none());
    let gw = toml(&h42, &format!("{tpl}/gateway-worker.toml"));
    assert_eq!(
        gw["apim"]["sync_runtime_artifacts"]["gateway"]["gateway_labels"][0].as_str(),
        Some("Default")
    );
    let h44 = unzip(
        &build(PackKind::AllInOne, "4.4.0", &tmp.path().join("c")),
        &tmp.path().join("c/x"),
    );
    let default44 = toml(&h44, "repository/conf/deployment.toml");
    assert!(
        default44
            .get("apim")
            .and_then(|a| a.get("key_manager"))
            .is_none(),
        "only 4.2 carries it"
    );

    let acp = unzip(
        &build(PackKind::ApiControlPlane, "4.5.0", &tmp.path().join("d")),
        &tmp.path().join("d/x"),
    );
    let km = toml(&acp, &format!("{tpl}/key-manager.toml"));
    assert!(handler(&km) && !sp(&km));
    assert!(handler(&toml(&acp, "repository/conf/deployment.toml")));
}

/// Removes the `[[event_handler]]` block (its three lines) from a toml.
fn without_event_handler(text: &str) -> String {
    let mut out = Vec::new();
    let mut skip = 0;
    for line in text.lines() {
        if line.trim() == "[[event_handler]]" {
            skip = 3;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        out.push(line);
    }
    out.join("\n") + "\n"
}

#[test]
fn a_node_lacking_a_needed_default_never_becomes_ready() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("needed_defaults", 1);
    let m = machine(tmp.path(), "vm-km", ip, &[]);
    let pack = build(PackKind::AllInOne, "3.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    assert!(
        sh(
            &home,
            "profileSetup.sh",
            &["-Dprofile=api-key-manager"],
            None
        )
        .status
        .success()
    );
    let template = read(&home.join("repository/conf/deployment.toml"));
    // Peers are the renderer's business; this node talks to nobody.
    let local: String = template
        .lines()
        .filter(|l| !l.contains("://"))
        .map(|l| format!("{l}\n"))
        .collect();
    write_toml(&home, &without_event_handler(&local));

    assert!(
        sh(
            &home,
            "wso2server.sh",
            &["start", "-Dprofile=api-key-manager"],
            Some(&m.jdk.home)
        )
        .status
        .success()
    );
    assert!(
        wait_log(&home, "ERROR {apimsim.PackDefaults}"),
        "{}",
        log_text(&home)
    );
    std::thread::sleep(Duration::from_millis(800));
    let log = log_text(&home);
    assert!(log.contains("userPostSelfRegistration"), "{log}");
    assert!(log.contains("Starting WSO2 Carbon..."), "Carbon runs");
    assert!(!log.contains("WSO2 Carbon started in"), "{log}");
    assert!(alive(pid_of(&home).expect("pid")), "keeps running");
    assert!(
        !tcp_open(addr(ip, 9443)) && !tcp_open(addr(ip, 9763)),
        "no health endpoint up"
    );
    stop_node(&home, "wso2server.sh", &m.jdk.home);
    assert!(log_text(&home).contains("Shutdown hook triggered"));

    // The template's own handler back: ready.
    write_toml(&home, &local);
    assert!(
        sh(
            &home,
            "wso2server.sh",
            &["start", "-Dprofile=api-key-manager"],
            Some(&m.jdk.home)
        )
        .status
        .success()
    );
    assert!(
        wait_log(&home, "WSO2 Carbon started in"),
        "{}",
        log_text(&home)
    );
    assert_eq!(
        http_get(addr(ip, 9763), "/services/Version")
            .expect("v")
            .status,
        200
    );
    stop_node(&home, "wso2server.sh", &m.jdk.home);
}

#[test]
fn a_4_x_gateway_without_labels_never_becomes_ready() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("needed_labels", 1);
    let m = machine(tmp.path(), "vm-gw", ip, &[]);
    let pack = build(PackKind::UniversalGateway, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let shipped = read(&home.join("repository/conf/deployment.toml"));
    write_toml(
        &home,
        &shipped.replace("gateway_labels = [\"Default\"]", "gateway_labels = []"),
    );
    assert!(
        sh(&home, "gateway.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_log(&home, "gateway_labels"), "{}", log_text(&home));
    assert!(!log_text(&home).contains("WSO2 Carbon started in"));
    assert!(!tcp_open(addr(ip, 9443)));
    stop_node(&home, "gateway.sh", &m.jdk.home);
}
