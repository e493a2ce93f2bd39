//! Act stage: performs the one step the planner chose. A StatefulSet step takes the
//! StatefulSet the build stage made (with the step's replicas, or the template the StatefulSet
//! has: [`statefulset_for`]) and writes it through the apply stage's
//! [`crate::controller::apply::statefulset`]; membership and configuration changes are node
//! admin calls to the leader; a restart deletes the pod. Every action is announced by an
//! Event (Normal when done, `StepFailed` when not).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::Api;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;
use tracing::info;

use crate::controller::apply;
use crate::controller::build::Built;
use crate::controller::context::Context;
use crate::controller::report::publish;
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
    if let Some(sts) = statefulset_for(built, obs, step)? {
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

/// What the step needs was not in the observation any more (it changed meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// The StatefulSet was observed, then gone.
    #[error("the StatefulSet vanished")]
    StatefulSetVanished,
    /// No leader (nor any node's view) to send a change to.
    #[error("no leader to send the change to")]
    NoLeader,
    /// The pod to initialize has no IP.
    #[error("pod {pod} has no IP")]
    NoIp {
        /// Ordinal.
        pod: u32,
    },
    /// The pod to add answers with another id now.
    #[error("pod {pod} no longer reports node {id}")]
    NodeChanged {
        /// Ordinal.
        pod: u32,
        /// The id planned with.
        id: u64,
    },
    /// The member to promote is gone from the view.
    #[error("member {id} vanished")]
    MemberVanished {
        /// Node id.
        id: u64,
    },
}

/// The StatefulSet a step asks for, or `None` for a step that changes no StatefulSet: the
/// built one ([`Built::statefulset`]) with the step's replicas; a scale keeps the template the
/// StatefulSet has, and only a template change rolls out the desired one.
pub fn statefulset_for(
    built: &Built,
    obs: &Observation,
    step: &Step,
) -> Result<Option<StatefulSet>, Stale> {
    let current = obs.statefulset.as_ref().and_then(|s| s.spec.as_ref());
    let (replicas, template) = match step {
        Step::CreateStatefulSet { replicas, .. } => {
            return Ok(Some(with(built.statefulset.clone(), *replicas, None)));
        }
        Step::ScaleStatefulSet { replicas } => {
            let template = current
                .map(|s| s.template.clone())
                .ok_or(Stale::StatefulSetVanished)?;
            (*replicas, Some(template))
        }
        Step::SetStatefulSetImage { .. } => {
            let replicas = current
                .and_then(|s| s.replicas)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0);
            (replicas, None)
        }
        _ => return Ok(None),
    };
    Ok(Some(keep_immutable(
        with(built.statefulset.clone(), replicas, template),
        obs,
    )))
}

/// `sts` with `replicas` pods, and `template` when given.
fn with(mut sts: StatefulSet, replicas: u32, template: Option<PodTemplateSpec>) -> StatefulSet {
    if let Some(spec) = sts.spec.as_mut() {
        spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
        if let Some(template) = template {
            spec.template = template;
        }
    }
    sts
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::crd::ReplicatedStoreSpec;
    use crate::resources::statefulset;

    #[test]
    fn a_step_asks_for_the_built_statefulset_with_its_replicas_and_template() {
        let mut rs = ReplicatedStore::new("db", ReplicatedStoreSpec::default());
        rs.metadata.namespace = Some("prod".into());
        let existing = statefulset::build(&rs, 3, statefulset::pod_template(&rs));
        let running = existing.spec.as_ref().unwrap().template.clone();
        rs.spec.image = "ghcr.io/rstore/node:0.2.0".into();
        let built = crate::controller::build::build(
            &crate::controller::validate::validate(&rs, None).unwrap(),
            None,
        );
        let desired = statefulset::pod_template(&rs);
        assert_ne!(desired, running);
        let obs = Observation {
            statefulset: Some(existing),
            ..Observation::default()
        };
        let create = Step::CreateStatefulSet {
            replicas: 5,
            image: String::new(),
        };
        assert_eq!(
            statefulset_for(&built, &obs, &create),
            Ok(Some(statefulset::build(&rs, 5, desired.clone())))
        );
        assert_eq!(
            statefulset_for(&built, &obs, &Step::ScaleStatefulSet { replicas: 5 }),
            Ok(Some(keep_immutable(
                statefulset::build(&rs, 5, running),
                &obs
            )))
        );
        let image = Step::SetStatefulSetImage {
            image: String::new(),
        };
        assert_eq!(
            statefulset_for(&built, &obs, &image),
            Ok(Some(keep_immutable(
                statefulset::build(&rs, 3, desired),
                &obs
            )))
        );
        assert_eq!(statefulset_for(&built, &obs, &Step::Done), Ok(None));
        let gone = Observation::default();
        assert_eq!(
            statefulset_for(&built, &gone, &Step::ScaleStatefulSet { replicas: 5 }),
            Err(Stale::StatefulSetVanished)
        );
    }

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
