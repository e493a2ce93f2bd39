//! The planner's input: what the user asked for ([`Desired`]), the thresholds that turn
//! observations into judgements ([`Policy`]), and everything observed at one moment
//! ([`Observed`]). Plain data: made by the validate stage and `observe`, read by the rules.

use crate::crd::{MemberRole, ReadConsistency, ReplicationMode};

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
    /// Pod 0 restores the cluster from a backup when it starts (`spec.bootstrap.fromBackup`):
    /// the cluster is never initialized empty.
    pub restore: bool,
}

impl Desired {
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
