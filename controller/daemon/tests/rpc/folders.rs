//! Shared folders over the agent stream: members of a group get each other's files (a joining
//! member takes the group's where both have a path), deletions travel, and the controller
//! takes nothing for a group the machine is not in and refuses a path outside the group's
//! folders.

use apim_proto::v1::{
    AgentMessage, ArtifactPush, ArtifactUpdate, MachineSpec, SharedFile, SharedFolders,
    SyncedFolders, agent_message, agent_service_client::AgentServiceClient, controller_message,
    shared_folders::How,
};
use sha2::{Digest, Sha256};
use tonic::Code;

use super::session::Stream;
use apim_testkit::controller::Controller as Harness;
use apim_testkit::specs::spec;
use apim_testkit::wait::within;

const GROUP: &str = "gateway/Default";

/// `machine`'s spec with node `node`, in [`GROUP`] when `member`.
fn member_spec(machine: &str, node: &str, member: bool) -> MachineSpec {
    let mut s = spec(machine, 1, &[node]);
    if member {
        s.nodes[0].shared = Some(SharedFolders {
            group: GROUP.into(),
            how: Some(How::Sync(SyncedFolders {
                dirs: vec!["r/syn".into(), "r/plans".into()],
            })),
        });
    }
    s
}

fn file(path: &str, content: &str) -> SharedFile {
    SharedFile {
        path: path.into(),
        content: content.as_bytes().to_vec(),
        sha256: hex::encode(Sha256::digest(content.as_bytes())),
        deleted: false,
    }
}

fn gone(path: &str) -> SharedFile {
    SharedFile {
        path: path.into(),
        deleted: true,
        ..SharedFile::default()
    }
}

fn push(base: u64, files: Vec<SharedFile>) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::ArtifactPush(ArtifactPush {
            group: GROUP.into(),
            base_revision: base,
            files,
        })),
    }
}

/// The next `ArtifactUpdate` (specs on the way are skipped).
async fn next_update(s: &mut Stream) -> ArtifactUpdate {
    loop {
        let msg = within("a controller message", s.from_controller.message())
            .await
            .expect("stream healthy")
            .expect("stream open");
        match msg.kind {
            Some(controller_message::Kind::ArtifactUpdate(u)) => return u,
            Some(controller_message::Kind::DesiredSpec(_)) => continue,
            other => panic!("expected a shared folder update, got {other:?}"),
        }
    }
}

fn contents(u: &ArtifactUpdate) -> Vec<(String, Option<String>)> {
    u.files
        .iter()
        .map(|f| {
            let c = (!f.deleted).then(|| String::from_utf8_lossy(&f.content).into_owned());
            (f.path.clone(), c)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_files_and_nobody_else_may_push() {
    let h = Harness::start().await;
    h.state.set_desired_spec(member_spec("vm-a", "gw-1", true));
    h.state.set_desired_spec(member_spec("vm-b", "gw-2", true));
    h.state.set_desired_spec(member_spec("vm-c", "km-1", false));
    let mut a_client = AgentServiceClient::new(h.channel(Some(&h.agent_creds("vm-a"))).await);
    let mut b_client = AgentServiceClient::new(h.channel(Some(&h.agent_creds("vm-b"))).await);
    let mut c_client = AgentServiceClient::new(h.channel(Some(&h.agent_creds("vm-c"))).await);

    // A joins first: its files become the group's, and its answer says it holds them all.
    let mut a = Stream::open(&mut a_client, 0).await.expect("connect a");
    a.to_controller
        .send(push(
            0,
            vec![
                file("r/syn/api.xml", "v1"),
                file("r/syn/synapse.xml", "pack"),
            ],
        ))
        .await
        .expect("send");
    let u = next_update(&mut a).await;
    assert!(u.caught_up && u.revision > 0, "{u:?}");
    assert_eq!(contents(&u).len(), 2);
    let a_rev = u.revision;

    // B joins with its own copy of a path the group has, and a path of its own: the group's
    // copy stays (and is sent back), B's new path is taken.
    let mut b = Stream::open(&mut b_client, 0).await.expect("connect b");
    b.to_controller
        .send(push(
            0,
            vec![
                file("r/syn/api.xml", "stale"),
                file("r/plans/p.siddhiql", "p"),
            ],
        ))
        .await
        .expect("send");
    let u = next_update(&mut b).await;
    assert!(u.caught_up, "{u:?}");
    let got = contents(&u);
    assert!(
        got.contains(&("r/syn/api.xml".into(), Some("v1".into()))),
        "{got:?}"
    );
    assert!(
        got.contains(&("r/plans/p.siddhiql".into(), Some("p".into()))),
        "{got:?}"
    );
    // A is sent B's new file, and only what it lacks.
    let u = next_update(&mut a).await;
    assert_eq!(
        contents(&u),
        [("r/plans/p.siddhiql".to_string(), Some("p".to_string()))]
    );
    assert!(u.revision > a_rev);

    // A deletes: B is told. Saying again what the group holds changes nothing.
    a.to_controller
        .send(push(
            u.revision,
            vec![gone("r/syn/api.xml"), file("r/syn/synapse.xml", "pack")],
        ))
        .await
        .expect("send");
    let echo = next_update(&mut a).await;
    assert_eq!(contents(&echo), [("r/syn/api.xml".to_string(), None)]);
    let u = next_update(&mut b).await;
    assert_eq!(contents(&u), [("r/syn/api.xml".to_string(), None)]);

    // C's machine runs no node of the group: nothing is taken or answered, and its stream
    // goes on (a spec may have taken its node out of the group under it): what ends it next
    // is its own second Hello, not the push.
    let mut c = Stream::open(&mut c_client, 0).await.expect("connect c");
    c.to_controller
        .send(push(0, vec![file("r/syn/evil.xml", "x")]))
        .await
        .expect("send");
    c.to_controller
        .send(apim_testkit::messages::hello(0))
        .await
        .expect("send");
    let status = c.end().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("Hello"), "{}", status.message());

    // A member's path outside the group's folders ends its stream, naming the file.
    a.to_controller
        .send(push(
            echo.revision,
            vec![file("r/webapps/../../etc/x", "x")],
        ))
        .await
        .expect("send");
    let status = a.end().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("etc/x"), "{}", status.message());
    let all = h
        .state
        .folder_changes(GROUP, 0)
        .expect("read")
        .into_iter()
        .flat_map(|u| u.files)
        .map(|f| f.path)
        .collect::<Vec<_>>();
    assert!(
        !all.iter().any(|p| p.contains("evil") || p.contains("etc")),
        "{all:?}"
    );
    h.shutdown().await.expect("clean shutdown");
}
