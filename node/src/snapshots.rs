//! When a member snapshots its state machine: openraft's own policy counts log entries only
//! (a snapshot every `snapshot_logs` entries), and a snapshot writes the whole state. With a
//! large state that is most of a member's disk writes: at 1 GB of data a member rewrote the
//! gigabyte every 10,000 entries, and put64 ran 24% faster with snapshots ten times rarer
//! (docs/benchmark.md). So openraft's policy is off (`SnapshotPolicy::Never`) and this task
//! triggers each member's snapshots itself:
//!
//! - once the commands logged since the last snapshot reach [`MAX_LOG_BYTES`], whatever else
//!   (a few thousand large transactions can log a gigabyte in fewer than `snapshot_logs`
//!   entries; this bounds the log's disk use);
//! - otherwise never before `snapshot_logs` entries since the last snapshot, and then at once
//!   for a state under [`SMALL_STATE_BYTES`] (openraft's rule: a small store behaves as
//!   before);
//! - a larger state waits until the commands logged since the last snapshot hold a quarter
//!   of its bytes (a snapshot costs at most four bytes written per byte logged), or ten times
//!   `snapshot_logs` entries; each member stretches both by its own [`spread`] (0 to 50%,
//!   from its id), so that the members of a cluster do not all rewrite a large state at the
//!   same log index. At 1 GB, three members snapshotting together on one machine cost a put
//!   load 27-45% of its throughput for a window (docs/benchmark.md); spread out, a quorum
//!   always has members that are not snapshotting.
//!
//! Replaying that log at a restart is cheap next to loading the state: a member restarted
//! with 1.1 GB of log and no snapshot (1M keys of 1 KiB in 7,813 transactions) answered a
//! linearizable read 0.75 s after it started.

use std::time::Duration;

use crate::store::{KvReader, LogGrowth};
use crate::types::{NodeId, Raft};

/// Log bytes since the last snapshot at which one is taken whatever the state's size.
pub const MAX_LOG_BYTES: u64 = 1 << 30;

/// A state this small is snapshotted every `snapshot_logs` entries, as openraft would: its
/// snapshot is cheap, and its per-key overhead (counted in its bytes) would skew the ratio.
pub const SMALL_STATE_BYTES: u64 = 64 << 20;

/// How often the task looks.
const TICK: Duration = Duration::from_millis(100);

/// How much member `id` stretches a large state's thresholds, in thousandths (0 to 499):
/// fixed per member, and different between members with all but certainty.
pub fn spread(id: NodeId) -> u64 {
    // Node ids are random; a multiplicative hash spreads even close ones.
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 500
}

/// Whether a snapshot is due, `entries` and `log_bytes` since the last one, with a state of
/// `state_bytes`, the `snapshot_logs` setting and the member's [`spread`].
pub fn due(
    entries: u64,
    log_bytes: u64,
    state_bytes: u64,
    snapshot_logs: u64,
    spread: u64,
) -> bool {
    let stretched = |n: u64| u128::from(n) * u128::from(1000 + spread);
    log_bytes >= MAX_LOG_BYTES
        || (entries >= snapshot_logs
            && (state_bytes < SMALL_STATE_BYTES
                || u128::from(log_bytes) * 4 * 1000 >= stretched(state_bytes)
                || u128::from(entries) * 1000 >= stretched(snapshot_logs.saturating_mul(10))))
}

/// Runs until the Raft node shuts down.
pub async fn run(raft: Raft, kv: KvReader, growth: LogGrowth, snapshot_logs: u64, id: NodeId) {
    let spread = spread(id);
    let mut rx = raft.metrics();
    // The applied index a snapshot was last asked for at: not asked again until it is
    // built, or until another `snapshot_logs` entries show that the request was lost.
    let mut asked_at: Option<u64> = None;
    loop {
        tokio::time::sleep(TICK).await;
        if rx.has_changed().is_err() {
            return;
        }
        let (applied, snapshot) = {
            let m = rx.borrow_and_update();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let entries = applied.saturating_sub(snapshot);
        if let Some(at) = asked_at {
            if snapshot >= at || applied >= at.saturating_add(snapshot_logs) {
                asked_at = None;
            } else {
                continue;
            }
        }
        if due(
            entries,
            growth.bytes(),
            kv.data_bytes(),
            snapshot_logs,
            spread,
        ) {
            tracing::debug!(
                entries,
                log_bytes = growth.bytes(),
                state_bytes = kv.data_bytes(),
                "snapshot due"
            );
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            asked_at = Some(applied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_state_snapshots_every_snapshot_logs_entries() {
        assert!(!due(9_999, 10 << 20, 1 << 20, 10_000, 0));
        assert!(due(10_000, 1 << 20, 1 << 20, 10_000, 0));
        // Whatever the log holds: tiny records count more in the state than in the log.
        assert!(due(20, 500, 16_000, 20, 0));
        assert!(due(10_000, 0, SMALL_STATE_BYTES - 1, 10_000, 0));
    }

    #[test]
    fn a_large_state_waits_for_a_quarter_of_its_bytes_in_the_log() {
        let gb = 1u64 << 30;
        assert!(!due(10_000, 100 << 20, gb, 10_000, 0));
        assert!(!due(99_999, 255 << 20, gb, 10_000, 0));
        assert!(due(20_000, 256 << 20, gb, 10_000, 0));
        // Ten times the entries, or a gigabyte of log, whatever the state.
        assert!(due(100_000, 1 << 20, gb, 10_000, 0));
        assert!(due(10_000, MAX_LOG_BYTES, 64 * gb, 10_000, 0));
        assert!(!due(10_000, MAX_LOG_BYTES - 1, 64 * gb, 10_000, 0));
    }

    #[test]
    fn members_stretch_a_large_states_thresholds_by_their_own_spread() {
        let gb = 1u64 << 30;
        // A quarter of the state logged: due for a member without spread, not yet for one
        // stretched by 40%, which is due at 1.4 times as much.
        assert!(due(20_000, 256 << 20, gb, 10_000, 0));
        assert!(!due(20_000, 256 << 20, gb, 10_000, 400));
        assert!(due(20_000, (256 << 20) * 14 / 10 + 1, gb, 10_000, 400));
        assert!(!due(139_999, 1 << 20, gb, 10_000, 400));
        assert!(due(140_000, 1 << 20, gb, 10_000, 400));
        // A small state and a gigabyte of log are not stretched.
        assert!(due(10_000, 0, 1 << 20, 10_000, 499));
        assert!(due(1, MAX_LOG_BYTES, gb, 10_000, 499));
        // Spreads are fixed per member, within bounds, and differ between members.
        let ids = [
            4475429905981226u64,
            4516293713171132,
            7496997712301001,
            1,
            2,
            3,
        ];
        let spreads: Vec<u64> = ids.iter().map(|&id| spread(id)).collect();
        assert!(spreads.iter().all(|&s| s < 500), "{spreads:?}");
        assert_eq!(
            spreads,
            ids.iter().map(|&id| spread(id)).collect::<Vec<_>>()
        );
        let mut distinct = spreads.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), spreads.len(), "{spreads:?}");
    }

    #[test]
    fn a_gigabyte_of_log_is_snapshotted_however_few_its_entries() {
        assert!(due(5_171, MAX_LOG_BYTES, 1 << 30, 10_000, 0));
        assert!(due(1, MAX_LOG_BYTES, 0, 10_000, 0));
        assert!(!due(5_171, MAX_LOG_BYTES - 1, 1 << 30, 10_000, 0));
    }
}
