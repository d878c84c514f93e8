//! A node's ports are its own: a second server started on ports another server holds fails its
//! startup (as Tomcat's connector does on a real machine), so an agent that started a new
//! server beside an old one could never get it ready.

use super::support::*;

/// The 4.2 gateway's `deployment.toml`, wired to nobody.
fn standalone_gateway(home: &Path) {
    let out = sh(home, "profileSetup.sh", &["-Dprofile=gateway-worker"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let toml = read(&home.join("repository/conf/deployment.toml"))
        .replace("hostname = \"localhost\"", "hostname = \"gw.wso2.com\"")
        .lines()
        .filter(|l| !l.contains("://"))
        .collect::<Vec<_>>()
        .join("\n");
    write_toml(home, &toml);
}

#[test]
fn a_second_server_on_the_ports_of_a_running_one_fails_to_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("duplicate_ports", 1);
    let m = machine(tmp.path(), "vm-gw", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let first = unzip(&pack, &tmp.path().join("a"));
    let second = unzip(&pack, &tmp.path().join("b"));
    let _guards = (NodeGuard(first.clone()), NodeGuard(second.clone()));
    for home in [&first, &second] {
        standalone_gateway(home);
    }
    let start = |home: &Path| {
        let out = sh(
            home,
            "api-manager.sh",
            &["start", "-Dprofile=gateway-worker", "-DportOffset=2"],
            Some(&m.jdk.home),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    };
    start(&first);
    assert!(
        wait_log(&first, "WSO2 Carbon started in"),
        "{}",
        log_text(&first)
    );
    let pid1 = pid_of(&first).expect("first pid");

    start(&second);
    assert!(
        wait_log(&second, "Failed to start connector"),
        "{}",
        log_text(&second)
    );
    let pid2 = pid_of(&second).expect("the second server wrote its pid before failing");
    assert!(
        wait_until(TIMEOUT, POLL, || !alive(pid2)),
        "the second server exits"
    );
    let log2 = log_text(&second);
    assert!(log2.contains("Address already in use"), "{log2}");
    assert!(!log2.contains("WSO2 Carbon started in"), "{log2}");
    assert!(alive(pid1), "the first server keeps its ports");
    assert!(tcp_open(addr(ip, 9765)));
    stop_node(&first, "api-manager.sh", &m.jdk.home);
}
