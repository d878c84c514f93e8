//! One task per node: converge to the latest target, requeue failures with backoff, and
//! restart a RUNNING node whose process died (counted and reported).
//!
//! The task follows a `watch` of the node's target (kube-rs style: level-triggered, only the
//! latest target matters). `None` means the node left the spec: it is stopped and forgotten.
//! When the sender is dropped (the agent shuts down) the task ends and the node keeps
//! running: an agent restart adopts it.
//!
//! A freshly installed tree is synced `tree_sync_delay` after the node first reported
//! healthy, from this loop, so the sync never sits in a rollout's path.
//!
//! Drift is checked from this loop too, so a check never races the node's own converge: after
//! every converge, every `drift_interval`, and whenever the board asks
//! ([`crate::daemon::report::StatusBoard::request_drift_check`]; answered once checked). Only a
//! node healthy on its current target is checked; any other reports no drift.

use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::{DesiredRun, NodePhase};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::daemon::config::Timings;
use crate::daemon::converge::{NodeExecutor, NodeTarget, Outcome};

/// The latest target of a node (`None`: remove it).
pub type TargetRx = watch::Receiver<Option<Arc<NodeTarget>>>;

/// `base * 2^(n-1)`, capped at `max`, for the n-th consecutive failure (n >= 1).
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let exp = n.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}

/// Runs the node's converge/supervise loop until its target becomes `None` or the sender is
/// dropped.
pub async fn node_loop(mut exec: NodeExecutor, mut rx: TargetRx, timings: Timings) {
    let board = exec_board(&exec);
    let mut checks = board.drift_requests();
    let mut drift_at = next_drift(&timings);
    // The target the node is healthy on (drift is checked against it).
    let mut settled: Option<Arc<NodeTarget>> = None;
    let mut done: Option<Arc<NodeTarget>> = None;
    let mut last: Option<Arc<NodeTarget>> = None;
    let mut retry_at: Option<Instant> = None;
    let mut failures: u32 = 0;
    let mut sync_at: Option<Instant> = None;
    loop {
        let closed = rx.has_changed().is_err();
        let target = rx.borrow_and_update().clone();
        if closed && target.is_some() {
            // The agent is shutting down: leave the node as it is. (A node that left the spec
            // gets `None` just before its sender goes: it is stopped and removed below.)
            return;
        }
        let Some(t) = target else {
            // Stopped, then its trees and record removed; a node that would not stop keeps them.
            if let Some(l) = &last {
                match exec.stop_for_removal(&l.spec).await {
                    Ok(()) => {
                        for e in exec.remove_installed().await {
                            tracing::error!(node = exec.name(), error = %e, "removing a node that left the spec");
                        }
                    }
                    Err(e) => {
                        tracing::error!(node = exec.name(), error = %e, "stopping a node that left the spec failed");
                    }
                }
            }
            board.remove(exec.name());
            tracing::info!(node = exec.name(), "node left the spec");
            return;
        };
        last = Some(Arc::clone(&t));
        let due = done.as_deref() != Some(&*t) && retry_at.is_none_or(|r| Instant::now() >= r);
        if due {
            let mut cancel_rx = rx.clone();
            let cancel = async move {
                let _ = cancel_rx.changed().await;
            };
            settled = None;
            match exec.converge(&t, cancel).await {
                Ok(Outcome::Superseded) => {}
                Ok(outcome) => {
                    if matches!(outcome, Outcome::Healthy { .. }) {
                        settled = Some(Arc::clone(&t));
                    }
                    if matches!(outcome, Outcome::Healthy { .. }) && exec.tree_unsynced() {
                        sync_at.get_or_insert(Instant::now() + timings.tree_sync_delay);
                    }
                    done = Some(Arc::clone(&t));
                    failures = 0;
                    retry_at = None;
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff(timings.retry_backoff, timings.retry_backoff_max, failures);
                    tracing::warn!(node = exec.name(), error = %e, retry_in = ?delay, "converge failed");
                    exec.report_failed(t.generation, &e.to_string());
                    retry_at = Some(Instant::now() + delay);
                    done = None;
                }
            }
            exec.refresh_drift(settled.as_deref());
        }
        if sync_at.is_some_and(|at| Instant::now() >= at) {
            sync_at = match exec.sync_installed_tree().await {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(node = exec.name(), error = %e, "syncing the installed tree failed; will retry");
                    Some(Instant::now() + timings.supervise_interval)
                }
            };
        }
        let mut wait = timings.supervise_interval;
        if let Some(at) = sync_at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        if let Some(r) = retry_at {
            wait = wait.min(r.saturating_duration_since(Instant::now()));
        }
        if let Some(at) = drift_at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                retry_at = None;
                failures = 0;
            }
            changed = checks.changed() => {
                if changed.is_ok() {
                    let epoch = *checks.borrow_and_update();
                    exec.refresh_drift(settled.as_deref());
                    board.drift_checked(exec.name(), epoch);
                    drift_at = next_drift(&timings);
                }
            }
            () = tokio::time::sleep(wait) => {
                if supervise(&mut exec, &mut done, &mut retry_at, &timings) {
                    settled = None;
                    exec.refresh_drift(None);
                }
                if drift_at.is_some_and(|at| Instant::now() >= at) {
                    exec.refresh_drift(settled.as_deref());
                    drift_at = next_drift(&timings);
                }
            }
        }
    }
}

/// When the next periodic drift check is due (`None`: only on demand).
fn next_drift(timings: &Timings) -> Option<Instant> {
    (!timings.drift_interval.is_zero()).then(|| Instant::now() + timings.drift_interval)
}

fn exec_board(exec: &NodeExecutor) -> Arc<crate::daemon::report::StatusBoard> {
    exec.board()
}

/// A RUNNING node that was healthy and whose process is gone: count, report, schedule.
/// Returns whether it was.
fn supervise(
    exec: &mut NodeExecutor,
    done: &mut Option<Arc<NodeTarget>>,
    retry_at: &mut Option<Instant>,
    timings: &Timings,
) -> bool {
    let Some(d) = done.clone() else { return false };
    if DesiredRun::try_from(d.spec.desired) != Ok(DesiredRun::Running) {
        return false;
    }
    let healthy = exec
        .board()
        .node(exec.name())
        .is_some_and(|s| s.phase == NodePhase::Healthy as i32);
    if !healthy {
        return false;
    }
    if exec.home(&d.spec).is_err() || exec.live_pid(&d.spec).is_some() {
        return false;
    }
    exec.restarts += 1;
    exec.mark_unhealthy();
    exec.report_process(None, &d.spec.config_digest);
    let delay = backoff(
        timings.restart_backoff,
        timings.restart_backoff_max,
        exec.restarts,
    );
    let msg = format!(
        "process exited unexpectedly; restart #{} in {:.1} s",
        exec.restarts,
        delay.as_secs_f64()
    );
    tracing::warn!(node = exec.name(), "{msg}");
    exec.report_failed(d.generation, &msg);
    *retry_at = Some(Instant::now() + delay);
    *done = None;
    true
}
