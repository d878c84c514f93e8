//! Several controllers on one PostgreSQL store.
//!
//! Every controller serves every read and the agent and operator APIs; exactly one leads
//! rollouts, the holder of the `rollouts` lease row ([`crate::store::ROLLOUT_LEASE`]). A lease
//! row with an expiry (rather than a session advisory lock) because it is decided by the
//! database's clock and survives a connection drop: a leader whose connection blips keeps
//! leading if it renews in time, a leader that dies or is cut off loses it after
//! [`LEASE_TTL`] at the latest, whatever TCP takes to notice, and its epoch is a fencing token
//! that the engine's every write checks in its own transaction.
//!
//! [`ControllerState::run_ha`] keeps each controller's view current: it polls the store's
//! revision every [`SYNC_EVERY`] and, when it moved, takes what other controllers wrote
//! (agents' reports and sessions, pushed specs, tokens, revocations), publishing specs to the
//! streams of the agents connected here; it writes this controller's heartbeat and takes or
//! renews the lease every [`RENEW_EVERY`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::agents::AgentRecord;
use super::{ControllerState, Member, StateError};
use crate::store::{Engine, ROLLOUT_LEASE, StoreError};

/// How long a lease lasts without renewal: the longest a rollout waits for a new leader.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews it (and others try to take it); heartbeats go with it.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a controller looks for other controllers' writes.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// A controller whose heartbeat is older than this is gone (its agents are not connected).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Who this controller is among several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its id (the configuration's `id`, by default the host name).
    pub id: String,
    /// The address it advertises (`apimctl controllers`).
    pub address: String,
}

#[derive(Debug)]
pub(super) struct Ha {
    ident: std::sync::Mutex<Identity>,
    started_ms: i64,
    /// The store revision this controller's view includes.
    pub(super) seen: AtomicI64,
    /// The lease epoch held (0: not leading).
    epoch: AtomicI64,
    /// Until when the held lease is surely ours (this host's clock, renewal time + TTL - margin).
    valid_until: std::sync::Mutex<Option<Instant>>,
    /// Controllers with a fresh heartbeat.
    live: std::sync::Mutex<BTreeSet<String>>,
    /// The product PKI files exchanged with the store so far.
    pki: std::sync::Mutex<crate::shared::Synced>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Ha {
    pub(super) fn new(seen: i64) -> Ha {
        Ha {
            ident: std::sync::Mutex::new(Identity {
                id: "local".into(),
                address: String::new(),
            }),
            started_ms: unix_ms(),
            seen: AtomicI64::new(seen),
            epoch: AtomicI64::new(0),
            valid_until: std::sync::Mutex::new(None),
            live: std::sync::Mutex::new(BTreeSet::new()),
            pki: std::sync::Mutex::new(crate::shared::Synced::default()),
        }
    }

    fn ident(&self) -> Identity {
        self.ident
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn id(&self) -> String {
        self.ident().id
    }

    /// Whether `controller` (not this one) has a fresh heartbeat.
    pub(super) fn is_live_elsewhere(&self, controller: &str, me: &str) -> bool {
        controller != me
            && self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(controller)
    }
}

impl ControllerState {
    /// Names this controller among several (before [`ControllerState::run_ha`]).
    pub fn set_identity(&self, identity: Identity) {
        *self
            .ha
            .ident
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = identity;
    }

    /// This controller's id.
    pub fn controller_id(&self) -> String {
        self.ha.id()
    }

    /// The lease epoch when this controller leads rollouts, `None` when another does. On the
    /// embedded store there is one controller and it always leads (epoch 0).
    pub fn leading(&self) -> Option<i64> {
        if self.store.engine() == Engine::Sqlite {
            return Some(0);
        }
        let epoch = self.ha.epoch.load(Ordering::SeqCst);
        let valid = self
            .ha
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t);
        (epoch > 0 && valid).then_some(epoch)
    }

    /// The fencing check of a leader's write: inside `tx`, whether this controller still holds
    /// the lease at `epoch` (always on the embedded store).
    pub fn still_leading(&self, tx: &crate::store::Tx<'_>, epoch: i64) -> Result<bool, StoreError> {
        if tx.engine() == Engine::Sqlite {
            return Ok(true);
        }
        tx.holds_lease(ROLLOUT_LEASE, &self.ha.id(), epoch)
    }

    /// Keeps this controller in step with the others until `stop`: see the module
    /// documentation. A no-op loop on the embedded store (one controller).
    pub async fn run_ha(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.store.engine() == Engine::Sqlite {
            return;
        }
        let mut last_renew: Option<Instant> = None;
        let mut failing = false;
        loop {
            let due = last_renew.is_none_or(|t| t.elapsed() >= RENEW_EVERY);
            let tick = (|| {
                if due {
                    self.lease_tick()?;
                }
                self.catch_up()
            })();
            match tick {
                Ok(()) => {
                    if due {
                        last_renew = Some(Instant::now());
                    }
                    if failing {
                        tracing::info!("store reachable again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot reach the store; retrying");
                        failing = true;
                    }
                    if due {
                        last_renew = Some(Instant::now());
                    }
                }
            }
            if self.leading().is_none() && self.ha.epoch.swap(0, Ordering::SeqCst) > 0 {
                tracing::warn!("the rollout lease ran out before it could be renewed");
                self.notify_change();
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(SYNC_EVERY) => {}
            }
        }
        // A clean stop hands the lease over at once.
        if self.ha.epoch.swap(0, Ordering::SeqCst) > 0 {
            let id = self.ha.id();
            if let Err(e) = self
                .store
                .write_unversioned(|tx| tx.release_lease(ROLLOUT_LEASE, &id))
            {
                tracing::warn!(error = %e, "could not release the rollout lease");
            }
        }
    }

    /// Heartbeat, then take or renew the lease.
    fn lease_tick(&self) -> Result<(), StoreError> {
        let ident = self.ha.ident();
        let seen = self.ha.seen.load(Ordering::SeqCst);
        let asked = Instant::now();
        let (lease, members, now) = self.store.write_unversioned(|tx| {
            tx.heartbeat(
                &ident.id,
                &ident.address,
                env!("CARGO_PKG_VERSION"),
                self.ha.started_ms,
                seen,
            )?;
            let lease = tx.acquire_lease(ROLLOUT_LEASE, &ident.id, LEASE_TTL.as_millis() as i64)?;
            Ok((lease, tx.members()?, tx.now_ms()?))
        })?;
        let stale = STALE_AFTER.as_millis() as i64;
        *self
            .ha
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = members
            .iter()
            .filter(|m| now - m.heartbeat_ms <= stale)
            .map(|m| m.id.clone())
            .collect();
        let ours = lease.holder == ident.id && lease.expires_at_ms > now;
        let before = self.ha.epoch.load(Ordering::SeqCst);
        if ours {
            // Counted from when it was asked, less a margin for clock rates: never longer than
            // the database grants.
            *self
                .ha
                .valid_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(asked + LEASE_TTL - RENEW_EVERY);
            self.ha.epoch.store(lease.epoch, Ordering::SeqCst);
            if before != lease.epoch {
                tracing::info!(controller = %ident.id, epoch = lease.epoch, "leading rollouts");
                self.notify_change();
            }
        } else if before > 0 {
            self.ha.epoch.store(0, Ordering::SeqCst);
            tracing::warn!(leader = %lease.holder, "another controller leads rollouts now");
            self.notify_change();
        }
        Ok(())
    }

    /// Takes what other controllers wrote since the revision this view includes ([`ControllerState::run_ha`]
    /// calls it every [`SYNC_EVERY`]).
    pub fn catch_up(&self) -> Result<(), StoreError> {
        let seen = self.ha.seen.load(Ordering::SeqCst);
        let (now, agents, specs, tokens, revoked, folders) = self.store.read(|tx| {
            let now = tx.revision()?;
            if now <= seen {
                return Ok((now, None, Vec::new(), None, None, 0));
            }
            Ok((
                now,
                Some(tx.agents_changed(seen, now)?),
                tx.specs_changed(seen, now)?,
                Some(tx.tokens()?),
                Some(tx.revocations()?),
                tx.folder_revision()?,
            ))
        })?;
        self.folders_at(folders);
        let Some(agents) = agents else {
            return Ok(());
        };
        let me = self.ha.id();
        let mut revocations_changed = false;
        {
            let mut inner = self.lock();
            for (machine, stored) in agents {
                let record = inner.agents.entry(machine).or_default();
                if record.session.is_some() {
                    continue; // connected here: this controller's copy is the newest
                }
                let mut fresh = AgentRecord::from_stored(&stored);
                fresh.remote = stored.controller.filter(|c| *c != me);
                *record = fresh;
            }
            if let Some(t) = tokens {
                inner.tokens = t;
            }
            if let Some(r) = revoked
                && r != inner.revoked
            {
                inner.revoked = r;
                revocations_changed = true;
            }
        }
        let local = self.desired_specs();
        let changed: Vec<_> = specs
            .into_iter()
            .filter(|s| local.get(&s.machine).is_none_or(|l| **l != *s))
            .collect();
        self.ha.seen.store(now, Ordering::SeqCst);
        if !changed.is_empty() {
            self.publish_specs(changed);
        }
        if revocations_changed {
            self.revocations.send_modify(|e| *e += 1);
        }
        self.notify_change();
        Ok(())
    }

    /// The other live controller holding `machine`'s stream, as "id (address)" (several
    /// controllers: a command for that agent must go through it).
    pub(super) fn connected_elsewhere(&self, machine: &str) -> Option<String> {
        let me = self.ha.id();
        let remote = self.lock().agents.get(machine)?.remote.clone()?;
        if !self.ha.is_live_elsewhere(&remote, &me) {
            return None;
        }
        let address = self
            .store
            .read(|tx| tx.members())
            .ok()?
            .into_iter()
            .find(|m| m.id == remote)
            .map(|m| m.address)
            .unwrap_or_default();
        Some(format!("{remote} ({address})"))
    }

    /// Takes the product PKIs other controllers stored (several controllers; a no-op on the
    /// embedded store).
    pub fn pull_shared_pki(&self) -> Result<(), StoreError> {
        let (root, prefix) = self.pki_root();
        let mut synced = self
            .ha
            .pki
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::shared::pull_since(&self.store, &root, &prefix, &mut synced).map(drop)
    }

    /// Stores the product PKIs as this controller has them now (after an apply issued or
    /// renewed certificates).
    pub fn push_shared_pki(&self) -> Result<(), StoreError> {
        let (root, prefix) = self.pki_root();
        let mut synced = self
            .ha
            .pki
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::shared::push_changed(&self.store, &root, &prefix, true, &mut synced)
    }

    fn pki_root(&self) -> (std::path::PathBuf, String) {
        let root = self.pki_dir.parent().unwrap_or(&self.pki_dir).to_path_buf();
        let prefix = self
            .pki_dir
            .file_name()
            .map_or_else(|| "pki".to_owned(), |n| n.to_string_lossy().into_owned());
        (root, prefix)
    }

    /// Every controller of the cluster, the answering one marked [`Member::this`].
    pub fn members(&self) -> Result<Vec<Member>, StateError> {
        let me = self.ha.id();
        if self.store.engine() == Engine::Sqlite {
            let now = unix_ms();
            let ident = self.ha.ident();
            return Ok(vec![Member {
                id: ident.id,
                address: ident.address,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at_ms: self.ha.started_ms,
                heartbeat_ms: now,
                leader: true,
                lag_ms: 0,
                this: true,
            }]);
        }
        let (rows, lease, revision, now) = self.store.read(|tx| {
            Ok((
                tx.members()?,
                tx.lease(ROLLOUT_LEASE)?,
                tx.revision()?,
                tx.now_ms()?,
            ))
        })?;
        let stale = STALE_AFTER.as_millis() as i64;
        Ok(rows
            .into_iter()
            .filter(|m| now - m.heartbeat_ms <= 10 * stale || m.id == me)
            .map(|m| Member {
                leader: lease
                    .as_ref()
                    .is_some_and(|l| l.holder == m.id && l.expires_at_ms > now),
                // Behind the store: how long ago it last said it had caught up.
                lag_ms: if m.seen_revision >= revision {
                    0
                } else {
                    (now - m.heartbeat_ms).max(0)
                },
                this: m.id == me,
                id: m.id,
                address: m.address,
                version: m.version,
                started_at_ms: m.started_at_ms,
                heartbeat_ms: m.heartbeat_ms,
            })
            .collect())
    }
}
