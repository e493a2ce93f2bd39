//! The key-value state machine and its snapshots.
//!
//! Data lives in sled tree `sm`: `k` + key → [`Record`], `h` + first revision → the change
//! history of one apply call (a [`HistoryChunk`], kept for watches), and `m`-prefixed
//! metadata (last applied log id, membership, store revision), all written in the same atomic
//! batch as the data it describes. History is one value per apply call rather than one per
//! revision: under load an apply call carries a whole group commit, and each sled insert
//! costs far more than its bytes. Apply does not wait for a barrier: the log is durable, sled recovers a
//! prefix of its writes, and openraft re-applies from the last applied id up to the saved
//! commit index at start-up.
//!
//! The current snapshot is a file, `snapshot/current`, written durably (temp, fsync,
//! rename, fsync dir) because a leader must be able to send it after a restart. Installing a
//! snapshot replaces the whole state: an `m/installing` marker, naming the snapshot and made
//! durable before the file is replaced, makes a crash in the middle redo the install from the
//! snapshot file at the next start instead of leaving a mix.
//!
//! The state a snapshot file describes is made durable in sled before the file is written,
//! so the file is never ahead of the database. A file that is ahead at start-up therefore
//! means the database lost data it had made durable (a truncated or damaged `db` file, from
//! which sled silently recovers a prefix): the node refuses to start rather than rejoin
//! with a forgotten log and vote.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::durable::Flusher;
use crate::types::{
    ClusterConfig, Command, Compare, CompareOp, CompareTarget, Condition, Entry, KeyValue, LogId,
    NodeId, Outcome, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    Txn, TxnOp, TxnOpResult, TypeConfig,
};

const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const REVISION: &[u8] = b"m/revision";
const INSTALLING: &[u8] = b"m/installing";
const CONFIG: &[u8] = b"m/config";
const COMPACTED: &[u8] = b"m/compacted";
const DATA_PREFIX: u8 = b'k';
const HISTORY_PREFIX: u8 = b'h';
/// Extra revisions of history kept beyond the retention before compacting, so that
/// compaction runs in batches rather than on every write.
const COMPACTION_SLACK: u64 = 1024;

/// The key of the history chunk whose first revision is `revision`.
fn chunk_key(revision: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = HISTORY_PREFIX;
    k[1..].copy_from_slice(&revision.to_be_bytes());
    k
}

fn chunk_start(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[1..9].try_into().expect("history chunk key"))
}

/// Where a history chunk is cut, in bytes of keys and values (a chunk ends with the
/// revision that reaches it, so one large transaction still stays in one chunk).
const HISTORY_CHUNK_BYTES: usize = 1 << 20;

/// The changes of consecutive revisions made by one apply call, in revision order.
type HistoryChunk = Vec<(u64, Vec<Event>)>;

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

fn err_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_state_machine(AnyError::new(&e)).into()
}
fn err_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_state_machine(AnyError::new(&e)).into()
}
fn err_snapshot(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_snapshot(None, AnyError::new(&e)).into()
}

fn read_meta<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match tree.get(key).map_err(err_read)? {
        Some(b) => Ok(Some(bincode::deserialize(&b).map_err(err_read)?)),
        None => Ok(None),
    }
}

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
    pub value: Vec<u8>,
}

impl Record {
    const HEADER: usize = 24;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER + self.value.len());
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.mod_revision.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::HEADER {
            return None;
        }
        let u = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            create_revision: u(0),
            mod_revision: u(8),
            version: u(16),
            value: bytes[Self::HEADER..].to_vec(),
        })
    }
}

/// One change to one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    /// The new value (empty for deletes).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
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

/// Why history cannot be read from a revision.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("revision {requested} is compacted; the oldest revision kept is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Corrupt(String),
}

/// Read access to the applied state, shared with the HTTP handlers.
#[derive(Clone)]
pub struct KvReader {
    tree: sled::Tree,
    revision: Arc<AtomicU64>,
    /// The oldest revision whose events are kept.
    compacted: Arc<AtomicU64>,
    config: Arc<std::sync::RwLock<ClusterConfig>>,
    events: tokio::sync::broadcast::Sender<Arc<RevisionEvents>>,
}

/// One item of a range listing.
#[derive(Debug, Clone)]
pub struct ListedItem {
    pub key: String,
    pub record: Record,
}

impl KvReader {
    /// Cluster-wide settings as of the applied state.
    pub fn config(&self) -> ClusterConfig {
        *self.config.read().expect("config lock")
    }

    /// The oldest revision whose events are still kept.
    pub fn oldest_revision(&self) -> u64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Live changes, one item per revision, as they are applied.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<RevisionEvents>> {
        self.events.subscribe()
    }

    /// Kept history from revision `from` on, at most `max` revisions.
    pub fn history(&self, from: u64, max: usize) -> Result<Vec<RevisionEvents>, HistoryError> {
        let oldest = self.oldest_revision();
        if from < oldest {
            return Err(HistoryError::Compacted {
                requested: from,
                oldest,
            });
        }
        // The chunk holding `from` starts at or before it.
        let first = match self.tree.range(chunk_key(0)..=chunk_key(from)).next_back() {
            Some(kv) => chunk_start(&kv?.0),
            None => from,
        };
        let mut out: Vec<RevisionEvents> = Vec::new();
        'chunks: for kv in self.tree.range(chunk_key(first)..=chunk_key(u64::MAX)) {
            let (_, v) = kv?;
            let chunk: HistoryChunk = bincode::deserialize(&v).map_err(|e| {
                HistoryError::Corrupt(format!("a history chunk cannot be decoded: {e}"))
            })?;
            for (revision, events) in chunk {
                if revision < from {
                    continue;
                }
                if out.len() == max {
                    break 'chunks;
                }
                out.push(RevisionEvents { revision, events });
            }
        }
        // Compaction may have raced with the read.
        let oldest = self.oldest_revision();
        if from < oldest {
            return Err(HistoryError::Compacted {
                requested: from,
                oldest,
            });
        }
        Ok(out)
    }

    /// The store revision: the revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>, sled::Error> {
        Ok(self
            .tree
            .get(data_key(key.as_bytes()))?
            .and_then(|v| Record::decode(&v)))
    }

    /// Keys with `prefix`, strictly after `start_after`, at most `limit`; and whether more exist.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ListedItem>, bool), sled::Error> {
        let start = match start_after {
            Some(s) if s >= prefix => {
                let mut k = data_key(s.as_bytes());
                k.push(0); // the smallest key strictly greater than `s`
                k
            }
            _ => data_key(prefix.as_bytes()),
        };
        let full_prefix = data_key(prefix.as_bytes());
        let mut items = Vec::new();
        for kv in self.tree.range(start..) {
            let (k, v) = kv?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            if items.len() == limit {
                return Ok((items, true));
            }
            let (Ok(key), Some(record)) = (String::from_utf8(k[1..].to_vec()), Record::decode(&v))
            else {
                continue;
            };
            items.push(ListedItem { key, record });
        }
        Ok((items, false))
    }
}

/// The serialized form of a snapshot: the whole state machine.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    config: ClusterConfig,
    /// (key without prefix, encoded record)
    data: Vec<(ByteBuf, ByteBuf)>,
}

/// A snapshot file: metadata and payload, with a checksum.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    payload: ByteBuf,
    crc: u32,
}

/// The state machine store.
pub struct StateMachineStore {
    tree: sled::Tree,
    snapshot_dir: PathBuf,
    flusher: Flusher,
    reader: KvReader,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Revisions of change history kept for watches.
    history: u64,
}

impl StateMachineStore {
    pub async fn open(
        tree: sled::Tree,
        snapshot_dir: &Path,
        flusher: Flusher,
        history: u64,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(err_snapshot)?;
        let last_applied: Option<LogId> = read_meta::<Option<LogId>>(&tree, APPLIED)?.flatten();
        let membership: StoredMembership = read_meta(&tree, MEMBERSHIP)?.unwrap_or_default();
        let revision: u64 = read_meta(&tree, REVISION)?.unwrap_or(0);
        let config: ClusterConfig = read_meta(&tree, CONFIG)?.unwrap_or_default();
        let compacted: u64 = read_meta(&tree, COMPACTED)?.unwrap_or(1);
        let installing = tree.get(INSTALLING).map_err(err_read)?;
        let mut sm = Self {
            reader: KvReader {
                tree: tree.clone(),
                revision: Arc::new(AtomicU64::new(revision)),
                compacted: Arc::new(AtomicU64::new(compacted)),
                config: Arc::new(std::sync::RwLock::new(config)),
                events: tokio::sync::broadcast::channel(4096).0,
            },
            tree,
            snapshot_dir: snapshot_dir.to_path_buf(),
            flusher,
            last_applied,
            membership,
            history: history.max(1),
        };
        if let Some(marker) = installing {
            let file = sm.read_snapshot_file()?;
            match file {
                // The marker names the snapshot being installed (a legacy marker is `[1]`,
                // written only once the file was in place).
                Some(file) if *marker == [1u8] || *marker == *file.meta.snapshot_id.as_bytes() => {
                    tracing::warn!(
                        snapshot = %file.meta.snapshot_id,
                        "a snapshot install was interrupted; redoing it from the snapshot file"
                    );
                    sm.replace_state(&file.payload).await?;
                }
                // The crash came before the new file was in place, so before any data
                // was touched: the install never happened.
                _ => {
                    tracing::warn!(
                        "a snapshot install was interrupted before its file was written; the state is unchanged"
                    );
                    sm.tree.remove(INSTALLING).map_err(err_write)?;
                    sm.flusher.sync().await.map_err(err_write)?;
                }
            }
        }
        sm.check_snapshot_not_ahead()?;
        Ok(sm)
    }

    /// Refuse a database that is behind its own snapshot file: it lost durable writes.
    fn check_snapshot_not_ahead(&self) -> Result<(), StorageError> {
        let Some(meta) = self.read_snapshot_meta()? else {
            return Ok(());
        };
        let snap = meta.last_log_id.map(|l| l.index);
        let applied = self.last_applied.map(|l| l.index);
        if snap > applied {
            return Err(err_read(std::io::Error::other(format!(
                "the snapshot file {} covers the log up to index {}, but the database has applied only up to {}: \
                 the database lost writes it had made durable (its db file was truncated or damaged, and sled \
                 silently recovered an older prefix). Starting would forget votes and log entries this node \
                 acknowledged, which breaks Raft's safety. Restore the data directory from backup, or wipe it \
                 entirely to rejoin as a new member",
                self.snapshot_path().display(),
                snap.unwrap_or(0),
                applied.map_or("nothing".to_string(), |a| a.to_string()),
            ))));
        }
        Ok(())
    }

    /// Just the metadata of the snapshot file, read without loading the payload.
    fn read_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        use bincode::Options;
        let path = self.snapshot_path();
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err_snapshot(e)),
        };
        // The encoding of `bincode::serialize`; the limit keeps a damaged length prefix
        // from allocating without bound.
        let meta: SnapshotMeta = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(16 << 20)
            .deserialize_from(std::io::BufReader::new(f))
            .map_err(|e| corrupt_snapshot(&path, &e.to_string()))?;
        Ok(Some(meta))
    }

    pub fn reader(&self) -> KvReader {
        self.reader.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join("current")
    }

    fn read_snapshot_file(&self) -> Result<Option<SnapshotFile>, StorageError> {
        let bytes = match std::fs::read(self.snapshot_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err_snapshot(e)),
        };
        let path = self.snapshot_path();
        let file: SnapshotFile = bincode::deserialize(&bytes)
            .map_err(|e| corrupt_snapshot(&path, &format!("cannot be decoded: {e}")))?;
        if crc32fast::hash(&file.payload) != file.crc {
            return Err(corrupt_snapshot(&path, "fails its checksum"));
        }
        Ok(Some(file))
    }

    fn write_snapshot_file(
        dir: &Path,
        meta: &SnapshotMeta,
        payload: &[u8],
    ) -> Result<(), StorageError> {
        let file = SnapshotFile {
            meta: meta.clone(),
            payload: ByteBuf::from(payload.to_vec()),
            crc: crc32fast::hash(payload),
        };
        let bytes = bincode::serialize(&file).map_err(err_snapshot)?;
        crate::identity::write_durably(&dir.join("current"), &bytes).map_err(err_snapshot)
    }

    /// Replace the whole state with a snapshot payload, crash-safely.
    async fn replace_state(&mut self, payload: &[u8]) -> Result<(), StorageError> {
        // The caller has made the `INSTALLING` marker durable.
        let snap: SnapshotPayload = bincode::deserialize(payload).map_err(err_read)?;

        let mut batch = sled::Batch::default();
        for prefix in [DATA_PREFIX, HISTORY_PREFIX] {
            for kv in self.tree.scan_prefix([prefix]) {
                let (k, _) = kv.map_err(err_read)?;
                batch.remove(k);
            }
        }
        self.tree.apply_batch(batch).map_err(err_write)?;
        let mut batch = sled::Batch::default();
        for (k, v) in &snap.data {
            batch.insert(data_key(k), v.as_ref());
        }
        batch.insert(
            APPLIED,
            bincode::serialize(&snap.last_applied).map_err(err_write)?,
        );
        batch.insert(
            MEMBERSHIP,
            bincode::serialize(&snap.membership).map_err(err_write)?,
        );
        batch.insert(
            REVISION,
            bincode::serialize(&snap.revision).map_err(err_write)?,
        );
        // No history before the snapshot survives the install; without this, a restart
        // would read the old mark and serve a watch from the gap as if nothing happened.
        batch.insert(
            COMPACTED,
            bincode::serialize(&(snap.revision + 1)).map_err(err_write)?,
        );
        batch.remove(INSTALLING);
        self.tree.apply_batch(batch).map_err(err_write)?;
        self.flusher.sync().await.map_err(err_write)?;

        self.last_applied = snap.last_applied;
        self.membership = snap.membership;
        self.reader.revision.store(snap.revision, Ordering::Release);
        self.reader
            .compacted
            .store(snap.revision + 1, Ordering::Release);
        *self.reader.config.write().expect("config lock") = snap.config;
        Ok(())
    }

    fn current(&self, overlay: &Overlay, key: &str) -> Result<Option<Record>, StorageError> {
        match overlay.get(key) {
            Some(r) => Ok(r.clone()),
            None => self.reader.get(key).map_err(err_read),
        }
    }

    fn check(cond: Condition, cur: &Option<Record>) -> Result<(), Outcome> {
        let ok = match cond {
            Condition::None => true,
            Condition::Version(v) => cur.as_ref().is_some_and(|r| r.version == v),
            Condition::Absent => cur.is_none(),
        };
        if ok {
            Ok(())
        } else {
            Err(Outcome::PreconditionFailed {
                current_version: cur.as_ref().map(|r| r.version),
            })
        }
    }

    fn compare_holds(c: &Compare, cur: &Option<Record>) -> bool {
        use std::cmp::Ordering as O;
        let ord = match (&c.target, cur) {
            (CompareTarget::Exists(want), _) => {
                let equal = cur.is_some() == *want;
                return match c.op {
                    CompareOp::Equal => equal,
                    CompareOp::NotEqual => !equal,
                    CompareOp::Less | CompareOp::Greater => false,
                };
            }
            (CompareTarget::Version(w), r) => r.as_ref().map_or(0, |r| r.version).cmp(w),
            (CompareTarget::CreateRevision(w), r) => {
                r.as_ref().map_or(0, |r| r.create_revision).cmp(w)
            }
            (CompareTarget::ModRevision(w), r) => r.as_ref().map_or(0, |r| r.mod_revision).cmp(w),
            (CompareTarget::Value(_), None) => return c.op == CompareOp::NotEqual,
            (CompareTarget::Value(w), Some(r)) => r.value.as_slice().cmp(w.as_slice()),
        };
        match c.op {
            CompareOp::Equal => ord == O::Equal,
            CompareOp::NotEqual => ord != O::Equal,
            CompareOp::Less => ord == O::Less,
            CompareOp::Greater => ord == O::Greater,
        }
    }

    /// Apply one put at `revision`, recording its event; returns the new version.
    fn put(
        overlay: &mut Overlay,
        events: &mut Vec<Event>,
        cur: Option<Record>,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> u64 {
        let rec = match cur {
            Some(c) => Record {
                create_revision: c.create_revision,
                mod_revision: revision,
                version: c.version + 1,
                value,
            },
            None => Record {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                value,
            },
        };
        let version = rec.version;
        events.push(Event {
            kind: EventKind::Put,
            key: key.clone(),
            value: rec.value.clone(),
            version,
            create_revision: rec.create_revision,
        });
        overlay.insert(key, Some(rec));
        version
    }

    fn delete(overlay: &mut Overlay, events: &mut Vec<Event>, cur: &Record, key: String) {
        events.push(Event {
            kind: EventKind::Delete,
            key: key.clone(),
            value: Vec::new(),
            version: 0,
            create_revision: cur.create_revision,
        });
        overlay.insert(key, None);
    }

    fn apply_txn(
        &self,
        overlay: &mut Overlay,
        changes: &mut Vec<RevisionEvents>,
        revision: &mut u64,
        txn: Txn,
    ) -> Result<Outcome, StorageError> {
        let mut succeeded = true;
        for c in &txn.compare {
            let cur = self.current(overlay, &c.key)?;
            if !Self::compare_holds(c, &cur) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { txn.success } else { txn.failure };
        // All writes of a transaction share one revision.
        let rev = *revision + 1;
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put { key, value } => {
                    let cur = self.current(overlay, &key)?;
                    TxnOpResult::Put {
                        version: Self::put(overlay, &mut events, cur, key, value, rev),
                    }
                }
                TxnOp::Delete { key } => match self.current(overlay, &key)? {
                    Some(cur) => {
                        Self::delete(overlay, &mut events, &cur, key);
                        TxnOpResult::Delete { deleted: true }
                    }
                    None => TxnOpResult::Delete { deleted: false },
                },
                TxnOp::Get { key } => {
                    TxnOpResult::Get(self.current(overlay, &key)?.map(|r| KeyValue {
                        key,
                        value: r.value,
                        version: r.version,
                        create_revision: r.create_revision,
                        mod_revision: r.mod_revision,
                    }))
                }
            });
        }
        if !events.is_empty() {
            *revision = rev;
            changes.push(RevisionEvents {
                revision: rev,
                events,
            });
        }
        Ok(Outcome::Txn {
            succeeded,
            revision: *revision,
            results,
        })
    }

    fn apply_command(
        &self,
        overlay: &mut Overlay,
        changes: &mut Vec<RevisionEvents>,
        revision: &mut u64,
        cmd: Command,
    ) -> Result<Outcome, StorageError> {
        Ok(match cmd {
            Command::Put { key, value, cond } => {
                let cur = self.current(overlay, &key)?;
                match Self::check(cond, &cur) {
                    Err(o) => o,
                    Ok(()) => {
                        *revision += 1;
                        let mut events = Vec::with_capacity(1);
                        let version = Self::put(overlay, &mut events, cur, key, value, *revision);
                        changes.push(RevisionEvents {
                            revision: *revision,
                            events,
                        });
                        Outcome::Put {
                            revision: *revision,
                            version,
                        }
                    }
                }
            }
            Command::Delete { key, cond } => {
                let cur = self.current(overlay, &key)?;
                match (&cur, Self::check(cond, &cur)) {
                    (None, _) => Outcome::NotFound,
                    (Some(_), Err(o)) => o,
                    (Some(c), Ok(())) => {
                        *revision += 1;
                        let mut events = Vec::with_capacity(1);
                        Self::delete(overlay, &mut events, c, key);
                        changes.push(RevisionEvents {
                            revision: *revision,
                            events,
                        });
                        Outcome::Deleted {
                            revision: *revision,
                        }
                    }
                }
            }
            Command::Txn(txn) => self.apply_txn(overlay, changes, revision, txn)?,
        })
    }

    /// Drop history older than the retention, in the same batch as the new writes. Whole
    /// chunks go: the chunk holding `keep_from` stays, so a little more than the retention
    /// may be kept, and the oldest revision kept is exactly that chunk's first.
    fn compact(&self, batch: &mut sled::Batch, revision: u64) -> Result<Option<u64>, StorageError> {
        let oldest = self.reader.oldest_revision();
        if revision < oldest + self.history + COMPACTION_SLACK {
            return Ok(None);
        }
        let keep_from = revision + 1 - self.history;
        let mut older: Option<sled::IVec> = None;
        for kv in self.tree.range(chunk_key(0)..=chunk_key(keep_from)) {
            let (k, _) = kv.map_err(err_read)?;
            if let Some(prev) = older.replace(k) {
                batch.remove(prev);
            }
        }
        let kept = older.map_or(keep_from, |k| chunk_start(&k).max(oldest));
        batch.insert(COMPACTED, bincode::serialize(&kept).map_err(err_write)?);
        Ok(Some(kept))
    }
}

fn corrupt_snapshot(path: &Path, what: &str) -> StorageError {
    err_read(std::io::Error::other(format!(
        "snapshot file {} is corrupt ({what}); refusing to use it. Restore the data directory \
         from backup, or wipe it entirely to rejoin as a new member",
        path.display()
    )))
}

type Overlay = std::collections::HashMap<String, Option<Record>>;

/// Takes a consistent copy of the state when created (in order with `apply`), and
/// serializes it off the apply path.
pub struct SnapshotBuilder {
    payload: Option<SnapshotPayload>,
    snapshot_dir: PathBuf,
    flusher: Flusher,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let payload = self
            .payload
            .take()
            .ok_or_else(|| err_snapshot(std::io::Error::other("snapshot builder used twice")))?;
        let last_applied = payload.last_applied;
        let membership = payload.membership.clone();
        let dir = self.snapshot_dir.clone();
        // The file must never be ahead of the database's durable state (see the module doc).
        self.flusher.sync().await.map_err(err_write)?;
        let (meta, bytes) = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let bytes = bincode::serialize(&payload).map_err(err_snapshot)?;
            let snapshot_id = match last_applied {
                Some(l) => format!(
                    "{}-{}-{}",
                    l.leader_id.term,
                    l.index,
                    crc32fast::hash(&bytes)
                ),
                None => format!("0-0-{}", crc32fast::hash(&bytes)),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            StateMachineStore::write_snapshot_file(&dir, &meta, &bytes)?;
            Ok((meta, bytes))
        })
        .await
        .map_err(err_snapshot)??;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut overlay = Overlay::new();
        let mut changes: Vec<RevisionEvents> = Vec::new();
        let mut revision = self.reader.revision();
        let mut responses = Vec::new();
        let mut membership_changed = false;
        let mut new_config = None;
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::default()),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    responses.push(Response::default());
                }
                EntryPayload::Normal(Request::SetConfig(c)) => {
                    new_config = Some(c);
                    responses.push(Response::default());
                }
                EntryPayload::Normal(Request::Batch(batch)) => {
                    let mut outcomes = Vec::with_capacity(batch.cmds.len());
                    for cmd in batch.cmds {
                        outcomes.push(self.apply_command(
                            &mut overlay,
                            &mut changes,
                            &mut revision,
                            cmd,
                        )?);
                    }
                    responses.push(Response(outcomes));
                }
            }
        }
        let mut batch = sled::Batch::default();
        for (k, v) in overlay {
            match v {
                Some(rec) => batch.insert(data_key(k.as_bytes()), rec.encode()),
                None => batch.remove(data_key(k.as_bytes())),
            }
        }
        // One chunk per apply call, split where it passes HISTORY_CHUNK_BYTES of values so
        // that one huge apply does not make one huge sled value.
        let mut chunk: Vec<(u64, &Vec<Event>)> = Vec::new();
        let mut chunk_bytes = 0;
        for (i, c) in changes.iter().enumerate() {
            chunk.push((c.revision, &c.events));
            chunk_bytes += c
                .events
                .iter()
                .map(|e| e.key.len() + e.value.len())
                .sum::<usize>();
            if chunk_bytes >= HISTORY_CHUNK_BYTES || i + 1 == changes.len() {
                batch.insert(
                    &chunk_key(chunk[0].0),
                    bincode::serialize(&chunk).map_err(err_write)?,
                );
                chunk.clear();
                chunk_bytes = 0;
            }
        }
        let compacted = self.compact(&mut batch, revision)?;
        batch.insert(
            APPLIED,
            bincode::serialize(&self.last_applied).map_err(err_write)?,
        );
        batch.insert(REVISION, bincode::serialize(&revision).map_err(err_write)?);
        if membership_changed {
            batch.insert(
                MEMBERSHIP,
                bincode::serialize(&self.membership).map_err(err_write)?,
            );
        }
        if let Some(c) = &new_config {
            batch.insert(CONFIG, bincode::serialize(c).map_err(err_write)?);
        }
        self.tree.apply_batch(batch).map_err(err_write)?;
        self.reader.revision.store(revision, Ordering::Release);
        if let Some(c) = compacted {
            self.reader.compacted.store(c, Ordering::Release);
        }
        if let Some(c) = new_config {
            tracing::info!(
                mode = c.replication_mode.as_str(),
                reads = c.read_consistency.as_str(),
                "cluster config applied"
            );
            *self.reader.config.write().expect("config lock") = c;
        }
        for change in changes {
            // No receivers is fine; slow receivers lag and catch up from history.
            let _ = self.reader.events.send(Arc::new(change));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // This runs in order with `apply`, so the copy below is a consistent view.
        let mut data = Vec::new();
        let mut failed = false;
        for kv in self.tree.scan_prefix([DATA_PREFIX]) {
            match kv {
                Ok((k, v)) => {
                    data.push((ByteBuf::from(k[1..].to_vec()), ByteBuf::from(v.to_vec())))
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading state for a snapshot failed");
                    failed = true;
                    break;
                }
            }
        }
        SnapshotBuilder {
            payload: (!failed).then(|| SnapshotPayload {
                last_applied: self.last_applied,
                membership: self.membership.clone(),
                revision: self.reader.revision(),
                config: self.reader.config(),
                data,
            }),
            snapshot_dir: self.snapshot_dir.clone(),
            flusher: self.flusher.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let payload = snapshot.into_inner();
        // Validate before touching anything.
        bincode::deserialize::<SnapshotPayload>(&payload).map_err(err_read)?;
        self.tree
            .insert(INSTALLING, meta.snapshot_id.as_bytes())
            .map_err(err_write)?;
        self.flusher.sync().await.map_err(err_write)?;
        let dir = self.snapshot_dir.clone();
        let meta2 = meta.clone();
        let payload2 = payload.clone();
        tokio::task::spawn_blocking(move || Self::write_snapshot_file(&dir, &meta2, &payload2))
            .await
            .map_err(err_snapshot)??;
        self.replace_state(&payload).await?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.read_snapshot_file()?.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.payload.into_vec())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = Record {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            value: b"hello".to_vec(),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"short"), None);
    }
}
