//! Build stage: every object the store should own, made from the validated resource without
//! a client (the builders are in [`crate::resources`], one module per object). The apply stage
//! writes what this returns, and the act stage the StatefulSet when a step changes it; nothing
//! here reads the API server or a node.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::controller::validate::Valid;
use crate::crd::ReplicatedStore;
use crate::planner::Desired;
use crate::resources::certmanager::{self, Certificate};
use crate::resources::statefulset::{self, revision_of};
use crate::resources::{networkpolicy, pdb, service};

/// What the store should own, and what the planner is to reach.
#[derive(Debug, Clone)]
pub struct Built {
    /// The planner's target, with `image` set to the pod template's revision (the planner
    /// compares template revisions: the image and node settings, not only images).
    pub desired: Desired,
    /// The StatefulSet as the spec asks for it: `desired.total()` pods of the desired pod
    /// template. A step takes its replicas, or keeps the template the StatefulSet has
    /// (`controller::act`), so that a spec change never reaches pods before the planner
    /// allows it.
    pub statefulset: StatefulSet,
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
    let statefulset = statefulset::build(rs, desired.total(), template);
    let certificate = match &rs.spec.tls.issuer_ref {
        Some(issuer) if !rs.spec.tls.insecure_plaintext => Some(certmanager::build(rs, issuer)),
        _ => None,
    };
    Built {
        desired,
        statefulset,
        spec_children: SpecChildren {
            peer: service::peer(rs),
            client: service::client(rs),
            budget: pdb::build(rs),
            policy: networkpolicy::build(rs, operator_namespace),
        },
        certificate,
    }
}
