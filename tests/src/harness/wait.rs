//! Waiting for a condition, never for a fixed time: poll, and fail naming what was awaited
//! and what was seen instead.

use std::time::{Duration, Instant};

/// How long a process may take to answer `GET /v1/node` after it is spawned.
pub const STARTUP: Duration = Duration::from_secs(20);
/// How long an election, a forwarded write or a membership change may take under load.
pub const ELECTION: Duration = Duration::from_secs(30);
/// How long a node may take to catch up with the leader (log replay or snapshot).
pub const CATCH_UP: Duration = Duration::from_secs(60);
/// Lines of each node's log printed when a test fails.
pub(crate) const LOG_TAIL_LINES: usize = 80;

/// Poll interval of [`wait_until`] and [`wait_for`].
pub const POLL: Duration = Duration::from_millis(50);

/// Poll `cond` every 50 ms until it holds; panic naming `what` after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    wait_for(timeout, what, async || {
        if cond().await {
            Ok(())
        } else {
            Err("condition false".to_string())
        }
    })
    .await
}

/// Poll `f` every 50 ms until it returns `Ok`; panic naming `what` and the last `Err`
/// (a description of what was seen instead) after `timeout`.
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
