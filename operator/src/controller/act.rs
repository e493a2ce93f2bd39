//! Act stage: performs the one step the planner chose. A StatefulSet step is built
//! ([`crate::controller::build::statefulset_for`]) and written by the apply stage's
//! [`crate::controller::apply::statefulset`]; membership and configuration changes are node
//! admin calls to the leader; a restart deletes the pod. Every action is announced by an
//! Event (Normal when done, `StepFailed` when not).

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;
use tracing::info;

use crate::controller::apply;
use crate::controller::build::{Built, Stale, statefulset_for};
use crate::controller::context::Context;
use crate::controller::events::publish;
use crate::crd::{MemberRole, ReplicatedStore};
use crate::nodeapi::{NodeApi, NodeApiError};
use crate::observe::Observation;
use crate::planner::Step;
use crate::resources::Names;
use crate::status::step_reason;

/// Why a step could not be performed. Shown in the `StepFailed` Event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the StatefulSet failed.
    #[error(transparent)]
    Apply(#[from] apply::Error),

    /// Deleting a pod failed.
    #[error("Kubernetes API: {0}")]
    DeletePod(#[source] kube::Error),

    /// A node refused or could not be reached.
    #[error("{0}")]
    Node(#[from] NodeApiError),

    /// What the step needs was not in the observation any more.
    #[error("observation out of date: {0}")]
    Stale(#[from] Stale),
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Apply(_) | Self::DeletePod(_) => "kube",
            Self::Node(_) => "node",
            Self::Stale(_) => "stale_observation",
        }
    }
}

/// Performs `step` when it is an action, with its Event; reports (wait, refuse, degraded,
/// done) do nothing here.
pub async fn act(
    ctx: &Context,
    rs: &ReplicatedStore,
    built: &Built,
    nodes: &NodeApi,
    obs: &Observation,
    step: &Step,
) -> Result<(), Error> {
    if !step.is_action() {
        return Ok(());
    }
    let names = Names::of(rs);
    let pod = step_pod(step, obs).map(|o| names.pod(o));
    // Say when a step concerns the leader: the order of a rolling restart shows in Events.
    let role = match &pod {
        Some(p) if obs.leader_pod(&names).as_deref() == Some(p.as_str()) => " (the leader)",
        _ => "",
    };
    let note = format!("{step}{role}");
    info!(namespace = %names.namespace, name = %names.name, step = %note, "acting");
    let r = perform(ctx, rs, built, nodes, obs, step).await;
    match &r {
        Ok(()) => {
            ctx.metrics.step(step_reason(step));
            publish(ctx, rs, EventType::Normal, step_reason(step), &note, pod).await;
        }
        Err(e) => {
            let note = format!("{note}: {e}");
            publish(ctx, rs, EventType::Warning, "StepFailed", &note, pod).await;
        }
    }
    r
}

async fn perform(
    ctx: &Context,
    rs: &ReplicatedStore,
    built: &Built,
    nodes: &NodeApi,
    obs: &Observation,
    step: &Step,
) -> Result<(), Error> {
    if let Some(sts) = statefulset_for(rs, built, obs, step)? {
        return Ok(apply::statefulset(ctx, &sts).await?);
    }
    let leader_base = || {
        obs.leader_id()
            .and_then(|id| obs.member_base(id))
            .or_else(|| obs.view_from.clone())
            .ok_or(Stale::NoLeader)
    };
    match step {
        Step::InitCluster { pod } => {
            let base = obs
                .pods
                .get(pod)
                .and_then(|p| p.base_url())
                .ok_or(Stale::NoIp { pod: *pod })?;
            nodes.init(&base).await?;
        }
        Step::AddLearner { pod, id } => {
            let node = obs
                .pods
                .get(pod)
                .and_then(|p| p.node.as_ref())
                .filter(|n| n.id == *id)
                .ok_or(Stale::NodeChanged { pod: *pod, id: *id })?;
            nodes
                .add_member(
                    &leader_base()?,
                    *id,
                    &node.peer_url,
                    &node.client_url,
                    MemberRole::Learner,
                )
                .await?;
        }
        Step::PromoteVoter { id } => {
            let member = obs
                .view
                .as_ref()
                .and_then(|v| v.members.iter().find(|m| m.id == *id))
                .ok_or(Stale::MemberVanished { id: *id })?;
            nodes
                .add_member(
                    &leader_base()?,
                    *id,
                    &member.peer_url,
                    &member.client_url,
                    MemberRole::Voter,
                )
                .await?;
        }
        Step::RemoveMember { id, .. } => {
            nodes.remove_member(&leader_base()?, *id).await?;
        }
        Step::RestartPod { pod } => {
            let names = Names::of(rs);
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &names.namespace);
            match api.delete(&names.pod(*pod), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::DeletePod(e)),
            }
        }
        Step::SetConfig {
            mode,
            read_consistency,
        } => {
            nodes
                .set_config(&leader_base()?, *mode, *read_consistency)
                .await?;
        }
        Step::CreateStatefulSet { .. }
        | Step::ScaleStatefulSet { .. }
        | Step::SetStatefulSetImage { .. }
        | Step::Wait { .. }
        | Step::Refuse { .. }
        | Step::Degraded { .. }
        | Step::Done => {}
    }
    Ok(())
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
