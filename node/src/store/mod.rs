//! Persistent storage of a node: the Raft log and vote ([`log`]) and the key-value state
//! machine with its snapshots ([`sm`]), both in one sled database, made durable by the
//! barrier in [`durable`].

// openraft's storage traits fix `StorageError` (a large type) as the error of every call.
#![allow(clippy::result_large_err)]

pub mod durable;
pub mod log;
pub mod sm;

use std::path::Path;
use std::sync::Arc;

pub use durable::{AckRegistry, FlushStats, Flusher};
pub use log::LogStore;
pub use sm::{Event, EventKind, HistoryError, KvReader, Record, RevisionEvents, StateMachineStore};

/// Errors opening the store. The messages say what to do, because a node that cannot
/// open its data must never silently start empty.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot open the database in {dir}: {source}. If the files are corrupt, restore the data directory from backup, or wipe it entirely to rejoin as a new member"
    )]
    Sled { dir: String, source: sled::Error },
    #[error("cannot set up durable writes in {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("cannot load the state machine: {0}")]
    StateMachine(String),
    #[error(
        "the database in {dir} holds the log only up to commit index {found}, but {watermark} says index {durable} was durable: the db file was truncated or damaged, and sled silently recovered an older prefix. Starting would forget log entries and votes this node acknowledged, which breaks Raft's safety. Restore the data directory from backup, or wipe it entirely to rejoin as a new member"
    )]
    LostWrites {
        dir: String,
        watermark: String,
        durable: u64,
        found: String,
    },
}

/// The opened storage of one node.
pub struct Storage {
    pub db: sled::Db,
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub flusher: Flusher,
    pub acks: Arc<AckRegistry>,
}

/// Open (or create) the storage under `data_dir`.
pub async fn open(
    data_dir: &Path,
    cache_bytes: u64,
    history: u64,
    observe: impl Fn(FlushStats) + Send + 'static,
) -> Result<Storage, OpenError> {
    let db_dir = data_dir.join("db");
    let dir = db_dir.display().to_string();
    let db = sled::Config::new()
        .path(&db_dir)
        .cache_capacity(cache_bytes)
        .flush_every_ms(Some(500))
        .open()
        .map_err(|source| OpenError::Sled {
            dir: dir.clone(),
            source,
        })?;
    let tree = |name: &str| {
        db.open_tree(name).map_err(|source| OpenError::Sled {
            dir: dir.clone(),
            source,
        })
    };
    let raft_tree = tree("raft")?;
    let sm_tree = tree("sm")?;
    let io = |source| OpenError::Io {
        dir: dir.clone(),
        source,
    };
    // Check the database against the watermark before anything writes to it.
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let saved = log::saved_committed(&raft_tree)
        .map_err(|e| OpenError::StateMachine(e.to_string()))?
        .map(|l| l.index);
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
    committed.store(saved.unwrap_or(0), std::sync::atomic::Ordering::Release);
    let watermark = durable::Watermark::new(data_dir, committed.clone()).map_err(io)?;
    let barrier = durable::Barrier::new(db.clone(), &db_dir, Some(watermark)).map_err(io)?;
    let flusher = Flusher::start(barrier, observe).map_err(io)?;
    let acks = Arc::new(AckRegistry::default());
    let log = LogStore::new(raft_tree, flusher.clone(), acks.clone(), committed);
    let sm = StateMachineStore::open(
        sm_tree,
        &data_dir.join("snapshot"),
        flusher.clone(),
        history,
    )
    .await
    .map_err(|e| OpenError::StateMachine(e.to_string()))?;
    Ok(Storage {
        db,
        log,
        sm,
        flusher,
        acks,
    })
}
