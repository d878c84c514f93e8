//! Join tokens, issued certificates and revocations: the credentials every controller of one
//! store shares, so each change is a read-modify-write of the stored lists in one transaction
//! (writes are serialized across controllers) before the copy kept here is replaced.

use std::time::{Duration, SystemTime};

use apim_certs::{IssuedCert, JoinToken, PeerCert, PeerIdentity, TokenRecord};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{ControllerState, StateError};

impl ControllerState {
    // ---- tokens -------------------------------------------------------------------------

    /// Mints a one-time join token for `machine` pinning this controller's CA, and keeps its
    /// record (a hash of the secret only).
    pub fn mint_token(
        &self,
        machine: &str,
        ttl: Duration,
    ) -> Result<(JoinToken, TokenRecord), StateError> {
        let (token, record) = JoinToken::mint(machine, ttl, self.ca.fingerprint()).map_err(
            |source| match source {
                apim_certs::CertsError::InvalidName { .. } => StateError::InvalidMachine {
                    reason: source.to_string(),
                },
                _ => StateError::Issue {
                    action: "minting a join token",
                    source,
                },
            },
        )?;
        let mut inner = self.lock();
        // The store's registry is the one every controller shares: changed in one transaction
        // (writes are serialized across controllers), then kept here.
        let (registry, inserted) = self.store.write(|tx| {
            let mut registry = tx.tokens()?;
            registry.prune(OffsetDateTime::now_utc());
            let inserted = registry.insert(record.clone());
            if inserted.is_ok() {
                tx.save_tokens(&registry)?;
            }
            Ok((registry, inserted))
        })?;
        inner.tokens = registry;
        inserted.map_err(|source| StateError::Issue {
            action: "storing a join token",
            source,
        })?;
        Ok((token, record))
    }

    /// Redeems a join token for the machine the agent claims; returns the token's machine.
    pub fn redeem_token(&self, token: &str, claimed_machine: &str) -> Result<String, StateError> {
        let mut inner = self.lock();
        // A redeemed token is spent even if the rest of enrollment fails: persist it first, in
        // the transaction that read it (two controllers never both redeem one token).
        let (registry, result) = self.store.write(|tx| {
            let mut registry = tx.tokens()?;
            let result = registry.redeem_for(token, claimed_machine, OffsetDateTime::now_utc());
            tx.save_tokens(&registry)?;
            Ok((registry, result))
        })?;
        inner.tokens = registry;
        result.map_err(|source| StateError::Token { source })
    }

    // ---- certificates and revocation ----------------------------------------------------

    /// Records a certificate just issued to `machine`. On enrollment (`enrolled`), a
    /// machine-wide revocation is lifted: the operator minted a new token on purpose, and the
    /// old certificates stay dead because they were also revoked by serial.
    pub fn record_issued(&self, machine: &str, cert: &IssuedCert, enrolled: bool) {
        let mut inner = self.lock();
        if enrolled {
            inner.revoked.reinstate(&PeerIdentity::Agent {
                machine: machine.to_owned(),
            });
        }
        let now = OffsetDateTime::now_utc();
        let record = inner.agents.entry(machine.to_owned()).or_default();
        record.serials.retain(|_, not_after| *not_after > now);
        record.serials.insert(cert.serial.clone(), cert.not_after);
        record.cert_serial = Some(cert.serial.clone());
        record.cert_not_after = Some(cert.not_after);
        record.last_seen = Some(SystemTime::now());
        self.persist_agent(&mut inner, machine);
        if enrolled {
            // Read-modify-write in one transaction: another controller's revocation since this
            // one last looked is kept.
            let me = PeerIdentity::Agent {
                machine: machine.to_owned(),
            };
            match self.store.write(|tx| {
                let mut list = tx.revocations()?;
                list.reinstate(&me);
                tx.save_revocations(&list)?;
                Ok(list)
            }) {
                Ok(list) => inner.revoked = list,
                Err(e) => tracing::error!(error = %e, "could not persist revocations"),
            }
        }
    }

    /// Whether this certificate's identity or serial is revoked.
    pub fn is_revoked(&self, peer: &PeerCert) -> bool {
        self.lock().revoked.is_revoked(&peer.identity, &peer.serial)
    }

    /// A receiver that changes on every revocation.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// Revokes `machine` (every certificate it holds, by name and by serial) and drops its
    /// unused join tokens. Returns whether its stream was open (it is closed by the stream's
    /// own task, which watches [`ControllerState::revocations`]). An unknown machine is
    /// NOT_FOUND, to catch typos.
    pub fn revoke_machine(&self, machine: &str) -> Result<bool, StateError> {
        let mut inner = self.lock();
        // Tokens another controller minted count too.
        inner.tokens = self.store.read(|tx| tx.tokens())?;
        let pending: Vec<String> = inner
            .tokens
            .records()
            .filter(|r| r.machine == machine && !r.used)
            .map(|r| r.id.clone())
            .collect();
        let Some(record) = inner.agents.get(machine) else {
            if pending.is_empty() {
                return Err(StateError::UnknownMachine {
                    machine: machine.to_owned(),
                });
            }
            inner.tokens = self.store.write(|tx| {
                let mut tokens = tx.tokens()?;
                for id in &pending {
                    tokens.remove(id);
                }
                tx.save_tokens(&tokens)?;
                Ok(tokens)
            })?;
            return Ok(false);
        };
        let serials: Vec<String> = record.serials.keys().cloned().collect();
        let connected = record.session.is_some();
        // Read-modify-write of the shared lists in one transaction (several controllers).
        let (revoked, tokens, valid) = self.store.write(|tx| {
            let mut revoked = tx.revocations()?;
            let valid = revoked.revoke_machine(machine).map_err(|e| e.to_string());
            if valid.is_err() {
                return Ok((revoked, None, valid));
            }
            for serial in &serials {
                revoked.revoke_serial(serial);
            }
            let mut tokens = tx.tokens()?;
            for id in &pending {
                tokens.remove(id);
            }
            tx.save_revocations(&revoked)?;
            tx.save_tokens(&tokens)?;
            Ok((revoked, Some(tokens), valid))
        })?;
        valid.map_err(|reason| StateError::InvalidMachine { reason })?;
        inner.revoked = revoked;
        if let Some(t) = tokens {
            inner.tokens = t;
        }
        drop(inner);
        self.revocations.send_modify(|epoch| *epoch += 1);
        tracing::warn!(%machine, certificates = serials.len(), "machine revoked");
        Ok(connected)
    }
}
