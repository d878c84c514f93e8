//! Snapshots (insta) of what operators read: the help of every command, the `status`,
//! `agents`, `history` and `controllers` tables, the `status --watch` views, and the JSON shapes
//! of status, agents, history, controllers and errors. Inputs are built here with fixed times
//! and "now" is fixed, the help is wrapped at a fixed width without colours: the snapshots do
//! not depend on the machine, the terminal or the clock. A changed snapshot is a changed
//! interface: review it (`cargo insta review`, or `INSTA_UPDATE=always` and read the diff).

use std::time::{Duration, SystemTime};

use apim_proto::prost_types::Timestamp;
use apim_proto::v1::{
    AgentInfo, ClusterStatus, ErrorDetail, ErrorDetails, GenerationInfo, MachineStatus, NodePhase,
    NodeStatus, Rollout, RolloutState,
};
use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CliError;
use crate::output::{json, tables, watch};

/// "Now" of every snapshot: 2026-01-05T12:00:00Z.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_614_400)
}

/// `secs` seconds before [`now`], as a protobuf timestamp.
fn ago(secs: u64) -> Option<Timestamp> {
    Some(Timestamp::from(now() - Duration::from_secs(secs)))
}

fn node(name: &str, phase: NodePhase, generation: u64, since: u64) -> NodeStatus {
    NodeStatus {
        node: name.into(),
        phase: phase.into(),
        generation: generation + 10,
        plan_generation: generation,
        phase_since: ago(since),
        ..NodeStatus::default()
    }
}

/// A cluster in the middle of a rollout with every kind of row: healthy, starting with
/// restarts and an error, failed with an error that tries to forge a line, a machine
/// unreachable for 3m12s, a revoked one, one that never connected.
fn cluster() -> ClusterStatus {
    let healthy = NodeStatus {
        pid: Some(4242),
        running: true,
        config_digest: "sha256:aaaa".into(),
        drift: vec![apim_proto::v1::Drift {
            file: "repository/conf/deployment.toml".into(),
            problem: "changed".into(),
            changed_keys: vec!["server.offset".into()],
            added_keys: vec!["apim.cors.enable".into()],
            ..Default::default()
        }],
        ..node("km-1", NodePhase::Healthy, 3, 192)
    };
    let starting = NodeStatus {
        pid: Some(5150),
        restarts: 2,
        running: true,
        step: "waiting for readiness".into(),
        last_error: "port 8243 refused".into(),
        shared: "gateway/Default: in step at revision 7".into(),
        ..node("gw-1", NodePhase::Starting, 3, 42)
    };
    let failed = NodeStatus {
        restarts: 5,
        last_error: "exited with 1\nvm-x x healthy".into(),
        shared: "gateway/Default: cannot take r/syn/api.xml: Permission denied (os error 13)"
            .into(),
        ..node("gw-2", NodePhase::Failed, 3, 4000)
    };
    let machine = |name: &str, nodes: Vec<NodeStatus>| MachineStatus {
        machine: name.into(),
        reachable: true,
        nodes,
        ..MachineStatus::default()
    };
    ClusterStatus {
        generation: 3,
        rollout: Some(Rollout {
            id: "rollout-3".into(),
            state: RolloutState::Starting.into(),
            tier: 1,
            message: "starting tier 2".into(),
            generation: 3,
        }),
        machines: vec![
            machine("vm-km-1", vec![healthy.clone()]),
            machine("vm-gw-1", vec![starting, failed]),
            MachineStatus {
                reachable: false,
                unreachable_since: ago(192),
                ..machine(
                    "vm-tm-1",
                    vec![NodeStatus {
                        pid: Some(777),
                        ..node("tm-1", NodePhase::Healthy, 2, 90_000)
                    }],
                )
            },
            MachineStatus {
                reachable: false,
                revoked: true,
                unreachable_since: ago(60),
                ..machine("vm-pub-1", vec![node("pub-1", NodePhase::Healthy, 2, 7200)])
            },
            MachineStatus {
                reachable: false,
                ..machine(
                    "vm-dp-1",
                    vec![NodeStatus {
                        phase_since: None,
                        ..node("dp-1", NodePhase::Pending, 0, 0)
                    }],
                )
            },
        ],
    }
}

fn agents() -> Vec<AgentInfo> {
    vec![
        AgentInfo {
            machine: "vm-km-1".into(),
            connected: true,
            last_seen: ago(0),
            cert_not_after: Some(Timestamp::from(now() + Duration::from_secs(86_000))),
            ..AgentInfo::default()
        },
        AgentInfo {
            machine: "vm-tm-1".into(),
            connected: false,
            last_seen: ago(192),
            cert_not_after: Some(Timestamp::from(now() + Duration::from_secs(3 * 86_400))),
            ..AgentInfo::default()
        },
        AgentInfo {
            machine: "vm-pub-1".into(),
            revoked: true,
            last_seen: ago(3 * 86_400),
            cert_not_after: ago(7200),
            ..AgentInfo::default()
        },
    ]
}

fn history() -> Vec<GenerationInfo> {
    let rollout = |id: &str, state: RolloutState, message: &str| {
        Some(Rollout {
            id: id.into(),
            state: state.into(),
            message: message.into(),
            ..Rollout::default()
        })
    };
    vec![
        GenerationInfo {
            generation: 3,
            author: "alice (rollback to generation 1)".into(),
            created_at: ago(120),
            plan_path: "plan.toml".into(),
            rollout: rollout("rollout-3", RolloutState::Starting, "starting tier 2"),
            changed_nodes: vec!["gw-1".into(), "gw-2".into()],
            restorable: true,
        },
        GenerationInfo {
            generation: 2,
            author: "bob".into(),
            created_at: ago(3 * 3600),
            plan_path: "plan.toml".into(),
            rollout: rollout("rollout-2", RolloutState::Failed, "km-1 is not healthy"),
            changed_nodes: vec!["km-1".into()],
            restorable: true,
        },
        GenerationInfo {
            generation: 1,
            author: "alice".into(),
            created_at: ago(40 * 86_400),
            plan_path: "plan.toml".into(),
            rollout: None,
            changed_nodes: vec![],
            restorable: false,
        },
    ]
}

#[test]
fn status_table() {
    insta::assert_snapshot!(tables::status(&cluster(), now()).join("\n"));
}

/// The cluster with a load balancer machine: one role served, one not, and an escape sequence
/// in agent text that must not reach the terminal.
fn cluster_with_balancer() -> ClusterStatus {
    use apim_proto::v1::{ProbeStatus, ServiceStatus};
    let mut c = cluster();
    c.machines.push(MachineStatus {
        machine: "vm-lb".into(),
        reachable: true,
        services: vec![ServiceStatus {
            name: "load-balancer".into(),
            generation: 3,
            running: true,
            pid: Some(4242),
            digest: "ab".repeat(32),
            last_error: "check refused the configuration; the running configuration is kept: \u{1b}[31mnginx: [emerg] bad".into(),
            probes: vec![
                ProbeStatus {
                    name: "gateway".into(),
                    ok: true,
                    detail: "HTTP 404".into(),
                },
                ProbeStatus {
                    name: "control-plane".into(),
                    ok: false,
                    detail: "HTTP 502".into(),
                },
            ],
            probed_ms_ago: None,
            probed_at_ms: Some(1_700_000_000_000),
        }],
        ..MachineStatus::default()
    });
    c
}

#[test]
fn status_table_with_a_balancer() {
    let text = tables::status(&cluster_with_balancer(), now()).join("\n");
    assert!(!text.contains('\u{1b}'), "agent text is escaped");
    insta::assert_snapshot!(text);
}

#[test]
fn status_json_with_a_balancer() {
    let v = json::status(&cluster_with_balancer());
    let lb = &v["machines"][5]["services"][0];
    assert_eq!(lb["name"], "load-balancer");
    assert_eq!(lb["probes"][0]["served"], true);
    assert_eq!(lb["probes"][1]["served"], false);
    assert_eq!(lb["pid"], 4242);
}

#[test]
fn status_table_before_the_first_apply() {
    insta::assert_snapshot!(tables::status(&ClusterStatus::default(), now()).join("\n"));
}

#[test]
fn status_watch_piped_block() {
    let block = watch::block(&cluster(), now()).join("\n");
    assert!(!block.contains('\u{1b}'), "no escape sequence when piped");
    insta::assert_snapshot!(block);
}

#[test]
fn status_watch_terminal_screen() {
    // The escape sequences shown as text, so the snapshot reads.
    insta::assert_snapshot!(watch::screen(&cluster(), now()).replace('\u{1b}', "<ESC>"));
}

#[test]
fn agents_table() {
    insta::assert_snapshot!(tables::agents(&agents(), now()).lines().join("\n"));
}

#[test]
fn history_table() {
    insta::assert_snapshot!(tables::history(&history(), now()).lines().join("\n"));
}

#[test]
fn controllers_table() {
    use crate::commands::controllers::{table, tests::three};
    insta::assert_snapshot!(table(&three(), now()).lines().join("\n"));
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("json")
}

#[test]
fn status_json() {
    insta::assert_snapshot!(pretty(&json::status(&cluster())));
}

#[test]
fn agents_json() {
    insta::assert_snapshot!(pretty(&json::agents(&agents())));
}

#[test]
fn history_json() {
    insta::assert_snapshot!(pretty(&json::history(&history())));
}

/// Three controllers in a rolling upgrade (one on another version): the warning is in the
/// document.
#[test]
fn controllers_json() {
    use crate::commands::controllers::{findings, tests::three, to_json};
    let mut members = three();
    members[1].version = "0.2.0".into();
    insta::assert_snapshot!(pretty(&to_json(&members, &findings(&members))));
}

/// Every kind of error report, as JSON and as text.
fn errors() -> Vec<(&'static str, CliError)> {
    let (_, report) = apim_plan::validate::check(
        std::path::Path::new("plan.toml"),
        "[cluster]\nname = \"t\"\nprodcut = \"wso2am-4.5.0\"\n",
        &apim_plan::secrets::ProcessEnv,
        apim_plan::validate::Options::default(),
    );
    let refused = apim_proto::status_with_details(
        tonic::Code::FailedPrecondition,
        "a rollout is in progress",
        &ErrorDetails {
            errors: vec![ErrorDetail {
                code: "rollout.in_progress".into(),
                message: "rollout-3 is starting tier 2".into(),
                hint: "wait for it, or `apimctl rollout abort`".into(),
                ..ErrorDetail::default()
            }],
        },
    );
    let files = crate::reach::Files {
        ca: Some("/home/op/.config/apimctl/ca.pem".into()),
        cert: Some("/home/op/.config/apimctl/operator.pem".into()),
        key: Some("/home/op/.config/apimctl/operator-key.pem".into()),
    };
    let unreachable = |listening, cause: &str| {
        CliError::Client(crate::client::ClientError::Unreachable(Box::new(
            crate::reach::Unreachable {
                address: "ctl.example.com:7443".into(),
                cause: cause.into(),
                listening,
                files: files.clone(),
                tried_before: Vec::new(),
            },
        )))
    };
    vec![
        ("invalid_plan", CliError::InvalidPlan(report)),
        ("refused", CliError::Refused(refused)),
        (
            "unreachable",
            unreachable(
                crate::reach::Listening::Refused,
                "Connection refused (os error 111)",
            ),
        ),
        (
            "tls",
            unreachable(
                crate::reach::Listening::Yes,
                "invalid peer certificate: UnknownIssuer",
            ),
        ),
        (
            "rejected",
            CliError::from(tonic::Status::unauthenticated(
                "client certificate rejected: certificate expired",
            ))
            .with_files(files.clone()),
        ),
        (
            "needs_confirmation",
            CliError::NeedsConfirmation {
                what: "revoke vm-gw-1".into(),
            },
        ),
    ]
}

#[test]
fn error_json() {
    for (name, e) in errors() {
        let r = e.report();
        let doc = r.json();
        assert_eq!(doc["error"]["exit_code"], r.exit, "{name}");
        insta::assert_snapshot!(format!("error_json_{name}"), pretty(&doc));
    }
}

#[test]
fn error_text() {
    for (name, e) in errors() {
        insta::assert_snapshot!(format!("error_text_{name}"), e.report().text());
    }
}

/// Every command's path (`["status"]`, `["token", "create"]`, …), the top level first.
fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            walk(sub, p, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), Vec::new(), &mut out);
    out
}

/// `apimctl PATH --help` as printed, wrapped at 100 columns, without colours.
fn long_help(path: &[String]) -> String {
    let args = std::iter::once("apimctl".to_string())
        .chain(path.iter().cloned())
        .chain(std::iter::once("--help".to_string()));
    let e = Cli::command()
        .term_width(100)
        .max_term_width(100)
        .color(clap::ColorChoice::Never)
        .try_get_matches_from(args)
        .expect_err("--help ends parsing");
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    e.render().to_string()
}

#[test]
fn every_command_has_examples_and_exit_codes_in_its_help() {
    let paths = command_paths();
    assert!(paths.len() > 15, "{paths:?}");
    for path in paths {
        let help = long_help(&path);
        let examples = help
            .split_once("\nExamples:\n")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("apimctl {} --help has no examples", path.join(" ")));
        assert!(
            examples.starts_with("  apimctl "),
            "apimctl {}: an example is an apimctl command line:\n{help}",
            path.join(" ")
        );
        assert!(
            help.contains("\nExit codes") && help.contains("\n  0  ") && help.contains("\n  1  "),
            "apimctl {} --help has no exit codes:\n{help}",
            path.join(" ")
        );
    }
}

#[test]
fn help_texts() {
    for path in command_paths() {
        let name = if path.is_empty() {
            "help".to_string()
        } else {
            format!("help_{}", path.join("_"))
        };
        insta::assert_snapshot!(name, long_help(&path));
    }
}
