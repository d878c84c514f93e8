//! The launcher and `-Dprofile`: a profile with no OSGi folder hangs the server after the config
//! mapper (no Carbon, no ports, no exit); the same packs started without `-Dprofile` run as key
//! managers, their role decided by the optimized template and webapps.

use super::support::*;

/// Starts `script` in `home` with `args`, and returns once the config mapper has logged.
fn start_and_pass_the_mapper(home: &Path, script: &str, args: &[&str], m: &Machine) {
    let before = log_text(home)
        .matches("Writing Metadata Entries...")
        .count()
        + log_text(home)
            .matches("No new configuration to apply")
            .count();
    assert!(sh(home, script, args, Some(&m.jdk.home)).status.success());
    assert!(
        wait_until(TIMEOUT, POLL, || {
            let log = log_text(home);
            log.matches("Writing Metadata Entries...").count()
                + log.matches("No new configuration to apply").count()
                > before
        }),
        "{}",
        log_text(home)
    );
}

/// The node in `home` hangs: alive, nothing of Carbon logged, nothing listening.
fn assert_hung(home: &Path, ip: Ipv4Addr, profile: &str) {
    // Well past the simulated startup delay: a server that could start would have.
    std::thread::sleep(Duration::from_millis(1500));
    let log = log_text(home);
    assert!(!log.contains("Starting WSO2 Carbon..."), "{log}");
    assert!(!log.contains("WSO2 Carbon started in"), "{log}");
    let pid = pid_of(home).expect("pid file written before the mapper");
    assert!(alive(pid), "the JVM keeps running");
    for port in [9443, 9763] {
        assert!(!tcp_open(addr(ip, port)), "port {port} listens");
    }
    assert!(http_get(addr(ip, 9763), "/services/Version").is_err());
    let area = home.join("repository/components").join(profile);
    assert!(
        area.join("configuration").is_dir(),
        "Equinox leaves an empty configuration area"
    );
    assert!(
        !area
            .join("configuration/org.eclipse.equinox.simpleconfigurator/bundles.info")
            .exists()
    );
}

fn key_manager_ready(home: &Path, ip: Ipv4Addr, starts: usize) {
    assert!(
        wait_until(TIMEOUT, POLL, || log_text(home)
            .matches("WSO2 Carbon started in")
            .count()
            == starts),
        "{}",
        log_text(home)
    );
    assert!(tcp_open(addr(ip, 9443)));
    let v = http_get(addr(ip, 9763), "/services/Version").expect("version");
    assert_eq!(v.status, 200);
    // A key manager has no event hub (a control plane would listen on 5672 and 9611).
    assert!(!tcp_open(addr(ip, 5672)));
    assert!(!tcp_open(addr(ip, 9611)));
}

#[test]
fn api_key_manager_node_has_no_osgi_profile_on_4_3_and_4_4() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (i, version) in ["4.3.0", "4.4.0"].into_iter().enumerate() {
        let ip = loopback_for("launcher_km_node", i as u8 + 1);
        let m = machine(tmp.path(), &format!("vm-{version}"), ip, &[]);
        let pack = build(PackKind::AllInOne, version, &tmp.path().join(version));
        let home = unzip(&pack, &tmp.path().join(format!("opt-{version}")));
        let _guard = NodeGuard(home.clone());
        let out = sh(
            &home,
            "profileSetup.sh",
            &["-Dprofile=api-key-manager-node"],
            None,
        );
        assert!(stdout(&out).contains("Finished the optimizations"));

        // As apimctl's catalogue starts it today: the launcher finds no OSGi profile.
        start_and_pass_the_mapper(
            &home,
            "api-manager.sh",
            &["start", "-Dprofile=api-key-manager-node"],
            &m,
        );
        assert_hung(&home, ip, "api-key-manager-node");
        stop_node(&home, "api-manager.sh", &m.jdk.home);
        assert!(
            !log_text(&home).contains("Shutdown hook triggered"),
            "no Carbon, no Carbon shutdown hook"
        );

        // Without -Dprofile: the default OSGi profile, the template's server_role
        // (control-plane), the key manager's webapps: a key manager.
        assert!(
            sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home))
                .status
                .success()
        );
        key_manager_ready(&home, ip, 1);
        assert!(log_text(&home).contains("Server role      : control-plane"));
        stop_node(&home, "api-manager.sh", &m.jdk.home);
    }
}

#[test]
fn acp_key_manager_profile_has_no_osgi_profile_on_4_5() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("launcher_acp_km", 1);
    let m = machine(tmp.path(), "vm-acp-km", ip, &[]);
    let pack = build(PackKind::ApiControlPlane, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    assert!(
        sh(&home, "profileSetup.sh", &["-Dprofile=key-manager"], None)
            .status
            .success()
    );

    start_and_pass_the_mapper(
        &home,
        "key-manager.sh",
        &["start", "-Dprofile=key-manager"],
        &m,
    );
    assert_hung(&home, ip, "key-manager");
    stop_node(&home, "key-manager.sh", &m.jdk.home);

    // WSO2's own container images start key-manager.sh without -Dprofile.
    assert!(
        sh(&home, "key-manager.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    key_manager_ready(&home, ip, 1);
    assert!(
        log_text(&home).contains("No new configuration to apply"),
        "the toml did not change since the hung start"
    );
    stop_node(&home, "key-manager.sh", &m.jdk.home);
}

#[test]
fn a_hung_jvm_dies_with_sigterm_status_in_the_foreground() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = machine(tmp.path(), "vm-fg", loopback_for("launcher_fg", 1), &[]);
    let pack = build(PackKind::AllInOne, "4.4.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let child = Command::new(&m.jdk.java)
        .arg(format!("-Dcarbon.home={}", home.display()))
        .arg("org.wso2.carbon.bootstrap.Bootstrap")
        .arg("-Dprofile=no-such-profile")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut child = scopeguard(child);
    assert!(wait_log(&home, "Writing Metadata Entries..."));
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(child.0.try_wait(), Ok(None)), "still running");
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("term");
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(143));
}
