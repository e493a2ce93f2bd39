//! Checking a backup stream as it arrives, on a thread of its own: the chunks a save
//! receives are fed to [`Checker`], which reads them as a backup (every frame, the key order,
//! the counts, the SHA-256) and, for a save to a file, writes each to the file as it takes it.
//! It also gives the SHA-256 of the whole stream for the manifest, from the same hashing
//! pass (hashing was most of a save's CPU).
//! Every save uses it (`node backup save` to a file or a store, and the operator's), so a
//! stream is read once and checked once.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::format::{FormatError, Header, Reader};

/// Why a checked stream is not a usable backup.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the backup is not usable: {0}")]
    Format(#[from] FormatError),
    #[error("the backup could not be written: {0}")]
    Io(#[from] std::io::Error),
}

/// What a stream that checked out holds.
#[derive(Debug, Clone)]
pub struct Checked {
    pub header: Header,
    /// Lowercase hex SHA-256 of every byte of the stream (its manifest's checksum).
    pub sha256: String,
}

/// Chunks queued for the checker.
const QUEUE: usize = 16;

pub struct Checker {
    tx: SyncSender<Bytes>,
    thread: JoinHandle<Result<Checked, CheckError>>,
}

impl Checker {
    /// Start checking; with `copy_to`, each chunk is also written there, and the file is
    /// synced once the stream checked out.
    pub fn start(copy_to: Option<std::fs::File>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::spawn(move || {
            let chunks = Chunks {
                rx,
                chunk: Bytes::new(),
                out: copy_to.map(|f| std::io::BufWriter::with_capacity(1 << 20, f)),
            };
            let mut reader = Reader::open(chunks)?;
            reader.verify_rest()?;
            let checked = Checked {
                header: reader.header().clone(),
                sha256: reader
                    .stream_sha256()
                    .expect("a verified stream had its trailer read")
                    .to_string(),
            };
            if let Some(out) = reader.into_inner().out {
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            }
            Ok(checked)
        });
        Self { tx, thread }
    }

    /// Pass on the next chunk; `false` once the checker stopped ([`Checker::finish`] says why).
    pub fn feed(&self, chunk: Bytes) -> bool {
        self.tx.send(chunk).is_ok()
    }

    /// A handle that feeds this checker from elsewhere (a stream adapter); the stream ends
    /// once every handle and the checker's own were dropped.
    pub fn feeder(&self) -> impl Fn(Bytes) -> bool + Send + 'static {
        let tx = self.tx.clone();
        move |chunk| tx.send(chunk).is_ok()
    }

    /// The end of the stream: its header and SHA-256 if it checked out to its last byte.
    pub fn finish(self) -> Result<Checked, CheckError> {
        drop(self.tx);
        self.thread.join().expect("the backup checker panicked")
    }
}

/// The chunks of a channel as one stream of bytes, each written to `out` as it is taken.
struct Chunks {
    rx: Receiver<Bytes>,
    chunk: Bytes,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(c) => {
                    if let Some(out) = &mut self.out {
                        out.write_all(&c)?;
                    }
                    self.chunk = c;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
