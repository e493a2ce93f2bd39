//! The reconcile pipeline for one `ReplicatedStore`: observe, plan, act, report.
//!
//! [`reconcile`] is the same function whether it runs under kube-runtime's `Controller`
//! against a real API server ([`run`]) or under the local control plane against the in-memory
//! one. Each call applies the owned Services and PDB (idempotent server-side apply), observes
//! the StatefulSet, pods and nodes, asks the planner for exactly one step, performs it, emits
//! an Event for it, and writes status only when it changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::crd::{MemberRole, ReplicatedStore, ReplicatedStoreStatus};
use crate::metrics::{MemberCounts, Metrics};
use crate::nodeapi::NodeApi;
use crate::observe::{HealthClock, Observation, observe};
use crate::planner::{Desired, Policy, Step, member_caught_up, plan};
use crate::resources::credentials::{self, Credentials};
use crate::resources::statefulset::{self, revision_of};
use crate::resources::{
    FIELD_MANAGER, LABEL_INSTANCE, LABEL_NAME, Names, networkpolicy, pdb, service,
};
use crate::status::{self, step_reason};
use crate::{Error, Result};

/// Tunables of the reconcile loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Judgement thresholds of the planner.
    pub policy: Policy,
    /// Requeue after an action or while waiting for one.
    pub requeue_busy: Duration,
    /// Requeue when the cluster matches the spec (node health changes without API events).
    pub requeue_idle: Duration,
    /// Timeout of `GET /v1/node` and `GET /v1/cluster`.
    pub node_read_timeout: Duration,
    /// Timeout of membership changes (the node bounds a learner's catch-up itself).
    pub node_change_timeout: Duration,
    /// The owned objects that change only with the spec (the Services, the PDB and the
    /// NetworkPolicy) are applied when what they should be differs from what was last applied,
    /// and also after this long, to repair edits and deletions made by hand.
    pub reapply_every: Duration,
    /// The store's Secrets are read again (and certificates renewed, pruned, issued for new
    /// pods) after this long, or at once when the number of pods they must cover changes.
    /// Deleting a Secret to rotate it takes effect within this time.
    pub credentials_recheck: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            requeue_busy: Duration::from_secs(1),
            requeue_idle: Duration::from_secs(10),
            node_read_timeout: Duration::from_secs(2),
            node_change_timeout: Duration::from_secs(75),
            // Measured on the real control plane (README, "On a real control plane"): without
            // these, every 1-10 s reconcile re-applied 4 objects and read 4-6 Secrets.
            reapply_every: Duration::from_secs(300),
            credentials_recheck: Duration::from_secs(60),
        }
    }
}

/// Credentials last ensured for a store: them, the pods they covered, and when.
type Ensured = (Option<Credentials>, u32, Instant);

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client (a real API server, or the in-memory one).
    pub client: Client,
    /// The node admin API client for stores that run in plaintext.
    pub nodes: NodeApi,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Tunables.
    pub settings: Settings,
    clocks: Mutex<HashMap<String, HealthClock>>,
    /// Per store: the credentials its client was built with, and the client.
    secure: Mutex<HashMap<String, (Credentials, NodeApi)>>,
    /// Stores already warned about running in plaintext.
    warned: Mutex<std::collections::HashSet<String>>,
    /// Per store: a digest of the spec-only children last applied, and when.
    applied: Mutex<HashMap<String, (u32, Instant)>>,
    /// Per store: the credentials last ensured, for how many pods, and when.
    ensured: Mutex<HashMap<String, Ensured>>,
}

impl Context {
    /// A context reporting Events as `reporter`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, reporter: &str) -> Self {
        Self {
            nodes: NodeApi::new(settings.node_read_timeout, settings.node_change_timeout),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "rstore-operator".into(),
                    instance: Some(reporter.into()),
                },
            ),
            client,
            metrics,
            settings,
            clocks: Mutex::default(),
            secure: Mutex::default(),
            warned: Mutex::default(),
            applied: Mutex::default(),
            ensured: Mutex::default(),
        }
    }

    /// The node client for store `key`: the plaintext one, or one with the store's CA and the
    /// operator's token (kept while those stay the same, for its connection pool).
    fn node_api(&self, key: &str, creds: Option<&Credentials>) -> Result<NodeApi> {
        let Some(creds) = creds else {
            return Ok(self.nodes.clone());
        };
        let mut secure = self.secure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, api)) = secure.get(key)
            && (&c.ca_pem, &c.token) == (&creds.ca_pem, &creds.token)
        {
            return Ok(api.clone());
        }
        let api = NodeApi::secure(
            self.settings.node_read_timeout,
            self.settings.node_change_timeout,
            &creds.ca_pem,
            &creds.token,
        )
        .map_err(Error::Credentials)?;
        secure.insert(key.to_owned(), (creds.clone(), api.clone()));
        Ok(api)
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
pub async fn reconcile(rs: Arc<ReplicatedStore>, ctx: Arc<Context>) -> Result<Action> {
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

/// One pass of the pipeline.
pub async fn reconcile_once(rs: &ReplicatedStore, ctx: &Context) -> Result<Outcome> {
    let start = Instant::now();
    let result = reconcile_inner(rs, ctx).await;
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

async fn reconcile_inner(rs: &ReplicatedStore, ctx: &Context) -> Result<Outcome> {
    let names = Names::of(rs);
    let key = format!("{}/{}", names.namespace, names.name);
    if rs.metadata.deletion_timestamp.is_some() {
        // Owner references delete the children; nothing of ours outlives the resource.
        ctx.metrics
            .cluster(&names.namespace, &names.name, MemberCounts::default(), None);
        ctx.metrics
            .certificate_expiry(&names.namespace, &names.name, None);
        return Ok(Outcome {
            step: Step::Done,
            status_written: false,
        });
    }
    let sts_api = Api::<StatefulSet>::namespaced(ctx.client.clone(), &names.namespace);
    let existing = sts_api.get_opt(names.statefulset()).await?;
    let legacy;
    let rs = if runs_plaintext(existing.as_ref()) && !rs.spec.tls.insecure_plaintext {
        // Created in plaintext by an operator before TLS: switching a running cluster's
        // transport under it would cut its members off from each other.
        if ctx
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            warn!(namespace = %names.namespace, name = %names.name, "this store was created without TLS and keeps running in plaintext; recreate it to get TLS (README, Security)");
            event(ctx, rs, EventType::Warning, "Plaintext", "created without TLS by an earlier operator: it keeps running in plaintext; recreate it to get TLS").await;
        }
        let mut r = rs.clone();
        r.spec.tls.insecure_plaintext = true;
        legacy = r;
        &legacy
    } else {
        rs
    };
    let mut desired = match Desired::from_spec(&rs.spec) {
        Ok(d) => d,
        Err(e) => return stuck(rs, ctx, Stuck::InvalidSpec, &e.to_string()).await,
    };
    let template = statefulset::pod_template(rs);
    // The planner compares template revisions (image and node settings), not only images.
    desired.image = revision_of(template.metadata.as_ref()).unwrap_or_default();

    apply_spec_children(rs, ctx, &key).await?;

    // Certificates for every pod the StatefulSet has or is about to have, before it has them.
    let sts_replicas = existing
        .as_ref()
        .and_then(|s| s.spec.as_ref()?.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let creds = match ensure_credentials(rs, ctx, &key, desired.total().max(sts_replicas)).await {
        Ok(c) => c,
        Err(Error::Credentials(message)) => {
            ctx.metrics.error("credentials");
            return stuck(rs, ctx, Stuck::Credentials, &message).await;
        }
        Err(e) => return Err(e),
    };
    ctx.metrics.certificate_expiry(
        &names.namespace,
        &names.name,
        creds.as_ref().and_then(|c| c.expires),
    );
    let nodes = ctx.node_api(&key, creds.as_ref())?;
    let mut obs = observe(&ctx.client, &nodes, rs, existing).await?;
    obs.credentials_secret = creds.as_ref().map(|_| names.credentials_secret());
    let sts_revision = obs
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| revision_of(s.template.metadata.as_ref()));
    let known_cluster_id = rs.status.as_ref().and_then(|s| s.cluster_id.clone());
    let observed = {
        let mut clocks = ctx.clocks.lock().unwrap_or_else(|e| e.into_inner());
        clocks.entry(key).or_default().to_planner(
            &obs,
            sts_revision,
            known_cluster_id,
            &ctx.settings.policy,
            Instant::now(),
        )
    };
    let step = plan(&desired, &observed, &ctx.settings.policy);

    let acted = if step.is_action() {
        let pod = step_pod(&step, &obs).map(|o| names.pod(o));
        // Say when a step concerns the leader: the order of a rolling restart shows in Events.
        let role = match &pod {
            Some(p) if obs.leader_pod(&names).as_deref() == Some(p.as_str()) => " (the leader)",
            _ => "",
        };
        let note = format!("{step}{role}");
        info!(namespace = %names.namespace, name = %names.name, step = %note, "acting");
        let r = act(rs, ctx, &nodes, &obs, &step, template).await;
        match &r {
            Ok(()) => {
                ctx.metrics.step(step_reason(&step));
                publish(ctx, rs, EventType::Normal, step_reason(&step), &note, pod).await;
            }
            Err(e) => {
                let note = format!("{note}: {e}");
                publish(ctx, rs, EventType::Warning, "StepFailed", &note, pod).await;
            }
        }
        r
    } else {
        Ok(())
    };

    let status = status::compute(
        rs,
        &desired,
        &obs,
        &observed,
        &step,
        &ctx.settings.policy,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    );
    report_refusal(ctx, rs, &step, &status).await;
    let counts = member_counts(&observed, &ctx.settings.policy);
    ctx.metrics
        .cluster(&names.namespace, &names.name, counts, status.phase);
    let status_written = write_status(rs, ctx, status).await?;
    acted?;
    Ok(Outcome {
        step,
        status_written,
    })
}

/// A Warning Event when a refusal or a loss of quorum is new (not on every requeue).
async fn report_refusal(
    ctx: &Context,
    rs: &ReplicatedStore,
    step: &Step,
    status: &ReplicatedStoreStatus,
) {
    let (reason, message) = match step {
        Step::Refuse { reason } => ("StepRefused", reason.clone()),
        Step::Degraded { .. } => (
            "QuorumLost",
            status
                .conditions
                .iter()
                .find(|c| c.type_ == status::DEGRADED)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        ),
        _ => return,
    };
    let before = rs.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::PROGRESSING)
            .map(|c| (c.reason.clone(), c.message.clone()))
    });
    let now = status
        .conditions
        .iter()
        .find(|c| c.type_ == status::PROGRESSING)
        .map(|c| (c.reason.clone(), c.message.clone()));
    if before != now {
        warn!(namespace = rs.namespace().unwrap_or_default(), name = rs.name_any(), %message, "{reason}");
        event(ctx, rs, EventType::Warning, reason, &message).await;
    }
}

fn member_counts(observed: &crate::planner::Observed, policy: &Policy) -> MemberCounts {
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

/// Why a store cannot progress before any step is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stuck {
    /// The spec asks for something impossible.
    InvalidSpec,
    /// Its certificates or tokens cannot be issued or read yet (for example cert-manager has
    /// not issued the members' certificate).
    Credentials,
}

/// Reports a store that cannot progress: `Progressing=False` with the reason and what to do,
/// a Warning Event when that is news, and no step.
async fn stuck(rs: &ReplicatedStore, ctx: &Context, why: Stuck, message: &str) -> Result<Outcome> {
    let (reason, advice, phase) = match why {
        Stuck::InvalidSpec => (
            "InvalidSpec",
            "fix the spec, nothing is changed until then",
            crate::crd::Phase::Degraded,
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
                crate::crd::Phase::Degraded
            } else {
                crate::crd::Phase::Pending
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
        .find(|c| c.type_ == status::PROGRESSING && c.status == "False" && c.reason == reason)
        .map_or_else(
            || Time(k8s_openapi::jiff::Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    status.conditions.retain(|c| c.type_ != status::PROGRESSING);
    status
        .conditions
        .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: status::PROGRESSING.into(),
            status: "False".into(),
            reason: reason.into(),
            message: format!("{message}; {advice}"),
            last_transition_time: now,
            observed_generation: rs.metadata.generation,
        });
    if rs.status.as_ref() != Some(&status) {
        event(ctx, rs, EventType::Warning, reason, message).await;
    }
    let status_written = write_status(rs, ctx, status).await?;
    Ok(Outcome {
        step,
        status_written,
    })
}

/// Whether an existing StatefulSet runs its members without TLS.
fn runs_plaintext(sts: Option<&StatefulSet>) -> bool {
    sts.and_then(|s| s.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| {
            p.containers
                .iter()
                .find(|c| c.name == crate::resources::CONTAINER)
        })
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| {
            env.iter().any(|e| {
                e.name == "RSTORE_INSECURE_PLAINTEXT" && e.value.as_deref() == Some("true")
            })
        })
}

/// Performs one action step.
async fn act(
    rs: &ReplicatedStore,
    ctx: &Context,
    nodes: &NodeApi,
    obs: &Observation,
    step: &Step,
    template: k8s_openapi::api::core::v1::PodTemplateSpec,
) -> Result<()> {
    let names = Names::of(rs);
    let sts_api = Api::<StatefulSet>::namespaced(ctx.client.clone(), &names.namespace);
    let current_template = || {
        obs.statefulset
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .map(|s| s.template.clone())
            .ok_or_else(|| Error::Observation("the StatefulSet vanished".into()))
    };
    let current_replicas = || {
        obs.statefulset
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0)
    };
    let leader_base = || {
        obs.leader_id()
            .and_then(|id| obs.member_base(id))
            .or_else(|| obs.view_from.clone())
            .ok_or_else(|| Error::Observation("no leader to send the change to".into()))
    };
    match step {
        Step::CreateStatefulSet { replicas, .. } => {
            apply(&sts_api, &statefulset::build(rs, *replicas, template)).await
        }
        Step::ScaleStatefulSet { replicas } => {
            let sts = statefulset::build(rs, *replicas, current_template()?);
            apply(&sts_api, &keep_immutable(sts, obs)).await
        }
        Step::SetStatefulSetImage { .. } => {
            let sts = statefulset::build(rs, current_replicas(), template);
            apply(&sts_api, &keep_immutable(sts, obs)).await
        }
        Step::InitCluster { pod } => {
            let base = obs
                .pods
                .get(pod)
                .and_then(|p| p.base_url())
                .ok_or_else(|| Error::Observation(format!("pod {pod} has no IP")))?;
            nodes.init(&base).await?;
            Ok(())
        }
        Step::AddLearner { pod, id } => {
            let node = obs
                .pods
                .get(pod)
                .and_then(|p| p.node.as_ref())
                .filter(|n| n.id == *id)
                .ok_or_else(|| {
                    Error::Observation(format!("pod {pod} no longer reports node {id}"))
                })?;
            nodes
                .add_member(
                    &leader_base()?,
                    *id,
                    &node.peer_url,
                    &node.client_url,
                    MemberRole::Learner,
                )
                .await?;
            Ok(())
        }
        Step::PromoteVoter { id } => {
            let member = obs
                .view
                .as_ref()
                .and_then(|v| v.members.iter().find(|m| m.id == *id))
                .ok_or_else(|| Error::Observation(format!("member {id} vanished")))?;
            nodes
                .add_member(
                    &leader_base()?,
                    *id,
                    &member.peer_url,
                    &member.client_url,
                    MemberRole::Voter,
                )
                .await?;
            Ok(())
        }
        Step::RemoveMember { id, .. } => {
            nodes.remove_member(&leader_base()?, *id).await?;
            Ok(())
        }
        Step::RestartPod { pod } => {
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &names.namespace);
            match api.delete(&names.pod(*pod), &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Step::SetConfig {
            mode,
            read_consistency,
        } => {
            nodes
                .set_config(&leader_base()?, *mode, *read_consistency)
                .await?;
            Ok(())
        }
        Step::Wait { .. } | Step::Refuse { .. } | Step::Degraded { .. } | Step::Done => Ok(()),
    }
}

/// Keeps the fields of an existing StatefulSet that Kubernetes forbids changing (its volume
/// claim templates), so that a spec edit the CRD's rules missed cannot wedge every later apply.
fn keep_immutable(mut sts: StatefulSet, obs: &Observation) -> StatefulSet {
    let existing = obs.statefulset.as_ref().and_then(|s| s.spec.as_ref());
    if let (Some(spec), Some(existing)) = (sts.spec.as_mut(), existing) {
        spec.volume_claim_templates = existing.volume_claim_templates.clone();
        spec.service_name = existing.service_name.clone();
        spec.selector = existing.selector.clone();
    }
    sts
}

/// Applies the children that follow from the spec alone (the peer and client Services, the
/// PDB, the NetworkPolicy) when they differ from what was last applied for this store, or
/// when [`Settings::reapply_every`] has passed: at steady state a reconcile then writes
/// nothing to the API server.
async fn apply_spec_children(rs: &ReplicatedStore, ctx: &Context, key: &str) -> Result<()> {
    let ns = rs.namespace().unwrap_or_default();
    // The chart passes the operator's namespace (downward API), which the policy admits.
    let operator_ns = std::env::var("POD_NAMESPACE").ok();
    let (peer, client) = (service::peer(rs), service::client(rs));
    let budget = pdb::build(rs);
    let policy = networkpolicy::build(rs, operator_ns.as_deref());
    let digest = crc32fast::hash(&serde_json::to_vec(&(
        &rs.metadata.uid,
        &peer,
        &client,
        &budget,
        &policy,
    ))?);
    let fresh = ctx
        .applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .is_some_and(|(d, at)| *d == digest && at.elapsed() < ctx.settings.reapply_every);
    if fresh {
        return Ok(());
    }
    let services = Api::<Service>::namespaced(ctx.client.clone(), &ns);
    apply(&services, &peer).await?;
    apply(&services, &client).await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns),
        &budget,
    )
    .await?;
    apply(
        &Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns),
        &policy,
    )
    .await?;
    ctx.applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.to_owned(), (digest, Instant::now()));
    Ok(())
}

/// [`credentials::ensure`], reusing its last answer for this store while it covers the same
/// number of pods and is younger than [`Settings::credentials_recheck`].
async fn ensure_credentials(
    rs: &ReplicatedStore,
    ctx: &Context,
    key: &str,
    pods: u32,
) -> Result<Option<credentials::Credentials>> {
    let memo_key = format!("{key}/{}", rs.metadata.uid.as_deref().unwrap_or_default());
    if let Some((creds, n, at)) = ctx
        .ensured
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&memo_key)
        && *n == pods
        && at.elapsed() < ctx.settings.credentials_recheck
        && rs.spec.tls.insecure_plaintext == creds.is_none()
    {
        return Ok(creds.clone());
    }
    let creds = credentials::ensure(&ctx.client, rs, pods).await?;
    ctx.ensured
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(memo_key, (creds.clone(), pods, Instant::now()));
    Ok(creds)
}

/// Server-side apply of a whole owned object under the operator's field manager.
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Writes status when it differs from what the resource holds. A merge patch with explicit
/// nulls, so that a field that went away (a leader, a term) is removed, not left stale.
async fn write_status(
    rs: &ReplicatedStore,
    ctx: &Context,
    status: ReplicatedStoreStatus,
) -> Result<bool> {
    if rs.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let names = Names::of(rs);
    let api = Api::<ReplicatedStore>::namespaced(ctx.client.clone(), &names.namespace);
    let mut value = serde_json::to_value(&status)?;
    if let Some(map) = value.as_object_mut() {
        for key in [
            "observedGeneration",
            "phase",
            "conditions",
            "leader",
            "term",
            "clusterId",
            "members",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(
        &names.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": value })),
    )
    .await?;
    Ok(true)
}

/// The pod a step concerns, when it concerns one.
fn step_pod(step: &Step, obs: &Observation) -> Option<u32> {
    match step {
        Step::InitCluster { pod } | Step::AddLearner { pod, .. } | Step::RestartPod { pod } => {
            Some(*pod)
        }
        Step::PromoteVoter { id } | Step::RemoveMember { id, .. } => {
            obs.member_ordinals.get(id).copied().flatten()
        }
        _ => None,
    }
}

/// Publishes an Event about `rs`; a failure to publish is logged, never fatal.
async fn event(ctx: &Context, rs: &ReplicatedStore, type_: EventType, reason: &str, note: &str) {
    publish(ctx, rs, type_, reason, note, None).await;
}

/// Publishes an Event about `rs`, naming the pod it concerns as the related object. The
/// recorder folds repeats of one (reason, related object) into a series; naming the pod keeps
/// a change to each member its own Event.
async fn publish(
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
    let pod_config = watcher::Config::default().labels(&format!("{LABEL_NAME}=rstore"));
    Controller::new(stores, watcher::Config::default())
        .owns(stss, watcher::Config::default())
        // Pods belong to the StatefulSet, not to us: map them back by their instance label.
        .watches(pods, pod_config, |pod: Pod| {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::crd::ReplicatedStoreSpec;

    #[test]
    fn an_existing_statefulset_keeps_its_volume_claim_templates() {
        let mut rs = ReplicatedStore::new("db", ReplicatedStoreSpec::default());
        rs.metadata.namespace = Some("prod".into());
        let existing = statefulset::build(&rs, 3, statefulset::pod_template(&rs));
        rs.spec.storage.size = Quantity("5Gi".into());
        rs.spec.image = "ghcr.io/rstore/node:0.2.0".into();
        let wanted = statefulset::build(&rs, 3, statefulset::pod_template(&rs));
        let obs = Observation {
            statefulset: Some(existing.clone()),
            ..Observation::default()
        };
        let applied = keep_immutable(wanted.clone(), &obs);
        let claims = |s: &StatefulSet| s.spec.as_ref().unwrap().volume_claim_templates.clone();
        assert_eq!(claims(&applied), claims(&existing), "sizes are immutable");
        assert_ne!(claims(&wanted), claims(&existing));
        assert_eq!(
            applied.spec.as_ref().unwrap().template,
            wanted.spec.as_ref().unwrap().template,
            "the template still changes"
        );
    }
}
