//! Leader election on a coordination Lease, so that several operator replicas can run and
//! exactly one reconciles (kube-leader-election's `LeaseLock`).
//!
//! [`acquire`] waits until this replica holds the Lease; [`hold`] renews it and returns when
//! it is lost. The caller then stops reconciling at once: a replica that might have lost its
//! Lease must not act, since another may already lead.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// How long a Lease stays valid without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often it is renewed (or its acquisition retried).
pub const RENEW_EVERY: Duration = Duration::from_secs(4);

/// A Lease this process competes for.
pub struct Election {
    lock: LeaseLock,
    holder: String,
    metrics: Arc<Metrics>,
}

impl Election {
    /// Competes for Lease `name` in `namespace` as `holder` (the pod name).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        holder: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            lock: LeaseLock::new(
                client,
                namespace,
                LeaseLockParams {
                    lease_name: name.into(),
                    holder_id: holder.into(),
                    lease_ttl: LEASE_TTL,
                },
            ),
            holder: holder.into(),
            metrics,
        }
    }

    /// `Some(true)` when held, `Some(false)` when another replica holds it, `None` when the
    /// API server could not be asked.
    async fn try_once(&self) -> Option<bool> {
        match self.lock.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => Some(true),
            Ok(LeaseLockResult::NotAcquired(_)) => Some(false),
            Err(e) => {
                warn!(error = %e, "leader election");
                None
            }
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            if self.try_once().await == Some(true) {
                info!(holder = %self.holder, "acquired the leader Lease");
                self.metrics.set_leader(true);
                return;
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Renews the Lease; returns as soon as another replica holds it, or when renewals have
    /// failed for so long that the Lease may expire.
    pub async fn hold(&self) {
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_once().await {
                Some(true) => failing_since = None,
                Some(false) => {
                    warn!(holder = %self.holder, "another replica holds the leader Lease");
                    break;
                }
                None => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    // Give up before the Lease can expire, so that two replicas never act at
                    // once.
                    if since.elapsed() + 2 * RENEW_EVERY >= LEASE_TTL {
                        warn!(holder = %self.holder, "cannot renew the leader Lease");
                        break;
                    }
                }
            }
        }
        self.metrics.set_leader(false);
    }

    /// Releases the Lease on shutdown, so that a standby takes over without waiting.
    pub async fn release(&self) {
        if let Err(e) = self.lock.step_down().await {
            warn!(error = %e, "cannot release the leader Lease");
        }
        self.metrics.set_leader(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_release_hands_over() {
        let client = crate::local::fake_api().await.unwrap();
        let m = Arc::new(Metrics::new());
        let a = Election::new(client.clone(), "ops", "rstore-operator", "a", m.clone());
        let b = Election::new(client.clone(), "ops", "rstore-operator", "b", m.clone());
        a.acquire().await;
        assert_eq!(a.try_once().await, Some(true), "the holder renews");
        assert_eq!(b.try_once().await, Some(false), "a second replica waits");
        a.release().await;
        // Release shortens the Lease to one second; the standby takes over once it ends.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.try_once().await != Some(true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the standby never took over"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(a.try_once().await, Some(false));
    }
}
