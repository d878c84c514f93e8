//! Waiting in tests: bounded polls and awaits (failure guards, never synchronisation).

use std::future::Future;
use std::time::Duration;

/// Upper bound for any wait (a failure guard, never a synchronisation).
pub const PATIENCE: Duration = Duration::from_secs(90);

/// Polls `cond` until it holds; panics after [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut` with [`PATIENCE`] as a guard.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
