//! Two controllers' states on one PostgreSQL store, in one process: what one does, the other
//! honours (join tokens, revocations, pushed specs), with no race that breaks a single use.

use std::time::Duration;

use apim_certs::ControlPlaneCa;
use apim_controller::state::ControllerState;

use super::*;

struct Two {
    a: ControllerState,
    b: ControllerState,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

fn two() -> Two {
    let db = TestDb::create(db::Engine::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let (da, dbb) = (dir.path().join("a"), dir.path().join("b"));
    let store_a = Store::open_postgres(target(&db), &da).unwrap();
    std::fs::create_dir_all(&dbb).unwrap();
    std::fs::copy(key_file(&da), key_file(&dbb)).unwrap();
    let store_b = Store::open_postgres(target(&db), &dbb).unwrap();
    let ca_dir = dir.path().join("ca");
    let state = |d: &Path, s: Store| {
        let ca = ControlPlaneCa::load_or_create(&ca_dir).unwrap();
        ControllerState::open(ca, &d.join("artifacts"), &d.join("pki"), s).unwrap()
    };
    Two {
        a: state(&da, store_a),
        b: state(&dbb, store_b),
        _db: db,
        _dir: dir,
    }
}

#[test]
fn a_token_minted_on_one_controller_enrolls_once_on_either() {
    let t = two();
    let (token, _) = t.a.mint_token("vm-1", Duration::from_secs(600)).unwrap();
    assert_eq!(t.b.redeem_token(token.expose(), "vm-1").unwrap(), "vm-1");
    let again = t.a.redeem_token(token.expose(), "vm-1");
    assert!(again.is_err(), "a token is spent for every controller");
    // Tokens minted on both sides at once are all kept (no whole-list overwrite).
    let (t1, _) = t.a.mint_token("vm-2", Duration::from_secs(600)).unwrap();
    let (t2, _) = t.b.mint_token("vm-3", Duration::from_secs(600)).unwrap();
    assert_eq!(t.b.redeem_token(t1.expose(), "vm-2").unwrap(), "vm-2");
    assert_eq!(t.a.redeem_token(t2.expose(), "vm-3").unwrap(), "vm-3");
}

#[test]
fn a_revocation_on_one_controller_holds_on_the_other() {
    let t = two();
    let (token, _) = t.a.mint_token("vm-9", Duration::from_secs(600)).unwrap();
    // Revoking a machine that has not enrolled drops its pending token, on b.
    assert!(!t.b.revoke_machine("vm-9").unwrap());
    assert!(t.a.redeem_token(token.expose(), "vm-9").is_err());
}

#[test]
fn a_spec_pushed_by_one_controller_reaches_the_others_view() {
    let t = two();
    let mut watch = t.b.watch_spec("vm-a");
    t.a.set_desired_spec(spec("vm-a", 3, "s"));
    assert!(
        t.b.desired_spec("vm-a").is_none(),
        "not before b catches up"
    );
    t.b.catch_up().unwrap();
    assert_eq!(t.b.desired_spec("vm-a").unwrap().generation, 3);
    assert!(
        watch.has_changed().unwrap(),
        "an agent stream on b is woken"
    );
    assert_eq!(watch.borrow_and_update().as_ref().unwrap().generation, 3);
}

/// A command for an agent connected to the other controller names that controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_an_agent_on_the_other_controller_names_it() {
    use std::sync::Arc;
    let t = two();
    let (a, b) = (Arc::new(t.a), Arc::new(t.b));
    a.set_identity(apim_controller::state::Identity {
        id: "a".into(),
        address: "127.0.0.1:7001".into(),
    });
    b.set_identity(apim_controller::state::Identity {
        id: "b".into(),
        address: "127.0.0.1:7002".into(),
    });
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(Arc::clone(&a).run_ha(stop.clone()));
    tokio::spawn(Arc::clone(&b).run_ha(stop));
    let _session = a.open_session("vm-a", None, 0);
    // Until b has seen a's heartbeat and the agent's session (a failure guard, not a delay).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let err = loop {
        let tail = apim_proto::v1::TailLog {
            node: "km-1".into(),
            ..Default::default()
        };
        match b.open_tail("vm-a", tail) {
            Err(e)
                if e.to_string()
                    .contains("connected to controller a (127.0.0.1:7001)") =>
            {
                break e;
            }
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never saw the agent on a"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        b.agent("vm-a").unwrap().connected,
        "connected, through a: {err}"
    );
    let _ = stop_tx.send(true);
}

/// A gateway connected to one controller pushes a file of its group; the stream of a gateway
/// connected to the other is woken once that controller catches up, and gets the file.
#[test]
fn a_shared_folder_file_pushed_through_one_controller_reaches_the_others_streams() {
    use apim_proto::v1::{ArtifactPush, SharedFile, SharedFolders, SyncedFolders};
    use sha2::Digest;
    let t = two();
    let member = |machine: &str| {
        let mut s = spec(machine, 1, "s");
        for n in &mut s.nodes {
            n.shared = Some(SharedFolders {
                group: "gateway/G".into(),
                how: Some(apim_proto::v1::shared_folders::How::Sync(SyncedFolders {
                    dirs: vec!["r/syn".into()],
                })),
            });
        }
        s
    };
    t.a.set_desired_spec(member("vm-a"));
    t.a.set_desired_spec(member("vm-b"));
    t.b.catch_up().unwrap();
    let mut woken = t.b.folders();
    woken.mark_unchanged();
    let push = ArtifactPush {
        group: "gateway/G".into(),
        base_revision: 0,
        files: vec![SharedFile {
            path: "r/syn/api.xml".into(),
            content: b"<api/>".to_vec(),
            sha256: hex::encode(sha2::Sha256::digest(b"<api/>")),
            deleted: false,
        }],
    };
    assert_eq!(
        t.a.push_folder_files("vm-a", &push)
            .unwrap()
            .unwrap()
            .written,
        1
    );
    assert!(!woken.has_changed().unwrap(), "not before b catches up");
    t.b.catch_up().unwrap();
    assert!(woken.has_changed().unwrap(), "b's streams are woken");
    let got = t.b.folder_changes("gateway/G", 0).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].files[0].content, b"<api/>");
    assert!(got[0].caught_up);
    // vm-b may push through b: its spec came from a through the store.
    assert!(t.b.push_folder_files("vm-b", &push).unwrap().is_some());
}
