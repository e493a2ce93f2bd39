//! What the write-ahead log holds, as the log store keeps it in memory (where each entry
//! is, the vote, the commit index and purge point, and which segments can go), and reading
//! it back at start-up. The meaning of the records on disk changes here, and only here;
//! the openraft side of the log is [`super::LogStore`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::{AnyError, StorageIOError};

use crate::store::durable::Dirty;
use crate::store::wal::{self, Kind, Location, Wal};
use crate::types::{LogId, NodeId, StorageError, Vote};

pub(super) fn err_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_logs(AnyError::new(&e)).into()
}

pub(super) fn err_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_logs(AnyError::new(&e)).into()
}

fn damaged(dir: &Path, what: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "the write-ahead log in {} is damaged: {what}. Starting would forget log entries or votes this node acknowledged, which breaks Raft's safety. Restore the data directory from backup, or wipe it entirely to rejoin as a new member",
            dir.display()
        ),
    )
}

/// The log as read back, and as kept up to date.
pub(super) struct Inner {
    pub(super) wal: Wal,
    /// Where each entry is, by index.
    pub(super) entries: BTreeMap<u64, (LogId, Location)>,
    pub(super) vote: Option<Vote>,
    pub(super) committed: Option<LogId>,
    pub(super) purged: Option<LogId>,
    /// The highest entry index written to each segment.
    pub(super) segment_last: BTreeMap<u64, u64>,
    /// Segments holding a truncation.
    pub(super) truncations: BTreeSet<u64>,
}

impl Inner {
    /// Write encoded records, starting a new segment first if they do not fit. Returns
    /// the file and offset they were written at.
    pub(super) fn write(&mut self, buf: &[u8]) -> std::io::Result<(Arc<std::fs::File>, u64, u64)> {
        if !self.wal.fits(buf.len() as u64) {
            self.wal.rotate()?;
            self.write_state()?;
        }
        let (file, at) = self.wal.write(buf)?;
        Ok((file, at, self.wal.seq()))
    }

    /// Write the vote, commit index and purge point, which start every segment.
    pub(super) fn write_state(&mut self) -> std::io::Result<()> {
        let mut header = Vec::new();
        if let Some(v) = &self.vote {
            wal::encode(&mut header, Kind::Vote, &encode(v));
        }
        if let Some(c) = &self.committed {
            wal::encode(&mut header, Kind::Committed, &encode(c));
        }
        if let Some(p) = &self.purged {
            wal::encode(&mut header, Kind::Purge, &encode(p));
        }
        if !header.is_empty() {
            self.wal.write(&header)?;
        }
        Ok(())
    }

    /// Write one record; returns the segment it is in.
    pub(super) fn record(&mut self, kind: Kind, payload: &[u8]) -> Result<u64, StorageError> {
        let mut buf = Vec::with_capacity(payload.len() + wal::HEADER as usize);
        wal::encode(&mut buf, kind, payload);
        let (_, _, seq) = self.write(&buf).map_err(err_write)?;
        Ok(seq)
    }

    /// Segments, other than the current one, that can be removed without changing what
    /// the log reads back as:
    ///
    /// - the leading run, oldest first, of segments holding no entry after the purge
    ///   point. Records apply in order, so a truncation in one of them only cuts entries
    ///   of it or of older segments, all purged too;
    /// - after the first segment kept, only segments holding neither entries nor a
    ///   truncation: their vote, commit index and purge point are in the state that every
    ///   later segment starts with (a restart without writes leaves such a segment).
    ///
    /// A segment after the first one kept whose entries are all purged must stay: it may
    /// hold the truncation of entries of an older, kept segment, which without it would
    /// come back at the next start.
    pub(super) fn removable(&self) -> Vec<u64> {
        let purged = self.purged.map(|p| p.index);
        let mut leading = true;
        let mut removable = Vec::new();
        for seq in self.wal.segments() {
            if seq == self.wal.seq() {
                break;
            }
            let last = self.segment_last.get(&seq);
            leading &= last.is_none_or(|&last| Some(last) <= purged);
            let state_only = last.is_none() && !self.truncations.contains(&seq);
            if leading || state_only {
                removable.push(seq);
            }
        }
        removable
    }

    /// Forget segment `seq`, removed.
    pub(super) fn remove(&mut self, seq: u64) -> std::io::Result<()> {
        self.wal.remove(seq)?;
        self.segment_last.remove(&seq);
        self.truncations.remove(&seq);
        Ok(())
    }
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("log records encode")
}

/// The log read back at start-up, before the flusher exists.
pub struct Opened {
    pub(super) inner: Inner,
}

impl Opened {
    /// Read the log in `dir`. Fails with a message saying what to do if it is damaged.
    pub fn read(dir: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        let mut entries = BTreeMap::new();
        let mut vote = None;
        let mut committed: Option<LogId> = None;
        let mut purged: Option<LogId> = None;
        let mut segment_last = BTreeMap::new();
        let mut truncations = BTreeSet::new();
        let undecodable = |what: &str, e: bincode::Error| {
            damaged(
                dir,
                format!("a {what} record passes its checksum but cannot be decoded ({e})"),
            )
        };
        let wal = Wal::open(dir, segment_bytes, |kind, payload, at| {
            match kind {
                Kind::Entry => {
                    // An entry starts with its log id; the rest is read when asked for.
                    let log_id: LogId =
                        bincode::deserialize(payload).map_err(|e| undecodable("log entry", e))?;
                    let last = segment_last.entry(at.seq).or_insert(log_id.index);
                    *last = (*last).max(log_id.index);
                    entries.insert(log_id.index, (log_id, at));
                }
                Kind::Vote => {
                    vote = Some(bincode::deserialize(payload).map_err(|e| undecodable("vote", e))?)
                }
                Kind::Committed => {
                    let c: LogId = bincode::deserialize(payload)
                        .map_err(|e| undecodable("commit index", e))?;
                    committed = committed.max(Some(c));
                }
                Kind::Truncate => {
                    let from: u64 =
                        bincode::deserialize(payload).map_err(|e| undecodable("truncation", e))?;
                    entries.split_off(&from);
                    truncations.insert(at.seq);
                }
                Kind::Purge => {
                    let p: LogId =
                        bincode::deserialize(payload).map_err(|e| undecodable("purge", e))?;
                    purged = purged.max(Some(p));
                    entries = entries.split_off(&(p.index + 1));
                }
                Kind::Seal => {}
            }
            Ok(())
        })?;
        let mut inner = Inner {
            wal,
            entries,
            vote,
            committed,
            purged,
            segment_last,
            truncations,
        };
        // What is left must be one run of indexes, right after the purge point.
        let mut expect = inner.purged.map(|p| p.index + 1);
        for &index in inner.entries.keys() {
            if expect.is_some_and(|e| e != index) {
                return Err(damaged(
                    dir,
                    format!(
                        "entry {} is missing (the next one kept is {index})",
                        expect.unwrap_or_default()
                    ),
                ));
            }
            expect = Some(index + 1);
        }
        // The fresh segment starts with the state, like every segment after a rotation.
        inner.write_state()?;
        // Segments left with no entries (all purged, or none: a node restarted without
        // writes) go now, once that state is durable: else every restart would leave one.
        let removable = inner.removable();
        if !removable.is_empty() {
            inner.wal.sync()?;
            for seq in removable {
                inner.remove(seq)?;
            }
        }
        Ok(Self { inner })
    }

    /// The commit index the log holds.
    pub fn committed(&self) -> Option<LogId> {
        self.inner.committed
    }

    /// What the flusher must sync.
    pub fn dirty(&self) -> Arc<Mutex<Dirty>> {
        self.inner.wal.dirty()
    }
}
