//! What the state keeps per enrolled agent, how it is stored, and the copies it hands out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use apim_proto::v1::{MachineFacts, MachineSpec, StatusReport};
use time::OffsetDateTime;

use super::Inner;
use crate::store::StoredAgent;

#[derive(Debug, Default)]
pub(super) struct AgentRecord {
    /// Serials of certificates issued to this machine that have not expired yet (so a
    /// revocation can also kill them by serial and survive a later re-enrollment).
    pub(super) serials: BTreeMap<String, OffsetDateTime>,
    /// The newest certificate issued.
    pub(super) cert_serial: Option<String>,
    pub(super) cert_not_after: Option<OffsetDateTime>,
    /// The open stream's session id.
    pub(super) session: Option<u64>,
    pub(super) last_seen: Option<SystemTime>,
    pub(super) facts: Option<MachineFacts>,
    pub(super) held_generation: u64,
    pub(super) last_status: Option<StatusReport>,
    /// The other controller holding its stream, as the store says (several controllers).
    pub(super) remote: Option<String>,
    /// When this record was last written to the store (not stored itself).
    pub(super) persisted_at: Option<SystemTime>,
}

/// How far the stored `last_seen` of a connected agent may lag: a report that changes nothing
/// is written only when the last write is older than this.
pub(super) const LAST_SEEN_LAG: Duration = Duration::from_secs(60);

/// Whether `r` should be written although nothing but `last_seen` changed.
pub(super) fn persist_due(r: &AgentRecord) -> bool {
    r.persisted_at
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age >= LAST_SEEN_LAG)
}

/// A copy of what the controller knows about one enrolled agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSnapshot {
    /// The machine name (its certificate identity).
    pub machine: String,
    /// Whether its `Connect` stream is open.
    pub connected: bool,
    /// When it was last heard from (enrollment, renewal or a stream message).
    pub last_seen: Option<SystemTime>,
    /// Serial of the newest certificate issued to it.
    pub cert_serial: Option<String>,
    /// When that certificate expires.
    pub cert_not_after: Option<OffsetDateTime>,
    /// Whether the machine is revoked.
    pub revoked: bool,
    /// The last facts it reported.
    pub facts: Option<MachineFacts>,
    /// The generation it said it holds in its last `Hello`.
    pub held_generation: u64,
    /// Its last status report.
    pub last_status: Option<StatusReport>,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_unix_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn odt(s: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(s).ok()
}

fn encode_hex<M: apim_proto::prost::Message>(m: &M) -> String {
    hex::encode(m.encode_to_vec())
}

fn decode_hex<M: apim_proto::prost::Message + Default>(s: &str) -> Option<M> {
    hex::decode(s)
        .ok()
        .and_then(|b| M::decode(b.as_slice()).ok())
}

impl AgentRecord {
    /// The stored form; `me` is this controller's id (recorded when it holds the stream).
    pub(super) fn to_stored(&self, me: &str) -> StoredAgent {
        StoredAgent {
            serials: self
                .serials
                .iter()
                .map(|(s, t)| (s.clone(), t.unix_timestamp()))
                .collect(),
            cert_serial: self.cert_serial.clone(),
            cert_not_after: self.cert_not_after.map(OffsetDateTime::unix_timestamp),
            last_seen_ms: self.last_seen.map(unix_ms),
            facts: self.facts.as_ref().map(encode_hex),
            held_generation: self.held_generation,
            last_status: self.last_status.as_ref().map(encode_hex),
            controller: self.session.map(|_| me.to_owned()),
        }
    }

    pub(super) fn from_stored(s: &StoredAgent) -> Self {
        AgentRecord {
            serials: s
                .serials
                .iter()
                .filter_map(|(k, t)| odt(*t).map(|t| (k.clone(), t)))
                .collect(),
            cert_serial: s.cert_serial.clone(),
            cert_not_after: s.cert_not_after.and_then(odt),
            session: None,
            last_seen: s.last_seen_ms.map(from_unix_ms),
            facts: s.facts.as_deref().and_then(decode_hex),
            held_generation: s.held_generation,
            last_status: s.last_status.as_deref().and_then(decode_hex),
            remote: s.controller.clone(),
            persisted_at: None,
        }
    }
}

pub(super) fn node_names(spec: &MachineSpec) -> BTreeSet<String> {
    spec.nodes.iter().map(|n| n.name.clone()).collect()
}

/// A copy of `r`; `live_elsewhere` says whether another controller that holds its stream is
/// alive (several controllers).
pub(super) fn snapshot(
    inner: &Inner,
    machine: &str,
    r: &AgentRecord,
    live_elsewhere: &dyn Fn(&str) -> bool,
) -> AgentSnapshot {
    AgentSnapshot {
        machine: machine.to_owned(),
        connected: r.session.is_some() || r.remote.as_deref().is_some_and(live_elsewhere),
        last_seen: r.last_seen,
        cert_serial: r.cert_serial.clone(),
        cert_not_after: r.cert_not_after,
        revoked: inner.revoked.is_machine_revoked(machine),
        facts: r.facts.clone(),
        held_generation: r.held_generation,
        last_status: r.last_status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use apim_certs::ControlPlaneCa;
    use apim_proto::v1::NodeStatus;

    use super::super::ControllerState;
    use super::*;

    fn report(phase: apim_proto::v1::NodePhase) -> StatusReport {
        StatusReport {
            generation: 1,
            nodes: vec![NodeStatus {
                node: "n".into(),
                phase: phase.into(),
                generation: 1,
                ..NodeStatus::default()
            }],
            ..StatusReport::default()
        }
    }

    #[test]
    fn a_report_that_changes_nothing_wakes_no_one_and_is_not_rewritten() {
        use apim_proto::v1::NodePhase;
        let dir = tempfile::tempdir().unwrap();
        let ca = ControlPlaneCa::load_or_create(&dir.path().join("ca")).unwrap();
        let state = ControllerState::new(ca, &dir.path().join("artifacts")).unwrap();
        state.set_desired_spec(MachineSpec {
            machine: "vm-a".into(),
            generation: 1,
            nodes: vec![apim_proto::v1::NodeSpec {
                name: "n".into(),
                ..Default::default()
            }],
            ..MachineSpec::default()
        });
        let persisted_at = || state.lock().agents["vm-a"].persisted_at;
        let mut changes = state.changes();
        changes.mark_unchanged();
        state.record_status("vm-a", report(NodePhase::Starting));
        assert!(changes.has_changed().unwrap(), "a new report is a change");
        changes.mark_unchanged();
        // Written a moment ago (a marker time): the same report again is not written.
        let marker = SystemTime::now() - Duration::from_secs(1);
        state.lock().agents.get_mut("vm-a").unwrap().persisted_at = Some(marker);
        state.record_status("vm-a", report(NodePhase::Starting));
        assert!(!changes.has_changed().unwrap(), "nothing changed");
        assert_eq!(persisted_at(), Some(marker), "not written again");
        // A report with something new is a change, and written.
        state.record_status("vm-a", report(NodePhase::Healthy));
        assert!(changes.has_changed().unwrap(), "a new phase is a change");
        changes.mark_unchanged();
        assert_ne!(persisted_at(), Some(marker), "and written");
        let stored = state.store().read(|tx| tx.agents()).unwrap();
        let last = stored["vm-a"]
            .last_status
            .as_deref()
            .and_then(decode_hex::<StatusReport>);
        assert_eq!(last, Some(report(NodePhase::Healthy)));
        // Once the last write is old, the same report is written again (for `last_seen`).
        let old = SystemTime::now() - LAST_SEEN_LAG;
        state.lock().agents.get_mut("vm-a").unwrap().persisted_at = Some(old);
        state.record_status("vm-a", report(NodePhase::Healthy));
        assert!(!changes.has_changed().unwrap(), "still no change");
        assert_ne!(persisted_at(), Some(old), "written for last_seen");
    }

    #[test]
    fn an_unchanged_record_is_written_again_once_its_last_write_is_old() {
        let mut r = AgentRecord::default();
        assert!(persist_due(&r), "never written");
        r.persisted_at = Some(SystemTime::now());
        assert!(!persist_due(&r));
        r.persisted_at = Some(SystemTime::now() - LAST_SEEN_LAG);
        assert!(persist_due(&r));
    }
}

/// Dates each service's last probe round by this controller's clock: `received` less the
/// agent's `probed_ms_ago` (measured by the agent alone), so no clocks need agree. Whatever
/// the agent put in `probed_at_ms` is replaced.
pub(super) fn date_probes(report: &mut StatusReport, received: SystemTime) {
    let now = unix_ms(received);
    for s in &mut report.services {
        s.probed_at_ms = s
            .probed_ms_ago
            .take()
            .map(|ago| now.saturating_sub(i64::try_from(ago).unwrap_or(i64::MAX)));
    }
}

#[cfg(test)]
mod probe_tests {
    use apim_proto::v1::ServiceStatus;

    use super::*;

    #[test]
    fn probe_rounds_are_dated_by_the_controller_clock_and_agent_dates_are_ignored() {
        let svc = |ago: Option<u64>, at: Option<i64>| ServiceStatus {
            name: "lb".into(),
            probed_ms_ago: ago,
            probed_at_ms: at,
            ..ServiceStatus::default()
        };
        let mut report = StatusReport {
            services: vec![
                svc(Some(1_500), Some(1)),
                svc(None, Some(99)),
                svc(Some(u64::MAX), None),
            ],
            ..StatusReport::default()
        };
        date_probes(&mut report, from_unix_ms(10_000));
        let dated: Vec<(Option<u64>, Option<i64>)> = report
            .services
            .iter()
            .map(|s| (s.probed_ms_ago, s.probed_at_ms))
            .collect();
        assert_eq!(
            dated,
            [
                (None, Some(8_500)),
                (None, None),
                (None, Some(10_000 - i64::MAX))
            ]
        );
    }
}
