//! Status stage, after the status was computed from the observation and the step
//! ([`crate::status::compute`], pure): the Warning Events that announce news (a refusal, a
//! loss of quorum, a store that cannot progress), the member metrics, and the one write of
//! `status`, made only when it changed. Every Event of the pipeline is published here
//! ([`event`], [`publish`]); a failure to publish is logged, never fatal: an Event is a
//! report, not a step.

use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::controller::context::Context;
use crate::crd::{MemberRole, Phase, ReplicatedStore, ReplicatedStoreStatus};
use crate::metrics::MemberCounts;
use crate::planner::{Observed, Policy, Step, member_caught_up};
use crate::resources::Names;
use crate::status::{DEGRADED, PROGRESSING, RESTORE_FAILED};

/// Why status could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The status patch failed.
    #[error("Kubernetes API: {0}")]
    Write(#[source] kube::Error),

    /// The status could not be encoded.
    #[error("JSON: {0}")]
    Encode(#[source] serde_json::Error),
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Write(_) => "kube",
            Self::Encode(_) => "internal",
        }
    }
}

/// Why a store cannot progress before any step is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// The spec asks for something impossible.
    InvalidSpec,
    /// Its certificates or tokens cannot be issued or read yet (for example cert-manager has
    /// not issued the members' certificate).
    Credentials,
    /// The backup it is created from is not ready (`spec.bootstrap.fromBackup.backup`).
    Backup,
}

/// Reports the pass that chose `step`, whose `status` was computed: a Warning Event when a
/// refusal or a loss of quorum is new, the member metrics, and status. Returns whether status
/// was written.
pub async fn report(
    ctx: &Context,
    rs: &ReplicatedStore,
    status: ReplicatedStoreStatus,
    observed: &Observed,
    step: &Step,
) -> Result<bool, Error> {
    let names = Names::of(rs);
    report_refusal(ctx, rs, step, &status).await;
    let counts = member_counts(observed, &ctx.settings.policy);
    ctx.metrics
        .cluster(&names.namespace, &names.name, counts, status.phase);
    write_status(ctx, rs, status).await
}

/// Reports a store that cannot progress: `Progressing=False` with the reason and what to do,
/// a Warning Event when that is news, and no step. Returns the refusal and whether status was
/// written.
pub async fn stuck(
    ctx: &Context,
    rs: &ReplicatedStore,
    why: Stuck,
    message: &str,
) -> Result<(Step, bool), Error> {
    let (reason, advice, phase) = match why {
        Stuck::Backup => (
            "BackupPending",
            "no member starts until the backup can be restored; retrying",
            Phase::Pending,
        ),
        Stuck::InvalidSpec => (
            "InvalidSpec",
            "fix the spec, nothing is changed until then",
            Phase::Degraded,
        ),
        Stuck::Credentials => (
            "CredentialsPending",
            "no member starts or changes until the credentials exist; retrying",
            if rs
                .status
                .as_ref()
                .and_then(|s| s.cluster_id.as_ref())
                .is_some()
            {
                Phase::Degraded
            } else {
                Phase::Pending
            },
        ),
    };
    let step = Step::Refuse {
        reason: message.to_owned(),
    };
    let mut status = rs.status.clone().unwrap_or_default();
    status.observed_generation = rs.metadata.generation;
    status.phase = Some(phase);
    // The transition time stays while the condition does, so a repeat writes nothing.
    let now = status
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING && c.status == "False" && c.reason == reason)
        .map_or_else(
            || Time(k8s_openapi::jiff::Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    status.conditions.retain(|c| c.type_ != PROGRESSING);
    status.conditions.push(Condition {
        type_: PROGRESSING.into(),
        status: "False".into(),
        reason: reason.into(),
        message: format!("{message}; {advice}"),
        last_transition_time: now,
        observed_generation: rs.metadata.generation,
    });
    if rs.status.as_ref() != Some(&status) {
        event(ctx, rs, EventType::Warning, reason, message).await;
    }
    let written = write_status(ctx, rs, status).await?;
    Ok((step, written))
}

/// A Warning Event when a refusal, a loss of quorum or a failed restore is new (not on every
/// requeue).
async fn report_refusal(
    ctx: &Context,
    rs: &ReplicatedStore,
    step: &Step,
    status: &ReplicatedStoreStatus,
) {
    let restore_failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING && c.reason == RESTORE_FAILED);
    let (reason, message) = match step {
        _ if restore_failed.is_some() => (
            RESTORE_FAILED,
            restore_failed
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        ),
        Step::Refuse { reason } => ("StepRefused", reason.clone()),
        Step::Degraded { .. } => (
            "QuorumLost",
            status
                .conditions
                .iter()
                .find(|c| c.type_ == DEGRADED)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        ),
        _ => return,
    };
    let before = rs.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == PROGRESSING)
            .map(|c| (c.reason.clone(), c.message.clone()))
    });
    let now = status
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING)
        .map(|c| (c.reason.clone(), c.message.clone()));
    if before != now {
        warn!(namespace = rs.namespace().unwrap_or_default(), name = rs.name_any(), %message, "{reason}");
        event(ctx, rs, EventType::Warning, reason, &message).await;
    }
}

fn member_counts(observed: &Observed, policy: &Policy) -> MemberCounts {
    let mut counts = MemberCounts::default();
    if let Some(c) = &observed.cluster {
        for m in &c.members {
            match (member_caught_up(m, c.leader_id, policy), m.role) {
                (false, _) => counts.unhealthy += 1,
                (true, MemberRole::Voter) => counts.healthy += 1,
                (true, MemberRole::Learner) => counts.learner += 1,
            }
        }
    }
    counts
}

/// Publishes an Event about `rs`.
pub async fn event(
    ctx: &Context,
    rs: &ReplicatedStore,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    publish(ctx, rs, type_, reason, note, None).await;
}

/// Publishes an Event about `rs`, naming the pod it concerns as the related object. The
/// recorder folds repeats of one (reason, related object) into a series; naming the pod keeps
/// a change to each member its own Event.
pub async fn publish(
    ctx: &Context,
    rs: &ReplicatedStore,
    type_: EventType,
    reason: &str,
    note: &str,
    pod: Option<String>,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.into(),
        secondary: pod.map(|name| k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: rs.namespace(),
            ..Default::default()
        }),
    };
    if let Err(e) = ctx.recorder.publish(&ev, &rs.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish an Event");
    }
}

/// Writes status when it differs from what the resource holds.
///
/// Why a merge patch and not server-side apply (as controller-rs does): kube-fake-client
/// 0.3.0, the in-memory API server of `operator local` and of the reconcile tests, applies a
/// `Patch::Apply` as a JSON merge patch (`mock_service.rs`, `apply_patch`: "treat all
/// merge-style patches the same"). A field the operator stops sending, such as `leader` once
/// no leader is known, would then stay on the in-memory server while a real one removes it:
/// the two planes would disagree on the very fields that matter when a cluster is in
/// trouble. A merge patch behaves the same on both when every field that went away is sent as
/// null; those are the status fields of the CRD's schema that `status` lacks, derived from the
/// Rust types ([`status_fields`]), not kept by hand.
async fn write_status(
    ctx: &Context,
    rs: &ReplicatedStore,
    status: ReplicatedStoreStatus,
) -> Result<bool, Error> {
    if rs.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let names = Names::of(rs);
    let api = Api::<ReplicatedStore>::namespaced(ctx.client.clone(), &names.namespace);
    let mut value = serde_json::to_value(&status).map_err(Error::Encode)?;
    if let Some(map) = value.as_object_mut() {
        for key in status_fields() {
            map.entry(key.as_str()).or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(
        &names.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": value })),
    )
    .await
    .map_err(Error::Write)?;
    Ok(true)
}

/// Every top-level field of `status` in the CRD's schema.
fn status_fields() -> &'static [String] {
    static FIELDS: OnceLock<Vec<String>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let crd = crate::crd::crd();
        crd.spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref()?.get("status")?.properties.as_ref())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_field_can_be_removed() {
        let fields = status_fields();
        for f in [
            "observedGeneration",
            "phase",
            "conditions",
            "leader",
            "term",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
        let full = serde_json::to_value(ReplicatedStoreStatus {
            observed_generation: Some(1),
            phase: Some(Phase::Available),
            leader: Some("db-0".into()),
            term: Some(1),
            cluster_id: Some("c".into()),
            credentials_secret: Some("s".into()),
            ..ReplicatedStoreStatus::default()
        })
        .unwrap();
        for key in full.as_object().unwrap().keys() {
            assert!(fields.contains(key), "{key} is not in the schema's status");
        }
    }
}
