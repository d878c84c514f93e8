//! The agent daemon end to end: a scripted fake controller (mTLS, apim-certs) drives the real
//! daemon (`apim_agent::daemon::run`) on one simulated machine — real files in temp dirs, real
//! simulated WSO2 processes (apim-e2e packs and fake JDK), real sockets on a per-test 127.x
//! address. Conditions are polled; timeouts are failure guards only.

#[path = "agent/logs.rs"]
mod logs;
#[path = "agent/rig.rs"]
mod rig;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::SystemTime;

use apim_agent::daemon::converge::OPTIMIZED_MARKER;
use apim_e2e::probe::{tcp_open, tls_peer_certificate};
use apim_proto::v1::{DesiredRun, KeystoreSpec, NodePhase, ProvidedStores, StoreType, TrustedCert};
use apim_testkit::ca::{ProvidedPair, mint_tls, provided_stores};
use apim_testkit::specs::digest;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rig::{Rig, TIMEOUT, alive, all_in, mtime, pid_of, status};
use support::dir_entries;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_converge_to_healthy_then_stopped() {
    let mut rig = Rig::new("agentd_two_nodes").await;
    let (key_pem, chain_pem, ca_pem, leaf_der) = mint_tls("gw-1.test");
    let mut gw = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running);
    gw.keystores = Some(KeystoreSpec {
        store_type: StoreType::Jks as i32,
        keystore_file: "repository/resources/security/wso2carbon.jks".into(),
        alias: "wso2carbon".into(),
        password: "wso2carbon".into(),
        node_key_pem: key_pem,
        node_chain_pem: chain_pem,
        truststore_file: "repository/resources/security/client-truststore.jks".into(),
        truststore_password: "wso2carbon".into(),
        trusted: vec![TrustedCert {
            alias: "apimctl-cluster-ca".into(),
            cert_pem: ca_pem,
        }],
        ..KeystoreSpec::default()
    });
    digest(&mut gw);
    let tm = rig.node("tm-1", "traffic-manager", 2, DesiredRun::Running);
    rig.ctl
        .push(rig.machine(1, vec![gw.clone(), tm.clone()]))
        .await;
    rig.start_agent();

    let healthy = rig
        .ctl
        .wait_report(0, TIMEOUT, "both nodes HEALTHY at generation 1", |r| {
            all_in(r, 1, &["gw-1", "tm-1"], NodePhase::Healthy)
        })
        .await;
    for (node, spec) in [("gw-1", &gw), ("tm-1", &tm)] {
        let s = status(&healthy, node).expect("status");
        assert!(s.running && s.pid.is_some(), "{s:?}");
        assert_eq!(s.config_digest, spec.config_digest);
        assert!(s.last_error.is_empty(), "{s:?}");
        assert!(s.phase_since.is_some());
        let home = rig.home(node);
        let toml = home.join("repository/conf/deployment.toml");
        assert_eq!(
            std::fs::read_to_string(&toml).unwrap(),
            spec.deployment_toml
        );
        assert_eq!(std::fs::metadata(&toml).unwrap().mode() & 0o777, 0o600);
        assert!(home.join(OPTIMIZED_MARKER).is_file(), "optimizer ran once");
        assert!(
            std::fs::metadata(home.join("bin/api-manager.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o111
                != 0
        );
    }
    // The pack was fetched once for both nodes and verified into the cache.
    assert_eq!(*rig.ctl.state.fetch_offsets.lock().unwrap(), vec![0]);
    assert!(
        rig.state()
            .join(format!("cache/{}.zip", rig.pack.sha256))
            .is_file()
    );
    // The hosts block is there and the foreign lines are kept.
    let hosts = std::fs::read_to_string(rig.hosts()).unwrap();
    assert!(
        hosts.starts_with("127.0.0.1 localhost\n# a comment the agent must keep\n"),
        "{hosts}"
    );
    assert!(
        hosts.contains(&format!("{} gw-1.test tm-1.test", rig.ip)),
        "{hosts}"
    );
    // The gateway serves TLS from the keystore the agent wrote; the CA is in its truststore.
    let served =
        tls_peer_certificate(SocketAddr::new(IpAddr::V4(rig.ip), 9444), "gw-1.test").expect("tls");
    assert_eq!(served, leaf_der);
    let listing = apim_certs::Keytool::from_java_home(&rig.jdk.home)
        .list_verbose(
            &rig.home("gw-1")
                .join("repository/resources/security/client-truststore.jks"),
            "wso2carbon",
        )
        .expect("keytool list");
    assert!(listing.contains("apimctl-cluster-ca"), "{listing}");
    // The Hello carried the agent's version.
    assert_eq!(
        rig.ctl.state.hellos.lock().unwrap()[0].agent_version,
        env!("CARGO_PKG_VERSION")
    );

    // Generation 2: both STOPPED.
    let pids = [pid_of(&healthy, "gw-1"), pid_of(&healthy, "tm-1")];
    let mark = rig.ctl.report_count();
    let mut gw2 = gw.clone();
    gw2.desired = DesiredRun::Stopped as i32;
    let mut tm2 = tm.clone();
    tm2.desired = DesiredRun::Stopped as i32;
    rig.ctl.push(rig.machine(2, vec![gw2, tm2])).await;
    let stopped = rig
        .ctl
        .wait_report(mark, TIMEOUT, "both nodes STOPPED at generation 2", |r| {
            all_in(r, 2, &["gw-1", "tm-1"], NodePhase::Stopped)
        })
        .await;
    for node in ["gw-1", "tm-1"] {
        let s = status(&stopped, node).unwrap();
        assert!(!s.running && s.pid.is_none(), "{s:?}");
    }
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still alive after STOPPED");
    }
    assert!(!tcp_open(SocketAddr::new(IpAddr::V4(rig.ip), 9764)));

    // Generation 3: gw-1 leaves the spec: its tree and record go; tm-1 keeps its own.
    let mark = rig.ctl.report_count();
    let mut tm3 = tm.clone();
    tm3.desired = DesiredRun::Stopped as i32;
    rig.ctl.push(rig.machine(3, vec![tm3])).await;
    rig.ctl
        .wait_report(mark, TIMEOUT, "gw-1 gone from the reports", |r| {
            r.generation == 3 && status(r, "gw-1").is_none() && status(r, "tm-1").is_some()
        })
        .await;
    assert!(!rig.home("gw-1").exists(), "gw-1's tree is removed");
    assert!(
        !rig.state().join("nodes/gw-1.json").exists(),
        "gw-1's record is removed"
    );
    assert!(
        rig.home("tm-1").join(OPTIMIZED_MARKER).is_file(),
        "tm-1 keeps its tree"
    );
    rig.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapply_change_crash_and_agent_restart() {
    let mut rig = Rig::new("agentd_reapply").await;
    let gw = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running);
    let tm = rig.node("tm-1", "traffic-manager", 2, DesiredRun::Running);
    let spec1 = rig.machine(1, vec![gw.clone(), tm.clone()]);
    rig.ctl.push(spec1.clone()).await;
    rig.start_agent();
    let r1 = rig
        .ctl
        .wait_report(0, TIMEOUT, "both HEALTHY at generation 1", |r| {
            all_in(r, 1, &["gw-1", "tm-1"], NodePhase::Healthy)
        })
        .await;
    let (gw_pid, tm_pid) = (pid_of(&r1, "gw-1"), pid_of(&r1, "tm-1"));
    // The fresh trees are synced (and the records rewritten) just after the healthy report.
    rig.wait_synced("gw-1").await;
    rig.wait_synced("tm-1").await;

    // 1. Re-applying the same generation changes nothing; an older one is refused.
    let watched: Vec<PathBuf> = vec![
        rig.home("gw-1").join("repository/conf/deployment.toml"),
        rig.home("tm-1").join("repository/conf/deployment.toml"),
        rig.home("gw-1").join(OPTIMIZED_MARKER),
        rig.hosts(),
        rig.state().join("machine-spec.json"),
        rig.state().join("nodes/gw-1.json"),
        rig.state().join("nodes/tm-1.json"),
    ];
    let before: Vec<SystemTime> = watched.iter().map(|p| mtime(p)).collect();
    let mark = rig.ctl.report_count();
    rig.ctl.push(spec1.clone()).await;
    let mut stale = spec1.clone();
    stale.generation = 0;
    stale.nodes.clear();
    rig.ctl.send_only(stale).await;
    // The refusal is answered with a report that still says generation 1; by then the
    // re-applied generation 1 (sent first on the same stream) has been handled.
    let refused = rig
        .ctl
        .wait_report(mark, TIMEOUT, "the stale spec's refusal report", |r| {
            r.generation == 1
        })
        .await;
    assert!(all_in(&refused, 1, &["gw-1", "tm-1"], NodePhase::Healthy));
    let after: Vec<SystemTime> = watched.iter().map(|p| mtime(p)).collect();
    assert_eq!(before, after, "a re-apply wrote files");
    assert_eq!(
        (pid_of(&refused, "gw-1"), pid_of(&refused, "tm-1")),
        (gw_pid, tm_pid)
    );
    let ledger = std::fs::read_to_string(rig.state().join("machine-spec.json")).unwrap();
    assert!(ledger.contains("\"generation\": 1"), "{ledger}");

    // 2. A changed deployment.toml restarts only that node.
    let mut gw2 = gw.clone();
    gw2.deployment_toml = rig.toml(
        "gw-1",
        "gateway-worker",
        1,
        "[apim.cors]\nallow_origins = \"https://changed.test\"\n",
    );
    digest(&mut gw2);
    let mark = rig.ctl.report_count();
    rig.ctl
        .push(rig.machine(2, vec![gw2.clone(), tm.clone()]))
        .await;
    let r2 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "both HEALTHY at generation 2", |r| {
            all_in(r, 2, &["gw-1", "tm-1"], NodePhase::Healthy)
                && status(r, "gw-1").is_some_and(|s| s.config_digest == gw2.config_digest)
        })
        .await;
    let gw_pid2 = pid_of(&r2, "gw-1");
    assert_ne!(gw_pid2, gw_pid, "gw-1 restarted for its new config");
    assert!(!alive(gw_pid));
    assert_eq!(pid_of(&r2, "tm-1"), tm_pid, "tm-1 untouched");
    assert_eq!(
        std::fs::read_to_string(rig.home("gw-1").join("repository/conf/deployment.toml")).unwrap(),
        gw2.deployment_toml
    );

    // 3. A killed node is restarted and reported.
    kill(Pid::from_raw(tm_pid), Signal::SIGKILL).expect("kill tm-1");
    let mark = rig.ctl.report_count();
    let failed = rig
        .ctl
        .wait_report(mark, TIMEOUT, "tm-1 FAILED after the kill", |r| {
            status(r, "tm-1").is_some_and(|s| s.phase == NodePhase::Failed as i32)
        })
        .await;
    let s = status(&failed, "tm-1").unwrap();
    assert!(s.last_error.contains("exited unexpectedly"), "{s:?}");
    assert_eq!(s.restarts, 1);
    let r3 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "tm-1 HEALTHY again with restarts=1", |r| {
            status(r, "tm-1").is_some_and(|s| {
                s.phase == NodePhase::Healthy as i32 && s.restarts == 1 && s.pid.is_some()
            })
        })
        .await;
    let tm_pid2 = pid_of(&r3, "tm-1");
    assert_ne!(tm_pid2, tm_pid);
    assert!(alive(tm_pid2));
    assert_eq!(
        pid_of(&r3, "gw-1"),
        gw_pid2,
        "gw-1 untouched by tm-1's crash"
    );

    // 4. An agent restart adopts the healthy nodes: no restart.
    rig.stop_agent().await;
    assert!(alive(gw_pid2) && alive(tm_pid2), "nodes outlive the agent");
    let mark = rig.ctl.report_count();
    rig.start_agent();
    let r4 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "both HEALTHY after the agent restart", |r| {
            all_in(r, 2, &["gw-1", "tm-1"], NodePhase::Healthy)
        })
        .await;
    assert_eq!(
        (pid_of(&r4, "gw-1"), pid_of(&r4, "tm-1")),
        (gw_pid2, tm_pid2)
    );
    let hellos = rig.ctl.state.hellos.lock().unwrap().clone();
    assert_eq!(hellos.last().unwrap().held_generation, 2);
    let facts = hellos.last().unwrap().facts.clone().expect("facts");
    assert_eq!(facts.java_version, "17.0.9");
    assert!(facts.cpus >= 1 && facts.memory_bytes > 0);
    rig.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_download_resumes_and_bad_digest_or_jdk_unpacks_nothing() {
    let mut rig = Rig::new("agentd_fetch").await;
    // 1. The first Fetch stream is cut in the middle; the agent resumes from where it stopped.
    let half = rig.pack.size / 2;
    *rig.ctl.state.cut_next_fetch_after.lock().unwrap() = Some(half);
    let n1 = rig.node("n1", "traffic-manager", 1, DesiredRun::Staged);
    rig.ctl.push(rig.machine(1, vec![n1.clone()])).await;
    rig.start_agent();
    let r1 = rig
        .ctl
        .wait_report(0, TIMEOUT, "n1 STAGED", |r| {
            all_in(r, 1, &["n1"], NodePhase::Staged)
        })
        .await;
    assert!(!status(&r1, "n1").unwrap().running);
    assert_eq!(*rig.ctl.state.fetch_offsets.lock().unwrap(), vec![0, half]);
    // The zip's tail (its central directory) was fetched ahead of the body, so the unpack could
    // follow the download.
    let ranges = rig.ctl.state.fetch_ranges.lock().unwrap().clone();
    assert!(
        ranges.first().is_some_and(|(o, l)| o + l == rig.pack.size),
        "{ranges:?}"
    );
    // Verified in this boot, unsynced: the stamp says which boot.
    assert_eq!(
        std::fs::read_to_string(rig.state().join(format!("cache/{}.boot", rig.pack.sha256)))
            .unwrap(),
        apim_agent::exec::unpack::boot_id().unwrap()
    );
    let cached = rig.state().join(format!("cache/{}.zip", rig.pack.sha256));
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(&rig.pack.path).unwrap()
    );
    assert!(
        !rig.state()
            .join(format!("cache/{}.partial", rig.pack.sha256))
            .exists()
    );
    assert!(rig.home("n1").join(OPTIMIZED_MARKER).is_file());
    assert!(
        !rig.home("n1").join("wso2carbon.pid").exists(),
        "STAGED never starts"
    );

    // 2. A pack whose bytes do not hash to the spec's digest is refused; nothing unpacked.
    let wrong = "ab".repeat(32);
    rig.ctl.add_artifact(&wrong, &rig.pack.path);
    let mut n2 = rig.node("n2", "traffic-manager", 2, DesiredRun::Staged);
    n2.pack.as_mut().unwrap().sha256 = wrong.clone();
    // 3. A JDK the product does not support fails pre-flight before anything is fetched.
    let mut n3 = rig.node("n3", "traffic-manager", 3, DesiredRun::Staged);
    n3.product = "wso2am-3.2.0".into();
    // The 3.2 scripts accept JDK 8-11 (the controller puts the range in the spec).
    (n3.java_min, n3.java_max) = (8, 11);
    let fetches_before = rig.ctl.state.fetch_offsets.lock().unwrap().len();
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(2, vec![n1.clone(), n2, n3])).await;
    let r2 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "n2 and n3 FAILED", |r| {
            r.generation == 2
                && ["n2", "n3"]
                    .iter()
                    .all(|n| status(r, n).is_some_and(|s| s.phase == NodePhase::Failed as i32))
        })
        .await;
    let e2 = &status(&r2, "n2").unwrap().last_error;
    assert!(e2.contains("refused") && e2.contains(&wrong), "{e2}");
    let e3 = &status(&r2, "n3").unwrap().last_error;
    assert!(e3.contains("pre-flight") && e3.contains("17.0.9"), "{e3}");
    assert_eq!(
        dir_entries(&rig.root().join("opt/wso2/n2")),
        Vec::<String>::new(),
        "nothing installed or left staged for n2"
    );
    assert!(
        !rig.root().join("opt/wso2/n3").exists(),
        "nothing unpacked for n3"
    );
    assert!(!rig.state().join(format!("cache/{wrong}.zip")).exists());
    assert!(!rig.state().join(format!("cache/{wrong}.partial")).exists());
    let offsets = rig.ctl.state.fetch_offsets.lock().unwrap().clone();
    assert!(
        offsets[fetches_before..].iter().all(|o| *o == 0),
        "only n2's downloads: {offsets:?}"
    );
    rig.stop_agent().await;
}

/// A tree goes live without a sync (that is off the critical path); the record says which boot
/// installed it until the node is serving and the tree is synced. A tree still unsynced from
/// an earlier boot (the machine went down in between) may be torn and is installed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_left_unsynced_by_a_machine_crash_is_installed_again() {
    let boot = apim_agent::exec::unpack::boot_id().expect("this kernel reports a boot id");
    let mut rig = Rig::new("agentd_unsynced").await;
    let staged = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Staged);
    rig.ctl.push(rig.machine(1, vec![staged])).await;
    rig.start_agent();
    rig.ctl
        .wait_report(0, TIMEOUT, "gw-1 STAGED at generation 1", |r| {
            all_in(r, 1, &["gw-1"], NodePhase::Staged)
        })
        .await;
    rig.stop_agent().await;

    let record_path = rig.state().join("nodes/gw-1.json");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(
        record["unsynced_since_boot"], boot,
        "a staged tree is not synced yet: {record}"
    );

    // The machine "crashed": the record comes from another boot. A file only the old tree has
    // shows whether the tree is installed again.
    let mut crashed = record.clone();
    crashed["unsynced_since_boot"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(&record_path, serde_json::to_vec(&crashed).unwrap()).unwrap();
    let witness = rig.home("gw-1").join("only-in-the-old-tree");
    std::fs::write(&witness, b"x").unwrap();
    // The cached pack was not synced either, and the crash tore it.
    let cached = rig.state().join(format!("cache/{}.zip", rig.pack.sha256));
    let stamp = rig.state().join(format!("cache/{}.boot", rig.pack.sha256));
    std::fs::write(&stamp, "00000000-0000-0000-0000-000000000000").unwrap();
    let mut torn = std::fs::read(&cached).unwrap();
    let middle = torn.len() / 2;
    torn[middle..middle + 4096].fill(0);
    std::fs::write(&cached, &torn).unwrap();
    let fetches_before = rig.ctl.state.fetch_offsets.lock().unwrap().len();

    let mark = rig.ctl.report_count();
    rig.ctl
        .push(rig.machine(
            2,
            vec![rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running)],
        ))
        .await;
    rig.start_agent();
    rig.ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY at generation 2", |r| {
            all_in(r, 2, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    assert!(!witness.exists(), "the possibly torn tree was kept");
    // The torn pack was hashed again before use, found wrong, and fetched again.
    assert_eq!(
        rig.ctl.state.fetch_offsets.lock().unwrap()[fetches_before..],
        [0]
    );
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(&rig.pack.path).unwrap()
    );
    assert_eq!(std::fs::read_to_string(&stamp).unwrap(), boot);
    assert!(rig.home("gw-1").join(OPTIMIZED_MARKER).is_file());
    // Serving, so synced right after the healthy report: the record stops naming a boot.
    rig.wait_synced("gw-1").await;
    rig.stop_agent().await;
}

/// The tail fetched ahead of the body is checked against the verified pack: a controller that
/// serves a range inconsistent with the whole never gets a tree installed from it. The tree
/// staged from it is discarded, and the retry stages from the verified cached pack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_that_disagrees_with_the_verified_pack_installs_nothing() {
    let mut rig = Rig::new("agentd_tail").await;
    *rig.ctl.state.corrupt_ranges.lock().unwrap() = true;
    let n1 = rig.node("n1", "traffic-manager", 1, DesiredRun::Staged);
    rig.ctl.push(rig.machine(1, vec![n1])).await;
    rig.start_agent();
    let failed = rig
        .ctl
        .wait_report(0, TIMEOUT, "n1 FAILED on the tail", |r| {
            status(r, "n1").is_some_and(|s| s.phase == NodePhase::Failed as i32)
        })
        .await;
    let e = &status(&failed, "n1").unwrap().last_error;
    assert!(e.contains("fetched ahead differs"), "{e}");
    rig.ctl
        .wait_report(0, TIMEOUT, "n1 STAGED from the cached pack", |r| {
            all_in(r, 1, &["n1"], NodePhase::Staged)
        })
        .await;
    // One download in all: the retry used the verified cached pack.
    assert_eq!(*rig.ctl.state.fetch_offsets.lock().unwrap(), vec![0]);
    assert!(rig.home("n1").join(OPTIMIZED_MARKER).is_file());
    let install_dir = rig.home("n1").parent().unwrap().to_path_buf();
    assert_eq!(
        dir_entries(&install_dir),
        vec![
            rig.home("n1")
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        ],
        "no staging directory is left"
    );
    rig.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pack_staged_behind_a_running_node_fails_its_staging_and_leaves_the_cache() {
    let mut rig = Rig::new("agentd_bad_stage").await;
    let n1 = rig.node("n1", "traffic-manager", 1, DesiredRun::Running);
    rig.ctl.push(rig.machine(1, vec![n1.clone()])).await;
    rig.start_agent();
    let healthy = rig
        .ctl
        .wait_report(0, TIMEOUT, "n1 HEALTHY", |r| {
            all_in(r, 1, &["n1"], NodePhase::Healthy)
        })
        .await;
    let pid = pid_of(&healthy, "n1");

    // A new pack with a traversal entry (its digest is right), staged behind the running node.
    let evil = apim_e2e::simpack::build_pack(
        apim_e2e::simpack::PackKind::AllInOne,
        "4.2.0",
        &rig.root().join("evil-packs"),
        &apim_e2e::simpack::PackOptions {
            evil: vec![apim_e2e::simpack::EvilEntry::ParentTraversal],
            ..apim_e2e::simpack::PackOptions::default()
        },
    )
    .expect("evil pack");
    rig.ctl.add_artifact(&evil.sha256, &evil.path);
    let mut n1_next = rig.node("n1", "traffic-manager", 1, DesiredRun::Staged);
    if let Some(p) = n1_next.pack.as_mut() {
        p.sha256 = evil.sha256.clone();
        p.size = evil.size;
    }
    rig.ctl.push(rig.machine(2, vec![n1_next])).await;
    let failed = rig
        .ctl
        .wait_report(0, TIMEOUT, "n1 FAILED at staging", |r| {
            status(r, "n1")
                .is_some_and(|s| s.generation == 2 && s.phase == NodePhase::Failed as i32)
        })
        .await;
    let e = &status(&failed, "n1").expect("n1").last_error;
    assert!(e.contains("unsafe zip entry"), "{e}");
    assert!(alive(pid), "the running node keeps serving its old tree");
    let cache = rig.state().join("cache");
    assert!(
        !dir_entries(&cache)
            .iter()
            .any(|f| f.starts_with(&evil.sha256)),
        "the refused pack left the cache: {:?}",
        dir_entries(&cache)
    );
    rig.stop_agent().await;
}

/// The memory pre-flight: the nodes of a spec that must run need more memory together than the
/// machine has (each would fit alone), so none of them fetches, installs or starts anything;
/// once one is asked to stop, the other fits and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_short_of_memory_for_its_nodes_together_starts_none_of_them() {
    let mut rig = Rig::new("agentd_memory").await;
    let total = apim_agent::exec::facts::memory_total().expect("memory");
    let half = total / 2 + 1;
    let mut n1 = rig.node("n1", "traffic-manager", 1, DesiredRun::Running);
    let mut n2 = rig.node("n2", "traffic-manager", 2, DesiredRun::Running);
    n1.memory_bytes = half;
    n2.memory_bytes = half;
    rig.ctl
        .push(rig.machine(1, vec![n1.clone(), n2.clone()]))
        .await;
    rig.start_agent();
    let failed = rig
        .ctl
        .wait_report(0, TIMEOUT, "both nodes FAILED at generation 1", |r| {
            all_in(r, 1, &["n1", "n2"], NodePhase::Failed)
        })
        .await;
    let half_mib = half.div_ceil(1 << 20);
    for node in ["n1", "n2"] {
        let s = status(&failed, node).expect("status");
        assert!(!s.running, "{s:?}");
        assert!(
            s.last_error
                .contains(&format!("pre-flight for {node} failed"))
                && s.last_error.contains(&format!(
                    "the machine has {} MiB of memory, its nodes need {} MiB",
                    total >> 20,
                    (2 * half).div_ceil(1 << 20)
                ))
                && s.last_error
                    .contains(&format!("(n1 {half_mib} MiB + n2 {half_mib} MiB)")),
            "{}",
            s.last_error
        );
    }
    assert!(
        rig.ctl.state.fetch_offsets.lock().unwrap().is_empty(),
        "nothing fetched"
    );
    assert!(!rig.root().join("opt/wso2/n1").exists(), "nothing unpacked");
    assert!(!rig.root().join("opt/wso2/n2").exists(), "nothing unpacked");

    // n2 leaves: n1 alone fits and is staged.
    let mark = rig.ctl.report_count();
    n1.desired = DesiredRun::Staged as i32;
    n2.desired = DesiredRun::Stopped as i32;
    rig.ctl.push(rig.machine(2, vec![n1, n2])).await;
    rig.ctl
        .wait_report(
            mark,
            TIMEOUT,
            "n1 STAGED, n2 STOPPED at generation 2",
            |r| {
                all_in(r, 2, &["n1"], NodePhase::Staged)
                    && all_in(r, 2, &["n2"], NodePhase::Stopped)
            },
        )
        .await;
    rig.stop_agent().await;
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `[tls] issuer = "provided"`: the operator's keystore and truststore are written whole, 0600,
/// and served; a new spec with the same files rewrites nothing and restarts nothing; new files
/// are written and restart the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provided_keystore_is_written_whole_0600_and_the_same_one_is_never_rewritten() {
    let mut rig = Rig::new("agentd_provided").await;
    let base = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running);
    let with_stores = |p: &ProvidedPair| {
        let mut gw = base.clone();
        gw.keystores = Some(KeystoreSpec {
            store_type: StoreType::Jks as i32,
            keystore_file: "repository/resources/security/wso2carbon.jks".into(),
            alias: "wso2carbon".into(),
            password: "wso2carbon".into(),
            truststore_file: "repository/resources/security/client-truststore.jks".into(),
            truststore_password: "wso2carbon".into(),
            provided: Some(ProvidedStores {
                keystore: p.keystore.clone(),
                keystore_sha256: sha256(&p.keystore),
                truststore: p.truststore.clone(),
                truststore_sha256: sha256(&p.truststore),
            }),
            ..KeystoreSpec::default()
        });
        digest(&mut gw);
        gw
    };
    let stores = || {
        provided_stores(
            &["gw-1.test"],
            apim_certs::StoreFormat::Jks,
            "wso2carbon",
            "wso2carbon",
            "wso2carbon",
        )
    };
    let first = stores();
    let gw = with_stores(&first);
    rig.ctl.push(rig.machine(1, vec![gw.clone()])).await;
    rig.start_agent();
    let r1 = rig
        .ctl
        .wait_report(0, TIMEOUT, "gw-1 HEALTHY at generation 1", |r| {
            all_in(r, 1, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    let pid = pid_of(&r1, "gw-1");
    let security = rig.home("gw-1").join("repository/resources/security");
    let files = [
        (security.join("wso2carbon.jks"), &first.keystore),
        (security.join("client-truststore.jks"), &first.truststore),
    ];
    for (path, bytes) in &files {
        assert_eq!(&std::fs::read(path).unwrap(), *bytes, "{}", path.display());
        assert_eq!(std::fs::metadata(path).unwrap().mode() & 0o777, 0o600);
    }
    let served =
        tls_peer_certificate(SocketAddr::new(IpAddr::V4(rig.ip), 9444), "gw-1.test").expect("tls");
    assert_eq!(served, first.leaf_der, "the node serves the provided key");

    // The same stores in a new spec: not rewritten, the node keeps running.
    let stamps = |paths: &[(PathBuf, &Vec<u8>)]| {
        paths
            .iter()
            .map(|(p, _)| {
                let m = std::fs::metadata(p).unwrap();
                (m.ino(), m.modified().unwrap())
            })
            .collect::<Vec<_>>()
    };
    let before = stamps(&files);
    let mark = rig.ctl.report_count();
    rig.ctl
        .push(rig.machine(2, vec![with_stores(&first)]))
        .await;
    let r2 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY at generation 2", |r| {
            all_in(r, 2, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    assert_eq!(stamps(&files), before, "unchanged stores were rewritten");
    assert_eq!(pid_of(&r2, "gw-1"), pid, "restarted for unchanged stores");

    // New stores: written, and the node restarts to serve them.
    let second = stores();
    let gw3 = with_stores(&second);
    assert_ne!(gw3.config_digest, gw.config_digest);
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(3, vec![gw3.clone()])).await;
    let r3 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY on the new stores", |r| {
            all_in(r, 3, &["gw-1"], NodePhase::Healthy)
                && status(r, "gw-1").is_some_and(|s| s.config_digest == gw3.config_digest)
        })
        .await;
    assert_ne!(pid_of(&r3, "gw-1"), pid, "restarted for its new keystore");
    assert_eq!(std::fs::read(&files[0].0).unwrap(), second.keystore);
    assert_eq!(std::fs::read(&files[1].0).unwrap(), second.truststore);
    let served =
        tls_peer_certificate(SocketAddr::new(IpAddr::V4(rig.ip), 9444), "gw-1.test").expect("tls");
    assert_eq!(served, second.leaf_der);
    rig.stop_agent().await;
}

/// The spec's jars (JDBC drivers): fetched by digest and placed, 0644, in their folder; a new
/// jar replaces the old one and restarts the node; a spec without jars takes away the ones the
/// agent placed and leaves the pack's own files alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_jars_are_placed_replaced_and_taken_away_with_the_spec() {
    use apim_proto::v1::{ArtifactRef, LibJar};
    let mut rig = Rig::new("agentd_libs").await;
    let base = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running);
    let jar = |name: &str, class: &str| {
        let bytes = apim_e2e::simpack::driver_jar(class);
        let path = rig.tmp.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        rig.ctl.add_artifact(&sha256(&bytes), &path);
        (name.to_string(), bytes)
    };
    let first = jar("mysql-connector-j-8.4.0.jar", "com.mysql.cj.jdbc.Driver");
    let second = jar("mysql-connector-j-9.1.0.jar", "com.mysql.cj.jdbc.Driver");
    let with_jar = |j: Option<&(String, Vec<u8>)>| {
        let mut gw = base.clone();
        gw.libs = j
            .map(|(name, bytes)| LibJar {
                artifact: Some(ArtifactRef {
                    sha256: sha256(bytes),
                    size: bytes.len() as u64,
                    file_name: name.clone(),
                    top_dir: String::new(),
                }),
                dir: "repository/components/lib".into(),
            })
            .into_iter()
            .collect();
        digest(&mut gw);
        gw
    };
    let lib = rig.home("gw-1").join("repository/components/lib");
    let jars = |dir: &std::path::Path| -> Vec<String> {
        dir_entries(dir)
            .into_iter()
            .filter(|n| n.ends_with(".jar"))
            .collect()
    };

    let gw1 = with_jar(Some(&first));
    rig.ctl.push(rig.machine(1, vec![gw1.clone()])).await;
    rig.start_agent();
    let r1 = rig
        .ctl
        .wait_report(0, TIMEOUT, "gw-1 HEALTHY with its driver", |r| {
            all_in(r, 1, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    let pack_jars: Vec<String> = jars(&lib).into_iter().filter(|n| *n != first.0).collect();
    let placed = lib.join(&first.0);
    assert_eq!(std::fs::read(&placed).unwrap(), first.1);
    assert_eq!(std::fs::metadata(&placed).unwrap().mode() & 0o777, 0o644);
    let pid = pid_of(&r1, "gw-1");

    // A new driver: the old jar goes, the new one comes, the node restarts on it.
    let gw2 = with_jar(Some(&second));
    assert_ne!(gw2.config_digest, gw1.config_digest);
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(2, vec![gw2.clone()])).await;
    let r2 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY on the new driver", |r| {
            all_in(r, 2, &["gw-1"], NodePhase::Healthy)
                && status(r, "gw-1").is_some_and(|s| s.config_digest == gw2.config_digest)
        })
        .await;
    assert_ne!(pid_of(&r2, "gw-1"), pid, "restarted for its new driver");
    let mut expected = pack_jars.clone();
    expected.push(second.0.clone());
    expected.sort();
    assert_eq!(jars(&lib), expected);

    // No jar in the spec: the agent's own is taken away, the pack's stay.
    let gw3 = with_jar(None);
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(3, vec![gw3.clone()])).await;
    rig.ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY without a driver", |r| {
            all_in(r, 3, &["gw-1"], NodePhase::Healthy)
                && status(r, "gw-1").is_some_and(|s| s.config_digest == gw3.config_digest)
        })
        .await;
    assert_eq!(jars(&lib), pack_jars);
    rig.stop_agent().await;
}
