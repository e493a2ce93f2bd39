//! The changes a watch sees: events per revision, and how much history is kept. These are
//! the types the watch API streams; the state machine records them as it applies writes.

use serde::{Deserialize, Serialize};

/// One change to one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    /// The new value (empty for deletes), serialized as bytes.
    pub value: bytes::Bytes,
    /// Version after the change (0 for deletes).
    pub version: u64,
    pub create_revision: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// All changes made at one revision (one write, or one transaction), delivered together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<Event>,
}

impl RevisionEvents {
    /// Bytes of keys and values, what the history's byte bound counts.
    pub(super) fn bytes(&self) -> u64 {
        self.events
            .iter()
            .map(|e| (e.key.len() + e.value.len()) as u64)
            .sum()
    }
}

/// Why history cannot be read from a revision.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("revision {requested} is compacted; the oldest revision kept is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
}

/// How much change history is kept for watches: at most `revisions` revisions, and at
/// most `bytes` bytes of keys and values; the older ones go first.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub revisions: u64,
    pub bytes: u64,
}
