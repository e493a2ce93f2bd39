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
    let barrier = durable::Barrier::new(db.clone(), &db_dir).map_err(|source| OpenError::Io {
        dir: dir.clone(),
        source,
    })?;
    let flusher = Flusher::start(barrier, observe).map_err(|source| OpenError::Io {
        dir: dir.clone(),
        source,
    })?;
    let acks = Arc::new(AckRegistry::default());
    let log = LogStore::new(raft_tree, flusher.clone(), acks.clone());
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
