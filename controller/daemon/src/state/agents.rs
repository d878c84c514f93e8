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
