//! The PodDisruptionBudget: at most one member may be evicted voluntarily at a time, and none
//! while another is already unready. With the operator's own rule (no removal below a
//! quorum), a drain can never take a quorum of voters away.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, owned_meta};
use crate::crd::ReplicatedStore;

/// The PDB `<name>`.
///
/// `maxUnavailable: 1` rather than a `minAvailable` quorum: voters and read replicas share one
/// StatefulSet, so a count of pods cannot say how many voters stay; one at a time, with
/// unready pods counted against the budget, keeps a quorum for any odd voter count.
pub fn build(rs: &ReplicatedStore) -> PodDisruptionBudget {
    let names = Names::of(rs);
    PodDisruptionBudget {
        metadata: owned_meta(rs, names.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ReplicatedStoreSpec;

    #[test]
    fn one_disruption_at_a_time() {
        let rs = ReplicatedStore::new("db", ReplicatedStoreSpec::default());
        let spec = build(&rs).spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap(),
            Names::of(&rs).selector_labels()
        );
    }
}
