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

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;

use crate::crd::{
    MAX_READ_REPLICAS, MAX_REPLICAS, MemberRole, ReadConsistency, ReplicatedStoreSpec,
    ReplicationMode,
};

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

/// What the user asked for, reduced to what the planner decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Raft voters.
    pub voters: u32,
    /// Raft learners (read replicas).
    pub learners: u32,
    /// Pod template revision: the image and node settings, compared as an opaque string
    /// (reconcile passes a checksum of the pod template; tests pass image names).
    pub image: String,
    /// Replication mode.
    pub mode: ReplicationMode,
    /// Default read consistency.
    pub read_consistency: ReadConsistency,
    /// No action while true.
    pub paused: bool,
}

impl Desired {
    /// Reads the spec, rejecting what the CRD's admission rules should already have rejected
    /// (the CRD may have been installed without them).
    pub fn from_spec(spec: &ReplicatedStoreSpec) -> crate::Result<Self> {
        let voters = u32::try_from(spec.replicas)
            .ok()
            .filter(|v| (1..=MAX_REPLICAS.unsigned_abs()).contains(v))
            .ok_or_else(|| {
                crate::Error::InvalidSpec(format!(
                    "replicas is {}, must be between 1 and {MAX_REPLICAS}",
                    spec.replicas
                ))
            })?;
        let learners = u32::try_from(spec.read_replicas)
            .ok()
            .filter(|l| *l <= MAX_READ_REPLICAS.unsigned_abs())
            .ok_or_else(|| {
                crate::Error::InvalidSpec(format!(
                    "readReplicas is {}, must be between 0 and {MAX_READ_REPLICAS}",
                    spec.read_replicas
                ))
            })?;
        Ok(Self {
            voters,
            learners,
            image: spec.image.clone(),
            mode: spec.replication.mode,
            read_consistency: spec.replication.read_consistency,
            paused: spec.paused,
        })
    }

    /// Pods (and Raft members) wanted in total.
    pub fn total(&self) -> u32 {
        self.voters + self.learners
    }
}

/// Thresholds that turn observations into judgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A member is caught up when the leader reports at most this lag (log entries).
    pub max_lag: u64,
    /// A member is healthy when the leader heard from it at most this long ago.
    pub contact_timeout_ms: u64,
    /// A member unhealthy for this long is removed, so that it can be replaced.
    pub replace_after_ms: u64,
    /// Lost quorum, or no leader, for this long is reported as degraded rather than waited on.
    pub degraded_after_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_lag: 100,
            contact_timeout_ms: 5_000,
            replace_after_ms: 5 * 60_000,
            degraded_after_ms: 60_000,
        }
    }
}

/// Everything the planner knows about the world at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The StatefulSet, if it exists.
    pub statefulset: Option<StatefulSetObs>,
    /// Pods that exist, in any order.
    pub pods: Vec<PodObs>,
    /// The leader's `GET /v1/cluster` view; `None` when no leader answered.
    pub cluster: Option<ClusterObs>,
    /// The cluster id recorded in the resource's status once the cluster was initialized.
    pub known_cluster_id: Option<String>,
    /// How long no leader has been known (0 while one is).
    pub no_leader_for_ms: u64,
}

/// The StatefulSet's relevant fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulSetObs {
    /// `spec.replicas`.
    pub replicas: u32,
    /// Image of the node container in the pod template.
    pub image: String,
}

/// One pod of the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObs {
    /// StatefulSet ordinal (`<name>-<ordinal>`).
    pub ordinal: u32,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Image the pod runs now.
    pub image: String,
    /// What the node answered on `GET /v1/node`; `None` when unreachable.
    pub node: Option<NodeObs>,
}

/// A node's own answer on `GET /v1/node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObs {
    /// Raft node id (made at first start, lives and dies with the disk).
    pub id: u64,
    /// Cluster the node belongs to; `None` while uninitialized.
    pub cluster_id: Option<String>,
}

/// The leader's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterObs {
    /// Cluster id.
    pub cluster_id: String,
    /// Node id of the leader that answered.
    pub leader_id: u64,
    /// Why this view could not be confirmed by a majority of the members (one pod's word
    /// only): then no member is removed.
    pub unconfirmed: Option<String>,
    /// Voters and learners.
    pub members: Vec<MemberObs>,
    /// A joint-consensus change is in flight.
    pub membership_changing: bool,
    /// Current replication mode.
    pub mode: ReplicationMode,
    /// Current default read consistency.
    pub read_consistency: ReadConsistency,
}

/// One member in the leader's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberObs {
    /// Raft node id.
    pub id: u64,
    /// Ordinal of the pod its advertised URL names; `None` when it names no pod of ours.
    pub ordinal: Option<u32>,
    /// Voter or learner.
    pub role: MemberRole,
    /// Entries behind the leader, when the leader knows.
    pub lag: Option<u64>,
    /// Time since the leader last reached it, when known.
    pub last_contact_ms: Option<u64>,
    /// How long it has been unhealthy (0 while healthy), tracked by the operator.
    pub unhealthy_for_ms: u64,
}

/// Why a member is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its pod came back with another id: the data is gone and the id must never be reused.
    StaleId {
        /// Ordinal of the pod.
        pod: u32,
    },
    /// Its URL names no pod of this StatefulSet.
    Orphan,
    /// Unreachable beyond the replacement timeout.
    Unreachable {
        /// How long it has been unhealthy.
        for_ms: u64,
    },
    /// Its pod is beyond the desired count.
    ScaleIn,
    /// There are more voters than desired; it comes back as a learner.
    Demote,
}

impl fmt::Display for RemoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaleId { pod } => write!(f, "pod {pod} came back with a new id (data lost)"),
            Self::Orphan => write!(f, "its address names no pod of this StatefulSet"),
            Self::Unreachable { for_ms } => write!(f, "unreachable for {}s", for_ms / 1000),
            Self::ScaleIn => write!(f, "scale-in"),
            Self::Demote => write!(f, "too many voters; it rejoins as a learner"),
        }
    }
}

/// The one next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the StatefulSet.
    CreateStatefulSet {
        /// Pods.
        replicas: u32,
        /// Node image.
        image: String,
    },
    /// Set the StatefulSet's replicas.
    ScaleStatefulSet {
        /// Pods.
        replicas: u32,
    },
    /// Set the pod template's image; pods are restarted one by one by [`Step::RestartPod`].
    SetStatefulSetImage {
        /// Node image.
        image: String,
    },
    /// `POST /v1/cluster/init` on this pod.
    InitCluster {
        /// Ordinal.
        pod: u32,
    },
    /// `POST /v1/cluster/members` with `role: learner`.
    AddLearner {
        /// Ordinal.
        pod: u32,
        /// The id the pod reports.
        id: u64,
    },
    /// `POST /v1/cluster/members` with `role: voter` for an existing, caught-up learner.
    PromoteVoter {
        /// Node id.
        id: u64,
    },
    /// `DELETE /v1/cluster/members/{id}`.
    RemoveMember {
        /// Node id.
        id: u64,
        /// Why.
        reason: RemoveReason,
    },
    /// Delete the pod so that it comes back with the template's image.
    RestartPod {
        /// Ordinal.
        pod: u32,
    },
    /// `PUT /v1/cluster/config`.
    SetConfig {
        /// Replication mode.
        mode: ReplicationMode,
        /// Default read consistency.
        read_consistency: ReadConsistency,
    },
    /// Nothing safe to do now; observe again later.
    Wait {
        /// What is awaited.
        reason: String,
    },
    /// The next step would be unsafe; a human or a change of circumstances must unblock it.
    Refuse {
        /// What would be unsafe.
        reason: String,
    },
    /// Quorum (or the leader) is lost; the operator forces nothing.
    Degraded {
        /// What is wrong.
        reason: String,
        /// What a human can do.
        recovery_steps: Vec<String>,
    },
    /// The cluster has the desired shape, image and settings, and every member is healthy.
    Done,
}

impl Step {
    /// Whether the step changes anything (as opposed to reporting: wait, refuse, degraded,
    /// done).
    pub fn is_action(&self) -> bool {
        !matches!(
            self,
            Self::Wait { .. } | Self::Refuse { .. } | Self::Degraded { .. } | Self::Done
        )
    }

    /// Whether the step changes Raft membership (or creates it).
    pub fn is_membership_change(&self) -> bool {
        matches!(
            self,
            Self::InitCluster { .. }
                | Self::AddLearner { .. }
                | Self::PromoteVoter { .. }
                | Self::RemoveMember { .. }
        )
    }
}

/// One line for events, logs and status messages.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateStatefulSet { replicas, image } => {
                write!(
                    f,
                    "create the StatefulSet with {replicas} pods (template revision {image})"
                )
            }
            Self::ScaleStatefulSet { replicas } => write!(f, "scale the StatefulSet to {replicas}"),
            Self::SetStatefulSetImage { image } => {
                write!(f, "update the pod template to revision {image}")
            }
            Self::InitCluster { pod } => write!(f, "initialize the cluster on pod {pod}"),
            Self::AddLearner { pod, id } => write!(f, "add pod {pod} (node {id}) as a learner"),
            Self::PromoteVoter { id } => write!(f, "promote node {id} to voter"),
            Self::RemoveMember { id, reason } => write!(f, "remove node {id}: {reason}"),
            Self::RestartPod { pod } => write!(
                f,
                "restart pod {pod} on the new pod template (image or node settings)"
            ),
            Self::SetConfig {
                mode,
                read_consistency,
            } => write!(
                f,
                "set replication mode {} and read consistency {}",
                mode.as_str(),
                read_consistency.as_str()
            ),
            Self::Wait { reason } => write!(f, "wait: {reason}"),
            Self::Refuse { reason } => write!(f, "refused: {reason}"),
            Self::Degraded { reason, .. } => write!(f, "degraded: {reason}"),
            Self::Done => write!(f, "done"),
        }
    }
}

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
        return without_leader(observed, &pods, policy);
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

fn without_leader(observed: &Observed, pods: &BTreeMap<u32, &PodObs>, policy: &Policy) -> Step {
    let initialized: Vec<u32> = pods
        .values()
        .filter(|p| p.node.as_ref().is_some_and(|n| n.cluster_id.is_some()))
        .map(|p| p.ordinal)
        .collect();
    if observed.known_cluster_id.is_none() && initialized.is_empty() {
        // Only pod 0 is ever initialized, and only while no cluster exists anywhere we can
        // see: a second init elsewhere would make a second, split-brained cluster.
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

/// The observed cluster, with the judgements the rules need.
struct View<'a> {
    desired: &'a Desired,
    cluster: &'a ClusterObs,
    pods: &'a BTreeMap<u32, &'a PodObs>,
    policy: &'a Policy,
    target: u32,
}

impl<'a> View<'a> {
    fn new(
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

    fn voters(&self) -> impl Iterator<Item = &'a MemberObs> {
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

    fn quorum_lost(&self) -> Option<Step> {
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
    fn heal(&self) -> Option<Step> {
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
    fn join(&self) -> Option<Step> {
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
    fn shrink(&self, sts_replicas: u32) -> Option<Step> {
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
    fn roll(&self) -> Option<Step> {
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
