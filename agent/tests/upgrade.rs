//! Upgrades on one simulated machine, through the real daemon (see `agent.rs` for the rig): a
//! pack of another version installs beside the running tree, the old server is stopped through
//! the previous install's record (its own stop command), a spec naming the previous pack again
//! switches back without unpacking, and only the current and previous trees and packs stay.

#[path = "agent/rig.rs"]
// Shared by several test binaries; each uses a part of it.
#[allow(dead_code)]
mod rig;
mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use apim_agent::daemon::converge::{NodeRecord, OPTIMIZED_MARKER};
use apim_e2e::simpack::{PackInfo, PackKind, PackOptions, build_pack};
use apim_proto::v1::{CommandSpec, DesiredRun, NodePhase, NodeSpec};
use apim_testkit::specs::{PlanBuilder, digest};
use rig::{MACHINE, Rig, TIMEOUT, alive, all_in, pid_of, status};
use support::dir_entries;

/// The gateway's spec for `version` from `pack`, as the rig's plan renders it for its own
/// release, to be `desired`.
fn gateway(rig: &Rig, version: &str, pack: &PackInfo, desired: DesiredRun) -> NodeSpec {
    let mut spec = PlanBuilder::new(version)
        .issuer("pack-default")
        .java_home(&rig.jdk.home)
        .sim_pack(pack)
        .machine(MACHINE, rig.ip)
        .node("gw-1", MACHINE, "gateway-worker", 1)
        .with_peers("vm-peers", rig.peers)
        .overrides("all", "[apimsim]\nstartup_delay_ms = 100\n")
        .render()
        .node("gw-1");
    spec.desired = desired as i32;
    spec
}

fn pack(rig: &Rig, version: &str) -> PackInfo {
    let p = build_pack(
        PackKind::AllInOne,
        version,
        &rig.tmp.path().join("packs"),
        &PackOptions::default(),
    )
    .expect("pack");
    rig.ctl.add_artifact(&p.sha256, &p.path);
    p
}

fn record(rig: &Rig) -> NodeRecord {
    let path = rig.state().join("nodes/gw-1.json");
    serde_json::from_slice(&std::fs::read(&path).expect("record")).expect("record json")
}

fn home_of(rig: &Rig, pack: &PackInfo) -> PathBuf {
    rig.root().join("opt/wso2/gw-1").join(&pack.top_dir)
}

/// (inode, mtime ns) of a file: an unpack replaces the tree, so both change.
fn identity(p: &Path) -> (u64, i64) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000)
}

fn cached(rig: &Rig) -> BTreeSet<String> {
    dir_entries(&rig.state().join("cache"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".zip").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_installs_beside_stops_the_old_server_through_its_record_and_switches_back() {
    let mut rig = Rig::new("agentd_upgrade").await;
    let p42 = rig.pack.clone();
    let p43 = pack(&rig, "4.3.0");
    let p44 = pack(&rig, "4.4.0");
    let (h42, h43, h44) = (
        home_of(&rig, &p42),
        home_of(&rig, &p43),
        home_of(&rig, &p44),
    );

    // Generation 1: 4.2.0, stopped through a script of the test that says which home's
    // environment it ran with before running the pack's own stop.
    let marker = rig.tmp.path().join("stopped-homes");
    let stop_script = rig.tmp.path().join("stop-old.sh");
    std::fs::write(
        &stop_script,
        format!(
            "#!/bin/sh\necho \"$CARBON_HOME\" >> '{}'\nexec \"$CARBON_HOME/bin/api-manager.sh\" stop\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stop_script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut g42 = gateway(&rig, "4.2.0", &p42, DesiredRun::Running);
    g42.stop = Some(CommandSpec {
        argv: vec![stop_script.display().to_string()],
        timeout_s: 60,
        ..CommandSpec::default()
    });
    digest(&mut g42);
    rig.ctl.push(rig.machine(1, vec![g42.clone()])).await;
    rig.start_agent();
    let r1 = rig
        .ctl
        .wait_report(0, TIMEOUT, "gw-1 HEALTHY on 4.2.0", |r| {
            all_in(r, 1, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    let pid42 = pid_of(&r1, "gw-1");
    rig.wait_synced("gw-1").await;
    let rec = record(&rig);
    let server = rec.server.clone().expect("the server's record");
    assert_eq!(server.stop_argv, [stop_script.display().to_string()]);
    assert_eq!(server.env["CARBON_HOME"], h42.display().to_string());
    let watched = h42.join("repository/conf/deployment.toml");
    let before_stage = identity(&watched);

    // Generation 2: 4.3.0 STAGED — installed beside the running tree, which keeps serving.
    let g43 = gateway(&rig, "4.3.0", &p43, DesiredRun::Staged);
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(2, vec![g43.clone()])).await;
    let r2 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 STAGED on 4.3.0", |r| {
            all_in(r, 2, &["gw-1"], NodePhase::Staged)
        })
        .await;
    assert!(
        alive(pid42),
        "the 4.2.0 server keeps serving while 4.3.0 is staged"
    );
    let s = status(&r2, "gw-1").unwrap();
    assert_eq!(
        (s.running, s.pid),
        (true, Some(pid42 as u32)),
        "the running server is reported: {s:?}"
    );
    assert!(
        h43.join(OPTIMIZED_MARKER).is_file(),
        "4.3.0 installed and optimized"
    );
    assert_eq!(identity(&watched), before_stage, "the old tree untouched");
    let rec = record(&rig);
    assert_eq!(rec.home, h43);
    let prev = rec.previous.clone().expect("the previous install");
    assert_eq!(
        (prev.home.clone(), prev.pack_sha256.clone()),
        (h42.clone(), p42.sha256.clone())
    );
    assert_eq!(prev.server.as_ref(), Some(&server));

    // Generation 3: released — the old server is stopped with its own command, then 4.3.0 runs.
    let mut g43r = g43.clone();
    g43r.desired = DesiredRun::Running as i32;
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(3, vec![g43r.clone()])).await;
    let r3 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY on 4.3.0", |r| {
            all_in(r, 3, &["gw-1"], NodePhase::Healthy)
                && status(r, "gw-1").is_some_and(|s| s.config_digest == g43r.config_digest)
        })
        .await;
    let pid43 = pid_of(&r3, "gw-1");
    assert!(!alive(pid42), "the 4.2.0 server is gone");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        format!("{}\n", h42.display()),
        "stopped once, through the previous install's own stop command and environment"
    );
    let cmdline = std::fs::read(format!("/proc/{pid43}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&format!("-Dcarbon.home={}", h43.display())),
        "the new server runs from the new home"
    );
    let log42 = std::fs::read_to_string(h42.join("repository/logs/wso2carbon.log")).unwrap();
    assert!(log42.trim_end().ends_with("Halting JVM"), "{log42}");
    let log43 = std::fs::read_to_string(h43.join("repository/logs/wso2carbon.log")).unwrap();
    assert_eq!(
        log43.matches("WSO2 Carbon started in").count(),
        1,
        "{log43}"
    );
    assert!(!log43.contains("Failed to start connector"), "{log43}");
    rig.wait_synced("gw-1").await;

    // Generation 4: back to 4.2.0 — its tree is reused, nothing unpacked or fetched.
    let version_file = h42.join("bin/version.txt");
    let kept = [
        identity(&version_file),
        identity(&h42.join(OPTIMIZED_MARKER)),
    ];
    let fetches = rig.ctl.state.fetch_offsets.lock().unwrap().len();
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(4, vec![g42.clone()])).await;
    let r4 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY on 4.2.0 again", |r| {
            all_in(r, 4, &["gw-1"], NodePhase::Healthy)
                && status(r, "gw-1").is_some_and(|s| s.config_digest == g42.config_digest)
        })
        .await;
    let pid42b = pid_of(&r4, "gw-1");
    assert!(!alive(pid43), "the 4.3.0 server is gone");
    assert_eq!(
        [
            identity(&version_file),
            identity(&h42.join(OPTIMIZED_MARKER))
        ],
        kept,
        "the 4.2.0 tree was switched back to, not unpacked again"
    );
    assert_eq!(rig.ctl.state.fetch_offsets.lock().unwrap().len(), fetches);
    assert!(
        !rig.ctl.state.reports.lock().unwrap()[mark..]
            .iter()
            .filter_map(|r| status(r, "gw-1"))
            .any(
                |s| s.phase == NodePhase::Unpacking as i32 || s.phase == NodePhase::Fetching as i32
            ),
        "nothing fetched or unpacked on the way back"
    );
    let cmdline = std::fs::read(format!("/proc/{pid42b}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&format!("-Dcarbon.home={}", h42.display()))
    );
    let rec = record(&rig);
    assert_eq!(
        (rec.home.clone(), rec.pack_sha256.clone()),
        (h42.clone(), p42.sha256.clone())
    );
    assert_eq!(
        rec.previous.as_ref().map(|p| p.home.clone()),
        Some(h43.clone())
    );
    // The 4.3.0 server was stopped with 4.3.0's own (default) command, not the test's script.
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);

    // Generation 5: 4.4.0 — the tree before the previous one (4.3.0) and its pack go.
    let g44 = gateway(&rig, "4.4.0", &p44, DesiredRun::Running);
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(5, vec![g44.clone()])).await;
    let r5 = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY on 4.4.0", |r| {
            all_in(r, 5, &["gw-1"], NodePhase::Healthy)
                && status(r, "gw-1").is_some_and(|s| s.config_digest == g44.config_digest)
        })
        .await;
    let pid44 = pid_of(&r5, "gw-1");
    assert!(!alive(pid42b), "the 4.2.0 server is gone");
    // Stopped through the record of 4.2.0's second start, which ran the test's script again.
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        format!("{}\n{}\n", h42.display(), h42.display())
    );
    assert!(alive(pid44));
    assert!(
        h44.is_dir() && h42.is_dir(),
        "current and previous trees kept"
    );
    assert!(!h43.exists(), "the older tree is removed");
    assert_eq!(
        cached(&rig),
        [p42.sha256.clone(), p44.sha256.clone()]
            .into_iter()
            .collect(),
        "the cache keeps the current and previous packs only"
    );
    let rec = record(&rig);
    assert_eq!(rec.home, h44);
    assert_eq!(
        rec.previous.as_ref().map(|p| p.home.clone()),
        Some(h42.clone())
    );
    assert!(rec.retired.is_empty(), "{rec:?}");
    rig.stop_agent().await;
}

/// A record written by an agent before upgrades were recorded still reads (no server, no
/// previous install), and the old `carbon_home` name is taken as the home.
#[test]
fn an_old_node_record_still_reads() {
    let old = r#"{"pack_sha256":"ab","carbon_home":"/opt/x/p-1","applied_digest":"d1","keystores_digest":null}"#;
    let rec: NodeRecord = serde_json::from_str(old).expect("old record");
    assert_eq!(rec.home, PathBuf::from("/opt/x/p-1"));
    assert_eq!(rec.applied_digest.as_deref(), Some("d1"));
    assert!(rec.server.is_none() && rec.previous.is_none() && rec.retired.is_empty());
}
