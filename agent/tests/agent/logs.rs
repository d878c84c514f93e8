//! `TailLog` and `CancelCommand` against the real daemon: the tail of a running node's server
//! log, what is appended after it, a cancel that ends the follow with its result, the refusals
//! (a name leading out of the log folder, a symlink leading out, a FIFO, a node of no spec) and
//! the cap on concurrent streams.

use apim_proto::v1::command::Action;
use apim_proto::v1::{CancelCommand, Command, CommandResult, DesiredRun, NodePhase, TailLog};

use super::rig::{Rig, TIMEOUT, all_in};

fn tail(id: &str, node: &str, file: &str, lines: u32, follow: bool) -> Command {
    Command {
        command_id: id.into(),
        action: Some(Action::TailLog(TailLog {
            node: node.into(),
            file: file.into(),
            lines,
            follow,
        })),
    }
}

fn cancel(id: &str, target: &str) -> Command {
    Command {
        command_id: id.into(),
        action: Some(Action::CancelCommand(CancelCommand {
            command_id: target.into(),
        })),
    }
}

async fn result(rig: &Rig, id: &str) -> CommandResult {
    rig.ctl
        .wait_for(TIMEOUT, &format!("the result of {id}"), |s| {
            s.results
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.command_id == id)
                .cloned()
        })
        .await
}

fn received(rig: &Rig, id: &str) -> String {
    let data = rig.ctl.state.log_data.lock().unwrap();
    let bytes: Vec<u8> = data
        .iter()
        .filter(|d| d.command_id == id)
        .flat_map(|d| d.data.clone())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_log_is_tailed_followed_and_cancelled_and_only_its_folder_is_served() {
    let mut rig = Rig::new("agentd_logs").await;
    let gw = rig.node("gw-1", "gateway-worker", 1, DesiredRun::Running);
    assert_eq!(
        gw.log_dir, "repository/logs",
        "the controller names the folder"
    );
    rig.ctl.push(rig.machine(1, vec![gw])).await;
    rig.start_agent();
    rig.ctl
        .wait_report(0, TIMEOUT, "gw-1 healthy", |r| {
            all_in(r, 1, &["gw-1"], NodePhase::Healthy)
        })
        .await;
    let logs = rig.home("gw-1").join("repository/logs");
    let server_log = logs.join("wso2carbon.log");

    // The last two lines of the server log (the default file), then what is appended.
    rig.ctl.command(tail("t-1", "gw-1", "", 2, true)).await;
    // The tail comes first, as one piece (it is far below 64 KiB); follow pieces come after.
    let first = rig
        .ctl
        .wait_for(TIMEOUT, "the tail", |s| {
            let data = s.log_data.lock().unwrap();
            let d = data.iter().find(|d| d.command_id == "t-1")?;
            Some(String::from_utf8_lossy(&d.data).into_owned())
        })
        .await;
    // The server keeps logging (its peers are not there): the tail is two whole lines that
    // are in the file, in that order.
    let on_disk = std::fs::read_to_string(&server_log).unwrap();
    assert_eq!(first.lines().count(), 2, "{first:?}");
    assert!(
        first.ends_with('\n') && on_disk.contains(&first),
        "{first:?}"
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&server_log)
        .unwrap();
    std::io::Write::write_all(&mut f, b"appended after the tail\n").unwrap();
    rig.ctl
        .wait_for(TIMEOUT, "the appended line", |_| {
            received(&rig, "t-1")
                .contains("appended after the tail\n")
                .then_some(())
        })
        .await;
    rig.ctl.command(cancel("c-1", "t-1")).await;
    assert!(result(&rig, "c-1").await.ok);
    let ended = result(&rig, "t-1").await;
    assert!(
        ended.ok && ended.message.contains("stopped following"),
        "{ended:?}"
    );

    // Refused: out of the folder by name or by symlink, not a regular file, not a node here.
    std::fs::write(rig.tmp.path().join("secret.txt"), "not for the operator").unwrap();
    std::os::unix::fs::symlink(rig.tmp.path().join("secret.txt"), logs.join("escape.log")).unwrap();
    nix::unistd::mkfifo(&logs.join("pipe.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (id, node, file, why) in [
        ("t-2", "gw-1", "../../../etc/passwd", "'..'"),
        ("t-3", "gw-1", "/etc/passwd", "absolute"),
        (
            "t-4",
            "gw-1",
            "escape.log",
            "leads out of the node's log folder",
        ),
        ("t-5", "gw-1", "pipe.log", "not a regular file"),
        (
            "t-6",
            "km-9",
            "",
            "not a node of the spec this machine holds",
        ),
    ] {
        rig.ctl.command(tail(id, node, file, 10, false)).await;
        let r = result(&rig, id).await;
        assert!(!r.ok && r.message.contains(why), "{id}: {r:?}");
        assert!(received(&rig, id).is_empty(), "{id} sent data");
    }

    // At most four streams at once.
    for i in 0..4 {
        rig.ctl
            .command(tail(&format!("f-{i}"), "gw-1", "", 1, true))
            .await;
    }
    rig.ctl.command(tail("f-4", "gw-1", "", 1, true)).await;
    let r = result(&rig, "f-4").await;
    assert!(!r.ok && r.message.contains("too many log streams"), "{r:?}");
    for i in 0..4 {
        rig.ctl
            .command(cancel(&format!("x-{i}"), &format!("f-{i}")))
            .await;
        assert!(result(&rig, &format!("f-{i}")).await.ok);
    }
    rig.stop_agent().await;
}
