//! A simulated node started through its script: health, stop, restart, failures, config errors.

use super::support::*;

#[test]
fn gateway_node_start_health_stop_restart_via_script() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("gateway_lifecycle", 1);
    let m = machine(tmp.path(), "vm-gw", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=gateway-worker"],
        None,
    );
    assert!(out.status.success());
    let mut toml = read(&home.join("repository/conf/deployment.toml"));
    // the renderer would write real peers; this node talks to nobody
    toml = toml.replace("hostname = \"localhost\"", "hostname = \"gw.wso2.com\"");
    toml = toml
        .lines()
        .filter(|l| !l.contains("://"))
        .collect::<Vec<_>>()
        .join("\n");
    write_toml(&home, &toml);

    let out = sh(
        &home,
        "api-manager.sh",
        &["start", "-Dprofile=gateway-worker", "-DportOffset=2"],
        Some(&m.jdk.home),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "daemon mode discards output: {}",
        stdout(&out)
    );

    assert!(
        wait_log(&home, "WSO2 Carbon started in"),
        "{}",
        log_text(&home)
    );
    let log = log_text(&home);
    let server_line = log
        .find("Server           :  WSO2 API Manager-4.2.0")
        .expect("Server line");
    let started_line = log.find("WSO2 Carbon started in").expect("started line");
    assert!(server_line < started_line);
    assert!(log.lines().any(|l| l.starts_with("TID: [-1234] [] [20")
        && l.contains("]  INFO {org.wso2.carbon.core.internal.StartupFinalizerServiceComponent} - WSO2 Carbon started in ")
        && l.ends_with(" sec")), "{log}");
    assert!(log.contains("Server role      : gateway-worker"));

    let pid = pid_of(&home).expect("pid file");
    assert!(alive(pid));
    let version = http_get(addr(ip, 9765), "/services/Version").expect("version");
    assert_eq!(version.status, 200);
    assert_eq!(
        version.body,
        "<ns:getVersionResponse xmlns:ns=\"http://version.services.core.carbon.wso2.org\"><return>WSO2 API Manager-4.2.0</return></ns:getVersionResponse>"
    );
    let health = https_get_insecure(
        addr(ip, 9445),
        "gw.wso2.com",
        "/api/am/gateway/v2/server-startup-healthcheck",
    )
    .expect("health");
    assert_eq!(health.status, 200);
    assert_eq!(
        https_get_insecure(addr(ip, 9445), "gw.wso2.com", "/services/Version")
            .expect("v")
            .status,
        200
    );
    assert_eq!(
        http_get(addr(ip, 9101), "/health")
            .expect("ws health")
            .status,
        200
    );
    for port in [9445, 9765, 8282, 8245, 9101, 8101] {
        assert!(tcp_open(addr(ip, port)), "port {port}");
    }
    for port in [9443, 5674, 9613] {
        assert!(!tcp_open(addr(ip, port)), "port {port} should be closed");
    }
    assert!(
        !tcp_open(addr(Ipv4Addr::LOCALHOST, 9445)),
        "binds only the machine's address"
    );

    let out = sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert_eq!(stdout(&out), "Process is already running\n");

    // restart: TERM, wait for the pid to go, start again; tmp/ is emptied by the new start
    let lock = home.join(format!("tmp/carbon-{pid}.lck"));
    assert!(lock.exists());
    let out = sh(
        &home,
        "api-manager.sh",
        &["restart", "-Dprofile=gateway-worker", "-DportOffset=2"],
        Some(&m.jdk.home),
    );
    assert!(out.status.success());
    assert!(!alive(pid));
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 2));
    let pid2 = pid_of(&home).expect("new pid");
    assert_ne!(pid, pid2);
    assert!(!lock.exists(), "tmp/* emptied on start");
    assert!(log_text(&home).contains("Gracefully shutting down WSO2 API Manager"));

    let out = sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert!(
        wait_until(TIMEOUT, POLL, || !alive(pid2)),
        "node did not stop"
    );
    assert!(log_text(&home).trim_end().ends_with("Halting JVM"));
    assert_eq!(
        pid_of(&home),
        Some(pid2),
        "the pid file stays behind, stale"
    );
    assert!(wait_until(TIMEOUT, POLL, || !tcp_open(addr(ip, 9765))));
}

#[test]
fn never_ready_gateway_listens_with_health_500() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("never_ready", 1);
    let m = machine(tmp.path(), "vm-ugw", ip, &[]);
    let pack = build(PackKind::UniversalGateway, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(&home, &format!("{toml}\n[apimsim]\nnever_ready = true\n"));

    let out = sh(&home, "gateway.sh", &["start"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert!(wait_until(TIMEOUT, POLL, || http_get(
        addr(ip, 9763),
        "/services/Version"
    )
    .is_ok()));
    let v = http_get(addr(ip, 9763), "/services/Version").expect("version");
    assert!(
        v.body
            .contains("<return>WSO2 Universal Gateway-4.5.0</return>"),
        "{}",
        v.body
    );
    let h = https_get_insecure(
        addr(ip, 9443),
        "localhost",
        "/api/am/gateway/v2/server-startup-healthcheck",
    )
    .expect("health");
    assert_eq!(h.status, 500);
    assert_eq!(http_get(addr(ip, 9099), "/health").expect("ws").status, 503);
    assert!(log_text(&home).contains("Starting WSO2 Carbon..."));
    assert!(!log_text(&home).contains("WSO2 Carbon started in"));

    let pid = pid_of(&home).expect("pid");
    let out = sh(&home, "gateway.sh", &["stop"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
}

#[test]
fn exit_code_override_kills_a_started_node() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("exit_code", 1);
    let m = machine(tmp.path(), "vm-tm", ip, &[]);
    let pack = build(PackKind::TrafficManager, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(
        &home,
        &format!("{toml}\n[apimsim]\nexit_code = 3\nexit_after_ms = 100\n"),
    );

    // Foreground run: the script waits for java; status 3 is not 121, so no restart.
    let out = sh(
        &home,
        "traffic-manager.sh",
        &["-DportOffset=1"],
        Some(&m.jdk.home),
    );
    assert!(out.status.success(), "the script loop itself ends with 0");
    let text = stdout(&out);
    assert!(
        text.contains("JAVA_HOME environment variable is set to"),
        "{text}"
    );
    assert!(
        text.contains("Using Java memory options: -Xms256m -Xmx1024m"),
        "{text}"
    );
    assert!(
        text.contains("Started Binary TCP Transport on port : 9612"),
        "{text}"
    );
    let log = log_text(&home);
    assert_eq!(
        log.matches("Starting WSO2 Carbon...").count(),
        1,
        "no restart loop for 3"
    );
    assert!(log.contains("Server           :  WSO2 Traffic Manager-4.5.0"));
    assert!(log.contains("exiting with status 3"));
    let pid = pid_of(&home).expect("pid");
    assert!(!alive(pid));
}

#[test]
fn config_errors_exit_1_with_the_real_messages() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = machine(tmp.path(), "vm-cfg", loopback_for("config_errors", 1), &[]);
    let pack = build(PackKind::AllInOne, "3.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let base = read(&home.join("repository/conf/deployment.toml"));
    let java = |home: &Path| {
        Command::new(&m.jdk.java)
            .arg(format!("-Dcarbon.home={}", home.display()))
            .arg("org.wso2.carbon.bootstrap.Bootstrap")
            .output()
            .expect("java")
    };

    // Through the script in the foreground: JDK warning, the mapper's messages; loop ends 0.
    write_toml(
        &home,
        &format!("{base}\n[apim.throttling]\nusername = \"$ref{{super_admin.user}}\"\n"),
    );
    let out = sh(&home, "wso2server.sh", &[], Some(&m.jdk.home));
    let text = stdout(&out);
    assert!(
        text.contains(" [ERROR] CARBON is supported only between JDK 1.7 and JDK 11"),
        "{text}"
    );
    assert!(
        text.contains("Error while performing configuration changes"),
        "{text}"
    );
    assert!(
        text.contains("References can't be resolved for [$ref{super_admin.user}]"),
        "{text}"
    );
    assert!(log_text(&home).contains(
        "ERROR {org.wso2.carbon.server.Main} - Error while performing configuration changes"
    ));
    assert!(
        home.join("wso2carbon.pid").exists(),
        "pid file is written before the mapper runs"
    );

    // The JVM's own status is 1.
    let out = java(&home);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("References can't be resolved for [$ref{super_admin.user}]"));

    write_toml(
        &home,
        &format!("{base}\n[apim.x]\npassword = \"$secret{{admin_password}}\"\n"),
    );
    let out = java(&home);
    assert_eq!(out.status.code(), Some(1));
    // kernel ReferenceResolver.resolveSecrets' own words: the alias, no brackets
    assert!(stdout(&out).contains("Secret References can't be resolved for admin_password"));

    write_toml(
        &home,
        &format!(
            "{base}\n[apim.x]\npassword = \"$secret{{admin_password}}\"\n\n[secrets]\nadmin_password = \"[admin]\"\n"
        ),
    );
    let out = java(&home);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("Secret References can't be Plain-Text for admin_password"));

    // `${...}` is kept verbatim, unknown keys are ignored and a syntax error is only logged.
    write_toml(
        &home,
        &format!(
            "{base}\n[made_up]\nkey = \"${{carbon.host}}:${{nope}}\"\n[apimsim]\nstartup_delay_ms = 0\n"
        ),
    );
    let child = Command::new(&m.jdk.java)
        .arg(format!("-Dcarbon.home={}", home.display()))
        .arg("org.wso2.carbon.bootstrap.Bootstrap")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut child = scopeguard(child);
    assert!(
        wait_log(&home, "WSO2 Carbon started in"),
        "{}",
        log_text(&home)
    );
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("term");
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}
