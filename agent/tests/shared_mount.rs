//! A node whose spec shares a folder on a file system the operator provides
//! (`NodeSpec.shared`, a mount) with the real daemon on one simulated machine (see `agent.rs`
//! and its rig): a source that cannot be mounted keeps the node from starting, and the status
//! names the folder and the source. (Mounting for real needs a mount namespace of its own: the
//! e2e test `e2e_gateway_mount` does that.) Conditions are polled; timeouts are failure guards
//! only.

#[path = "agent/rig.rs"]
// Shared by several test binaries; each uses a part of it.
#[allow(dead_code)]
mod rig;

use apim_proto::v1::shared_folders::How;
use apim_proto::v1::{DesiredRun, NodePhase, SharedFolders, SharedMount};
use apim_testkit::specs::digest;
use rig::{Rig, TIMEOUT, status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_shared_folder_cannot_be_mounted_is_not_started_and_says_why() {
    let mut rig = Rig::new("agentd_shared_mount").await;
    let source = rig.root().join("no-such-share");
    let mut gw = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running);
    gw.shared = Some(SharedFolders {
        group: "gateway/Default".into(),
        how: Some(How::Mount(SharedMount {
            dir: "repository/deployment/server".into(),
            source: source.display().to_string(),
            fstype: "bind".into(),
            options: String::new(),
        })),
    });
    digest(&mut gw);
    rig.ctl.push(rig.machine(1, vec![gw])).await;
    rig.start_agent();
    let failed = rig
        .ctl
        .wait_report(0, TIMEOUT, "gw-1 FAILED on its mount", |r| {
            status(r, "gw-1").is_some_and(|s| {
                s.phase == NodePhase::Failed as i32 && s.last_error.contains("shared folder")
            })
        })
        .await;
    let s = status(&failed, "gw-1").unwrap();
    let folder = rig.home("gw-1").join("repository/deployment/server");
    assert!(
        s.last_error.contains(&folder.display().to_string())
            && s.last_error.contains(&source.display().to_string())
            && s.last_error.contains("not started"),
        "names the folder and the source: {}",
        s.last_error
    );
    assert!(!s.running, "{s:?}");
    // The pack's own copy was set aside and an empty folder waits for the mount; no server
    // was started.
    let home = rig.home("gw-1");
    assert!(
        home.join("repository/deployment/server.pack/synapse-configs/default/synapse.xml")
            .is_file()
    );
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0, "empty");
    assert!(!home.join("wso2carbon.pid").exists(), "never started");
    assert!(!source.exists(), "nothing made at the source");
}
