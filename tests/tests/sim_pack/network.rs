//! Simulated nodes on the network: peers, ports of the 4.5 control plane, TLS.

use super::support::*;

#[test]
fn peer_unreachable_is_logged_until_it_comes_up() {
    let tmp = tempfile::tempdir().expect("tmp");
    let gw_ip = loopback_for("peers", 1);
    let tm_ip = loopback_for("peers", 2);
    let gw = machine(tmp.path(), "vm-gw", gw_ip, &[("tm.wso2.com", tm_ip)]);
    let tm = machine(tmp.path(), "vm-tm", tm_ip, &[("gw.wso2.com", gw_ip)]);
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let gw_home = unzip(&pack, &tmp.path().join("gw"));
    let tm_home = unzip(&pack, &tmp.path().join("tm"));
    let _g1 = NodeGuard(gw_home.clone());
    let _g2 = NodeGuard(tm_home.clone());
    assert!(
        sh(
            &gw_home,
            "profileSetup.sh",
            &["-Dprofile=gateway-worker"],
            None
        )
        .status
        .success()
    );
    assert!(
        sh(
            &tm_home,
            "profileSetup.sh",
            &["-Dprofile=traffic-manager"],
            None
        )
        .status
        .success()
    );
    write_toml(
        &gw_home,
        r#"[server]
hostname = "gw.wso2.com"
server_role = "gateway-worker"

[apim.throttling]
username = "$ref{super_admin.username}"
service_url = "https://tm.wso2.com:9446/services/"
throttle_decision_endpoints = ["tcp://tm.wso2.com:5675"]

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm.wso2.com:9614"]
traffic_manager_auth_urls = ["ssl://tm.wso2.com:9714"]

[apim.key_manager]
service_url = "https://km-lb.wso2.com/services/"

[apim.sync_runtime_artifacts.gateway]
gateway_labels = ["Default"]

[apim.analytics]
config_endpoint = "tcp://ghost.wso2.com:7612"
"#,
    );
    write_toml(
        &tm_home,
        "[server]\nhostname = \"tm.wso2.com\"\nserver_role = \"traffic-manager\"\noffset = 3\n",
    );

    assert!(
        sh(&gw_home, "api-manager.sh", &["start"], Some(&gw.jdk.home))
            .status
            .success()
    );
    assert!(
        wait_log(
            &gw_home,
            "Peer tm.wso2.com:5675 unreachable: Connection refused"
        ),
        "{}",
        log_text(&gw_home)
    );
    assert!(wait_log(
        &gw_home,
        "Peer ghost.wso2.com:7612 unreachable: java.net.UnknownHostException: ghost.wso2.com"
    ));
    // ready regardless of its peers, like the real server
    assert!(wait_log(&gw_home, "WSO2 Carbon started in"));
    assert!(
        !log_text(&gw_home).contains("km-lb.wso2.com"),
        "port-less LB URLs are not probed"
    );

    assert!(
        sh(&tm_home, "api-manager.sh", &["start"], Some(&tm.jdk.home))
            .status
            .success()
    );
    assert!(wait_log(&tm_home, "WSO2 Carbon started in"));
    for port in [5675, 9614, 9714, 9446] {
        assert!(
            wait_log(&gw_home, &format!("Connected to peer tm.wso2.com:{port}")),
            "{port}: {}",
            log_text(&gw_home)
        );
    }
    let log = log_text(&gw_home);
    for port in [5675, 9614, 9714] {
        let connected = log
            .find(&format!("Connected to peer tm.wso2.com:{port}"))
            .expect("connected");
        let last_error = log
            .rfind(&format!("Peer tm.wso2.com:{port} unreachable"))
            .expect("was unreachable");
        assert!(last_error < connected, "errors after connecting for {port}");
    }
    // The peer watcher stops after connecting, while the unknown host keeps being reported.
    let ghost_count = log.matches("Peer ghost.wso2.com:7612 unreachable").count();
    assert!(wait_until(TIMEOUT, POLL, || log_text(&gw_home)
        .matches("Peer ghost.wso2.com:7612 unreachable")
        .count()
        > ghost_count));
    assert_eq!(
        log_text(&gw_home)
            .matches("Connected to peer tm.wso2.com:5675")
            .count(),
        1
    );

    for (home, jdk) in [(&gw_home, &gw.jdk.home), (&tm_home, &tm.jdk.home)] {
        let pid = pid_of(home).expect("pid");
        assert!(
            sh(home, "api-manager.sh", &["stop"], Some(jdk))
                .status
                .success()
        );
        assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
    }
}

#[test]
fn control_plane_and_key_manager_4_5_ports_and_version() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("acp", 1);
    let m = machine(tmp.path(), "vm-acp", ip, &[]);
    let pack = build(PackKind::ApiControlPlane, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("acp"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(&home, &toml.replace("#offset = 0", "offset = 1"));

    assert!(
        sh(&home, "api-cp.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_log(&home, "WSO2 Carbon started in"));
    let v = http_get(addr(ip, 9764), "/services/Version").expect("version");
    assert!(
        v.body
            .contains("<return>WSO2 API Control Plane-4.5.0</return>")
    );
    for port in [9444, 9764, 5673, 9612, 9712] {
        assert!(tcp_open(addr(ip, port)), "event hub port {port}");
    }
    let h = https_get_insecure(
        addr(ip, 9444),
        "localhost",
        "/api/am/gateway/v2/server-startup-healthcheck",
    )
    .expect("h");
    assert_eq!(h.status, 404, "no gateway REST API on a control plane");
    assert!(log_text(&home).contains("Mgt Console URL  : https://localhost:9444/carbon/"));
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "api-cp.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));

    // Optimized as a key manager and started by key-manager.sh without -Dprofile (4.5 ACP has
    // no `key-manager` OSGi profile): -DportOffset wins; a key manager has no event hub.
    assert!(
        sh(&home, "profileSetup.sh", &["-Dprofile=key-manager"], None)
            .status
            .success()
    );
    assert!(
        sh(
            &home,
            "key-manager.sh",
            &["start", "-DportOffset=4"],
            Some(&m.jdk.home)
        )
        .status
        .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 2));
    assert!(tcp_open(addr(ip, 9447)));
    assert!(!tcp_open(addr(ip, 5676)));
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "key-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
}

fn export_cert_der(store: &Path, alias: &str, pass: &str) -> Vec<u8> {
    let keytool = apim_e2e::simpack::find_keytool().expect("keytool");
    let out = Command::new(keytool)
        .args(["-exportcert", "-alias", alias, "-keystore"])
        .arg(store)
        .args(["-storepass:env", "SIM_TEST_PASS"])
        .env("SIM_TEST_PASS", pass)
        .output()
        .expect("keytool -exportcert");
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

#[test]
fn tls_is_served_from_the_configured_keystore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("tls_keystore", 1);
    let m = machine(tmp.path(), "vm-tls", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.4.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let sec = home.join("repository/resources/security");
    let base = read(&home.join("repository/conf/deployment.toml"));

    // The shipped keystore (PKCS12 bytes behind a .jks name in 4.4).
    assert!(
        sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_log(&home, "WSO2 Carbon started in"));
    let served = tls_peer_certificate(addr(ip, 9443), "localhost").expect("cert");
    assert_eq!(
        served,
        export_cert_der(&sec.join("wso2carbon.jks"), "wso2carbon", "wso2carbon")
    );
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));

    // An operator's JKS keystore with its own password, passed through the environment.
    let keytool = apim_e2e::simpack::find_keytool().expect("keytool");
    let out = Command::new(keytool)
        .args([
            "-genkeypair",
            "-alias",
            "gw",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-validity",
            "30",
            "-dname",
            "CN=gw.wso2.com",
            "-storetype",
            "JKS",
            "-storepass:env",
            "P",
            "-keypass:env",
            "P",
            "-keystore",
        ])
        .arg(sec.join("gw.jks"))
        .env("P", "gw-pass")
        .output()
        .expect("keytool");
    assert!(out.status.success(), "{}", stderr(&out));
    let tls_table = "[keystore.tls]\nfile_name = \"gw.jks\"\ntype = \"JKS\"\npassword = \"$env{GW_KS_PASS}\"\nalias = \"gw\"\nkey_password = \"$env{GW_KS_PASS}\"\n";
    let without_tls = base.replace("[keystore.tls]", "[keystore.tls_shipped]");
    write_toml(&home, &format!("{without_tls}\n{tls_table}"));
    let mut cmd = Command::new("sh");
    cmd.arg(home.join("bin/api-manager.sh"))
        .arg("start")
        .env("JAVA_HOME", &m.jdk.home)
        .env("GW_KS_PASS", "gw-pass")
        .env_remove("CARBON_HOME");
    assert!(cmd.output().expect("start").status.success());
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 2));
    let served = tls_peer_certificate(addr(ip, 9443), "gw.wso2.com").expect("cert");
    assert_eq!(
        served,
        export_cert_der(&sec.join("gw.jks"), "gw", "gw-pass")
    );
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));

    // A wrong password stops the server with the JDK's message.
    let out = Command::new(&m.jdk.java)
        .arg(format!("-Dcarbon.home={}", home.display()))
        .arg("org.wso2.carbon.bootstrap.Bootstrap")
        .env("GW_KS_PASS", "wrong")
        .output()
        .expect("java");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("Keystore was tampered with, or password was incorrect"),
        "{}",
        stdout(&out)
    );
}
