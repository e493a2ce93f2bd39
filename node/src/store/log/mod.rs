//! The Raft log and vote, in the write-ahead log of [`super::wal`].
//!
//! Entries, votes, commit indexes, truncations and purges are records, appended in the
//! order openraft makes them; at start-up they are read back in that order, and the last
//! of each kind wins. Entries stay on disk: memory holds only where each one is. Appends
//! are readable at once and acknowledged to openraft by the [`Flusher`] after a barrier
//! (one `fdatasync` shared by every append waiting for it); votes and truncations wait for
//! their own barrier before returning, as openraft requires.
//!
//! A new segment starts with the current vote, commit index and purge point, so the oldest
//! segments whose entries are all purged can be removed without losing any of them (only
//! those: see `Inner::removable`). What the records mean, and reading them back at
//! start-up, is [`index`]; this module is the openraft side: appends, reads, votes,
//! truncation and purges, and the leader's early acknowledgement in `async` mode.

use std::collections::HashMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader};

pub mod index;

pub use self::index::Opened;
use self::index::{Inner, encode, err_read, err_write};
use super::durable::Flusher;
use super::wal::{self, Kind, Location};
use crate::types::{Entry, LogId, NodeId, Request, StorageError, TypeConfig, Vote};

/// Leader-side waiters for "this batch is durable in my own log", used by the `async`
/// replication mode ([`LogStore::when_durable`]). The batcher registers a batch id before
/// submitting it; `append` takes the waiter when it writes that batch and hands it to the
/// flusher, which wakes it after the barrier that covers the append.
#[derive(Default)]
struct AckRegistry {
    waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    count: AtomicUsize,
}

impl AckRegistry {
    fn register(&self, id: u64) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut w = self.waiting.lock().expect("ack lock");
        w.insert(id, tx);
        self.count.store(w.len(), Ordering::Release);
        rx
    }

    fn cancel(&self, id: u64) {
        let mut w = self.waiting.lock().expect("ack lock");
        w.remove(&id);
        self.count.store(w.len(), Ordering::Release);
    }

    /// The waiter for batch `id`, if someone registered one.
    fn take(&self, id: u64) -> Option<tokio::sync::oneshot::Sender<()>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut w = self.waiting.lock().expect("ack lock");
        let tx = w.remove(&id);
        self.count.store(w.len(), Ordering::Release);
        tx
    }
}

/// The log store. Clones share the same log; openraft uses clones as log readers.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    flusher: Flusher,
    acks: Arc<AckRegistry>,
    /// The commit index as written to the log, for metrics and the watermark.
    committed: Arc<AtomicU64>,
}

impl Opened {
    /// `committed` starts at the log's commit index; the watermark shares it.
    pub fn into_store(self, flusher: Flusher, committed: Arc<AtomicU64>) -> LogStore {
        LogStore {
            inner: Arc::new(Mutex::new(self.inner)),
            flusher,
            acks: Arc::default(),
            committed,
        }
    }
}

impl LogStore {
    /// Wakes once batch `batch` (the id in [`crate::types::Batch`]) is durable in this log:
    /// the leader's own durability, which is what the `async` replication mode acknowledges.
    /// Register before submitting the batch to Raft, and [`LogStore::forget`] it when done
    /// waiting (it is also forgotten once it fires).
    pub fn when_durable(&self, batch: u64) -> tokio::sync::oneshot::Receiver<()> {
        self.acks.register(batch)
    }

    /// Stop waiting for batch `batch` ([`LogStore::when_durable`]).
    pub fn forget(&self, batch: u64) {
        self.acks.cancel(batch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("log lock")
    }

    /// Shared view of the commit index, updated as openraft reports it. It only ever holds
    /// an index already written to the log (the durability watermark relies on that).
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// Bytes of the log's segments on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.lock().wal.size_on_disk()
    }

    /// Raise the saved commit index to `snapshot` (a snapshot holds only committed
    /// entries) and make the log durable, before a snapshot file covering it is written:
    /// so the saved commit index always covers the snapshot file, and start-up can tell a
    /// log that lost durable writes (see [`super::open`]).
    pub async fn cover_snapshot(&self, snapshot: Option<LogId>) -> Result<(), StorageError> {
        if let Some(s) = snapshot {
            self.raise_committed(s)?;
        }
        self.barrier(ErrorSubject::Logs).await
    }

    /// Save `log_id` as the commit index unless a later one is saved. The commit index
    /// only grows, but a snapshot install raises it from another task than openraft's.
    fn raise_committed(&self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.committed.is_some_and(|c| c.index >= log_id.index) {
            return Ok(());
        }
        inner.record(Kind::Committed, &encode(&log_id))?;
        inner.committed = Some(log_id);
        self.committed.fetch_max(log_id.index, Ordering::AcqRel);
        Ok(())
    }

    /// Write `entries` (readable at once, durable after the next barrier); returns the
    /// async-mode waiters of the batches among them.
    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<tokio::sync::oneshot::Sender<()>>, StorageError> {
        let mut buf = Vec::new();
        let mut written = Vec::new();
        let mut acks = Vec::new();
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(err_write)?;
            let offset = wal::encode(&mut buf, Kind::Entry, &bytes);
            written.push((entry.log_id, offset, bytes.len() as u32));
            if let EntryPayload::Normal(Request::Batch(b)) = &entry.payload
                && let Some(ack) = self.acks.take(b.id)
            {
                acks.push(ack);
            }
        }
        let mut inner = self.lock();
        let (file, at, seq) = inner.write(&buf).map_err(err_write)?;
        for (log_id, offset, len) in written {
            let location = Location {
                file: file.clone(),
                seq,
                offset: at + offset,
                len,
            };
            inner.entries.insert(log_id.index, (log_id, location));
            let last = inner.segment_last.entry(seq).or_insert(log_id.index);
            *last = (*last).max(log_id.index);
        }
        Ok(acks)
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
        let at: Vec<Location> = self
            .lock()
            .entries
            .range(range)
            .map(|(_, (_, at))| at.clone())
            .collect();
        let mut out = Vec::with_capacity(at.len());
        // Entries next to each other in one segment are read with one call.
        let mut i = 0;
        while i < at.len() {
            let mut j = i + 1;
            while j < at.len()
                && at[j].seq == at[i].seq
                && at[j].offset == at[j - 1].offset + u64::from(at[j - 1].len) + wal::HEADER
            {
                j += 1;
            }
            let span = Location {
                file: at[i].file.clone(),
                seq: at[i].seq,
                offset: at[i].offset,
                len: u32::try_from(at[j - 1].offset + u64::from(at[j - 1].len) - at[i].offset)
                    .map_err(err_read)?,
            };
            let bytes = wal::read(&span).map_err(err_read)?;
            for a in &at[i..j] {
                let from = (a.offset - span.offset) as usize;
                let entry =
                    bincode::deserialize(&bytes[from..from + a.len as usize]).map_err(err_read)?;
                out.push(entry);
            }
            i = j;
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        let last = inner
            .entries
            .last_key_value()
            .map(|(_, (id, _))| *id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        {
            let mut inner = self.lock();
            inner.record(Kind::Vote, &encode(vote))?;
            inner.vote = Some(*vote);
        }
        self.barrier(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not awaited: made durable by the next barrier. On restart, openraft re-applies
        // entries up to the saved commit index, so a stale one only means less is
        // re-applied at once (the rest comes with the leader's next commit index).
        match committed {
            Some(c) => self.raise_committed(c),
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
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
        let acks = self.write_entries(entries)?;
        self.flusher.submit_log(callback, acks).map_err(err_write)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut inner = self.lock();
            let seq = inner.record(Kind::Truncate, &encode(&log_id.index))?;
            inner.truncations.insert(seq);
            inner.entries.split_off(&log_id.index);
        }
        self.barrier(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let removable = {
            let mut inner = self.lock();
            inner.record(Kind::Purge, &encode(&log_id))?;
            inner.purged = inner.purged.max(Some(log_id));
            inner.entries = inner.entries.split_off(&(log_id.index + 1));
            inner.removable()
        };
        if removable.is_empty() {
            return Ok(());
        }
        // The purge record must be durable before the entries it drops leave the disk:
        // else a crash could leave a log that starts after a gap.
        self.barrier(ErrorSubject::Logs).await?;
        let mut inner = self.lock();
        for seq in removable {
            inner.remove(seq).map_err(err_write)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::Barrier;
    use crate::types::{Batch, Command, Condition};
    use openraft::CommittedLeaderId;
    use std::path::Path;

    const SEGMENT: u64 = 4096;

    fn open(dir: &Path) -> LogStore {
        let opened = Opened::read(dir, SEGMENT).unwrap();
        let barrier = Barrier::new(opened.dirty(), dir, None);
        let flusher = Flusher::start(barrier, |_| {}).unwrap();
        opened.into_store(flusher, Arc::new(AtomicU64::new(0)))
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// An entry whose value is `pad` bytes.
    fn entry(term: u64, index: u64, pad: usize) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Request::Batch(Batch {
                id: 0,
                cmds: vec![Command::Put {
                    key: String::new(),
                    value: vec![0; pad],
                    cond: Condition::None,
                }],
            })),
        }
    }

    /// Append entries and wait until they are durable (openraft's callback cannot be made
    /// outside openraft).
    async fn append(log: &LogStore, entries: Vec<Entry>) {
        assert!(log.write_entries(entries).unwrap().is_empty());
        log.flusher.sync().await.unwrap();
    }

    /// Append the entry `(term, index)`, padded so that it fills the current segment: the
    /// next record starts a new one.
    async fn append_filling(log: &LogStore, term: u64, index: u64) {
        let room = {
            let inner = log.lock();
            (0..SEGMENT).rev().find(|&x| inner.wal.fits(x)).unwrap()
        };
        let base = bincode::serialize(&entry(term, index, 0)).unwrap().len() as u64 + wal::HEADER;
        append(log, vec![entry(term, index, (room - base) as usize)]).await;
        assert!(!log.lock().wal.fits(1), "the segment is full");
    }

    async fn read_back(log: &mut LogStore) -> Vec<LogId> {
        log.try_get_log_entries(..)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.log_id)
            .collect()
    }

    /// A segment whose entries are all purged, but that comes after a segment still
    /// holding entries past the purge point, holds the truncation that removed those: it
    /// must stay, or the truncated entries come back at the next start.
    #[tokio::test(flavor = "current_thread")]
    async fn truncated_entries_do_not_come_back_after_purge_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        // Segment A: term-1 entries 1..=10, the last one filling it.
        append(&log, (1..10).map(|i| entry(1, i, 8)).collect()).await;
        append_filling(&log, 1, 10).await;
        let a = log.lock().wal.seq();
        // Segment B: the truncation of 5.. (it does not fit in A), term-2 entries 5..=7.
        log.truncate(log_id(1, 5)).await.unwrap();
        let b = log.lock().wal.seq();
        assert_ne!(a, b);
        append(&log, vec![entry(2, 5, 8), entry(2, 6, 8)]).await;
        append_filling(&log, 2, 7).await;
        // Segment C: the purge up to 7. B holds nothing past it; A holds 8..=10, truncated.
        log.purge(log_id(2, 7)).await.unwrap();
        assert_ne!(log.lock().wal.seq(), b);
        let expect = |log: &LogStore, when: &str| {
            let inner = log.lock();
            assert_eq!(inner.purged, Some(log_id(2, 7)), "{when}");
            let kept: Vec<_> = inner.entries.values().map(|(id, _)| *id).collect();
            assert!(kept.is_empty(), "{when}: entries {kept:?} are back");
        };
        expect(&log, "before any restart");
        assert_eq!(read_back(&mut log).await, vec![]);
        for restart in 0..3 {
            drop(log);
            log = open(dir.path());
            expect(&log, &format!("after restart {restart}"));
            let state = log.get_log_state().await.unwrap();
            assert_eq!(
                state.last_purged_log_id,
                Some(log_id(2, 7)),
                "restart {restart}"
            );
            assert_eq!(state.last_log_id, Some(log_id(2, 7)), "restart {restart}");
            assert_eq!(read_back(&mut log).await, vec![], "restart {restart}");
        }
        // The log goes on from the purge point, and reads back exactly.
        append(&log, (8..12).map(|i| entry(3, i, 8)).collect()).await;
        drop(log);
        let mut log = open(dir.path());
        let want: Vec<_> = (8..12).map(|i| log_id(3, i)).collect();
        assert_eq!(read_back(&mut log).await, want);
        // Once the purge passes everything A and B held, they go.
        log.purge(log_id(3, 10)).await.unwrap();
        let segments = log.lock().wal.segments();
        assert!(
            !segments.contains(&a) && !segments.contains(&b),
            "{segments:?}"
        );
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(read_back(&mut log).await, vec![log_id(3, 11)]);
    }

    /// A segment that holds no entries, but a truncation of entries in an older segment
    /// that is kept, must stay too (it used to go at the next start).
    #[tokio::test(flavor = "current_thread")]
    async fn a_segment_holding_only_a_truncation_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        // Segment A: term-1 entries 1..=10, the last one filling it.
        append(&log, (1..10).map(|i| entry(1, i, 8)).collect()).await;
        append_filling(&log, 1, 10).await;
        // Segment B: the truncation of 5.. only, as the next entry is too large for the
        // rest of it; segment C: that entry.
        log.truncate(log_id(1, 5)).await.unwrap();
        let b = log.lock().wal.seq();
        let room = {
            let inner = log.lock();
            (0..SEGMENT).rev().find(|&x| inner.wal.fits(x)).unwrap()
        };
        let base = bincode::serialize(&entry(2, 5, 0)).unwrap().len() as u64 + wal::HEADER;
        append(&log, vec![entry(2, 5, (room + 1 - base) as usize)]).await;
        assert_ne!(log.lock().wal.seq(), b);
        let mut want: Vec<_> = (1..5).map(|i| log_id(1, i)).collect();
        want.push(log_id(2, 5));
        assert_eq!(read_back(&mut log).await, want);
        for restart in 0..3 {
            drop(log);
            log = open(dir.path());
            assert_eq!(read_back(&mut log).await, want, "after restart {restart}");
            // Restarts without writes do not leave segments behind even so.
            let segments = log.lock().wal.segments();
            assert!(segments.len() <= 4, "after restart {restart}: {segments:?}");
        }
    }
}
