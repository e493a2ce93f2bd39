//! The planner's output: the one next [`Step`], and why a member is removed
//! ([`RemoveReason`]), each with the one line that Events, logs and status show.

use std::fmt;

use crate::crd::{ReadConsistency, ReplicationMode};

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
