//! The reconcile of one `BackupSchedule`: create a `Backup` when one is due, apply retention
//! to the objects in the destination, keep a bounded history of `Backup` resources, and say
//! in status when the last good backup was taken and whether that is too long ago.
//!
//! Retention ([`rstore_backup::retention`]) reads the manifests in the store itself, not the
//! `Backup` resources: a backup counts as good only when its manifest says `complete` and its
//! object's size matches, so a failed or cut-off save is never counted, and the newest good
//! backup is never deleted. Archived segments go once the oldest kept backup covers them. It
//! runs after each finished backup and every ten minutes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use rstore_backup::retention::{self, Policy, SegmentEntry};
use tracing::{info, warn};

use super::context::{BackupContext, Error, FIELD_MANAGER, LABEL_SCHEDULE};
use super::timing::{Schedule, parse_age, stale};
use super::{archiver, destination};
use crate::crd::ReplicatedStore;
use crate::crd::backup::{
    Backup, BackupPhase, BackupSchedule, BackupScheduleStatus, BackupSpec, LastBackup, LastFailure,
};

/// Retention runs at least this often, besides after each finished backup.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// The longest a schedule waits before looking again (status stays current).
const IDLE: Duration = Duration::from_secs(60);

/// kube-runtime's entry point for `BackupSchedule`s.
pub async fn reconcile(
    sched: Arc<BackupSchedule>,
    bctx: Arc<BackupContext>,
) -> Result<Action, Error> {
    let ns = sched.namespace().unwrap_or_default();
    let name = sched.name_any();
    let now = Timestamp::now();
    let created = sched
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let old = sched.status.clone().unwrap_or_default();
    let mut status = BackupScheduleStatus {
        observed_generation: sched.metadata.generation,
        last_schedule_time: old.last_schedule_time.clone(),
        kept_backups: old.kept_backups,
        message: old.message.clone(),
        ..BackupScheduleStatus::default()
    };
    let invalid = |status: &mut BackupScheduleStatus, msg: String| {
        status.conditions = vec![condition(&old, "Ready", false, "InvalidSpec", &msg, now)];
        status.message = Some(msg);
    };
    let schedule = match Schedule::parse(&sched.spec.schedule) {
        Ok(s) => s,
        Err(msg) => {
            invalid(&mut status, msg);
            write_status(&bctx, &sched, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let max_age = match sched.spec.retention.max_age.as_deref().map(parse_age) {
        Some(Err(msg)) => {
            invalid(&mut status, msg);
            write_status(&bctx, &sched, &status).await?;
            return Ok(Action::await_change());
        }
        Some(Ok(age)) => Some(age),
        None => None,
    };
    let period = schedule.period(now).unwrap_or(Duration::from_secs(86_400));

    // Its Backups, newest first.
    let api: Api<Backup> = Api::namespaced(bctx.ctx.client.clone(), &ns);
    let mut backups = api
        .list(&ListParams::default().labels(&format!("{LABEL_SCHEDULE}={name}")))
        .await
        .map_err(Error::Kube)?
        .items;
    backups.sort_by_key(|b| std::cmp::Reverse(b.metadata.creation_timestamp.clone()));
    let phase = |b: &Backup| b.status.as_ref().and_then(|s| s.phase);
    let finished =
        |b: &Backup| matches!(phase(b), Some(BackupPhase::Succeeded | BackupPhase::Failed));
    let last_good = backups
        .iter()
        .find(|b| phase(b) == Some(BackupPhase::Succeeded));
    status.last_successful = last_good.and_then(|b| {
        let s = b.status.as_ref()?;
        Some(LastBackup {
            name: b.name_any(),
            time: s.completed_at.clone()?,
            revision: s.revision,
            size_bytes: s.size_bytes,
            duration: s.duration.clone(),
            object: s.object.clone(),
        })
    });
    // Kept across history pruning: the newest success may outlive its Backup resource.
    if status.last_successful.is_none() {
        status.last_successful = old.last_successful.clone();
    }
    status.last_failure = backups
        .iter()
        .take_while(|b| phase(b) != Some(BackupPhase::Succeeded))
        .find(|b| phase(b) == Some(BackupPhase::Failed))
        .map(|b| LastFailure {
            name: b.name_any(),
            time: b.metadata.creation_timestamp.clone().unwrap_or(Time(now)),
            reason: b
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default(),
        });

    // A backup due now, unless one is still under way.
    let active = backups.iter().any(|b| !finished(b));
    let since = old.last_schedule_time.as_ref().map_or(created, |t| t.0);
    if !sched.spec.suspend
        && !active
        && let Some(due) = schedule.due(since, now)
    {
        let backup_name = create_backup(&api, &sched, due).await?;
        info!(schedule = %name, backup = %backup_name, "backup due");
        status.last_schedule_time = Some(Time(due));
        status.message = Some(format!("started backup {backup_name}"));
    }
    status.next_schedule_time = (!sched.spec.suspend)
        .then(|| schedule.next_after(now))
        .flatten()
        .map(Time);

    // Retention, when a backup finished since the last run, or every ten minutes.
    let finished_count = backups.iter().filter(|b| finished(b)).count();
    if bctx.retention_due(&format!("{ns}/{name}"), finished_count, RETENTION_EVERY) {
        match retain(&bctx, &sched, max_age, period, now).await {
            Ok((kept, deleted)) => {
                status.kept_backups = Some(kept);
                if !deleted.is_empty() {
                    let note = format!(
                        "retention deleted {} object{} (backups, archived segments): {}",
                        deleted.len(),
                        if deleted.len() == 1 { "" } else { "s" },
                        deleted.join(", ")
                    );
                    status.message = Some(note.clone());
                    event(&bctx, &sched, EventType::Normal, "Retention", &note).await;
                }
            }
            Err(msg) => {
                bctx.retention_failed(&format!("{ns}/{name}"));
                status.message = Some(format!("retention did not run: {msg}"));
                event(&bctx, &sched, EventType::Warning, "RetentionFailed", &msg).await;
            }
        }
    }

    // History: the newest `historyLimit` finished Backups are kept (their objects stay).
    for old_backup in backups
        .iter()
        .filter(|b| finished(b))
        .skip(sched.spec.history_limit as usize)
    {
        if let Err(e) = api
            .delete(&old_backup.name_any(), &DeleteParams::default())
            .await
        {
            warn!(backup = %old_backup.name_any(), error = %e, "cannot prune an old Backup");
        }
    }

    // The archiver, with `spec.archive`, once a full backup exists to start after.
    let archiving = archiver(&bctx, &sched, status.last_successful.is_some()).await?;

    // Stale: no success for twice the period.
    let last_ok = status.last_successful.as_ref().map(|l| l.time.0);
    let is_stale = stale(last_ok, created, period, now);
    let stale_msg = if is_stale {
        format!(
            "no backup succeeded for more than twice the schedule's period ({}s){}",
            period.as_secs(),
            status
                .last_failure
                .as_ref()
                .map(|f| format!("; the last failure: {}", f.reason))
                .unwrap_or_default()
        )
    } else {
        "a backup succeeded within twice the schedule's period".to_owned()
    };
    let was_stale = old
        .conditions
        .iter()
        .any(|c| c.type_ == "Stale" && c.status == "True");
    if is_stale && !was_stale {
        event(&bctx, &sched, EventType::Warning, "Stale", &stale_msg).await;
    }
    let mut conditions = vec![
        condition(
            &old,
            "Ready",
            true,
            "Scheduled",
            "the schedule is valid",
            now,
        ),
        condition(
            &old,
            "Stale",
            is_stale,
            if is_stale {
                "NoRecentBackup"
            } else {
                "RecentBackup"
            },
            &stale_msg,
            now,
        ),
    ];
    // The archiver's availability counts once it should be running (applied).
    let archiver_available = archiving.as_ref().filter(|a| a.applied).map(|a| a.running);
    bctx.ctx
        .metrics
        .backup
        .archiver(&ns, &sched.spec.store, &name, archiver_available);
    if let Some(a) = archiving {
        conditions.push(condition(
            &old,
            "Archiving",
            a.running,
            a.reason,
            &a.message,
            now,
        ));
    }
    status.conditions = conditions;
    bctx.ctx.metrics.backup.schedule(
        &ns,
        &sched.spec.store,
        &name,
        period.as_secs_f64(),
        is_stale,
        status.kept_backups,
    );

    if status != old {
        write_status(&bctx, &sched, &status).await?;
    }
    let until_next = status
        .next_schedule_time
        .as_ref()
        .map(|t| t.0.duration_since(now).unsigned_abs())
        .unwrap_or(IDLE);
    Ok(Action::requeue(
        until_next.clamp(Duration::from_secs(1), IDLE),
    ))
}

/// Where a schedule's archiver stands: its `Archiving` condition.
struct Archiving {
    /// Its pod is available.
    running: bool,
    /// Its Deployment is applied: it should be running.
    applied: bool,
    reason: &'static str,
    message: String,
}

/// Applies or deletes the schedule's archiver; with `spec.archive`, where it stands:
/// whether it runs, why, and what to do.
async fn archiver(
    bctx: &BackupContext,
    sched: &BackupSchedule,
    have_backup: bool,
) -> Result<Option<Archiving>, Error> {
    let ns = sched.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", sched.name_any());
    let api: Api<Deployment> = Api::namespaced(bctx.ctx.client.clone(), &ns);
    let name = archiver::name(sched);
    if sched.spec.archive.is_none() {
        let applied = bctx
            .archivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if applied != Some(false) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
            bctx.archivers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, false);
        }
        return Ok(None);
    }
    let rs = Api::<ReplicatedStore>::namespaced(bctx.ctx.client.clone(), &ns)
        .get_opt(&sched.spec.store)
        .await
        .map_err(Error::Kube)?;
    let initialized = |rs: &ReplicatedStore| {
        rs.status
            .as_ref()
            .and_then(|s| s.cluster_id.as_ref())
            .is_some()
    };
    let Some(rs) = rs.filter(initialized) else {
        return Ok(Some(Archiving {
            running: false,
            applied: false,
            reason: "WaitingForStore",
            message: format!(
                "waiting for ReplicatedStore {ns}/{} to be initialized",
                sched.spec.store
            ),
        }));
    };
    if !have_backup {
        return Ok(Some(Archiving {
            running: false,
            applied: false,
            reason: "WaitingForBackup",
            message: "the archive starts after the schedule's first successful backup".to_owned(),
        }));
    }
    let Some(deployment) = archiver::deployment(sched, &rs) else {
        return Ok(None);
    };
    let live = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await
        .map_err(Error::Kube)?;
    bctx.archivers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, true);
    let available = live
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    Ok(Some(if available > 0 {
        Archiving {
            running: true,
            applied: true,
            reason: "ArchiverRunning",
            message: format!(
                "{name} archives the change stream into {} (its lag: rstore_archive_lag_seconds on port 9479)",
                sched.spec.destination.url
            ),
        }
    } else {
        Archiving {
            running: false,
            applied: true,
            reason: "ArchiverNotReady",
            message: format!(
                "{name} is not running: kubectl describe deployment {name}; kubectl logs deployment/{name}"
            ),
        }
    }))
}

/// Create the Backup of occurrence `due`, owned by the schedule; its name is the schedule's
/// and the occurrence's, so that a retry after a lost answer does not make two.
async fn create_backup(
    api: &Api<Backup>,
    sched: &BackupSchedule,
    due: Timestamp,
) -> Result<String, Error> {
    let stamp = due.strftime("%Y%m%d%H%M").to_string();
    let name = format!("{}-{stamp}", sched.name_any());
    let mut backup = Backup::new(
        &name,
        BackupSpec {
            store: sched.spec.store.clone(),
            destination: sched.spec.destination.clone(),
            max_attempts: sched.spec.max_attempts,
            max_rate: sched.spec.max_rate.clone(),
            rate_under_load: sched.spec.rate_under_load.clone(),
        },
    );
    backup.metadata.namespace = sched.namespace();
    backup.metadata.labels = Some(
        [(LABEL_SCHEDULE.to_owned(), sched.name_any())]
            .into_iter()
            .collect(),
    );
    backup.metadata.owner_references = sched.controller_owner_ref(&()).map(|o| vec![o]);
    match api.create(&PostParams::default(), &backup).await {
        Ok(_) => Ok(name),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(name),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Apply retention to the store's backups in the destination: how many good ones are kept,
/// and the objects deleted.
async fn retain(
    bctx: &BackupContext,
    sched: &BackupSchedule,
    max_age: Option<Duration>,
    period: Duration,
    now: Timestamp,
) -> Result<(u32, Vec<String>), String> {
    let ns = sched.namespace().unwrap_or_default();
    let rs = Api::<ReplicatedStore>::namespaced(bctx.ctx.client.clone(), &ns)
        .get_opt(&sched.spec.store)
        .await
        .map_err(|e| e.to_string())?;
    // The store's own cluster: a restored store's backups are kept apart from its source's.
    let Some(cluster_id) = rs.and_then(|rs| rs.status?.cluster_id) else {
        return Ok((0, Vec::new()));
    };
    let store = destination::open(&bctx.ctx.client, &ns, &sched.spec.destination)
        .await
        .map_err(|e| e.to_string())?;
    let listed = store
        .list_backups(Some(&cluster_id))
        .await
        .map_err(|e| e.to_string())?;
    let entries: Vec<_> = listed.iter().map(|l| l.entry()).collect();
    let policy = Policy {
        keep_last: sched.spec.retention.keep_last.map(|k| k as usize),
        max_age,
        // An object without a manifest for this long was cut off, not still being written.
        abandoned_after: Some((period * 2).max(Duration::from_secs(3600))),
    };
    let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
    let doomed = retention::to_delete(&entries, &policy, now_ms);
    let mut deleted = Vec::new();
    for object in &doomed {
        match store.delete_backup(object).await {
            Ok(()) => deleted.push(object.clone()),
            Err(e) => warn!(%object, error = %e, "retention could not delete a backup"),
        }
    }
    // The archive's segments go with the full backups they extend (when there is an archive).
    let kept: Vec<u64> = listed
        .iter()
        .filter(|l| l.state() == retention::State::Good && !doomed.contains(&l.object))
        .map(|l| l.name.revision)
        .collect();
    let segments: Vec<_> = store
        .list_segments(&cluster_id)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|s| SegmentEntry {
            name: s.object.clone(),
            first: s.name.first,
            last: s.name.last,
        })
        .collect();
    let old_segments = retention::segments_to_delete(&segments, &kept);
    for object in &old_segments {
        match store.delete_backup(object).await {
            Ok(()) => deleted.push(object.clone()),
            Err(e) => warn!(%object, error = %e, "retention could not delete a segment"),
        }
    }
    Ok((u32::try_from(kept.len()).unwrap_or(u32::MAX), deleted))
}

/// A condition of `type_`, keeping its transition time while its status stays the same.
fn condition(
    old: &BackupScheduleStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Condition {
    let status = if value { "True" } else { "False" };
    let since = old
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
        observed_generation: None,
    }
}

async fn write_status(
    bctx: &BackupContext,
    sched: &BackupSchedule,
    status: &BackupScheduleStatus,
) -> Result<(), Error> {
    let api: Api<BackupSchedule> = Api::namespaced(
        bctx.ctx.client.clone(),
        &sched.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": BackupSchedule::api_version(&()),
        "kind": BackupSchedule::kind(&()),
        "status": status,
    });
    api.patch_status(
        &sched.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

async fn event(
    bctx: &BackupContext,
    sched: &BackupSchedule,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "BackupSchedule".into(),
        secondary: None,
    };
    if let Err(e) = bctx.ctx.recorder.publish(&ev, &sched.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish an Event");
    }
}
