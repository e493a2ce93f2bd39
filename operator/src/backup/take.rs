//! The reconcile of one `Backup`: wait for its store, then stream a backup from one member
//! into the destination, retrying with backoff, and say in status how it went.
//!
//! A `Backup` moves `Pending` → `Running` → `Succeeded`, or back to `Pending` after a failed
//! attempt (with `nextAttemptAt`) and to `Failed` after the last one. Each attempt is written
//! to status before it starts, so an operator that dies mid-attempt finds it `Running` and
//! counts it as failed. Two backups of one store never run at once: the second waits.
//!
//! The member streamed from is a healthy follower when there is one, so that the leader
//! keeps its CPU for writes; the member's backup is consistent either way (it passes a
//! linearizable read barrier first).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use rstore_api::rate::{RateUnderLoad, parse_rate};
use rstore_backup::save::{now_unix_ms, paced, save_stream};
use tracing::{info, warn};

use super::context::{BackupContext, Error, FIELD_MANAGER};
use super::destination;
use super::timing::{human_size, retry_delay};
use crate::crd::ReplicatedStore;
use crate::crd::backup::{Backup, BackupPhase, BackupStatus};
use crate::nodeapi::NodeApi;
use crate::observe::observe;

/// How often a `Backup` waiting for its store looks again.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What an attempt found.
enum Attempt {
    /// Saved: the new status.
    Saved(Box<BackupStatus>),
    /// Not started, for a reason that does not count as an attempt (the store is not ready,
    /// another backup of it runs): say so and look again later.
    Wait(String),
    /// Failed; `retry` when trying again may help.
    Failed { reason: String, retry: bool },
}

/// kube-runtime's entry point for `Backup`s.
pub async fn reconcile(backup: Arc<Backup>, bctx: Arc<BackupContext>) -> Result<Action, Error> {
    if finished(&backup) {
        return Ok(Action::await_change());
    }
    // The watch cache can lag behind this controller's own last status write (a reconcile
    // queued by the `Running` write may run after the final one): read it fresh, so that a
    // finished backup is never taken again, nor a live attempt mistaken for a dead one.
    let ns = backup.namespace().unwrap_or_default();
    let api: Api<Backup> = Api::namespaced(bctx.ctx.client.clone(), &ns);
    let Some(backup) = api.get_opt(&backup.name_any()).await.map_err(Error::Kube)? else {
        return Ok(Action::await_change());
    };
    let status = backup.status.clone().unwrap_or_default();
    match status.phase {
        Some(BackupPhase::Succeeded | BackupPhase::Failed) => return Ok(Action::await_change()),
        // Running with nobody running it: this operator (or its predecessor) died in the
        // middle of that attempt.
        Some(BackupPhase::Running) if !bctx.is_running(&backup) => {
            let reason = "the operator stopped during this attempt".to_owned();
            return settle(
                &bctx,
                &backup,
                status,
                Attempt::Failed {
                    reason,
                    retry: true,
                },
            )
            .await;
        }
        Some(BackupPhase::Running) => return Ok(Action::requeue(WAIT)),
        _ => {}
    }
    if let Some(at) = &status.next_attempt_at {
        let wait = at.0.duration_since(Timestamp::now());
        if wait > SignedDuration::ZERO {
            return Ok(Action::requeue(wait.unsigned_abs()));
        }
    }
    let rs = Api::<ReplicatedStore>::namespaced(bctx.ctx.client.clone(), &ns)
        .get_opt(&backup.spec.store)
        .await
        .map_err(Error::Kube)?;
    let Some(rs) = rs else {
        let msg = format!(
            "ReplicatedStore {ns}/{} does not exist: create it, or fix spec.store",
            backup.spec.store
        );
        return settle(&bctx, &backup, status, Attempt::Wait(msg)).await;
    };
    let key = format!("{ns}/{}", rs.name_any());
    let Some(_turn) = bctx.try_turn(&key, &backup) else {
        let msg = format!("waiting for another backup of {key} to finish");
        return settle(&bctx, &backup, status, Attempt::Wait(msg)).await;
    };
    let mut status = status;
    let outcome = attempt(&bctx, &backup, &rs, &mut status).await;
    settle(&bctx, &backup, status, outcome?).await
}

fn finished(backup: &Backup) -> bool {
    matches!(
        backup.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Succeeded | BackupPhase::Failed)
    )
}

/// One attempt: checks, `Running` in status, the stream saved. It counts in
/// `status.attempts` once it gets past what it waits for (the store, a member to stream
/// from), whether it then fails at the destination or in the stream.
async fn attempt(
    bctx: &BackupContext,
    backup: &Backup,
    rs: &ReplicatedStore,
    status: &mut BackupStatus,
) -> Result<Attempt, Error> {
    let ctx = &bctx.ctx;
    let ns = backup.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", rs.name_any());
    let Some(cluster_id) = rs.status.as_ref().and_then(|s| s.cluster_id.clone()) else {
        return Ok(Attempt::Wait(format!(
            "waiting for {key} to be initialized (it has no cluster id yet)"
        )));
    };
    let Some(nodes) = node_api(bctx, rs, &key) else {
        return Ok(Attempt::Wait(format!(
            "waiting for the operator to reach {key} (its credentials are not loaded yet)"
        )));
    };
    let obs = observe(&ctx.client, None, &nodes, rs, None, None)
        .await
        .map_err(Error::Kube)?;
    let Some((pod, base)) = source(&obs) else {
        return Ok(Attempt::Wait(format!(
            "waiting for a member of {key} to answer (none is ready and in the cluster)"
        )));
    };

    // An attempt from here on. Its rates and destination first: a rate the API server let
    // through but the node would refuse, wrong credentials or a missing bucket fail before
    // the store streams anything.
    status.attempts += 1;
    let rates = || -> Result<_, String> {
        let spec = &backup.spec;
        let max = spec.max_rate.as_deref().map(parse_rate).transpose();
        let under_load = spec
            .rate_under_load
            .as_deref()
            .map(str::parse::<RateUnderLoad>);
        Ok((
            max.map_err(|e| format!("maxRate: {e}"))?,
            under_load
                .transpose()
                .map_err(|e| format!("rateUnderLoad: {e}"))?,
        ))
    };
    let (rate, rate_under_load) = match rates() {
        Ok(r) => r,
        Err(reason) => {
            return Ok(Attempt::Failed {
                retry: false,
                reason,
            });
        }
    };
    let store = match destination::open(&ctx.client, &ns, &backup.spec.destination).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(Attempt::Failed {
                retry: true,
                reason: e.to_string(),
            });
        }
    };
    if let Err(e) = store.check().await {
        return Ok(Attempt::Failed {
            retry: true,
            reason: e.to_string(),
        });
    }

    status.phase = Some(BackupPhase::Running);
    status.next_attempt_at = None;
    status.message = Some(format!(
        "attempt {} of {}: streaming from {pod}",
        status.attempts, backup.spec.max_attempts
    ));
    write_status(bctx, backup, status).await?;

    let started = Instant::now();
    let started_ms = now_unix_ms();
    let resp = match nodes.backup(&base, rate_under_load).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(Attempt::Failed {
                retry: true,
                reason: format!("{pod} refused the backup: {e}"),
            });
        }
    };
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(stream_cluster), Some(revision)) = (
        header("x-rstore-cluster-id"),
        header("x-rstore-revision").and_then(|r| r.parse::<u64>().ok()),
    ) else {
        return Ok(Attempt::Failed {
            retry: true,
            reason: format!("{pod}'s answer lacks the backup headers"),
        });
    };
    if stream_cluster != cluster_id {
        return Ok(Attempt::Failed {
            retry: false,
            reason: format!(
                "{pod} belongs to cluster {stream_cluster}, not to {key}'s cluster {cluster_id}"
            ),
        });
    }
    let stream = resp
        .bytes_stream()
        .map(|r| r.map_err(|e| format!("the backup stream from {pod} broke off: {e}")));
    let stream = paced(stream, rate);
    let saved = save_stream(&store, &cluster_id, revision, started_ms, Box::pin(stream)).await;
    let seconds = started.elapsed().as_secs_f64();
    match saved {
        Ok(saved) => {
            let at = |ms: u64| {
                Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
                    .ok()
                    .map(Time)
            };
            info!(backup = %backup.name_any(), store = %key, object = %saved.url,
                revision = saved.header.revision, bytes = saved.size, seconds, "backup saved");
            ctx.metrics.backup.saved(
                &ns,
                &rs.name_any(),
                saved.header.revision,
                saved.size,
                seconds,
                saved.finished_unix_ms,
            );
            Ok(Attempt::Saved(Box::new(BackupStatus {
                phase: Some(BackupPhase::Succeeded),
                message: Some(format!(
                    "saved revision {} of {key} from {pod}",
                    saved.header.revision
                )),
                attempts: status.attempts,
                next_attempt_at: None,
                object: Some(saved.url),
                cluster_id: Some(saved.header.cluster_id.clone()),
                revision: Some(saved.header.revision),
                keys: Some(saved.header.keys),
                size_bytes: Some(saved.size),
                size: Some(human_size(saved.size)),
                sha256: Some(saved.sha256),
                started_at: at(saved.started_unix_ms),
                completed_at: at(saved.finished_unix_ms),
                duration: Some(if seconds < 10.0 {
                    format!("{seconds:.2}s")
                } else {
                    format!("{seconds:.0}s")
                }),
            })))
        }
        Err(e) => Ok(Attempt::Failed {
            retry: e.is_transient(),
            reason: e.to_string(),
        }),
    }
}

/// The member to stream from, and its base URL: a follower when one answers, else the leader.
fn source(obs: &crate::observe::Observation) -> Option<(String, String)> {
    let rank = |role: &str| match role {
        "follower" => Some(0),
        "leader" => Some(1),
        _ => None,
    };
    obs.pods
        .values()
        .filter(|p| p.ready)
        .filter_map(|p| {
            let node = p.node.as_ref()?;
            node.cluster_id.as_ref()?;
            Some((rank(&node.role)?, p.name.clone(), p.base_url()?))
        })
        .min_by_key(|(rank, name, _)| (*rank, name.clone()))
        .map(|(_, name, base)| (name, base))
}

/// The client the store's reconcile made (with its CA and the operator's token), or the
/// plaintext one.
fn node_api(bctx: &BackupContext, rs: &ReplicatedStore, key: &str) -> Option<NodeApi> {
    if rs.spec.tls.insecure_plaintext {
        return Some(bctx.ctx.nodes.clone());
    }
    bctx.ctx.cached_node_api(key)
}

/// Write what `outcome` means for `backup` into status, with an Event, and say when to
/// look again.
async fn settle(
    bctx: &BackupContext,
    backup: &Backup,
    mut status: BackupStatus,
    outcome: Attempt,
) -> Result<Action, Error> {
    let ns = backup.namespace().unwrap_or_default();
    let store = &backup.spec.store;
    let action = match outcome {
        Attempt::Saved(saved) => {
            let note = saved.message.clone().unwrap_or_default();
            status = *saved;
            write_status(bctx, backup, &status).await?;
            event(bctx, backup, EventType::Normal, "Succeeded", &note).await;
            bctx.ctx.metrics.backup.outcome(&ns, store, "succeeded");
            return Ok(Action::await_change());
        }
        Attempt::Wait(why) => {
            if status.message.as_deref() != Some(&why) || status.phase.is_none() {
                status.phase = Some(BackupPhase::Pending);
                status.message = Some(why);
                write_status(bctx, backup, &status).await?;
            }
            return Ok(Action::requeue(WAIT));
        }
        Attempt::Failed { reason, retry } => {
            let attempts = status.attempts.max(1);
            let last = !retry || attempts >= backup.spec.max_attempts;
            warn!(backup = %backup.name_any(), %store, attempts, %reason, "backup attempt failed");
            if last {
                status.phase = Some(BackupPhase::Failed);
                status.next_attempt_at = None;
                status.message = Some(format!(
                    "failed after {attempts} attempt{}: {reason}",
                    if attempts == 1 { "" } else { "s" }
                ));
                bctx.ctx.metrics.backup.outcome(&ns, store, "failed");
                event(
                    bctx,
                    backup,
                    EventType::Warning,
                    "Failed",
                    status.message.as_deref().unwrap_or_default(),
                )
                .await;
                Action::await_change()
            } else {
                let delay = retry_delay(attempts);
                let next = Timestamp::now()
                    .checked_add(SignedDuration::from_secs(delay.as_secs() as i64))
                    .unwrap_or_else(|_| Timestamp::now());
                status.phase = Some(BackupPhase::Pending);
                status.next_attempt_at = Some(Time(next));
                status.message = Some(format!(
                    "attempt {attempts} of {} failed, retrying in {}s: {reason}",
                    backup.spec.max_attempts,
                    delay.as_secs()
                ));
                bctx.ctx
                    .metrics
                    .backup
                    .outcome(&ns, store, "attempt_failed");
                event(
                    bctx,
                    backup,
                    EventType::Warning,
                    "AttemptFailed",
                    status.message.as_deref().unwrap_or_default(),
                )
                .await;
                Action::requeue(delay)
            }
        }
    };
    write_status(bctx, backup, &status).await?;
    Ok(action)
}

/// Status by server-side apply, so that fields not sent (an old `message`, a past
/// `nextAttemptAt`) are removed.
async fn write_status(
    bctx: &BackupContext,
    backup: &Backup,
    status: &BackupStatus,
) -> Result<(), Error> {
    let api: Api<Backup> = Api::namespaced(
        bctx.ctx.client.clone(),
        &backup.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": Backup::api_version(&()),
        "kind": Backup::kind(&()),
        "status": status,
    });
    api.patch_status(
        &backup.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

async fn event(bctx: &BackupContext, backup: &Backup, type_: EventType, reason: &str, note: &str) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(e) = bctx
        .ctx
        .recorder
        .publish(&ev, &backup.object_ref(&()))
        .await
    {
        warn!(error = %e, reason, "cannot publish an Event");
    }
}
