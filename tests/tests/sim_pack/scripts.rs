//! The start scripts' contract and the simulated JVM outside the server.

use super::support::*;

#[test]
fn start_scripts_check_java_home_first_with_the_real_messages() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = machine(tmp.path(), "vm-java", loopback_for("java_home", 1), &[]);
    for (kind, script) in [
        (PackKind::AllInOne, "api-manager.sh"),
        (PackKind::UniversalGateway, "gateway.sh"),
    ] {
        let pack = build(
            kind,
            if kind == PackKind::AllInOne {
                "4.2.0"
            } else {
                "4.5.0"
            },
            tmp.path(),
        );
        let home = unzip(&pack, &tmp.path().join(kind.prefix()));
        for args in [vec!["start"], vec![]] {
            let out = sh(&home, script, &args, None);
            assert_eq!(out.status.code(), Some(1), "{script} {args:?}");
            assert_eq!(
                stdout(&out),
                "Error: JAVA_HOME is not defined correctly.\n CARBON cannot execute java\n"
            );
        }
        let nowhere = tmp.path().join("no-jdk");
        let out = sh(&home, script, &["start"], Some(&nowhere));
        assert_eq!(out.status.code(), Some(1));
        assert!(stdout(&out).contains(&format!(
            " CARBON cannot execute {}/bin/java",
            nowhere.display()
        )));
        assert!(!home.join("wso2carbon.pid").exists(), "nothing was started");

        let out = sh(&home, script, &["version"], Some(&m.jdk.home));
        assert!(out.status.success());
        assert!(stdout(&out).contains(&format!("{} v", kind.product_name())));
        assert!(stdout(&out).contains("WSO2 Carbon Framework v"));
    }
}

#[test]
fn simulated_java_behaves_like_a_jvm_outside_the_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = machine(tmp.path(), "vm-jvm", loopback_for("jvm", 1), &[]);
    let located = apim_e2e::fakejdk::locate_simjava().expect("simjava next to the test binary");
    assert_eq!(
        located.canonicalize().expect("located"),
        Path::new(SIMJAVA).canonicalize().expect("simjava")
    );
    let out = Command::new(&m.jdk.java)
        .arg("-version")
        .output()
        .expect("java -version");
    assert!(out.status.success());
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).starts_with("openjdk version \"17.0.9\""),
        "{}",
        stderr(&out)
    );
    let keytool = Command::new(&m.jdk.keytool)
        .arg("-help")
        .output()
        .expect("keytool");
    assert!(
        String::from_utf8_lossy(&[keytool.stdout, keytool.stderr].concat())
            .contains("Key and Certificate Management Tool")
    );

    let out = Command::new(&m.jdk.java)
        .args(["-cp", "x", "org.wso2.ciphertool.CipherTool"])
        .output()
        .expect("java");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Could not find or load main class org.wso2.ciphertool.CipherTool")
    );

    // A broken hosts file is a machine problem: the JVM fails before writing a pid file.
    let pack = build(PackKind::TrafficManager, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("tm"));
    fs::write(
        &m.hosts,
        "127.0.0.1 localhost\nnot-an-address tm.wso2.com\n",
    )
    .expect("hosts");
    let out = Command::new(&m.jdk.java)
        .arg(format!("-Dcarbon.home={}", home.display()))
        .arg("org.wso2.carbon.bootstrap.Bootstrap")
        .output()
        .expect("java");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("Error: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert!(!home.join("wso2carbon.pid").exists());
}

#[test]
fn exit_status_121_restarts_the_jvm_in_the_script_loop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("restart_loop", 1);
    let m = machine(tmp.path(), "vm-loop", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.3.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(&home, &format!("{toml}\n[apimsim]\nrestart_requests = 2\n"));

    assert!(
        sh(
            &home,
            "api-manager.sh",
            &["start", "-DportOffset=5"],
            Some(&m.jdk.home)
        )
        .status
        .success()
    );
    // Two restarts requested, so the third JVM stays up.
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 3));
    let log = log_text(&home);
    assert_eq!(log.matches("Restarting WSO2 Carbon...").count(), 2);
    assert_eq!(log.matches("Starting WSO2 Carbon...").count(), 3);
    let pid = pid_of(&home).expect("pid");
    assert!(alive(pid));
    assert!(
        tcp_open(addr(ip, 9448)),
        "offset passed to every JVM of the loop"
    );
    assert!(
        sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
    assert_eq!(
        log_text(&home).matches("Starting WSO2 Carbon...").count(),
        3,
        "exit 0 ends the loop"
    );
}
