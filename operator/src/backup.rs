//! Backups of stores: the controllers of `Backup` ([`take`]) and `BackupSchedule`
//! ([`schedule`]), which run beside the store controller in `operator run`.
//!
//! The operator itself streams each backup from a member (`GET /v1/cluster/backup`, with its
//! admin token for the store) into the destination through [`rstore_backup::save`], the same
//! path `node backup save` takes, so a backup needs no pod of its own and no credentials in
//! the store's pods. [`destination`] opens a destination with its credentials Secret;
//! [`archiver`] builds the archiver a schedule with `spec.archive` runs for point-in-time
//! recovery; [`timing`] holds the pure rules of schedules, staleness and retries; [`context`] what the
//! two controllers share.

pub mod archiver;
pub mod context;
pub mod destination;
pub mod schedule;
pub mod take;
pub mod timing;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::warn;

pub use context::{BackupContext, Error, FIELD_MANAGER, LABEL_SCHEDULE};

use crate::controller::Context;
use crate::crd::backup::{Backup, BackupSchedule};

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
