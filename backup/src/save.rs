//! Saving a backup stream into a store: the one path that `node backup save --out URL` and
//! the operator's `Backup` both take, so a save means the same thing wherever it starts.
//!
//! The stream (the body of a member's `GET /v1/cluster/backup`) goes into a write-once object
//! named after its cluster, time and revision, and through a [`Checker`] as it passes. Then
//! the manifest is written beside it: `complete` with the object's size and SHA-256 once both
//! the upload and the check succeeded, or `failed` with the reason otherwise, so that
//! retention never counts a failed save and a restore never picks one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::check::{CheckError, Checked, Checker};
use crate::format::Header;
use crate::manifest::{BackupName, Manifest};
use crate::store::{BackupStore, StoreError};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Paces a backup stream to at most a number of bytes per second, by waiting before the
/// next read: the member's encoder then waits on its bounded queue, so a paced backup takes
/// proportionally less of the member's CPU from the writes it serves (the price is a longer
/// backup). `None` reads as fast as the member sends.
#[derive(Debug)]
pub struct Pacer {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Pacer {
    pub fn new(bytes_per_second: Option<u64>) -> Self {
        Self {
            rate: bytes_per_second.filter(|r| *r > 0),
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// `n` more bytes were read: wait until reading them was within the rate.
    pub async fn after(&mut self, n: usize) {
        self.bytes += n as u64;
        let Some(rate) = self.rate else {
            return;
        };
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// `stream`, read no faster than `bytes_per_second` (see [`Pacer`]).
pub fn paced<S, E>(
    stream: S,
    bytes_per_second: Option<u64>,
) -> impl Stream<Item = Result<Bytes, E>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: Send,
{
    futures::stream::unfold(
        (stream, Pacer::new(bytes_per_second)),
        |(mut stream, mut pacer)| async move {
            let item = stream.next().await?;
            if let Ok(chunk) = &item {
                pacer.after(chunk.len()).await;
            }
            Some((item, (stream, pacer)))
        },
    )
}

/// A backup that was saved and checked, and its manifest written.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The object's name in the store, and its full URL.
    pub object: String,
    pub url: String,
    pub header: Header,
    pub size: u64,
    pub sha256: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
}

/// Why a save failed; the object's URL, so the user can find its `failed` manifest.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("no backup was saved to {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "no backup was saved to {url}: a backup of this cluster at revision {revision}, started \
         in the same second, already has that name (backups are written once). It holds the \
         same state; its manifest says whether it completed. A backup taken a second later \
         gets a name of its own"
    )]
    SameName { url: String, revision: u64 },
    #[error("no backup was saved to {url}: {source}")]
    Check {
        url: String,
        #[source]
        source: CheckError,
    },
}

impl SaveError {
    /// Whether the same save may succeed if tried again later (the store was unreachable, or
    /// the stream broke off: a leader change or a member restart), rather than a mistake
    /// that must be fixed first (credentials, a missing bucket).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store { source, .. } => {
                source.is_transient() || matches!(source, StoreError::Source { .. })
            }
            Self::Check { .. } => true,
            // The next second has a name of its own.
            Self::SameName { .. } => true,
        }
    }
}

/// Save `stream`, the backup of `cluster_id` at `revision` that started at `started_unix_ms`,
/// into `store`; see the module doc.
pub async fn save_stream<S, E>(
    store: &BackupStore,
    cluster_id: &str,
    revision: u64,
    started_unix_ms: u64,
    stream: S,
) -> Result<Saved, SaveError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let object = BackupName::new(cluster_id, started_unix_ms, revision).object();
    let url = store.object_url(&object);
    // Every chunk goes to the upload and to the checker.
    let checker = Checker::start(None);
    let feed = checker.feeder();
    let stream = stream.map(move |r| {
        if let Ok(chunk) = &r {
            // A checker that stopped keeps its error; the upload goes on to its end.
            feed(chunk.clone());
        }
        r
    });
    let uploaded = store.upload(&object, Box::pin(stream)).await;
    // The upload dropped the stream, and with it the feeder: the checker sees the end.
    let checked = checker.finish();
    let finished_unix_ms = now_unix_ms();
    let failed = match (uploaded, checked) {
        (Ok(up), Ok(Checked { header, sha256 })) => {
            let manifest = Manifest::complete(
                &object,
                &header,
                up.size,
                &sha256,
                started_unix_ms,
                finished_unix_ms,
            );
            return match store.write_manifest(&manifest).await {
                Ok(()) => Ok(Saved {
                    object,
                    url: up.url,
                    header,
                    size: up.size,
                    sha256,
                    started_unix_ms,
                    finished_unix_ms,
                }),
                Err(source) => Err(SaveError::Store { url, source }),
            };
        }
        // AlreadyExists: another save took the same name; its manifest is its own.
        (Err(StoreError::AlreadyExists { .. }), _) => {
            return Err(SaveError::SameName { url, revision });
        }
        (Err(source), _) => SaveError::Store {
            url: url.clone(),
            source,
        },
        (Ok(_), Err(source)) => SaveError::Check {
            url: url.clone(),
            source,
        },
    };
    // Recorded, so that retention never counts it and a restore never picks it.
    let reason = match &failed {
        SaveError::Store { source, .. } => source.to_string(),
        SaveError::Check { source, .. } => source.to_string(),
        SaveError::SameName { .. } => failed.to_string(),
    };
    let manifest = Manifest::failed(&object, &reason, None, started_unix_ms, finished_unix_ms);
    if let Err(e) = store.write_manifest(&manifest).await {
        tracing::warn!(%url, error = %e, "could not record the failed backup's manifest");
    }
    Err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_paced_stream_takes_as_long_as_its_rate_says() {
        let chunks: Vec<Result<Bytes, String>> = (0..10)
            .map(|_| Ok(Bytes::from(vec![0u8; 10_000])))
            .collect();
        let t = Instant::now();
        let n = paced(futures::stream::iter(chunks), Some(400_000))
            .count()
            .await;
        assert_eq!(n, 10);
        // 100 kB at 400 kB/s: a quarter of a second, not much more.
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(240) && e < Duration::from_secs(2),
            "{e:?}"
        );
    }
}
