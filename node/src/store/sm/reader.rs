//! Reading the applied state, for the HTTP handlers and the batcher: the state behind its
//! lock, and the reader handle that gets, lists, and follows changes. The state machine is
//! the only writer ([`super::StateMachineStore`]).

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use super::history::{HistoryError, Retention, RevisionEvents};
use super::record::{Data, Record};
use crate::types::ClusterConfig;

/// The applied state.
#[derive(Default)]
pub(super) struct State {
    pub(super) data: Data,
    /// The revision of the last applied write.
    pub(super) revision: u64,
    /// The log index of the last applied entry.
    pub(super) applied_index: u64,
    /// The newest revisions, contiguous and ending at `revision`.
    pub(super) history: VecDeque<Arc<RevisionEvents>>,
    pub(super) history_bytes: u64,
}

impl State {
    /// The oldest revision whose events are kept (`revision + 1` when none are).
    fn oldest(&self) -> u64 {
        self.revision + 1 - self.history.len() as u64
    }

    pub(super) fn record(&mut self, change: Arc<RevisionEvents>, keep: Retention) {
        self.history_bytes += change.bytes();
        self.history.push_back(change);
        while self.history.len() as u64 > keep.revisions.max(1) || self.history_bytes > keep.bytes {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= old.bytes();
        }
    }
}

/// Read access to the applied state, shared with the HTTP handlers.
#[derive(Clone)]
pub struct KvReader {
    pub(super) state: Arc<RwLock<State>>,
    pub(super) config: Arc<RwLock<ClusterConfig>>,
    pub(super) events: tokio::sync::broadcast::Sender<Arc<RevisionEvents>>,
}

/// The whole state at one revision ([`KvReader::copy_all`]).
pub struct StateCopy {
    pub revision: u64,
    pub applied_index: u64,
    pub config: ClusterConfig,
    pub records: std::collections::BTreeMap<String, Record>,
}

/// One item of a range listing.
#[derive(Debug, Clone)]
pub struct ListedItem {
    pub key: String,
    pub record: Record,
}

impl KvReader {
    pub(super) fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("state lock")
    }

    /// Cluster-wide settings as of the applied state.
    pub fn config(&self) -> ClusterConfig {
        *self.config.read().expect("config lock")
    }

    /// The oldest revision whose events are still kept.
    pub fn oldest_revision(&self) -> u64 {
        self.state().oldest()
    }

    /// Live changes, one item per revision, as they are applied.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<RevisionEvents>> {
        self.events.subscribe()
    }

    /// Kept history from revision `from` on, at most `max` revisions.
    pub fn history(&self, from: u64, max: usize) -> Result<Vec<Arc<RevisionEvents>>, HistoryError> {
        let state = self.state();
        let oldest = state.oldest();
        if from < oldest {
            return Err(HistoryError::Compacted {
                requested: from,
                oldest,
            });
        }
        let skip = usize::try_from(from - oldest).unwrap_or(usize::MAX);
        Ok(state.history.iter().skip(skip).take(max).cloned().collect())
    }

    /// The store revision: the revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    pub fn get(&self, key: &str) -> Option<Record> {
        self.state().data.get(key).cloned()
    }

    /// Bytes of the keys and values held, plus [`KEY_OVERHEAD_BYTES`](super::record::KEY_OVERHEAD_BYTES)
    /// per key.
    pub fn data_bytes(&self) -> u64 {
        self.state().data.bytes
    }

    /// A copy of the whole state as of one applied log entry, taken under the state's lock
    /// (so it holds exactly the writes up to its revision), for a backup. Writes wait for
    /// the copy, not for what the caller does with it.
    pub fn copy_all(&self) -> StateCopy {
        let state = self.state();
        StateCopy {
            revision: state.revision,
            applied_index: state.applied_index,
            config: self.config(),
            records: state.data.map.clone(),
        }
    }

    /// Keys under `prefix` after `start_after`, in order: at most `limit` of them, and no
    /// more once their keys and values reach `max_bytes` (at least one, however big).
    /// The flag says whether more keys follow.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<ListedItem>, bool) {
        let start = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s),
            _ => Bound::Included(prefix),
        };
        let state = self.state();
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for (key, record) in state
            .data
            .map
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            if items.len() == limit || (!items.is_empty() && bytes >= max_bytes) {
                return (items, true);
            }
            bytes += key.len() + record.value.len();
            items.push(ListedItem {
                key: key.clone(),
                record: record.clone(),
            });
        }
        (items, false)
    }
}
