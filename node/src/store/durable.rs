//! The durability barrier for sled, and a flusher thread that shares one barrier among
//! every write waiting for it (group commit at the disk).
//!
//! sled 0.34's `flush()` ends in `sync_file_range`, which is not a durability barrier, and
//! sled never fsyncs the files it writes for large values (`blobs/`). So a barrier here is:
//! `flush()`, then `fdatasync` of the `db` file, then `fsync` of any blob file written since
//! the last barrier and of the blob directory. Nothing is acknowledged before that.
//!
//! The barrier also keeps a [`Watermark`] outside sled: a commit index that sled had made
//! durable, rewritten at most once a second. sled recovers whatever prefix of its file it
//! can read and says nothing, so a truncated or damaged `db` file would otherwise come
//! back as a node that silently forgot log entries and votes it had acknowledged.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::types::TypeConfig;

/// A commit index that the database is known to hold durably, kept in its own file
/// (`DATA_DIR/watermark`), so that start-up can tell a database that lost durable writes.
pub struct Watermark {
    path: PathBuf,
    /// The commit index as last saved to sled (updated by the log store after the insert).
    committed: Arc<AtomicU64>,
    /// The newest index known durable in sled.
    durable: u64,
    written: u64,
    written_at: Option<Instant>,
}

/// How often, at most, the watermark file is rewritten.
const WATERMARK_EVERY: Duration = Duration::from_secs(1);

impl Watermark {
    pub fn new(data_dir: &Path, committed: Arc<AtomicU64>) -> io::Result<Self> {
        let path = data_dir.join("watermark");
        let written = Self::read(data_dir)?.unwrap_or(0);
        Ok(Self {
            path,
            committed,
            durable: written,
            written,
            written_at: None,
        })
    }

    /// The watermark file's index, if there is one.
    pub fn read(data_dir: &Path) -> io::Result<Option<u64>> {
        let path = data_dir.join("watermark");
        match std::fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| io::Error::other(format!("{} is corrupt ({e})", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Note `durable`, an index sled holds durably, and write it if the last write is
    /// old enough.
    fn advance(&mut self, durable: u64) -> io::Result<()> {
        self.durable = self.durable.max(durable);
        self.tick()
    }

    /// Write the newest durable index if it is not written yet and the last write is old
    /// enough. Called after barriers and when the flusher is idle, so the file trails the
    /// database by about [`WATERMARK_EVERY`] at most.
    fn tick(&mut self) -> io::Result<()> {
        if self.durable <= self.written
            || self
                .written_at
                .is_some_and(|t| t.elapsed() < WATERMARK_EVERY)
        {
            return Ok(());
        }
        crate::identity::write_durably(&self.path, self.durable.to_string().as_bytes())?;
        self.written = self.durable;
        self.written_at = Some(Instant::now());
        Ok(())
    }
}

/// Owns the sled handle and the file handles needed to make its writes durable.
pub struct Barrier {
    db: sled::Db,
    db_file: File,
    blobs_dir: PathBuf,
    blobs_seen: Option<SystemTime>,
    blobs_synced: HashSet<std::ffi::OsString>,
    watermark: Option<Watermark>,
}

impl Barrier {
    pub fn new(db: sled::Db, dir: &Path, watermark: Option<Watermark>) -> io::Result<Self> {
        let db_file = File::open(dir.join("db"))?;
        // The files were possibly just created: make their directory entries durable.
        crate::identity::sync_dir(dir)?;
        Ok(Self {
            db,
            db_file,
            blobs_dir: dir.join("blobs"),
            blobs_seen: None,
            blobs_synced: HashSet::new(),
            watermark,
        })
    }

    /// Make every write issued to sled before this call durable.
    pub fn sync(&mut self) -> io::Result<()> {
        // Saved to sled before this barrier, so durable once it succeeds.
        let committed = self
            .watermark
            .as_ref()
            .map(|w| w.committed.load(Ordering::Acquire));
        self.db.flush().map_err(io::Error::other)?;
        self.db_file.sync_data()?;
        self.sync_blobs()?;
        if let (Some(w), Some(c)) = (self.watermark.as_mut(), committed)
            && let Err(e) = w.advance(c)
        {
            // The data is durable; only the check at the next start is weaker.
            tracing::warn!(error = %e, "cannot update the durability watermark");
        }
        Ok(())
    }

    /// Catch the watermark up while no write is waiting.
    fn idle(&mut self) {
        if let Some(w) = self.watermark.as_mut()
            && let Err(e) = w.tick()
        {
            tracing::warn!(error = %e, "cannot update the durability watermark");
        }
    }

    fn sync_blobs(&mut self) -> io::Result<()> {
        let mtime = match std::fs::metadata(&self.blobs_dir) {
            Ok(m) => m.modified()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // A directory modified twice within one timestamp tick shows the same mtime, so
        // recently modified directories are always rescanned.
        let recent = SystemTime::now()
            .duration_since(mtime)
            .map(|d| d < Duration::from_secs(2))
            .unwrap_or(true);
        if self.blobs_seen == Some(mtime) && !recent {
            return Ok(());
        }
        self.blobs_seen = Some(mtime);
        let mut present = HashSet::new();
        let mut synced_any = false;
        for entry in std::fs::read_dir(&self.blobs_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !self.blobs_synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // sled removes blobs it no longer needs; that is fine.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                synced_any = true;
            }
            present.insert(name);
        }
        if synced_any {
            crate::identity::sync_dir(&self.blobs_dir)?;
        }
        self.blobs_synced = present;
        Ok(())
    }
}

/// Leader-side waiters for "this batch is durable in my own log", used by the `async`
/// replication mode. The batcher registers a batch id before submitting it; the log store
/// takes the waiter when it appends that batch and hands it to the flusher.
#[derive(Default)]
pub struct AckRegistry {
    waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    count: AtomicUsize,
}

impl AckRegistry {
    pub fn register(&self, id: u64) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut w = self.waiting.lock().expect("ack lock");
        w.insert(id, tx);
        self.count.store(w.len(), Ordering::Release);
        rx
    }

    pub fn cancel(&self, id: u64) {
        let mut w = self.waiting.lock().expect("ack lock");
        w.remove(&id);
        self.count.store(w.len(), Ordering::Release);
    }

    /// The waiter for batch `id`, if someone registered one.
    pub fn take(&self, id: u64) -> Option<tokio::sync::oneshot::Sender<()>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut w = self.waiting.lock().expect("ack lock");
        let tx = w.remove(&id);
        self.count.store(w.len(), Ordering::Release);
        tx
    }
}

/// Something waiting for the next durability barrier.
pub enum Waiter {
    /// openraft's log-append callback, and the leader's async-mode waiters for that append.
    Log(
        openraft::storage::LogFlushed<TypeConfig>,
        Vec<tokio::sync::oneshot::Sender<()>>,
    ),
    /// Anyone else (vote, truncate, snapshot install), woken through a channel.
    Notify(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Statistics of one barrier, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct FlushStats {
    pub waiters: usize,
    pub duration: Duration,
}

/// Handle to the flusher thread. Cloning it is cheap.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Waiter>,
}

impl Flusher {
    /// Start the flusher thread. `observe` is called after every barrier.
    pub fn start(
        mut barrier: Barrier,
        observe: impl Fn(FlushStats) + Send + 'static,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        std::thread::Builder::new()
            .name("rstore-flusher".into())
            .spawn(move || {
                loop {
                    let first = match rx.recv_timeout(WATERMARK_EVERY) {
                        Ok(w) => w,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            barrier.idle();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            barrier.idle();
                            break;
                        }
                    };
                    let mut waiters = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiters.push(more);
                    }
                    let start = Instant::now();
                    let result = barrier.sync();
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "durability barrier failed");
                    }
                    observe(FlushStats {
                        waiters: waiters.len(),
                        duration: start.elapsed(),
                    });
                    for w in waiters {
                        match w {
                            Waiter::Log(cb, acks) => {
                                cb.log_io_completed(
                                    result
                                        .as_ref()
                                        .map(|_| ())
                                        .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                                );
                                if result.is_ok() {
                                    for ack in acks {
                                        let _ = ack.send(());
                                    }
                                }
                            }
                            Waiter::Notify(tx) => {
                                let _ =
                                    tx.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                            }
                        }
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Queue an openraft log callback for the next barrier.
    pub fn submit_log(
        &self,
        cb: openraft::storage::LogFlushed<TypeConfig>,
        acks: Vec<tokio::sync::oneshot::Sender<()>>,
    ) -> io::Result<()> {
        self.tx
            .send(Waiter::Log(cb, acks))
            .map_err(|_| io::Error::other("flusher thread stopped"))
    }

    /// Wait until everything written so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Waiter::Notify(tx))
            .map_err(|_| io::Error::other("flusher thread stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("flusher thread stopped"))?
            .map_err(io::Error::other)
    }
}
