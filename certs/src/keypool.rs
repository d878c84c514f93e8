//! A process-wide pool of pre-generated RSA-2048 keys, so issuing product certificates never
//! waits on RSA prime search (hundreds of milliseconds per key with the pure-Rust `rsa` crate).
//!
//! [`start_key_pool`] spawns one background thread at the lowest scheduling priority (nice 19)
//! that keeps the pool at its target: it generates one key at a time and sleeps on a condition
//! variable until a key is taken. [`generate_rsa_key`](crate::generate_rsa_key) takes a pooled
//! key when there is one and generates in place otherwise, so a process that never starts the
//! pool (the CLI, tests) behaves as if the pool did not exist.
//!
//! Keys live in memory only: they are never written anywhere and never logged, and
//! [`RsaPrivateKey`] zeroizes its secret parts on drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rsa::RsaPrivateKey;

use crate::error::{CertsError, Result};
use crate::product::RSA_KEY_BITS;

/// The refill thread's name (Linux keeps 15 bytes of it), as seen in `ps -L` and `/proc`.
const THREAD_NAME: &str = "apim-keypool";
/// Nice value of the pool thread: the lowest priority, so it only uses otherwise idle CPU.
const POOL_NICE: i32 = 19;

/// Generates one RSA-2048 private key in the calling thread.
pub(crate) fn fresh_rsa_key() -> Result<RsaPrivateKey> {
    RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_KEY_BITS).map_err(|e| CertsError::RsaKey {
        reason: e.to_string(),
    })
}

/// A snapshot of the pool's counters, for tests and diagnostics (no key material).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPoolStats {
    /// Keys ready to be taken now.
    pub ready: usize,
    /// How many keys the background thread keeps ready (0 when the pool is not running).
    pub target: usize,
    /// Keys the background thread has generated since the process started.
    pub generated: u64,
    /// Keys handed out by `generate_rsa_key` from the pool (not generated in place).
    pub taken: u64,
}

struct State {
    keys: Vec<RsaPrivateKey>,
    target: usize,
    running: bool,
}

/// The pool: keys behind a mutex, one condition variable that the refill thread waits on
/// (for a key to be taken) and waiters of [`KeyPool::wait_ready`] wait on (for a key to be
/// added); every change notifies all.
struct KeyPool {
    thread_name: &'static str,
    state: Mutex<State>,
    changed: Condvar,
    generated: AtomicU64,
    taken: AtomicU64,
}

impl KeyPool {
    const fn new(thread_name: &'static str) -> Self {
        KeyPool {
            thread_name,
            state: Mutex::new(State {
                keys: Vec::new(),
                target: 0,
                running: false,
            }),
            changed: Condvar::new(),
            generated: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the Vec half-updated; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the refill thread once; later calls (and `target == 0`) do nothing.
    fn start(&'static self, target: usize) {
        if target == 0 {
            return;
        }
        let mut state = self.lock();
        if state.running {
            if state.target != target {
                tracing::debug!(
                    running = state.target,
                    requested = target,
                    "RSA key pool already running; keeping its target"
                );
            }
            return;
        }
        state.running = true;
        state.target = target;
        drop(state);
        let spawned = std::thread::Builder::new()
            .name(self.thread_name.into())
            .spawn(move || self.refill_loop());
        match spawned {
            Ok(_) => tracing::info!(target, "RSA key pool started"),
            Err(e) => {
                tracing::warn!(error = %e, "RSA key pool thread not started; keys are generated on demand");
                let mut state = self.lock();
                state.running = false;
                state.target = 0;
            }
        }
    }

    fn refill_loop(&self) {
        lower_own_priority();
        // Said once, when the pool first reaches its target: from then on, issuing certificates
        // for a rollout does not wait on prime search (benchmarks wait for this line).
        let mut announced = false;
        loop {
            {
                let state = self.lock();
                let _state = self
                    .changed
                    .wait_while(state, |s| s.keys.len() >= s.target)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // Generate without holding the lock, so takers never wait on prime search.
            match fresh_rsa_key() {
                Ok(key) => {
                    let mut state = self.lock();
                    state.keys.push(key);
                    let ready = state.keys.len();
                    let full = ready >= state.target;
                    drop(state);
                    self.generated.fetch_add(1, Ordering::Relaxed);
                    self.changed.notify_all();
                    if full && !announced {
                        announced = true;
                        tracing::info!(keys = ready, "RSA key pool full");
                    }
                }
                Err(e) => {
                    // Only a broken OS random source gets here; retrying would spin.
                    tracing::warn!(error = %e, "RSA key pool stopped; keys are generated on demand");
                    let mut state = self.lock();
                    state.running = false;
                    state.target = 0;
                    drop(state);
                    self.changed.notify_all();
                    return;
                }
            }
        }
    }

    fn take(&self) -> Option<RsaPrivateKey> {
        let key = self.lock().keys.pop();
        if key.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
            self.changed.notify_all();
        }
        key
    }

    fn stats(&self) -> KeyPoolStats {
        let state = self.lock();
        KeyPoolStats {
            ready: state.keys.len(),
            target: state.target,
            generated: self.generated.load(Ordering::Relaxed),
            taken: self.taken.load(Ordering::Relaxed),
        }
    }

    fn wait_ready(&self, ready: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.keys.len() >= ready {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !state.running {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Lowers the calling thread's scheduling priority to nice 19 (on Linux, nice is per thread:
/// `setpriority(PRIO_PROCESS, tid)` touches only this thread). Failure is harmless.
fn lower_own_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), POOL_NICE) {
        tracing::debug!(error = %e, "could not lower the RSA key pool thread's priority");
    }
}

static POOL: KeyPool = KeyPool::new(THREAD_NAME);

/// Starts the process-wide RSA key pool: one background thread at nice 19 keeps `target`
/// RSA-2048 keys ready in memory so certificate issuance (cluster CA, primary key, node
/// certificates) does not wait on prime search. Idempotent: only the first call with a
/// non-zero `target` starts the thread; `0` does nothing (the pool stays off).
pub fn start_key_pool(target: usize) {
    POOL.start(target);
}

/// How many pre-generated keys are ready now. Lets tests and diagnostics see whether the pool
/// is filled, drained by issuance, and refilled.
pub fn key_pool_len() -> usize {
    POOL.lock().keys.len()
}

/// The pool's counters (ready, target, generated, taken), so tests can tell whether issued
/// keys came from the pool.
pub fn key_pool_stats() -> KeyPoolStats {
    POOL.stats()
}

/// Blocks until at least `ready` keys are pooled or `timeout` passes (or the pool is not
/// running); returns whether the pool got there. Uses the pool's condition variable, so tests
/// and warm-up code wait for the pool without polling.
pub fn wait_for_key_pool(ready: usize, timeout: Duration) -> bool {
    POOL.wait_ready(ready, timeout)
}

/// A pooled key, if the pool has one ready (waking the refill thread to replace it).
pub(crate) fn take_pooled_key() -> Option<RsaPrivateKey> {
    POOL.take()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    use rsa::{BigUint, RsaPublicKey};

    /// Failure guard only: generating a key takes well under a second unloaded.
    const GENEROUS: Duration = Duration::from_secs(300);

    fn modulus_of(key: &rcgen::KeyPair) -> BigUint {
        RsaPublicKey::from_public_key_der(&key.subject_public_key_info())
            .expect("an RSA public key")
            .n()
            .clone()
    }

    /// The nice value of every thread of this process named [`THREAD_NAME`], from /proc.
    fn pool_thread_nice() -> Vec<i32> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue; // the thread ended meanwhile
            };
            if comm.trim_end() != THREAD_NAME {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("stat")).unwrap();
            // Fields after "(comm) " start at field 3 (state); nice is field 19.
            let (_, rest) = stat.rsplit_once(") ").unwrap();
            out.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
        }
        out
    }

    /// nextest runs every test in its own process, so this test owns the global pool.
    #[test]
    fn pool_fills_drains_through_generate_rsa_key_and_refills() {
        start_key_pool(2);
        start_key_pool(5); // idempotent: neither a second thread nor a new target
        assert!(wait_for_key_pool(2, GENEROUS), "pool never reached 2 keys");
        assert_eq!(key_pool_len(), 2);
        let before = key_pool_stats();
        assert_eq!(before.target, 2);
        assert_eq!(before.taken, 0);
        assert_eq!(
            pool_thread_nice(),
            vec![POOL_NICE],
            "one refill thread, at nice 19"
        );
        let pooled: Vec<BigUint> = POOL.lock().keys.iter().map(|k| k.n().clone()).collect();

        let a = crate::generate_rsa_key().unwrap();
        let b = crate::generate_rsa_key().unwrap();
        let (na, nb) = (modulus_of(&a), modulus_of(&b));
        assert_ne!(na, nb, "two issued keys must differ");
        assert_eq!(na.bits(), 2048);
        assert_eq!(nb.bits(), 2048);
        // Both came out of the pool (a key generated in place would not be in the snapshot),
        // so the two pooled keys are gone: the pool was drained.
        assert!(pooled.contains(&na) && pooled.contains(&nb));
        let after = key_pool_stats();
        assert_eq!(after.taken, 2);

        // ...and refills with new keys.
        assert!(wait_for_key_pool(2, GENEROUS), "pool never refilled");
        let refilled: Vec<BigUint> = POOL.lock().keys.iter().map(|k| k.n().clone()).collect();
        assert_eq!(refilled.len(), 2);
        assert!(
            refilled
                .iter()
                .all(|n| *n != na && *n != nb && n.bits() == 2048)
        );
        assert!(key_pool_stats().generated >= 4);
    }

    #[test]
    fn a_private_pool_stays_off_at_zero_and_serves_distinct_keys() {
        let pool: &'static KeyPool = Box::leak(Box::new(KeyPool::new("apim-keypool-t")));
        pool.start(0);
        assert_eq!(pool.stats().target, 0);
        assert!(pool.take().is_none());
        assert!(
            !pool.wait_ready(1, GENEROUS),
            "a pool that is off never fills"
        );

        pool.start(1);
        assert!(pool.wait_ready(1, GENEROUS));
        let first = pool.take().expect("a pooled key");
        assert_eq!(pool.stats().taken, 1);
        assert!(pool.wait_ready(1, GENEROUS), "refilled after a take");
        let second = pool.take().expect("a refilled key");
        assert_ne!(first.n(), second.n());
        assert_eq!(first.size() * 8, RSA_KEY_BITS);
        assert!(pool.stats().generated >= 2);
    }
}
