//! Backups of stores: the controllers of `Backup` ([`take`]) and `BackupSchedule`
//! ([`schedule`]), which run beside the store controller in `operator run`.
//!
//! The operator itself streams each backup from a member (`GET /v1/cluster/backup`, with its
//! admin token for the store) into the destination through [`rstore_backup::save`], the same
//! path `node backup save` takes, so a backup needs no pod of its own and no credentials in
//! the store's pods. [`destination`] opens a destination with its credentials Secret;
//! [`timing`] holds the pure rules of schedules, staleness and retries.

pub mod destination;
pub mod schedule;
pub mod take;
pub mod timing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::warn;

use crate::controller::Context;
use crate::crd::backup::{Backup, BackupSchedule};

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

/// Runs the `Backup` and `BackupSchedule` controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let (backups, schedules) = match &namespace {
        Some(ns) => (
            Api::<Backup>::namespaced(client.clone(), ns),
            Api::<BackupSchedule>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<Backup>::all(client.clone()),
            Api::<BackupSchedule>::all(client),
        ),
    };
    let bctx = Arc::new(BackupContext::new(ctx));
    let backup_errors = |b: Arc<Backup>, e: &Error, _: Arc<BackupContext>| {
        warn!(backup = %b.name_any(), error = %e, "backup reconcile failed");
        Action::requeue(Duration::from_secs(5))
    };
    let schedule_errors = |s: Arc<BackupSchedule>, e: &Error, _: Arc<BackupContext>| {
        warn!(schedule = %s.name_any(), error = %e, "backup schedule reconcile failed");
        Action::requeue(Duration::from_secs(5))
    };
    let backup_loop = Controller::new(backups.clone(), watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone())
        .run(take::reconcile, backup_errors, bctx.clone())
        .for_each(|_| async {});
    let schedule_loop = Controller::new(schedules, watcher::Config::default())
        .owns(backups, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(schedule::reconcile, schedule_errors, bctx)
        .for_each(|_| async {});
    futures::join!(backup_loop, schedule_loop);
}
