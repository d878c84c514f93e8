//! `apimctl controllers`: the controllers of the cluster as the membership table shows them:
//! which one leads rollouts (holds the lease), their versions, heartbeats and lag, and which one
//! answered. One table, or one JSON document (`{"members": [...], ...}`).
//!
//! Exit codes: 0 when exactly one controller leads; 1 when none does (rollouts wait) or several
//! claim the lease. Controllers on different versions are a warning only: a rolling upgrade
//! passes through that state.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use apim_proto::text::printable;
use apim_proto::v1::{ControllerMember, ListControllersRequest};
use serde_json::{Value, json};

use crate::cli::Exit;
use crate::client::{self, Settings};
use crate::error::CliError;
use crate::output::table::Table;
use crate::output::time::{ago, duration};
use crate::output::{Format, rfc3339};

/// What is said when no controller leads.
pub const NO_LEADER: &str = "no controller holds the rollout lease: rollouts wait until one does";

/// `apimctl controllers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

/// Runs `apimctl controllers`: asks the first controller that answers (`--controller a,b`).
pub async fn run(
    args: Args,
    settings: Settings,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut op = client::operator(settings.connect().await?);
    let mut members = op
        .list_controllers(ListControllersRequest {})
        .await?
        .into_inner()
        .members;
    sort(&mut members);
    let found = findings(&members);
    let _ = match args.output {
        Format::Json => writeln!(stdout, "{}", to_json(&members, &found)),
        Format::Text => table(&members, SystemTime::now())
            .lines()
            .iter()
            .try_for_each(|l| writeln!(stdout, "{l}"))
            .and_then(|()| {
                found
                    .warnings
                    .iter()
                    .try_for_each(|w| writeln!(stderr, "warning: {w}"))
            })
            .and_then(|()| {
                found
                    .problems
                    .iter()
                    .try_for_each(|p| writeln!(stderr, "error: {p}"))
            }),
    };
    Ok(found.exit())
}

/// The leader first, then by id.
fn sort(members: &mut [ControllerMember]) {
    members.sort_by(|a, b| b.leader.cmp(&a.leader).then_with(|| a.id.cmp(&b.id)));
}

/// What the listing says about the controllers as a whole.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// What makes the command fail (exit 1): no leader, or several.
    pub problems: Vec<String>,
    /// What the operator should know but is no failure: different versions.
    pub warnings: Vec<String>,
}

impl Findings {
    /// Exit 1 on a problem; warnings alone exit 0.
    pub fn exit(&self) -> Exit {
        if self.problems.is_empty() {
            Exit::Success
        } else {
            Exit::Failed
        }
    }
}

/// Checks that exactly one controller leads, and whether their versions differ. Ids and versions
/// come from the store: escaped here, as they are printed as they stand.
pub fn findings(members: &[ControllerMember]) -> Findings {
    let mut found = Findings::default();
    let leaders: Vec<String> = members
        .iter()
        .filter(|m| m.leader)
        .map(|m| printable(&m.id).into_owned())
        .collect();
    match leaders.len() {
        0 => found.problems.push(NO_LEADER.to_owned()),
        1 => {}
        _ => found.problems.push(format!(
            "several controllers claim the rollout lease ({}): only one may lead; check their \
             clocks and their store connections",
            leaders.join(", ")
        )),
    }
    let mut versions: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for m in members {
        versions
            .entry(&m.version)
            .or_default()
            .push(printable(&m.id).into_owned());
    }
    if versions.len() > 1 {
        let each: Vec<String> = versions
            .iter()
            .map(|(v, ids)| format!("{} ({})", printable(v), ids.join(", ")))
            .collect();
        found.warnings.push(format!(
            "the controllers run different versions: {}; finish the upgrade so all run one",
            each.join(", ")
        ));
    }
    found
}

/// A unix-millisecond time, `None` when not set (0 or before the epoch).
fn at_ms(ms: i64) -> Option<SystemTime> {
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms > 0)
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// A lag: milliseconds below a second (`120ms`), then as other durations (`3m12s`).
fn lag(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        duration(Duration::from_millis(ms))
    }
}

/// One row per controller; the one that answered marked `*` in the first column.
pub fn table(members: &[ControllerMember], now: SystemTime) -> Table {
    let mut t = Table::new(&["", "ID", "ADDRESS", "ROLE", "VERSION", "HEARTBEAT", "LAG"]);
    for m in members {
        t.row([
            if m.answering { "*" } else { "" }.to_owned(),
            m.id.clone(),
            if m.address.is_empty() {
                "-".to_owned()
            } else {
                m.address.clone()
            },
            if m.leader { "leader" } else { "standby" }.to_owned(),
            m.version.clone(),
            ago(at_ms(m.heartbeat_unix_ms), now),
            lag(m.lag_ms),
        ]);
    }
    t
}

/// `controllers -o json`: the members (times RFC 3339), the leader's id (`null` when none
/// leads), and the problems and warnings the text prints on stderr.
pub fn to_json(members: &[ControllerMember], found: &Findings) -> Value {
    let rows: Vec<_> = members
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "address": m.address, "version": m.version,
                "leader": m.leader, "lag_ms": m.lag_ms, "answering": m.answering,
                "started_at": at_ms(m.started_at_unix_ms).map(rfc3339),
                "heartbeat": at_ms(m.heartbeat_unix_ms).map(rfc3339),
            })
        })
        .collect();
    let leader = match members.iter().filter(|m| m.leader).collect::<Vec<_>>()[..] {
        [one] => Value::from(one.id.clone()),
        _ => Value::Null,
    };
    json!({
        "members": rows, "leader": leader,
        "problems": found.problems, "warnings": found.warnings,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// 2026-01-05T12:00:00Z, in unix milliseconds.
    pub(crate) const NOW_MS: i64 = 1_767_614_400_000;

    pub(crate) fn now() -> SystemTime {
        at_ms(NOW_MS).expect("a time")
    }

    /// A member heard from `age_ms` before [`NOW_MS`].
    pub(crate) fn member(id: &str, version: &str, leader: bool, age_ms: i64) -> ControllerMember {
        ControllerMember {
            id: id.into(),
            address: format!("{id}.example:7443"),
            version: version.into(),
            started_at_unix_ms: NOW_MS - 3_600_000,
            heartbeat_unix_ms: NOW_MS - age_ms,
            leader,
            lag_ms: if leader { 0 } else { age_ms / 2 },
            answering: false,
        }
    }

    /// Three controllers, one leading and answering, the standbys a little behind.
    pub(crate) fn three() -> Vec<ControllerMember> {
        let mut a = member("ctl-a", "0.1.0", true, 400);
        a.answering = true;
        let mut v = vec![
            member("ctl-c", "0.1.0", false, 2_400),
            a,
            member("ctl-b", "0.1.0", false, 130_000),
        ];
        sort(&mut v);
        v
    }

    #[test]
    fn exactly_one_leader_on_one_version_exits_0_and_says_nothing() {
        let members = three();
        let found = findings(&members);
        assert_eq!(found, Findings::default());
        assert_eq!(found.exit(), Exit::Success);
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["ctl-a", "ctl-b", "ctl-c"],
            "the leader first, then by id"
        );
        assert_eq!(to_json(&members, &found)["leader"], "ctl-a");
    }

    #[test]
    fn no_leader_exits_1_with_the_reason() {
        let members: Vec<_> = three()
            .into_iter()
            .map(|m| ControllerMember { leader: false, ..m })
            .collect();
        let found = findings(&members);
        assert_eq!(found.problems, [NO_LEADER]);
        assert_eq!(found.exit(), Exit::Failed);
        let doc = to_json(&members, &found);
        assert_eq!(doc["leader"], Value::Null);
        assert_eq!(doc["problems"][0], NO_LEADER);
        // An empty membership leads nothing either.
        assert_eq!(findings(&[]).problems, [NO_LEADER]);
    }

    #[test]
    fn two_leaders_exit_1_naming_both() {
        let mut members = three();
        members[2].leader = true;
        let found = findings(&members);
        assert_eq!(found.exit(), Exit::Failed);
        assert_eq!(found.problems.len(), 1);
        assert!(
            found.problems[0].contains("(ctl-a, ctl-c)"),
            "{:?}",
            found.problems
        );
        assert_eq!(to_json(&members, &found)["leader"], Value::Null);
    }

    #[test]
    fn two_versions_warn_naming_each_and_exit_0() {
        let mut members = three();
        members[1].version = "0.2.0".into();
        let found = findings(&members);
        assert!(found.problems.is_empty(), "{found:?}");
        assert_eq!(
            found.exit(),
            Exit::Success,
            "a rolling upgrade is no failure"
        );
        assert_eq!(
            found.warnings,
            [
                "the controllers run different versions: 0.1.0 (ctl-a, ctl-c), 0.2.0 (ctl-b); \
              finish the upgrade so all run one"
            ]
        );
    }

    #[test]
    fn the_table_marks_the_answering_one_and_ages_heartbeats() {
        let lines = table(&three(), now()).lines();
        assert_eq!(
            lines,
            [
                "   ID     ADDRESS             ROLE     VERSION  HEARTBEAT  LAG",
                "*  ctl-a  ctl-a.example:7443  leader   0.1.0    just now   0ms",
                "   ctl-b  ctl-b.example:7443  standby  0.1.0    2m ago     1m05s",
                "   ctl-c  ctl-c.example:7443  standby  0.1.0    2s ago     1s",
            ]
        );
    }

    #[test]
    fn store_text_cannot_drive_the_terminal() {
        let mut members = three();
        members[1].id = "ctl-b\u{1b}[2J".into();
        members[1].version = "0.2.0\nforged".into();
        members[1].leader = true;
        let lines = table(&members, now()).lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[2].contains("ctl-b\\e[2J"), "{lines:?}");
        let found = findings(&members);
        for line in found.problems.iter().chain(&found.warnings) {
            assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line:?}");
        }
    }
}
