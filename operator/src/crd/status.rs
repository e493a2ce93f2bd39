//! The `ReplicatedStore` status: what the operator reports, never written by users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a ReplicatedStore, written by the operator.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedStoreStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Lifecycle phase: Pending, Bootstrapping, Available, Scaling, Upgrading, Healing,
    /// Degraded or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Standard conditions: `Available`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Members (voters and read replicas) that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Name of the pod that is the Raft leader, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,

    /// Current Raft term, as reported by the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,

    /// Id of the Raft cluster, fixed when the first member is initialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,

    /// Every Raft member, as the leader sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,

    /// The Secret with a user credential for the store: `ca.crt` (the CA to trust),
    /// `token` (a bearer token with the `write` role) and `endpoint` (the client Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// Lifecycle phase of a ReplicatedStore.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Nothing created yet.
    Pending,
    /// The first member is being initialized and the others are joining.
    Bootstrapping,
    /// The cluster has the desired shape and every member is healthy.
    Available,
    /// Members are being added or removed.
    Scaling,
    /// Pods are being restarted one at a time for a new image or configuration.
    Upgrading,
    /// A lost or unreachable member is being replaced.
    Healing,
    /// Quorum is lost or a safe step is impossible; see the `Degraded` condition.
    Degraded,
    /// `spec.paused` is true: no changes are made.
    Paused,
}

/// One Raft member.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod that runs this member, when it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Raft node id, as a decimal string (it is a u64, beyond JSON's safe integers).
    pub node_id: String,
    /// `voter` or `learner`.
    pub role: MemberRole,
    /// Whether the leader reached this member recently and it is caught up.
    pub healthy: bool,
    /// Log entries this member is behind the leader, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// Raft role of a member: the node's own type (`rstore_api::admin`).
pub use rstore_api::admin::MemberRole;
