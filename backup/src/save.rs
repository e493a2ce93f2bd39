//! Saving a backup stream into a store: the one path that `node backup save --out URL` and
//! the operator's `Backup` both take, so a save means the same thing wherever it starts.
//!
//! The stream (the body of a member's `GET /v1/cluster/backup`) goes into a write-once object
//! named after its cluster, time and revision, and through a [`Checker`] as it passes. Then
//! the manifest is written beside it: `complete` with the object's size and SHA-256 once both
//! the upload and the check succeeded, or `failed` with the reason otherwise, so that
//! retention never counts a failed save and a restore never picks one.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::check::{CheckError, Checker};
use crate::format::Header;
use crate::manifest::{BackupName, Manifest};
use crate::store::{BackupStore, StoreError};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
        (Ok(up), Ok(header)) => {
            let manifest = Manifest::complete(
                &object,
                &header,
                up.size,
                &up.sha256,
                started_unix_ms,
                finished_unix_ms,
            );
            return match store.write_manifest(&manifest).await {
                Ok(()) => Ok(Saved {
                    object,
                    url: up.url,
                    header,
                    size: up.size,
                    sha256: up.sha256,
                    started_unix_ms,
                    finished_unix_ms,
                }),
                Err(source) => Err(SaveError::Store { url, source }),
            };
        }
        // AlreadyExists: another save took the same name; its manifest is its own.
        (Err(source @ StoreError::AlreadyExists { .. }), _) => {
            return Err(SaveError::Store { url, source });
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
    };
    let manifest = Manifest::failed(&object, &reason, None, started_unix_ms, finished_unix_ms);
    if let Err(e) = store.write_manifest(&manifest).await {
        tracing::warn!(%url, error = %e, "could not record the failed backup's manifest");
    }
    Err(failed)
}
