//! A deny-list checked on every authenticated request, in addition to short certificate
//! lifetimes (tonic's TLS config has no CRL hook, so revocation is enforced after the
//! handshake, by the server's interceptor).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::identity::{PeerIdentity, normalize_serial, validate_name};

/// Revoked identities (every certificate of a machine or operator) and revoked certificate
/// serials (one certificate, e.g. a leaked operator file). Serialisable for the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Machines whose agents are cut off, whatever certificate they present.
    #[serde(default)]
    machines: BTreeSet<String>,
    /// Operators who are cut off.
    #[serde(default)]
    operators: BTreeSet<String>,
    /// Individual certificates, by normalised serial.
    #[serde(default)]
    serials: BTreeSet<String>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes every certificate of `machine`. Returns false if it was already revoked.
    pub fn revoke_machine(&mut self, machine: &str) -> Result<bool> {
        validate_name("machine", machine)?;
        Ok(self.machines.insert(machine.to_owned()))
    }

    /// Revokes every certificate of operator `name`. Returns false if already revoked.
    pub fn revoke_operator(&mut self, name: &str) -> Result<bool> {
        validate_name("operator", name)?;
        Ok(self.operators.insert(name.to_owned()))
    }

    /// Revokes one certificate by serial (any of `aa:bb`, `AABB`, `00aabb`).
    /// Returns false if already revoked.
    pub fn revoke_serial(&mut self, serial: &str) -> bool {
        self.serials.insert(normalize_serial(serial))
    }

    /// Lifts an identity-wide revocation, e.g. before a rebuilt VM re-enrolls under the same
    /// machine name with a new token. Serial revocations stay (old certificates stay dead).
    pub fn reinstate(&mut self, identity: &PeerIdentity) -> bool {
        match identity {
            PeerIdentity::Agent { machine } => self.machines.remove(machine),
            PeerIdentity::Operator { name } => self.operators.remove(name),
        }
    }

    /// Is this identity, or this particular certificate, revoked?
    pub fn is_revoked(&self, identity: &PeerIdentity, serial: &str) -> bool {
        let by_identity = match identity {
            PeerIdentity::Agent { machine } => self.machines.contains(machine),
            PeerIdentity::Operator { name } => self.operators.contains(name),
        };
        by_identity || self.serials.contains(&normalize_serial(serial))
    }

    /// Whether a machine is revoked as a whole (e.g. to refuse minting a token for it).
    pub fn is_machine_revoked(&self, machine: &str) -> bool {
        self.machines.contains(machine)
    }
}
