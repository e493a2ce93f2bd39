//! Storage of a node: the Raft log and vote in a write-ahead log ([`log`] over [`wal`]),
//! made durable by the barrier in [`durable`] (a failed fsync aborts the process:
//! [`fsync`]); and the key-value state machine ([`sm`]), in memory, with the snapshot file
//! as its checkpoint.
//!
//! `DATA_DIR` holds `identity.json`, `wal/` (log segments), `snapshot/current` and
//! `watermark` (a commit index known durable, checked at start-up).

// openraft's storage traits fix `StorageError` (a large type) as the error of every call.
#![allow(clippy::result_large_err)]

pub mod durable;
pub mod fsync;
pub mod log;
pub mod sm;
pub mod wal;

use std::path::Path;
use std::sync::Arc;

pub use durable::{FlushStats, Flusher};
pub use log::LogStore;
pub use sm::history::{Event, EventKind, HistoryError, Retention, RevisionEvents};
pub use sm::reader::{KvReader, StateCopy};
pub use sm::record::Record;
pub use sm::snapshot::StreamWriter as SnapshotWriter;
pub use sm::{LogGrowth, StateMachineStore};

/// Log segment size unless `RSTORE_WAL_SEGMENT_BYTES` says otherwise.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Errors opening the store. The messages say what to do, because a node that cannot
/// open its data must never silently start empty.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the write-ahead log in {dir}: {source}")]
    Log { dir: String, source: std::io::Error },
    #[error("cannot set up durable writes in {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("cannot load the state machine: {0}")]
    StateMachine(String),
    #[error(
        "{dir} holds a database in the format of earlier development builds of rstore (sled, in {dir}/db), which this version does not read. Wipe the data directory entirely to rejoin as a new member (the cluster still has the data), or run the previous version"
    )]
    OldFormat { dir: String },
    #[error(
        "the write-ahead log in {dir} holds the log only up to commit index {found}, but {watermark} says index {durable} was durable: the log lost writes it had made durable (it was truncated or damaged). Starting would forget log entries and votes this node acknowledged, which breaks Raft's safety. Restore the data directory from backup, or wipe it entirely to rejoin as a new member"
    )]
    LostWrites {
        dir: String,
        watermark: String,
        durable: u64,
        found: String,
    },
    #[error(
        "the snapshot file {snapshot} covers the log up to index {covered}, but the write-ahead log in {dir} holds it only up to commit index {found}: the log lost writes it had made durable (a segment was truncated, damaged or removed). Starting would forget votes and log entries this node acknowledged, which breaks Raft's safety. Restore the data directory from backup, or wipe it entirely to rejoin as a new member"
    )]
    BehindSnapshot {
        dir: String,
        snapshot: String,
        covered: u64,
        found: String,
    },
}

/// The opened storage of one node.
pub struct Storage {
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub flusher: Flusher,
}

/// Open (or create) the storage under `data_dir`.
pub async fn open(
    data_dir: &Path,
    segment_bytes: u64,
    retention: Retention,
    observe: impl Fn(FlushStats) + Send + 'static,
) -> Result<Storage, OpenError> {
    let wal_dir = data_dir.join("wal");
    let dir = wal_dir.display().to_string();
    if data_dir.join("db").exists() && !wal_dir.exists() {
        return Err(OpenError::OldFormat {
            dir: data_dir.display().to_string(),
        });
    }
    let opened = log::Opened::read(&wal_dir, segment_bytes).map_err(|source| OpenError::Log {
        dir: dir.clone(),
        source,
    })?;
    let io = |source| OpenError::Io {
        dir: dir.clone(),
        source,
    };
    // Check the log against the watermark before anything is acknowledged from it.
    let saved = opened.committed().map(|l| l.index);
    if let Some(durable) = durable::Watermark::read(data_dir).map_err(io)?
        && saved.is_none_or(|s| s < durable)
    {
        return Err(OpenError::LostWrites {
            dir,
            watermark: data_dir.join("watermark").display().to_string(),
            durable,
            found: saved.map_or("none".into(), |s| s.to_string()),
        });
    }
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(saved.unwrap_or(0)));
    let watermark = durable::Watermark::new(data_dir, committed.clone()).map_err(io)?;
    let barrier = durable::Barrier::new(opened.dirty(), &wal_dir, Some(watermark));
    let flusher = Flusher::start(barrier, observe).map_err(io)?;
    let log = opened.into_store(flusher.clone(), committed);
    let sm = StateMachineStore::open(&data_dir.join("snapshot"), log.clone(), retention)
        .map_err(|e| OpenError::StateMachine(e.to_string()))?;
    // The saved commit index always covers the snapshot file (`LogStore::cover_snapshot`).
    let snapshot = sm
        .snapshot_index()
        .map_err(|e| OpenError::StateMachine(e.to_string()))?;
    if let Some(covered) = snapshot
        && saved.is_none_or(|s| s < covered)
    {
        return Err(OpenError::BehindSnapshot {
            dir,
            snapshot: data_dir
                .join("snapshot")
                .join("current")
                .display()
                .to_string(),
            covered,
            found: saved.map_or("none".into(), |s| s.to_string()),
        });
    }
    Ok(Storage { log, sm, flusher })
}
