//! What the `Backup` and `BackupSchedule` controllers share: the store controller's context,
//! which backup streams from which store now, and when each schedule last ran retention.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::controller::Context;
use crate::crd::backup::Backup;

/// The field manager of the backup controllers' status writes (server-side apply).
pub const FIELD_MANAGER: &str = "rstore-operator-backup";
/// The label a schedule puts on the Backups it creates.
pub const LABEL_SCHEDULE: &str = "rstore.dev/backup-schedule";

/// Why a backup reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

/// What the backup controllers share: the store controller's context (its clients, with
/// the stores' credentials, its Event recorder and metrics), and which backups run now.
pub struct BackupContext {
    pub ctx: Arc<Context>,
    /// Per store (`namespace/name`): the Backup (`namespace/name`) streaming from it now.
    running: Mutex<HashMap<String, String>>,
    /// Per schedule: finished Backups at the last retention run, and when it ran.
    retention: Mutex<HashMap<String, (usize, Instant)>>,
    /// Per schedule: whether its archiver Deployment was last applied (true) or deleted.
    pub(crate) archivers: Mutex<HashMap<String, bool>>,
}

/// A store's turn to be backed up, held for the length of one attempt.
pub struct Turn<'a> {
    bctx: &'a BackupContext,
    store: String,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.bctx
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.store);
    }
}

fn backup_key(b: &Backup) -> String {
    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
}

impl BackupContext {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            running: Mutex::default(),
            retention: Mutex::default(),
            archivers: Mutex::default(),
        }
    }

    /// Store `store`'s turn for `backup`, unless another backup of it runs.
    pub fn try_turn(&self, store: &str, backup: &Backup) -> Option<Turn<'_>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(store) {
            return None;
        }
        running.insert(store.to_owned(), backup_key(backup));
        Some(Turn {
            bctx: self,
            store: store.to_owned(),
        })
    }

    /// Whether `backup` is streaming now, in this process.
    pub fn is_running(&self, backup: &Backup) -> bool {
        let key = backup_key(backup);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|b| *b == key)
    }

    /// Whether schedule `key` should run retention now: a Backup finished since the last
    /// run (`finished` changed), or `every` passed. Records the run.
    pub fn retention_due(&self, key: &str, finished: usize, every: Duration) -> bool {
        let mut map = self.retention.lock().unwrap_or_else(|e| e.into_inner());
        let due = match map.get(key) {
            Some((n, at)) => *n != finished || at.elapsed() >= every,
            None => true,
        };
        if due {
            map.insert(key.to_owned(), (finished, Instant::now()));
        }
        due
    }

    /// Retention of `key` failed: run it again at the next reconcile.
    pub fn retention_failed(&self, key: &str) {
        self.retention
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}
