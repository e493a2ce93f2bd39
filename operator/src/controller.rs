//! The reconcile of one `ReplicatedStore`, as a pipeline, and the kube-runtime controller that
//! runs it.
//!
//! [`reconcile_once`] is the same function whether it runs under kube-runtime's `Controller`
//! against a real API server ([`run`]) or under the local control plane against the in-memory
//! one. Its stages run in this order, each called from the body of `pipeline`:
//!
//! 1. [`validate`]: the spec the store runs with and the planner's target, without a client;
//! 2. [`build`]: every object the store should own, without a client;
//! 3. [`apply`]: the owned objects, the credential Secrets ([`secrets`]) and, for a store
//!    created from a backup, what its first pod restores ([`bootstrap`]) written;
//! 4. observe: the pods and nodes ([`crate::observe`]), reduced to the planner's input with
//!    the health clocks ([`crate::observe::health`]);
//! 5. plan: the one next safe step ([`crate::planner::plan`], pure);
//! 6. [`act`]: that step performed (a StatefulSet change, a node admin call, a pod deletion);
//! 7. status: computed ([`crate::status::compute`], pure), then [`report`]ed: Events, and
//!    status written only when it changed.
//!
//! Each stage has its own error type, keeping its source; [`Error`] is their sum.
//! [`context`] holds what every reconcile shares; [`report`] publishes every Event.

pub mod act;
pub mod apply;
pub mod bootstrap;
pub mod build;
pub mod context;
pub mod report;
pub mod secrets;
pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tracing::warn;

pub use context::{Caches, Context, Settings};

use crate::controller::report::{Stuck, event};
use crate::crd::ReplicatedStore;
use crate::metrics::MemberCounts;
use crate::observe::observe;
use crate::planner::{Step, plan};
use crate::resources::{LABEL_INSTANCE, LABEL_NAME, Names};
use crate::status;

/// Why a reconcile failed; it is retried from a fresh observation ([`error_policy`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the StatefulSet, its pods or the nodes' answers failed at the API server.
    #[error("Kubernetes API: {0}")]
    Observe(#[source] kube::Error),

    /// Writing the owned objects or the credential Secrets failed.
    #[error(transparent)]
    Apply(#[from] apply::Error),

    /// No client for the store's nodes could be made from its credentials
    /// ([`NodeApi::secure`]'s message: that interface is kept as it is).
    #[error("credentials: {0}")]
    NodeClient(String),

    /// The planned step failed.
    #[error(transparent)]
    Act(#[from] act::Error),

    /// Status could not be written.
    #[error(transparent)]
    Report(#[from] report::Error),
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Observe(_) | Self::Apply(_) => "kube",
            Self::NodeClient(_) => "credentials",
            Self::Act(e) => e.reason(),
            Self::Report(e) => e.reason(),
        }
    }
}

/// What one reconcile did, for callers that drive the loop themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The step the planner chose.
    pub step: Step,
    /// Whether status was written.
    pub status_written: bool,
}

/// kube-runtime's entry point.
pub async fn reconcile(rs: Arc<ReplicatedStore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let outcome = reconcile_once(&rs, &ctx).await?;
    Ok(match outcome.step {
        Step::Done | Step::Refuse { .. } | Step::Degraded { .. } => {
            Action::requeue(ctx.settings.requeue_idle)
        }
        _ => Action::requeue(ctx.settings.requeue_busy),
    })
}

/// Requeue after a failed reconcile: the step is retried from a fresh observation.
pub fn error_policy(rs: Arc<ReplicatedStore>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = rs.namespace().unwrap_or_default(), name = rs.name_any(), error = %err, "reconcile failed");
    Action::requeue(ctx.settings.requeue_busy * 2)
}

/// One pass of the pipeline, with its metrics.
pub async fn reconcile_once(rs: &ReplicatedStore, ctx: &Context) -> Result<Outcome, Error> {
    let start = Instant::now();
    let result = pipeline(rs, ctx).await;
    let seconds = start.elapsed().as_secs_f64();
    match &result {
        Ok(o) => {
            let label = match o.step {
                Step::Done => "done",
                Step::Wait { .. } => "wait",
                Step::Refuse { .. } => "refused",
                Step::Degraded { .. } => "degraded",
                _ => "action",
            };
            ctx.metrics.reconciled(label, seconds);
        }
        Err(e) => {
            ctx.metrics.reconciled("error", seconds);
            ctx.metrics.error(e.reason());
        }
    }
    result
}

/// The stages, in order. A store that cannot progress (an invalid spec, credentials not there
/// yet) is reported as stuck instead of failing.
async fn pipeline(rs: &ReplicatedStore, ctx: &Context) -> Result<Outcome, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(deleted(ctx, rs));
    }
    let names = Names::of(rs);
    let key = format!("{}/{}", names.namespace, names.name);
    let existing = match ctx.caches.get() {
        Some(c) => c
            .statefulsets
            .get(&ObjectRef::new(names.statefulset()).within(&names.namespace))
            .map(|s| (*s).clone()),
        None => Api::<StatefulSet>::namespaced(ctx.client.clone(), &names.namespace)
            .get_opt(names.statefulset())
            .await
            .map_err(Error::Observe)?,
    };

    // 1. Validate.
    warn_legacy_plaintext(ctx, rs, existing.as_ref(), &key).await;
    let valid = match validate::validate(rs, existing.as_ref()) {
        Ok(valid) => valid,
        Err(e) => return stuck(ctx, rs, Stuck::InvalidSpec, &e.to_string()).await,
    };
    let rs = valid.rs.as_ref();

    // 2. Build.
    let built = build::build(&valid, std::env::var("POD_NAMESPACE").ok().as_deref());

    // 3. Apply, with certificates for every pod the StatefulSet has or is about to have.
    let pods = built.desired.total().max(replicas_of(existing.as_ref()));
    let creds = match apply::apply(ctx, rs, &built, &key, pods).await {
        Ok(creds) => creds,
        Err(e) if e.credentials_pending() => {
            ctx.metrics.error("credentials");
            return stuck(ctx, rs, Stuck::Credentials, &e.to_string()).await;
        }
        Err(e) if e.bootstrap_pending() => {
            return stuck(ctx, rs, Stuck::Backup, &e.to_string()).await;
        }
        Err(e) => return Err(e.into()),
    };

    // 4. Observe: the pods and every node, reduced to the planner's input.
    ctx.metrics.certificate_expiry(
        &names.namespace,
        &names.name,
        creds.as_ref().and_then(|c| c.expires),
    );
    let nodes = ctx
        .node_api(&key, creds.as_ref())
        .map_err(Error::NodeClient)?;
    let cached_pods = ctx.caches.get().map(|c| &c.pods);
    let credentials_secret = creds.as_ref().map(|_| names.credentials_secret());
    let obs = observe(
        &ctx.client,
        cached_pods,
        &nodes,
        rs,
        existing,
        credentials_secret,
    )
    .await
    .map_err(Error::Observe)?;
    let observed = ctx.clocks.observed(&key, rs, &obs, &ctx.settings.policy);

    // 5. Plan.
    let step = plan(&built.desired, &observed, &ctx.settings.policy);

    // 6. Act.
    let acted = act::act(ctx, rs, &built, &nodes, &obs, &step).await;

    // 7. Status, computed and written even when the step failed, then the step's error.
    let status = status::compute(
        rs,
        &built.desired,
        &obs,
        &observed,
        &step,
        &ctx.settings.policy,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let status_written = report::report(ctx, rs, status, &observed, &step).await?;
    acted?;
    Ok(Outcome {
        step,
        status_written,
    })
}

/// A store being deleted: owner references delete the children, and nothing of ours
/// outlives the resource but its metrics, cleared here.
fn deleted(ctx: &Context, rs: &ReplicatedStore) -> Outcome {
    let names = Names::of(rs);
    ctx.metrics
        .cluster(&names.namespace, &names.name, MemberCounts::default(), None);
    ctx.metrics
        .certificate_expiry(&names.namespace, &names.name, None);
    Outcome {
        step: Step::Done,
        status_written: false,
    }
}

async fn stuck(
    ctx: &Context,
    rs: &ReplicatedStore,
    why: Stuck,
    message: &str,
) -> Result<Outcome, Error> {
    let (step, status_written) = report::stuck(ctx, rs, why, message).await?;
    Ok(Outcome {
        step,
        status_written,
    })
}

/// Warns once per store (log and Event) that it keeps running in plaintext.
async fn warn_legacy_plaintext(
    ctx: &Context,
    rs: &ReplicatedStore,
    existing: Option<&StatefulSet>,
    key: &str,
) {
    if !validate::legacy_plaintext(rs, existing) {
        return;
    }
    let first = ctx
        .warned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.to_owned());
    if first {
        warn!(
            namespace = rs.namespace().unwrap_or_default(),
            name = rs.name_any(),
            "this store was created without TLS and keeps running in plaintext; recreate it to get TLS (README, Security)"
        );
        event(ctx, rs, EventType::Warning, "Plaintext", "created without TLS by an earlier operator: it keeps running in plaintext; recreate it to get TLS").await;
    }
}

/// The StatefulSet's `spec.replicas`, 0 when there is none.
fn replicas_of(sts: Option<&StatefulSet>) -> u32 {
    sts.and_then(|s| s.spec.as_ref()?.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0)
}

/// Runs the controller against a real API server until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (stores, stss, pods) = match &namespace {
        Some(ns) => (
            Api::<ReplicatedStore>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<ReplicatedStore>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
            Api::<Pod>::all(client.clone()),
        ),
    };
    // One watch each on StatefulSets and rstore pods, whose caches reconcile reads (so that an
    // idle store costs the API server no GET or LIST at all) and whose events trigger it.
    let pod_config = watcher::Config::default().labels(&format!("{LABEL_NAME}=rstore"));
    let (sts_cache, sts_writer) = reflector::store();
    let sts_events = reflector::reflector(sts_writer, watcher(stss, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let (pod_cache, pod_writer) = reflector::store();
    let pod_events = reflector::reflector(pod_writer, watcher(pods, pod_config))
        .default_backoff()
        .touched_objects();
    let _ = ctx.caches.set(Caches {
        statefulsets: sts_cache,
        pods: pod_cache,
    });
    Controller::new(stores, watcher::Config::default())
        .owns_stream(sts_events)
        // Pods belong to the StatefulSet, not to us: map them back by their instance label.
        .watches_stream(pod_events, |pod: Pod| {
            let name = pod.labels().get(LABEL_INSTANCE)?.clone();
            let ns = pod.namespace()?;
            Some(ObjectRef::<ReplicatedStore>::new(&name).within(&ns))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller");
            }
        })
        .await;
}
