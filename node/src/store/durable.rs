//! The durability barrier for the write-ahead log, and a flusher thread that shares one
//! barrier among every write waiting for it (group commit at the disk).
//!
//! A barrier is `fdatasync` of every log segment written since the last one (segments
//! are preallocated, so that writes data only), and `fsync` of the log directory if a
//! segment was created or removed. Nothing is acknowledged before that. A sync that fails
//! aborts the process ([`super::fsync`]): it is never retried, nor returned for later
//! barriers to get past.
//!
//! The barrier also keeps a [`Watermark`] outside the log: a commit index the log had made
//! durable, rewritten at most once a second. A log cut short by damage that looks like a
//! torn tail (a truncated segment) would otherwise come back as a node that silently
//! forgot log entries and votes it had acknowledged.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::wal::Dirty;
use crate::types::TypeConfig;

/// A commit index that the database is known to hold durably, kept in its own file
/// (`DATA_DIR/watermark`), so that start-up can tell a database that lost durable writes.
pub struct Watermark {
    path: PathBuf,
    /// The commit index as last written to the log (updated by the log store after the write).
    committed: Arc<AtomicU64>,
    /// The newest index known durable in the log.
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

    /// Note `durable`, an index the log holds durably, and write it if the last write is
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
        super::fsync::write_durably(&self.path, self.durable.to_string().as_bytes())?;
        self.written = self.durable;
        self.written_at = Some(Instant::now());
        Ok(())
    }
}

/// Syncs what the log wrote since the last barrier.
pub struct Barrier {
    dirty: Arc<Mutex<Dirty>>,
    dir: PathBuf,
    watermark: Option<Watermark>,
}

impl Barrier {
    pub fn new(dirty: Arc<Mutex<Dirty>>, dir: &Path, watermark: Option<Watermark>) -> Self {
        Self {
            dirty,
            dir: dir.to_path_buf(),
            watermark,
        }
    }

    /// Make every write issued to the log before this call durable.
    pub fn sync(&mut self) -> io::Result<()> {
        // Written to the log before this barrier, so durable once it succeeds.
        let committed = self
            .watermark
            .as_ref()
            .map(|w| w.committed.load(Ordering::Acquire));
        let dirty = std::mem::take(&mut *self.dirty.lock().expect("dirty lock"));
        // A failed sync aborts: after one, the kernel may have dropped the data, and a
        // retry that succeeds would acknowledge writes standing on it (see `fsync`).
        for f in &dirty.files {
            super::fsync::sync_data(f, &self.dir);
        }
        if dirty.dir
            && let Err(e) = super::fsync::sync_dir(&self.dir)
        {
            // The directory could not be opened, so it was not synced (nothing failed to
            // reach the disk): the next barrier syncs it.
            self.dirty.lock().expect("dirty lock").dir = true;
            return Err(e);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// Set in the child process that runs a test's body.
    const CHILD: &str = "RSTORE_TEST_FSYNC_CHILD";

    /// Run `body` in a child process (this test binary, running only `test`), as aborting
    /// ends the process; returns how the child ended, or `None` in the child itself.
    fn in_child(test: &str, body: impl FnOnce()) -> Option<std::process::Output> {
        if std::env::var_os(CHILD).is_some() {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .try_init();
            body();
            return None;
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        Some(output)
    }

    /// A file whose `fsync` fails (with `EINVAL`): the write end of a pipe.
    fn unsyncable() -> std::fs::File {
        let (_read, write) = std::io::pipe().unwrap();
        std::fs::File::from(std::os::fd::OwnedFd::from(write))
    }

    #[test]
    fn a_failed_fsync_in_a_barrier_aborts_instead_of_being_retried() {
        let output = in_child(
            "store::durable::tests::a_failed_fsync_in_a_barrier_aborts_instead_of_being_retried",
            || {
                let dir = tempfile::tempdir().unwrap();
                let dirty = Arc::new(Mutex::new(Dirty {
                    files: vec![Arc::new(unsyncable())],
                    dir: false,
                }));
                let mut barrier = Barrier::new(dirty, dir.path(), None);
                // Neither call may return: the first failed fsync ends the process.
                let first = barrier.sync();
                let second = barrier.sync();
                eprintln!("the barrier returned {first:?}, then {second:?}");
            },
        );
        let Some(output) = output else { return };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.signal(),
            Some(6),
            "the child did not abort (SIGABRT): {}; stderr: {stderr}",
            output.status
        );
        assert!(stderr.contains("fsync"), "{stderr}");
    }

    /// The only error a barrier returns: the directory cannot be opened to sync it. The
    /// files were synced and are not synced again; the directory is, by the next barrier.
    #[test]
    fn a_directory_that_cannot_be_opened_is_synced_by_the_next_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let file = Arc::new(std::fs::File::create(dir.path().join("segment")).unwrap());
        let dirty = Arc::new(Mutex::new(Dirty {
            files: vec![file],
            dir: true,
        }));
        let mut barrier = Barrier::new(dirty.clone(), &wal, None);
        assert!(barrier.sync().is_err());
        {
            let d = dirty.lock().unwrap();
            assert!(d.dir && d.files.is_empty());
        }
        std::fs::create_dir(&wal).unwrap();
        barrier.sync().unwrap();
        assert!(!dirty.lock().unwrap().dir);
    }
}
