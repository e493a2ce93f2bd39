//! The Raft log and vote, in sled tree `raft`.
//!
//! Layout: `l` + big-endian index → bincode entry (so sled's key order is log order),
//! plus the keys `vote`, `committed` and `purged`. Appends are made readable at once and
//! acknowledged to openraft by the [`Flusher`] after a durability barrier; votes and
//! truncations wait for their own barrier before returning, as openraft requires.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};

use std::sync::Arc;

use openraft::EntryPayload;

use super::durable::{AckRegistry, Flusher};
use crate::types::{Entry, LogId, NodeId, Request, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";
const ENTRY_PREFIX: u8 = b'l';

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn err_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_logs(AnyError::new(&e)).into()
}

fn err_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_logs(AnyError::new(&e)).into()
}

fn get_json<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match tree.get(key).map_err(err_read)? {
        Some(v) => Ok(Some(bincode::deserialize(&v).map_err(err_read)?)),
        None => Ok(None),
    }
}

/// The commit index saved in the `raft` tree, for checks at start-up.
pub fn saved_committed(tree: &sled::Tree) -> Result<Option<LogId>, StorageError> {
    Ok(get_json::<Option<LogId>>(tree, COMMITTED)?.flatten())
}

/// The log store. Clones share the same tree; openraft uses clones as log readers.
#[derive(Clone)]
pub struct LogStore {
    tree: sled::Tree,
    flusher: Flusher,
    acks: Arc<AckRegistry>,
    /// The last commit index openraft reported, for metrics (openraft 0.9 exposes none).
    committed: Arc<std::sync::atomic::AtomicU64>,
}

impl LogStore {
    /// `committed` is shared with the durability barrier's watermark: it must only ever
    /// hold an index already written to sled.
    pub fn new(
        tree: sled::Tree,
        flusher: Flusher,
        acks: Arc<AckRegistry>,
        committed: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self {
            tree,
            flusher,
            acks,
            committed,
        }
    }

    /// Shared view of the commit index, updated as openraft reports it.
    pub fn committed_index(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.committed.clone()
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.tree.scan_prefix([ENTRY_PREFIX]).next_back() {
            Some(kv) => {
                let (_, v) = kv.map_err(err_read)?;
                let entry: Entry = bincode::deserialize(&v).map_err(err_read)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    async fn barrier(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.flusher
            .sync()
            .await
            .map_err(|e| StorageError::from_io_error(subject, ErrorVerb::Write, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(entry_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(entry_key(*i)),
            Bound::Unbounded => Bound::Included(entry_key(u64::MAX)),
        };
        let mut out = Vec::new();
        for kv in self.tree.range((Bound::Included(entry_key(start)), end)) {
            let (_, v) = kv.map_err(err_read)?;
            out.push(bincode::deserialize(&v).map_err(err_read)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = get_json(&self.tree, PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = bincode::serialize(vote).map_err(err_write)?;
        self.tree.insert(VOTE, bytes).map_err(err_write)?;
        self.barrier(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        get_json(&self.tree, VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not awaited: made durable by the next barrier. On restart, openraft re-applies
        // entries up to this point, and sled recovers a prefix of its writes, so a stale
        // value only means less is re-applied at once.
        let bytes = bincode::serialize(&committed).map_err(err_write)?;
        self.tree.insert(COMMITTED, bytes).map_err(err_write)?;
        if let Some(c) = committed {
            self.committed
                .store(c.index, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(get_json::<Option<LogId>>(&self.tree, COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        let mut acks = Vec::new();
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(err_write)?;
            batch.insert(&entry_key(entry.log_id.index), bytes);
            if let EntryPayload::Normal(Request::Batch(b)) = &entry.payload
                && let Some(ack) = self.acks.take(b.id)
            {
                acks.push(ack);
            }
        }
        self.tree.apply_batch(batch).map_err(err_write)?;
        self.flusher.submit_log(callback, acks).map_err(err_write)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for kv in self
            .tree
            .range(entry_key(log_id.index)..=entry_key(u64::MAX))
        {
            let (k, _) = kv.map_err(err_read)?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(err_write)?;
        self.barrier(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The marker goes first: sled recovers a prefix of its writes, so after a crash
        // either the marker is there (and stale entries below it are ignored) or nothing is.
        let bytes = bincode::serialize(&log_id).map_err(err_write)?;
        self.tree.insert(PURGED, bytes).map_err(err_write)?;
        let mut batch = sled::Batch::default();
        for kv in self.tree.range(entry_key(0)..=entry_key(log_id.index)) {
            let (k, _) = kv.map_err(err_read)?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(err_write)?;
        Ok(())
    }
}
