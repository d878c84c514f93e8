//! Drift, end to end in the agent: the real daemon on one simulated machine (see `agent.rs` and
//! its rig) reports what differs on disk from what it wrote — deployment.toml by its keys, a
//! keystore by its recorded digest, the hosts block by host names, the installed tree's optimizer
//! marker — periodically and on `CheckDrift`, never a value; a new generation writes every
//! drifted file again. Conditions are polled; timeouts are failure guards only.

#[path = "agent/rig.rs"]
// Shared by several test binaries; each uses a part of it.
#[allow(dead_code)]
mod rig;

use apim_agent::daemon::converge::OPTIMIZED_MARKER;
use apim_proto::v1::{
    CheckDrift, Command, DesiredRun, Drift, KeystoreSpec, NodePhase, StatusReport, StoreType,
    TrustedCert, command,
};
use apim_testkit::ca::mint_tls;
use apim_testkit::specs::digest;
use rig::{Rig, TIMEOUT, all_in, pid_of, status};

const TOML: &str = "repository/conf/deployment.toml";
const KEYSTORE: &str = "repository/resources/security/wso2carbon.jks";

fn drift_of<'a>(r: &'a StatusReport, node: &str) -> &'a [Drift] {
    &status(r, node).expect("node status").drift
}

fn find<'a>(drift: &'a [Drift], file: &str) -> &'a Drift {
    drift
        .iter()
        .find(|d| d.file == file)
        .unwrap_or_else(|| panic!("no drift of {file} in {drift:#?}"))
}

/// Sends `CheckDrift` as `id`; returns the report sent right before its result (the fresh one).
async fn check(rig: &Rig, id: &str) -> StatusReport {
    rig.ctl
        .command(Command {
            command_id: id.into(),
            action: Some(command::Action::CheckDrift(CheckDrift {})),
        })
        .await;
    let (reports, result) = rig
        .ctl
        .wait_for(TIMEOUT, &format!("the result of {id}"), |s| {
            let result = s
                .results
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.command_id == id)?
                .clone();
            let reports = *s.reports_before_result.lock().unwrap().get(id)?;
            Some((reports, result))
        })
        .await;
    assert!(result.ok, "{result:?}");
    assert!(
        result.message.starts_with("checked 1 node(s)"),
        "{result:?}"
    );
    assert!(reports > 0, "a report comes before the result");
    rig.ctl.state.reports.lock().unwrap()[reports - 1].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_by_keys_and_digests_without_values_then_rewritten() {
    let mut rig = Rig::new("agentd_drift").await;
    let (key_pem, chain_pem, ca_pem, _) = mint_tls("gw-1.test");
    let mut gw = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running);
    gw.keystores = Some(KeystoreSpec {
        store_type: StoreType::Jks as i32,
        keystore_file: KEYSTORE.into(),
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
    rig.ctl.push(rig.machine(1, vec![gw.clone()])).await;
    rig.start_agent();
    let healthy = rig
        .ctl
        .wait_report(0, TIMEOUT, "gw-1 HEALTHY", |r| {
            all_in(r, 1, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    let pid = pid_of(&healthy, "gw-1");
    rig.wait_synced("gw-1").await;

    // Settled and untouched: a check finds nothing.
    let r = check(&rig, "c-1").await;
    assert!(drift_of(&r, "gw-1").is_empty(), "{r:#?}");

    // A hand edit of deployment.toml: one value changed, one key added. The periodic check
    // (every 3 s in the rig) reports it without being asked.
    let home = rig.home("gw-1");
    let written = std::fs::read_to_string(home.join(TOML)).unwrap();
    assert!(written.contains("[server]"), "{written}");
    let edited = written.replacen(
        "[server]\n",
        "[server]\nedited_by_hand = \"value-added\"\n",
        1,
    );
    let edited = edited.replacen(
        "hostname = \"gw-1.test\"",
        "hostname = \"edited.example\"",
        1,
    );
    assert_ne!(edited, written);
    std::fs::write(home.join(TOML), &edited).unwrap();
    let mark = rig.ctl.report_count();
    let periodic = rig
        .ctl
        .wait_report(mark, TIMEOUT, "gw-1 drifted", |r| {
            status(r, "gw-1").is_some_and(|s| !s.drift.is_empty())
        })
        .await;
    let d = find(drift_of(&periodic, "gw-1"), TOML);
    assert_eq!(d.problem, "changed");
    assert_eq!(d.added_keys, vec!["server.edited_by_hand"]);
    assert_eq!(d.changed_keys, vec!["server.hostname"]);
    assert!(d.removed_keys.is_empty());
    let s = status(&periodic, "gw-1").unwrap();
    assert_eq!(
        s.phase,
        NodePhase::Healthy as i32,
        "drift does not change the phase"
    );

    // The keystore changed, the hosts block edited, the optimizer marker gone.
    let mut ks = std::fs::read(home.join(KEYSTORE)).unwrap();
    ks.push(0);
    std::fs::write(home.join(KEYSTORE), ks).unwrap();
    let hosts = std::fs::read_to_string(rig.hosts()).unwrap();
    let ip = rig.ip.to_string();
    let hosts_edited = hosts.replacen(&format!("{ip} gw-1.test"), "10.66.66.66 gw-1.test", 1);
    assert_ne!(hosts_edited, hosts);
    std::fs::write(rig.hosts(), &hosts_edited).unwrap();
    std::fs::remove_file(home.join(OPTIMIZED_MARKER)).unwrap();

    let r = check(&rig, "c-2").await;
    let drift = drift_of(&r, "gw-1");
    assert_eq!(find(drift, TOML).changed_keys, vec!["server.hostname"]);
    assert_eq!(find(drift, KEYSTORE).problem, "changed");
    let h = find(drift, "hosts block");
    assert_eq!(h.changed_keys, vec!["gw-1.test"]);
    assert_eq!(
        find(drift, "install tree").problem,
        "optimizer marker missing"
    );
    // Never a value, neither the hand-edited ones nor the written ones.
    let shown = format!("{r:?}");
    for value in [
        "value-added",
        "edited.example",
        "10.66.66.66",
        "wso2carbon\"",
    ] {
        assert!(!shown.contains(value), "{value} in {shown}");
    }

    // A file that no longer parses is said to, with no content.
    std::fs::write(home.join(TOML), "[server\nhostname = \"half").unwrap();
    let r = check(&rig, "c-3").await;
    let d = find(drift_of(&r, "gw-1"), TOML);
    assert_eq!(d.problem, "not valid TOML");
    assert!(d.added_keys.is_empty() && d.changed_keys.is_empty());

    // The next generation (the same node spec: what a repair's restart pushes, minus the
    // restart) writes every drifted file again: deployment.toml, the keystore, the hosts block;
    // the optimizer runs again for its marker. Then a check finds nothing.
    let mark = rig.ctl.report_count();
    rig.ctl.push(rig.machine(2, vec![gw.clone()])).await;
    rig.ctl
        .wait_report(mark, TIMEOUT, "gw-1 HEALTHY at generation 2", |r| {
            all_in(r, 2, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    assert_eq!(std::fs::read_to_string(home.join(TOML)).unwrap(), written);
    assert_eq!(std::fs::read_to_string(rig.hosts()).unwrap(), hosts);
    assert!(home.join(OPTIMIZED_MARKER).is_file());
    let r = check(&rig, "c-4").await;
    assert!(drift_of(&r, "gw-1").is_empty(), "{r:#?}");
    assert_eq!(
        pid_of(&r, "gw-1"),
        pid,
        "the same configuration digest: the node is not restarted by the agent on its own"
    );
    rig.stop_agent().await;
}
