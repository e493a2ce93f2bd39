//! Build stage: every object the store should own, made from the validated resource without
//! a client (the builders are in [`crate::resources`], one module per object). The apply stage
//! writes what this returns; nothing here reads the API server or a node.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::controller::validate::Valid;
use crate::crd::ReplicatedStore;
use crate::observe::Observation;
use crate::planner::{Desired, Step};
use crate::resources::certmanager::{self, Certificate};
use crate::resources::statefulset::{self, revision_of};
use crate::resources::{networkpolicy, pdb, service};

/// What the store should own, and what the planner is to reach.
#[derive(Debug, Clone)]
pub struct Built {
    /// The planner's target, with `image` set to the pod template's revision (the planner
    /// compares template revisions: the image and node settings, not only images).
    pub desired: Desired,
    /// The pod template of the StatefulSet.
    pub template: PodTemplateSpec,
    /// The children that follow from the spec alone: applied together, when they change.
    pub spec_children: SpecChildren,
    /// The cert-manager Certificate of the members, with `spec.tls.issuerRef`.
    pub certificate: Option<Certificate>,
}

/// The children that follow from the spec alone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpecChildren {
    /// The headless Service of the peers.
    pub peer: Service,
    /// The client Service.
    pub client: Service,
    /// The PodDisruptionBudget.
    pub budget: PodDisruptionBudget,
    /// The NetworkPolicy.
    pub policy: NetworkPolicy,
}

/// Builds everything `valid` should own. `operator_namespace` is admitted by the
/// NetworkPolicy (the chart passes it through the downward API).
pub fn build(valid: &Valid<'_>, operator_namespace: Option<&str>) -> Built {
    let rs: &ReplicatedStore = &valid.rs;
    let template = statefulset::pod_template(rs);
    let mut desired = valid.desired.clone();
    desired.image = revision_of(template.metadata.as_ref()).unwrap_or_default();
    let certificate = match &rs.spec.tls.issuer_ref {
        Some(issuer) if !rs.spec.tls.insecure_plaintext => Some(certmanager::build(rs, issuer)),
        _ => None,
    };
    Built {
        desired,
        template,
        spec_children: SpecChildren {
            peer: service::peer(rs),
            client: service::client(rs),
            budget: pdb::build(rs),
            policy: networkpolicy::build(rs, operator_namespace),
        },
        certificate,
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

/// The StatefulSet a step asks for, or `None` for a step that changes no StatefulSet.
pub fn statefulset_for(
    rs: &ReplicatedStore,
    built: &Built,
    obs: &Observation,
    step: &Step,
) -> Result<Option<StatefulSet>, Stale> {
    let current = obs.statefulset.as_ref().and_then(|s| s.spec.as_ref());
    Ok(Some(match step {
        Step::CreateStatefulSet { replicas, .. } => {
            statefulset::build(rs, *replicas, built.template.clone())
        }
        Step::ScaleStatefulSet { replicas } => {
            let template = current
                .map(|s| s.template.clone())
                .ok_or(Stale::StatefulSetVanished)?;
            keep_immutable(statefulset::build(rs, *replicas, template), obs)
        }
        Step::SetStatefulSetImage { .. } => {
            let replicas = current
                .and_then(|s| s.replicas)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0);
            keep_immutable(
                statefulset::build(rs, replicas, built.template.clone()),
                obs,
            )
        }
        _ => return Ok(None),
    }))
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
