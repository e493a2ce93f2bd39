//! Which backups a schedule deletes, by count and by age: pure functions, no I/O.
//!
//! The rules ([`to_delete`]):
//! - only successful backups count toward the keep-count, and a successful backup is deleted
//!   when it is past the keep-count or older than the maximum age, except that
//! - the newest successful backup is never deleted, however old;
//! - a failed backup is deleted only when it is older than the newest successful one (failures
//!   since the last success are kept: they say what is going wrong now);
//! - a backup in progress (an object without a manifest yet) is never deleted, unless it was
//!   abandoned: older than [`Policy::abandoned_after`] *and* than the newest successful backup,
//!   when it is treated as a failed one;
//! - with no successful backup at all, nothing is deleted.
//!
//! A time in the future (clock skew between writers) counts as age zero.
//!
//! Archived segments of the change stream ([`segments_to_delete`]) go with the full backups
//! they extend: a segment is deleted once every change in it is at or before the oldest full
//! backup that is kept, since a point-in-time restore starts from a full backup at or before
//! its target and replays only the changes after it.

use std::time::Duration;

/// How a backup ended, as far as retention is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// A complete manifest whose object's size (and checksum, when checked) match it.
    Good,
    /// A manifest that says failed, or one that does not match its object.
    Failed,
    /// No manifest yet.
    InProgress,
}

/// One backup as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The backup object's name: what [`to_delete`] returns.
    pub name: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    pub state: State,
}

/// A schedule's retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Keep at most this many successful backups (the newest); `None`: no limit by count.
    /// `Some(0)` still keeps the newest.
    pub keep_last: Option<usize>,
    /// Delete successful backups older than this (but never the newest); `None`: no limit.
    pub max_age: Option<Duration>,
    /// When an object without a manifest counts as abandoned; `None`: never.
    pub abandoned_after: Option<Duration>,
}

fn older_than(entry: &Entry, limit: Duration, now_unix_ms: u64) -> bool {
    let age = now_unix_ms.saturating_sub(entry.time_unix_ms);
    u128::from(age) > limit.as_millis()
}

/// The names of the backups to delete under `policy` at `now_unix_ms`, newest first.
///
/// Entries are ordered by time, then by name (names carry the time and revision, so ties are
/// broken by revision); the order of `backups` does not matter.
pub fn to_delete(backups: &[Entry], policy: &Policy, now_unix_ms: u64) -> Vec<String> {
    let mut sorted: Vec<&Entry> = backups.iter().collect();
    sorted.sort_by(|a, b| (b.time_unix_ms, &b.name).cmp(&(a.time_unix_ms, &a.name)));
    let Some(newest_good) = sorted.iter().position(|e| e.state == State::Good) else {
        return Vec::new();
    };
    let mut delete = Vec::new();
    let mut good_seen = 0usize;
    for (i, entry) in sorted.iter().enumerate() {
        let doomed = match entry.state {
            State::Good => {
                good_seen += 1;
                i != newest_good
                    && (policy.keep_last.is_some_and(|keep| good_seen > keep.max(1))
                        || policy
                            .max_age
                            .is_some_and(|age| older_than(entry, age, now_unix_ms)))
            }
            State::Failed => i > newest_good,
            State::InProgress => {
                i > newest_good
                    && policy
                        .abandoned_after
                        .is_some_and(|age| older_than(entry, age, now_unix_ms))
            }
        };
        if doomed {
            delete.push(entry.name.clone());
        }
    }
    delete
}

/// One archived segment as listed: its object and the revisions it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    pub name: String,
    pub first: u64,
    pub last: u64,
}

/// The segments no restore can use once only the good backups at revisions `kept` remain:
/// those that end at or before the oldest of them. With no good backup kept, none.
pub fn segments_to_delete(segments: &[SegmentEntry], kept: &[u64]) -> Vec<String> {
    let Some(oldest) = kept.iter().min() else {
        return Vec::new();
    };
    segments
        .iter()
        .filter(|s| s.last <= *oldest)
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
