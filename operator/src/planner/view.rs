//! Judgements on the leader's view of the cluster: quorum, health, catch-up, and which member
//! may be removed, joined, promoted or restarted next ([`View`]). Pure; the rules in
//! `planner.rs` ask it in their fixed order.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::crd::MemberRole;
use crate::planner::input::{ClusterObs, Desired, MemberObs, PodObs, Policy};
use crate::planner::step::{RemoveReason, Step};

/// Majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A member is healthy when it leads, or the leader reached it within the contact timeout.
pub fn member_healthy(m: &MemberObs, leader_id: u64, policy: &Policy) -> bool {
    m.id == leader_id
        || m.last_contact_ms
            .is_some_and(|c| c <= policy.contact_timeout_ms)
}

/// A member is caught up when it is healthy and at most [`Policy::max_lag`] entries behind.
pub fn member_caught_up(m: &MemberObs, leader_id: u64, policy: &Policy) -> bool {
    member_healthy(m, leader_id, policy)
        && (m.id == leader_id || m.lag.is_some_and(|l| l <= policy.max_lag))
}

/// The observed cluster, with the judgements the rules need.
pub(crate) struct View<'a> {
    desired: &'a Desired,
    cluster: &'a ClusterObs,
    pods: &'a BTreeMap<u32, &'a PodObs>,
    policy: &'a Policy,
    target: u32,
}

impl<'a> View<'a> {
    pub(crate) fn new(
        desired: &'a Desired,
        cluster: &'a ClusterObs,
        pods: &'a BTreeMap<u32, &'a PodObs>,
        policy: &'a Policy,
    ) -> Self {
        Self {
            desired,
            cluster,
            pods,
            policy,
            target: desired.total(),
        }
    }

    fn healthy(&self, m: &MemberObs) -> bool {
        member_healthy(m, self.cluster.leader_id, self.policy)
    }

    fn caught_up(&self, m: &MemberObs) -> bool {
        member_caught_up(m, self.cluster.leader_id, self.policy)
    }

    pub(crate) fn voters(&self) -> impl Iterator<Item = &'a MemberObs> {
        self.cluster
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
    }

    /// Removing `m` keeps a healthy quorum of the resulting configuration, or says why not.
    fn removal_blocked(&self, m: &MemberObs) -> Option<String> {
        if m.role != MemberRole::Voter {
            return None;
        }
        let voters = self.voters().count();
        if voters <= 1 {
            return Some(format!("node {} is the last voter", m.id));
        }
        let healthy = self.voters().filter(|v| self.healthy(v)).count();
        let healthy_after = healthy - usize::from(self.healthy(m));
        let needed = quorum(voters - 1);
        (healthy_after < needed).then(|| {
            format!(
                "removing voter {} would leave {healthy_after} healthy voters, below the quorum \
                 of {needed} for {} voters",
                m.id,
                voters - 1
            )
        })
    }

    /// The first candidate whose removal is safe, or a refusal naming why none is.
    fn remove_first(&self, candidates: Vec<(&MemberObs, RemoveReason)>) -> Option<Step> {
        if let (Some(why), Some((m, reason))) = (&self.cluster.unconfirmed, candidates.first()) {
            return Some(Step::Refuse {
                reason: format!(
                    "not removing node {} ({reason}): the leader's view is not confirmed ({why}); \
                     members are removed only on a view a majority of them agrees with",
                    m.id
                ),
            });
        }
        let mut blocked = Vec::new();
        for (m, reason) in candidates {
            match self.removal_blocked(m) {
                None => return Some(Step::RemoveMember { id: m.id, reason }),
                Some(why) => blocked.push(why),
            }
        }
        (!blocked.is_empty()).then(|| Step::Refuse {
            reason: blocked.join("; "),
        })
    }

    /// The pod answers with another id than the member's: its data is gone.
    fn stale_pod(&self, m: &MemberObs) -> Option<u32> {
        let ordinal = m.ordinal?;
        let node = self.pods.get(&ordinal)?.node.as_ref()?;
        (node.id != m.id).then_some(ordinal)
    }

    /// Members that count towards the desired shape: on a pod below the target, not stale.
    fn kept(&self) -> impl Iterator<Item = &'a MemberObs> + '_ {
        self.cluster.members.iter().filter(move |m| {
            m.ordinal.is_some_and(|o| o < self.target) && self.stale_pod(m).is_none()
        })
    }

    pub(crate) fn quorum_lost(&self) -> Option<Step> {
        let voters = self.voters().count();
        let mut unhealthy: Vec<&MemberObs> = self.voters().filter(|v| !self.healthy(v)).collect();
        let healthy = voters - unhealthy.len();
        let needed = quorum(voters);
        if healthy >= needed {
            return None;
        }
        // Quorum was lost when the (voters - needed + 1)-th voter went down.
        unhealthy.sort_by_key(|m| Reverse(m.unhealthy_for_ms));
        let lost_for = unhealthy
            .get(voters - needed)
            .map_or(0, |m| m.unhealthy_for_ms);
        if lost_for < self.policy.degraded_after_ms {
            return Some(Step::Wait {
                reason: format!(
                    "{healthy} of {voters} voters healthy, below the quorum of {needed}; \
                     waiting for them to come back"
                ),
            });
        }
        let down: Vec<String> = unhealthy
            .iter()
            .map(|m| match m.ordinal {
                Some(o) => format!("node {} (pod {o})", m.id),
                None => format!("node {}", m.id),
            })
            .collect();
        Some(Step::Degraded {
            reason: format!(
                "quorum lost: {healthy} of {voters} voters healthy, {needed} needed, for {}s",
                lost_for / 1000
            ),
            recovery_steps: vec![
                format!("bring back the unhealthy voters: {}", down.join(", ")),
                "writes and linearizable reads fail until a quorum is back; stale reads still \
                 work"
                    .into(),
                "if their volumes are lost for good, restore from a backup: the operator never \
                 forces a new configuration, as that can lose acknowledged writes"
                    .into(),
            ],
        })
    }

    /// Remove stale and orphaned members, then members unreachable for too long.
    pub(crate) fn heal(&self) -> Option<Step> {
        let mut gone: Vec<(&MemberObs, RemoveReason)> = self
            .cluster
            .members
            .iter()
            .filter_map(|m| match (m.ordinal, self.stale_pod(m)) {
                (None, _) => Some((m, RemoveReason::Orphan)),
                (Some(_), Some(pod)) => Some((m, RemoveReason::StaleId { pod })),
                _ => None,
            })
            .collect();
        gone.sort_by_key(|(m, _)| (self.healthy(m), m.role == MemberRole::Voter));
        if let Some(step) = self.remove_first(gone) {
            return Some(step);
        }
        let mut lost: Vec<(&MemberObs, RemoveReason)> = self
            .cluster
            .members
            .iter()
            .filter(|m| !self.healthy(m) && m.unhealthy_for_ms >= self.policy.replace_after_ms)
            .map(|m| {
                (
                    m,
                    RemoveReason::Unreachable {
                        for_ms: m.unhealthy_for_ms,
                    },
                )
            })
            .collect();
        lost.sort_by_key(|(m, _)| Reverse(m.unhealthy_for_ms));
        self.remove_first(lost)
    }

    /// Add reachable non-member pods below the target as learners; promote while voters are
    /// missing.
    pub(crate) fn join(&self) -> Option<Step> {
        let members: Vec<u64> = self.cluster.members.iter().map(|m| m.id).collect();
        let newcomer = self.pods.values().find_map(|p| {
            let node = p.node.as_ref()?;
            (p.ordinal < self.target && !members.contains(&node.id)).then_some((p.ordinal, node.id))
        });
        if let Some((pod, id)) = newcomer {
            return Some(Step::AddLearner { pod, id });
        }
        let kept_voters = self.kept().filter(|m| m.role == MemberRole::Voter).count();
        if kept_voters >= self.desired.voters as usize {
            return None;
        }
        let mut learners: Vec<&MemberObs> = self
            .kept()
            .filter(|m| m.role == MemberRole::Learner)
            .collect();
        learners.sort_by_key(|m| (m.lag.unwrap_or(u64::MAX), m.ordinal));
        if let Some(m) = learners.iter().find(|m| self.caught_up(m)) {
            return Some(Step::PromoteVoter { id: m.id });
        }
        learners.first().map(|m| Step::Wait {
            reason: format!("learner {} is catching up before promotion", m.id),
        })
    }

    /// Remove members beyond the target, then surplus voters, then shrink the StatefulSet.
    pub(crate) fn shrink(&self, sts_replicas: u32) -> Option<Step> {
        let leader = self.cluster.leader_id;
        let order = |m: &MemberObs| {
            (
                self.healthy(m),
                self.caught_up(m),
                m.id == leader,
                m.role == MemberRole::Voter,
                Reverse(m.ordinal),
            )
        };
        let mut beyond: Vec<&MemberObs> = self
            .cluster
            .members
            .iter()
            .filter(|m| m.ordinal.is_some_and(|o| o >= self.target))
            .collect();
        beyond.sort_by_key(|m| order(m));
        // Make before break: a healthy voter beyond the target stays until the pods that
        // remain have their voters, so that fault tolerance never dips on the way.
        let kept_voters = self.kept().filter(|m| m.role == MemberRole::Voter).count();
        if kept_voters < self.desired.voters as usize {
            let (held, rest): (Vec<&MemberObs>, Vec<&MemberObs>) = beyond
                .into_iter()
                .partition(|m| m.role == MemberRole::Voter && self.healthy(m));
            beyond = rest;
            if let Some(m) = held.first().filter(|_| beyond.is_empty()) {
                return Some(Step::Wait {
                    reason: format!(
                        "voter {} stays until the remaining pods have {} voters",
                        m.id, self.desired.voters
                    ),
                });
            }
        }
        let candidates = beyond
            .into_iter()
            .map(|m| (m, RemoveReason::ScaleIn))
            .collect();
        if let Some(step) = self.remove_first(candidates) {
            return Some(step);
        }
        let mut kept_voters: Vec<&MemberObs> = self
            .kept()
            .filter(|m| m.role == MemberRole::Voter)
            .collect();
        if kept_voters.len() > self.desired.voters as usize {
            kept_voters.sort_by_key(|m| order(m));
            let candidates = kept_voters
                .into_iter()
                .map(|m| (m, RemoveReason::Demote))
                .collect();
            if let Some(step) = self.remove_first(candidates) {
                return Some(step);
            }
        }
        if sts_replicas > self.target {
            // Guaranteed by the removals above returning first; checked again because an
            // early shrink would delete a live member's pod and volume.
            let member_beyond = self
                .cluster
                .members
                .iter()
                .any(|m| m.ordinal.is_some_and(|o| o >= self.target));
            if !member_beyond {
                return Some(Step::ScaleStatefulSet {
                    replicas: self.target,
                });
            }
        }
        None
    }

    /// Wait for a complete, healthy cluster, then restart outdated pods one at a time.
    pub(crate) fn roll(&self) -> Option<Step> {
        for ordinal in 0..self.target {
            let Some(pod) = self.pods.get(&ordinal) else {
                return Some(Step::Wait {
                    reason: format!("pod {ordinal} does not exist yet"),
                });
            };
            let Some(node) = &pod.node else {
                return Some(Step::Wait {
                    reason: format!("pod {ordinal} is not reachable"),
                });
            };
            if !self.cluster.members.iter().any(|m| m.id == node.id) {
                return Some(Step::Wait {
                    reason: format!("pod {ordinal} has not joined yet"),
                });
            }
        }
        if let Some(m) = self.cluster.members.iter().find(|m| !self.caught_up(m)) {
            return Some(Step::Wait {
                reason: format!("member {} is not healthy and caught up", m.id),
            });
        }
        let outdated: Vec<&&PodObs> = self
            .pods
            .values()
            .filter(|p| p.ordinal < self.target && p.image != self.desired.image)
            .collect();
        if outdated.is_empty() {
            return None;
        }
        if let Some(p) = self
            .pods
            .values()
            .find(|p| p.ordinal < self.target && !p.ready)
        {
            return Some(Step::Wait {
                reason: format!("pod {} is not ready", p.ordinal),
            });
        }
        let role_of = |p: &PodObs| {
            let id = p.node.as_ref().map(|n| n.id);
            let m = self.cluster.members.iter().find(|m| Some(m.id) == id);
            (
                id == Some(self.cluster.leader_id),
                m.is_some_and(|m| m.role == MemberRole::Voter),
            )
        };
        // Learners, then followers, then the leader; highest ordinal first within each.
        outdated
            .into_iter()
            .min_by_key(|p| (role_of(p), Reverse(p.ordinal)))
            .map(|p| Step::RestartPod { pod: p.ordinal })
    }
}
