//! The step planner: a pure function from (desired spec, observed state) to exactly one next
//! [`Step`].
//!
//! Reconcile observes the StatefulSet, the pods, each node's `GET /v1/node` and the leader's
//! `GET /v1/cluster`, calls [`plan`], performs the one step it returns, and comes back. Because
//! every step is chosen from a fresh observation and each one is safe on its own, a crash or a
//! failed step between two reconciles never leaves the cluster half-changed.
//!
//! Rules (DESIGN.md, "Lifecycle rules"), in the order the planner applies them:
//! 1. `paused`: no action. An action becomes [`Step::Wait`] naming it; reports (done, wait,
//!    refuse, degraded) pass through, so a paused cluster still shows its trouble.
//! 2. No StatefulSet: create it with all desired pods; they start uninitialized and harmless.
//! 3. No leader: bootstrap ([`Step::InitCluster`] on pod 0) only if no cluster was ever made;
//!    otherwise wait for an election, and report [`Step::Degraded`] once that takes too long.
//! 4. A node or view from another cluster: [`Step::Refuse`]; never mix clusters.
//! 5. Healthy voters below a quorum: [`Step::Degraded`] with recovery steps; nothing is forced.
//! 6. A membership change in flight: [`Step::Wait`] (one change at a time).
//! 7. Non-disruptive catch-up: grow the StatefulSet, update its pod template image, apply the
//!    replication mode and read consistency.
//! 8. Heal: remove members whose pod came back with a new id (data loss) or that map to no pod,
//!    then members unreachable beyond [`Policy::replace_after_ms`].
//! 9. Join: add reachable pods below the target count as learners; promote caught-up learners
//!    while voters are missing.
//! 10. Shrink: remove members on pods beyond the target (unhealthy, then lagging, then
//!     followers, highest ordinal first; a healthy voter only once the remaining pods have
//!     their voters), then surplus voters (removed and re-added as learners), and only when
//!     no member is left beyond the target, shrink the StatefulSet.
//! 11. Roll: restart pods whose image differs, one at a time, followers first and the leader
//!     last, only when every member is healthy and caught up.
//!
//! Every removal of a voter is checked: the healthy voters left must still be a quorum of the
//! resulting configuration, and the last voter is never removed.

use std::collections::BTreeMap;

use crate::crd::MAX_REPLICAS;

mod input;
#[cfg(test)]
mod sim;
mod step;
#[cfg(test)]
mod tests;
mod view;

pub use input::{
    ClusterObs, Desired, MemberObs, NodeObs, Observed, PodObs, Policy, StatefulSetObs,
};
pub use step::{RemoveReason, Step};
use view::View;
pub use view::{member_caught_up, member_healthy, quorum};

/// Decides the one next step.
pub fn plan(desired: &Desired, observed: &Observed, policy: &Policy) -> Step {
    let step = plan_unpaused(desired, observed, policy);
    if desired.paused && step.is_action() {
        return Step::Wait {
            reason: format!("paused; the next step would be: {step}"),
        };
    }
    step
}

fn plan_unpaused(desired: &Desired, observed: &Observed, policy: &Policy) -> Step {
    // The validate stage rejects such specs before planning; this keeps `plan` total for
    // any input (the simulations and property tests build `Desired` directly).
    if desired.voters == 0 || desired.voters > MAX_REPLICAS.unsigned_abs() {
        return Step::Refuse {
            reason: format!(
                "desired voters {} is outside 1..={MAX_REPLICAS}",
                desired.voters
            ),
        };
    }
    let Some(sts) = &observed.statefulset else {
        return Step::CreateStatefulSet {
            replicas: desired.total(),
            image: desired.image.clone(),
        };
    };
    let pods: BTreeMap<u32, &PodObs> = observed.pods.iter().map(|p| (p.ordinal, p)).collect();
    if let Some(foreign) = foreign_node(observed, &pods) {
        return foreign;
    }
    let Some(cluster) = &observed.cluster else {
        return without_leader(desired, observed, &pods, policy);
    };
    let view = View::new(desired, cluster, &pods, policy);
    if !view.voters().any(|v| v.id == cluster.leader_id) {
        // A leader always counts itself among the voters; anything else is a torn read.
        return Step::Wait {
            reason: format!(
                "the leader's view does not list leader {} as a voter; observing again",
                cluster.leader_id
            ),
        };
    }

    if let Some(step) = view.quorum_lost() {
        return step;
    }
    if cluster.membership_changing {
        return Step::Wait {
            reason: "a membership change is in progress".into(),
        };
    }
    let target = desired.total();
    if sts.replicas < target {
        return Step::ScaleStatefulSet { replicas: target };
    }
    if sts.image != desired.image {
        return Step::SetStatefulSetImage {
            image: desired.image.clone(),
        };
    }
    if cluster.mode != desired.mode || cluster.read_consistency != desired.read_consistency {
        return Step::SetConfig {
            mode: desired.mode,
            read_consistency: desired.read_consistency,
        };
    }
    view.heal()
        .or_else(|| view.join())
        .or_else(|| view.shrink(sts.replicas))
        .or_else(|| view.roll())
        .unwrap_or(Step::Done)
}

/// A reachable pod, or the leader's view, that belongs to another cluster.
fn foreign_node(observed: &Observed, pods: &BTreeMap<u32, &PodObs>) -> Option<Step> {
    let ours = observed
        .known_cluster_id
        .as_deref()
        .or(observed.cluster.as_ref().map(|c| c.cluster_id.as_str()))?;
    if let Some(c) = observed.cluster.as_ref().filter(|c| c.cluster_id != ours) {
        return Some(Step::Refuse {
            reason: format!(
                "the leader reports cluster {} but this resource's cluster is {ours}",
                c.cluster_id
            ),
        });
    }
    pods.values().find_map(|p| {
        let other = p.node.as_ref()?.cluster_id.as_deref()?;
        (other != ours).then(|| Step::Refuse {
            reason: format!(
                "pod {} belongs to cluster {other}, not {ours}; its volume holds another \
                 cluster's data",
                p.ordinal
            ),
        })
    })
}

fn without_leader(
    desired: &Desired,
    observed: &Observed,
    pods: &BTreeMap<u32, &PodObs>,
    policy: &Policy,
) -> Step {
    let initialized: Vec<u32> = pods
        .values()
        .filter(|p| p.node.as_ref().is_some_and(|n| n.cluster_id.is_some()))
        .map(|p| p.ordinal)
        .collect();
    if observed.known_cluster_id.is_none() && initialized.is_empty() {
        // Only pod 0 is ever initialized, and only while no cluster exists anywhere we can
        // see: a second init elsewhere would make a second, split-brained cluster.
        if desired.restore {
            // Pod 0 restores the backup as it starts and comes up initialized; an empty
            // init would make a cluster without the backup's data.
            return Step::Wait {
                reason: "waiting for pod 0 to restore the cluster from its backup (its logs \
                         say how the restore goes)"
                    .into(),
            };
        }
        return match pods.get(&0) {
            Some(p) if p.node.is_some() => Step::InitCluster { pod: 0 },
            _ => Step::Wait {
                reason: "waiting for pod 0 to answer before initializing the cluster".into(),
            },
        };
    }
    if observed.no_leader_for_ms < policy.degraded_after_ms {
        return Step::Wait {
            reason: "no leader is known; waiting for an election".into(),
        };
    }
    let unreachable: Vec<String> = pods
        .values()
        .filter(|p| p.node.is_none())
        .map(|p| p.ordinal.to_string())
        .collect();
    Step::Degraded {
        reason: format!(
            "no leader for {}s; the cluster cannot elect one",
            observed.no_leader_for_ms / 1000
        ),
        recovery_steps: vec![
            format!(
                "bring back the unreachable pods (ordinals: {})",
                if unreachable.is_empty() {
                    "none".into()
                } else {
                    unreachable.join(", ")
                }
            ),
            "check the node logs for election failures (peer port reachable, same cluster id)"
                .into(),
            "if a majority of voters lost their data for good, restore from a backup: the \
             operator never forces a new configuration, as that can lose acknowledged writes"
                .into(),
        ],
    }
}
