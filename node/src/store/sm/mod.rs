//! The key-value state machine and its snapshots.
//!
//! The state lives in memory: a sorted map of records and a bounded history of changes for
//! watches, behind one lock that `apply` takes once per call (one group commit), so readers
//! see whole apply calls. Applying writes nothing to disk: the Raft log is the durable
//! record, and the snapshot file is the state machine's checkpoint.
//!
//! The current snapshot is a file, `snapshot/current`, written durably (temp, fsync,
//! rename, fsync dir) before openraft may purge the log it covers. At start-up the state is
//! loaded from that file, and openraft re-applies the log from the snapshot up to the saved
//! commit index (`read_committed`), which brings back everything applied before the stop.
//!
//! Before a snapshot file is written, the log (with the commit index) is made durable and
//! the commit index is raised to the snapshot's, so the log always covers its snapshot. A
//! snapshot ahead of the log's commit index at start-up therefore means the log lost data
//! it had made durable, and the node refuses to start (see [`super::open`]).
//!
//! Watch history is kept from the last snapshot on: a node that restarted, or installed a
//! snapshot from its leader, keeps the revisions it applied since, and an older
//! `start_revision` gets a clear 410 naming the oldest one kept.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::log::LogStore;
use crate::types::{
    ClusterConfig, Command, Compare, CompareOp, CompareTarget, Condition, Entry, KeyValue, LogId,
    NodeId, Outcome, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    Txn, TxnOp, TxnOpResult, TypeConfig,
};

fn err_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_state_machine(AnyError::new(&e)).into()
}
fn err_snapshot(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_snapshot(None, AnyError::new(&e)).into()
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

    /// The encoding in snapshot payloads.
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

impl RevisionEvents {
    /// Bytes of keys and values, what the history's byte bound counts.
    fn bytes(&self) -> u64 {
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

/// The applied state.
#[derive(Default)]
struct State {
    data: Data,
    /// The revision of the last applied write.
    revision: u64,
    /// The newest revisions, contiguous and ending at `revision`.
    history: VecDeque<Arc<RevisionEvents>>,
    history_bytes: u64,
}

/// What one key costs beyond its key and value bytes: the map's node share, the key's and
/// value's headers and the record's counters (measured: about 90 bytes on x86-64), rounded
/// up. The data quota counts it, so that many small keys cannot hold far more memory than
/// the quota says.
pub const KEY_OVERHEAD_BYTES: u64 = 128;

fn record_bytes(key: &str, r: &Record) -> u64 {
    (key.len() + r.value.len()) as u64 + KEY_OVERHEAD_BYTES
}

/// The records, and how many bytes of keys and values they hold (for the data quota).
#[derive(Default, Clone)]
struct Data {
    map: BTreeMap<String, Record>,
    bytes: u64,
}

impl Data {
    fn get(&self, key: &str) -> Option<&Record> {
        self.map.get(key)
    }

    fn insert(&mut self, key: String, record: Record) {
        let added = record_bytes(&key, &record);
        let replaced = (key.len() as u64) + KEY_OVERHEAD_BYTES;
        self.bytes += added;
        if let Some(old) = self.map.insert(key, record) {
            self.bytes -= replaced + old.value.len() as u64;
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= record_bytes(key, &old);
        }
    }
}

impl State {
    /// The oldest revision whose events are kept (`revision + 1` when none are).
    fn oldest(&self) -> u64 {
        self.revision + 1 - self.history.len() as u64
    }

    fn record(&mut self, change: Arc<RevisionEvents>, keep: Retention) {
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
    state: Arc<RwLock<State>>,
    config: Arc<RwLock<ClusterConfig>>,
    events: tokio::sync::broadcast::Sender<Arc<RevisionEvents>>,
}

/// One item of a range listing.
#[derive(Debug, Clone)]
pub struct ListedItem {
    pub key: String,
    pub record: Record,
}

impl KvReader {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
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

    /// Bytes of the keys and values held, plus [`KEY_OVERHEAD_BYTES`] per key.
    pub fn data_bytes(&self) -> u64 {
        self.state().data.bytes
    }

    /// Keys with `prefix`, strictly after `start_after`, at most `limit`; and whether more exist.
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

/// The serialized form of a snapshot: the whole state machine. (The same format as
/// before the state moved to memory, so snapshots pass between versions.)
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    config: ClusterConfig,
    /// (key, encoded record)
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
    snapshot_dir: PathBuf,
    /// The log, made durable (and its commit index raised) before a snapshot file is written.
    log: LogStore,
    reader: KvReader,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    retention: Retention,
}

impl StateMachineStore {
    /// Load the state from the snapshot file in `snapshot_dir`, if there is one.
    pub fn open(
        snapshot_dir: &Path,
        log: LogStore,
        retention: Retention,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(err_snapshot)?;
        let mut sm = Self {
            reader: KvReader {
                state: Arc::default(),
                config: Arc::default(),
                events: tokio::sync::broadcast::channel(4096).0,
            },
            snapshot_dir: snapshot_dir.to_path_buf(),
            log,
            last_applied: None,
            membership: StoredMembership::default(),
            retention,
        };
        if let Some(file) = sm.read_snapshot_file()? {
            let path = sm.snapshot_path();
            sm.replace_state(&file.payload)
                .map_err(|e| corrupt_snapshot(&path, &format!("its payload is invalid: {e}")))?;
        }
        Ok(sm)
    }

    /// The log index the snapshot file covers, read without loading the payload.
    pub fn snapshot_index(&self) -> Result<Option<u64>, StorageError> {
        Ok(self
            .read_snapshot_meta()?
            .and_then(|m| m.last_log_id.map(|l| l.index)))
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
        // A failed fsync aborts the process (see `super::fsync`).
        super::fsync::write_durably(&dir.join("current"), &bytes).map_err(err_snapshot)
    }

    /// Replace the whole state with a snapshot payload. History before it is gone.
    fn replace_state(&mut self, payload: &[u8]) -> Result<(), StorageError> {
        let snap: SnapshotPayload = bincode::deserialize(payload).map_err(err_read)?;
        let mut data = Data::default();
        for (k, v) in snap.data {
            let key = String::from_utf8(k.into_vec()).map_err(err_read)?;
            let record = Record::decode(&v).ok_or_else(|| {
                err_read(std::io::Error::other(format!(
                    "a short record for key {key:?}"
                )))
            })?;
            data.insert(key, record);
        }
        *self.reader.state.write().expect("state lock") = State {
            data,
            revision: snap.revision,
            history: VecDeque::new(),
            history_bytes: 0,
        };
        self.last_applied = snap.last_applied;
        self.membership = snap.membership;
        *self.reader.config.write().expect("config lock") = snap.config;
        Ok(())
    }

    fn current(overlay: &Overlay, key: &str) -> Option<Record> {
        overlay.get(key).cloned()
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
        overlay.insert(key, rec);
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
        overlay.remove(&key);
    }

    fn apply_txn(
        overlay: &mut Overlay,
        changes: &mut Vec<RevisionEvents>,
        revision: &mut u64,
        txn: Txn,
    ) -> Outcome {
        let mut succeeded = true;
        for c in &txn.compare {
            let cur = Self::current(overlay, &c.key);
            if !Self::compare_holds(c, &cur) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { txn.success } else { txn.failure };
        // What the gets will return, from the state and the branch's own earlier writes,
        // before anything is applied: a transaction whose answer would be too large is
        // refused whole (deterministically, on every member).
        let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
        let mut bytes = 0u64;
        for op in &ops {
            match op {
                TxnOp::Put { key, value } => {
                    pending.insert(key, value.len() as u64);
                }
                TxnOp::Delete { key } => {
                    pending.insert(key, 0);
                }
                TxnOp::Get { key } => {
                    let value = match pending.get(key.as_str()) {
                        Some(&n) => n,
                        None => overlay.get(key).map_or(0, |r| r.value.len() as u64),
                    };
                    bytes += key.len() as u64 + value;
                }
            }
        }
        if bytes > crate::types::MAX_TXN_RESPONSE_BYTES {
            return Outcome::TxnTooLarge { bytes };
        }
        // All writes of a transaction share one revision.
        let rev = *revision + 1;
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put { key, value } => {
                    let cur = Self::current(overlay, &key);
                    TxnOpResult::Put {
                        version: Self::put(overlay, &mut events, cur, key, value, rev),
                    }
                }
                TxnOp::Delete { key } => match Self::current(overlay, &key) {
                    Some(cur) => {
                        Self::delete(overlay, &mut events, &cur, key);
                        TxnOpResult::Delete { deleted: true }
                    }
                    None => TxnOpResult::Delete { deleted: false },
                },
                TxnOp::Get { key } => {
                    TxnOpResult::Get(Self::current(overlay, &key).map(|r| KeyValue {
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
        Outcome::Txn {
            succeeded,
            revision: *revision,
            results,
        }
    }

    fn apply_command(
        overlay: &mut Overlay,
        changes: &mut Vec<RevisionEvents>,
        revision: &mut u64,
        cmd: Command,
    ) -> Outcome {
        match cmd {
            Command::Put { key, value, cond } => {
                let cur = Self::current(overlay, &key);
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
                let cur = Self::current(overlay, &key);
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
            Command::Txn(txn) => Self::apply_txn(overlay, changes, revision, txn),
        }
    }
}

fn corrupt_snapshot(path: &Path, what: &str) -> StorageError {
    err_read(std::io::Error::other(format!(
        "snapshot file {} is corrupt ({what}); refusing to use it. Restore the data directory \
         from backup, or wipe it entirely to rejoin as a new member",
        path.display()
    )))
}

/// The data as `apply` changes it (under the state's write lock).
type Overlay = Data;

/// A consistent copy of the state, taken in order with `apply`, and serialized, written
/// and returned off the apply path.
pub struct SnapshotBuilder {
    copy: Option<(SnapshotMeta, u64, ClusterConfig, Overlay)>,
    snapshot_dir: PathBuf,
    log: LogStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (mut meta, revision, config, data) = self
            .copy
            .take()
            .ok_or_else(|| err_snapshot(std::io::Error::other("snapshot builder used twice")))?;
        // The log must cover the snapshot durably before the file exists (see the module doc).
        self.log.cover_snapshot(meta.last_log_id).await?;
        let dir = self.snapshot_dir.clone();
        let (meta, bytes) = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let payload = SnapshotPayload {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                revision,
                config,
                data: data
                    .map
                    .into_iter()
                    .map(|(k, r)| (ByteBuf::from(k.into_bytes()), ByteBuf::from(r.encode())))
                    .collect(),
            };
            let bytes = bincode::serialize(&payload).map_err(err_snapshot)?;
            meta.snapshot_id = match meta.last_log_id {
                Some(l) => format!(
                    "{}-{}-{}",
                    l.leader_id.term,
                    l.index,
                    crc32fast::hash(&bytes)
                ),
                None => format!("0-0-{}", crc32fast::hash(&bytes)),
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
        let mut changes: Vec<RevisionEvents> = Vec::new();
        let mut responses = Vec::new();
        let mut new_config = None;
        let mut live = Vec::new();
        {
            let mut guard = self.reader.state.write().expect("state lock");
            let state = &mut *guard;
            let mut revision = state.revision;
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::default()),
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        responses.push(Response::default());
                    }
                    EntryPayload::Normal(Request::SetConfig(c)) => {
                        new_config = Some(c);
                        responses.push(Response::default());
                    }
                    EntryPayload::Normal(Request::Batch(batch)) => {
                        let mut outcomes = Vec::with_capacity(batch.cmds.len());
                        for cmd in batch.cmds {
                            outcomes.push(Self::apply_command(
                                &mut state.data,
                                &mut changes,
                                &mut revision,
                                cmd,
                            ));
                        }
                        responses.push(Response(outcomes));
                    }
                }
            }
            state.revision = revision;
            for change in changes {
                let change = Arc::new(change);
                state.record(change.clone(), self.retention);
                live.push(change);
            }
        }
        if let Some(c) = new_config {
            tracing::info!(
                mode = c.replication_mode.as_str(),
                reads = c.read_consistency.as_str(),
                "cluster config applied"
            );
            *self.reader.config.write().expect("config lock") = c;
        }
        for change in live {
            // No receivers is fine; slow receivers lag and catch up from history.
            let _ = self.reader.events.send(change);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // This runs in order with `apply`, so the copy below is a consistent view.
        let (revision, data) = {
            let state = self.reader.state();
            (state.revision, state.data.clone())
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: String::new(),
        };
        SnapshotBuilder {
            copy: Some((meta, revision, self.reader.config(), data)),
            snapshot_dir: self.snapshot_dir.clone(),
            log: self.log.clone(),
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
        self.log.cover_snapshot(meta.last_log_id).await?;
        let dir = self.snapshot_dir.clone();
        let meta2 = meta.clone();
        let payload2 = payload.clone();
        tokio::task::spawn_blocking(move || Self::write_snapshot_file(&dir, &meta2, &payload2))
            .await
            .map_err(err_snapshot)??;
        self.replace_state(&payload)?;
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
