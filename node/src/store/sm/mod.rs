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
//!
//! The parts, each with one reason to change: [`apply`] (what a command means, pure),
//! [`record`] (a key's record, its encoding, the byte accounting), [`history`] (the events
//! watches see), [`reader`] (reading the applied state), [`snapshot`] (the snapshot file);
//! this module is the openraft glue that feeds entries to `apply` under the state's lock.

pub mod apply;
pub mod history;
pub mod reader;
pub mod record;
pub mod snapshot;

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};

use self::history::{Retention, RevisionEvents};
use self::reader::{KvReader, State};
use self::record::Data;
use self::snapshot::err_snapshot;
use super::log::LogStore;
use crate::background;
use crate::types::{
    ClusterConfig, Entry, LogId, Request, Response, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};

/// The bytes of commands applied since the state was last copied for a snapshot (or
/// installed from one): how much the log beyond the snapshot holds, for the snapshot
/// policy (`crate::snapshots`). Cloned handles share one count.
#[derive(Clone, Default)]
pub struct LogGrowth(Arc<std::sync::atomic::AtomicU64>);

impl LogGrowth {
    pub fn bytes(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
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
    /// Held by every writer of `snapshot/current`: an install from the leader, and the end
    /// of a build (which runs beside `apply` and installs, and must not put an older state
    /// back; see [`snapshot::StreamWriter::finish_unless_superseded`]).
    files: Arc<std::sync::Mutex<()>>,
    growth: LogGrowth,
    /// Set by [`Self::for_raft_start`]: the next `get_current_snapshot` is openraft's at
    /// start-up, which reads only the meta.
    meta_only_once: bool,
}

impl StateMachineStore {
    /// This store, to be handed to `Raft::new`: its first `get_current_snapshot` is the one
    /// openraft 0.9.25 makes while it starts (`StorageHelper::get_initial_state`, which keeps
    /// `snapshot.meta` alone), and is answered from the file's meta without its payload.
    /// Every later call (a snapshot sent to a follower) reads the payload.
    pub fn for_raft_start(mut self) -> Self {
        self.meta_only_once = true;
        self
    }

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
            files: Arc::default(),
            growth: LogGrowth::default(),
            meta_only_once: false,
        };
        let path = sm.snapshot_path();
        // Decoded as it is read: the state is the one copy of it in memory.
        if let Some((_, decoded)) = snapshot::read_state(&path)? {
            sm.install_state(decoded);
        }
        Ok(sm)
    }

    /// The log index the snapshot file covers, read without loading the payload.
    pub fn snapshot_index(&self) -> Result<Option<u64>, StorageError> {
        Ok(
            snapshot::read_meta(&self.snapshot_path())?
                .and_then(|m| m.last_log_id.map(|l| l.index)),
        )
    }

    pub fn reader(&self) -> KvReader {
        self.reader.clone()
    }

    /// The bytes applied since the last snapshot copy.
    pub fn growth(&self) -> LogGrowth {
        self.growth.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join("current")
    }

    /// Replace the whole state with a decoded snapshot. History before it is gone.
    fn install_state(&mut self, snap: snapshot::Decoded) {
        *self.reader.state.write().expect("state lock") = State {
            data: snap.data,
            revision: snap.revision,
            applied_index: snap.last_applied.map_or(0, |l| l.index),
            history: VecDeque::new(),
            history_bytes: 0,
        };
        self.last_applied = snap.last_applied;
        self.membership = snap.membership;
        *self.reader.config.write().expect("config lock") = snap.config;
        self.growth.reset();
    }
}

/// A consistent copy of the state, taken in order with `apply`, and streamed to the snapshot
/// file off the apply path.
pub struct SnapshotBuilder {
    copy: Option<(SnapshotMeta, u64, ClusterConfig, Data)>,
    snapshot_dir: PathBuf,
    log: LogStore,
    files: Arc<std::sync::Mutex<()>>,
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
        let files = self.files.clone();
        // The state at one log id is one state, so the log id and revision name it.
        meta.snapshot_id = match meta.last_log_id {
            Some(l) => format!("{}-{}-r{revision}", l.leader_id.term, l.index),
            None => format!("0-0-r{revision}"),
        };
        // Streamed to the file record by record: an encoding of the whole state in memory
        // (and the copies of it the file format took) tripled a member's memory under load.
        // On a thread at the lowest priority: a 1 GB state takes seconds of CPU to encode,
        // which the writes need more.
        let (meta, bytes) =
            background::run("rstore-snapshot", move || -> Result<_, StorageError> {
                let keys = data.map.len() as u64;
                let data_bytes = data
                    .map
                    .iter()
                    .map(|(k, r)| (k.len() + r.value.len()) as u64)
                    .sum();
                let mut w = snapshot::StreamWriter::create(
                    &dir, &meta, revision, &config, keys, data_bytes,
                )
                .map_err(err_snapshot)?;
                for (key, record) in &data.map {
                    w.push(key, record).map_err(err_snapshot)?;
                }
                let bytes = w.finish_unless_superseded(&files)?;
                Ok((meta, bytes))
            })
            .await
            .map_err(err_snapshot)??;
        match bytes {
            Some(bytes) => tracing::info!(snapshot = %meta.snapshot_id, bytes, "built snapshot"),
            None => tracing::info!(
                snapshot = %meta.snapshot_id,
                "built snapshot dropped: a later one was installed from the leader meanwhile"
            ),
        }
        // openraft 0.9.25 keeps only the meta of a built snapshot (core/sm/worker.rs:
        // `Response::BuildSnapshot(snap.meta)`); the data, when it is sent to a member, is
        // read from the file by `get_current_snapshot`.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
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
        let mut logged = 0u64;
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
                            logged += cmd.size() as u64;
                            outcomes.push(apply::apply_command(
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
            state.applied_index = self.last_applied.map_or(0, |l| l.index);
            for change in changes {
                let change = Arc::new(change);
                state.record(change.clone(), self.retention);
                live.push(change);
            }
        }
        self.growth.add(logged);
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
        // Everything applied so far is in the copy.
        self.growth.reset();
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: String::new(),
        };
        SnapshotBuilder {
            copy: Some((meta, revision, self.reader.config(), data)),
            snapshot_dir: self.snapshot_dir.clone(),
            log: self.log.clone(),
            files: self.files.clone(),
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
        // Decoded (and so validated) before anything is touched.
        let decoded = snapshot::decode_payload(&payload)?;
        self.log.cover_snapshot(meta.last_log_id).await?;
        let dir = self.snapshot_dir.clone();
        let meta2 = meta.clone();
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || {
            let _files = files.lock().expect("snapshot file lock");
            snapshot::write_file(&dir, &meta2, &payload)
        })
        .await
        .map_err(err_snapshot)??;
        self.install_state(decoded);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if std::mem::take(&mut self.meta_only_once) {
            // openraft's start-up (storage/helper.rs, `get_initial_state`) keeps only the
            // meta; reading the payload there held the whole file in memory beside the state
            // just loaded from it.
            return Ok(
                snapshot::read_meta(&self.snapshot_path())?.map(|meta| Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(Vec::new())),
                }),
            );
        }
        Ok(
            snapshot::read_file(&self.snapshot_path())?.map(|f| Snapshot {
                meta: f.meta,
                snapshot: Box::new(Cursor::new(f.payload)),
            }),
        )
    }
}
