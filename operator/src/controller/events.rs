//! Events about a `ReplicatedStore`, published through the context's recorder. A failure to
//! publish is logged, never fatal: an Event is a report, not a step.

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use crate::controller::context::Context;
use crate::crd::ReplicatedStore;

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
