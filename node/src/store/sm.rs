//! The key-value state machine and its snapshots.
//!
//! Data lives in sled tree `sm`: `k` + key → [`Record`], and `m`-prefixed metadata (last
//! applied log id, membership, store revision) written in the same atomic batch as the data
//! it describes. Apply does not wait for a barrier: the log is durable, sled recovers a
//! prefix of its writes, and openraft re-applies from the last applied id up to the saved
//! commit index at start-up.
//!
//! The current snapshot is a file, `snapshot/current`, written durably (temp, fsync,
//! rename, fsync dir) because a leader must be able to send it after a restart. Installing a
//! snapshot replaces the whole state: an `m/installing` marker makes a crash in the middle
//! redo the install from the snapshot file at the next start instead of leaving a mix.

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
    Command, Condition, Entry, LogId, NodeId, Outcome, Request, Response, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};

const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const REVISION: &[u8] = b"m/revision";
const INSTALLING: &[u8] = b"m/installing";
const DATA_PREFIX: u8 = b'k';

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

/// Read access to the applied state, shared with the HTTP handlers.
#[derive(Clone)]
pub struct KvReader {
    tree: sled::Tree,
    revision: Arc<AtomicU64>,
}

/// One item of a range listing.
#[derive(Debug, Clone)]
pub struct ListedItem {
    pub key: String,
    pub record: Record,
}

impl KvReader {
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
}

impl StateMachineStore {
    pub async fn open(
        tree: sled::Tree,
        snapshot_dir: &Path,
        flusher: Flusher,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(err_snapshot)?;
        let last_applied: Option<LogId> = read_meta::<Option<LogId>>(&tree, APPLIED)?.flatten();
        let membership: StoredMembership = read_meta(&tree, MEMBERSHIP)?.unwrap_or_default();
        let revision: u64 = read_meta(&tree, REVISION)?.unwrap_or(0);
        let installing = tree.get(INSTALLING).map_err(err_read)?.is_some();
        let mut sm = Self {
            reader: KvReader {
                tree: tree.clone(),
                revision: Arc::new(AtomicU64::new(revision)),
            },
            tree,
            snapshot_dir: snapshot_dir.to_path_buf(),
            flusher,
            last_applied,
            membership,
        };
        if installing {
            tracing::warn!("a snapshot install was interrupted; redoing it from the snapshot file");
            let file = sm.read_snapshot_file()?.ok_or_else(|| {
                err_read(std::io::Error::other(
                    "snapshot install marker present but no snapshot file",
                ))
            })?;
            sm.replace_state(&file.payload).await?;
        }
        Ok(sm)
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
        let file: SnapshotFile = bincode::deserialize(&bytes).map_err(err_read)?;
        if crc32fast::hash(&file.payload) != file.crc {
            return Err(err_read(std::io::Error::other(format!(
                "snapshot file {} fails its checksum; refusing to use it",
                self.snapshot_path().display()
            ))));
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
        let snap: SnapshotPayload = bincode::deserialize(payload).map_err(err_read)?;
        self.tree.insert(INSTALLING, &[1u8]).map_err(err_write)?;
        self.flusher.sync().await.map_err(err_write)?;

        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix([DATA_PREFIX]) {
            let (k, _) = kv.map_err(err_read)?;
            batch.remove(k);
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
        batch.remove(INSTALLING);
        self.tree.apply_batch(batch).map_err(err_write)?;
        self.flusher.sync().await.map_err(err_write)?;

        self.last_applied = snap.last_applied;
        self.membership = snap.membership;
        self.reader.revision.store(snap.revision, Ordering::Release);
        Ok(())
    }

    fn current(
        &self,
        overlay: &std::collections::HashMap<String, Option<Record>>,
        key: &str,
    ) -> Result<Option<Record>, StorageError> {
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
}

/// Takes a consistent copy of the state when created (in order with `apply`), and
/// serializes it off the apply path.
pub struct SnapshotBuilder {
    payload: Option<SnapshotPayload>,
    snapshot_dir: PathBuf,
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
        let mut overlay: std::collections::HashMap<String, Option<Record>> =
            std::collections::HashMap::new();
        let mut revision = self.reader.revision();
        let mut responses = Vec::new();
        let mut membership_changed = false;
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::default()),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    responses.push(Response::default());
                }
                EntryPayload::Normal(Request::Batch(cmds)) => {
                    let mut outcomes = Vec::with_capacity(cmds.len());
                    for cmd in cmds {
                        let outcome = match cmd {
                            Command::Put { key, value, cond } => {
                                let cur = self.current(&overlay, &key)?;
                                match Self::check(cond, &cur) {
                                    Err(o) => o,
                                    Ok(()) => {
                                        revision += 1;
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
                                        overlay.insert(key, Some(rec));
                                        Outcome::Put { revision, version }
                                    }
                                }
                            }
                            Command::Delete { key, cond } => {
                                let cur = self.current(&overlay, &key)?;
                                if cur.is_none() {
                                    Outcome::NotFound
                                } else {
                                    match Self::check(cond, &cur) {
                                        Err(o) => o,
                                        Ok(()) => {
                                            revision += 1;
                                            overlay.insert(key, None);
                                            Outcome::Deleted { revision }
                                        }
                                    }
                                }
                            }
                        };
                        outcomes.push(outcome);
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
        self.tree.apply_batch(batch).map_err(err_write)?;
        self.reader.revision.store(revision, Ordering::Release);
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
                data,
            }),
            snapshot_dir: self.snapshot_dir.clone(),
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
