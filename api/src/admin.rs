//! The admin API's JSON bodies (docs/api.md, "Admin API"): what the node answers and accepts
//! under `/v1/node` and `/v1/cluster*`, and what the operator reads and sends. One
//! definition on both sides, so that a field renamed in the node cannot leave the operator
//! reading nothing.

use serde::{Deserialize, Serialize};

use crate::{ReadConsistency, ReplicationMode};

/// Raft role of a member.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Votes and counts towards the quorum.
    Voter,
    /// Replicates without voting (a read replica, or a voter still catching up).
    Learner,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voter => "voter",
            Self::Learner => "learner",
        }
    }
}

/// How a member is secured (`GET /v1/node`, `security`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Security {
    /// True when the member runs with `--insecure-plaintext`: no TLS on either port.
    pub plaintext: bool,
    /// `tls` when the peer port requires member certificates, else `none`.
    pub peer_auth: String,
    /// `certificates+tokens`, `tokens` or `none`.
    pub client_auth: String,
}

/// `GET /v1/node`: one member's own view of itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u64,
    pub cluster_id: Option<String>,
    /// `leader`, `follower`, `candidate`, `learner`, `uninitialized` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    #[serde(default)]
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    #[serde(default)]
    pub committed_index: u64,
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    #[serde(default)]
    pub revision: u64,
    pub client_url: String,
    pub peer_url: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub security: Security,
}

/// One member in `GET /v1/cluster`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub role: MemberRole,
    pub client_url: String,
    pub peer_url: String,
    /// Last log index known durable on the member (leader only).
    #[serde(default)]
    pub matched_index: Option<u64>,
    /// Entries the member is behind the leader's log (leader only).
    #[serde(default)]
    pub lag: Option<u64>,
    /// Milliseconds since the member last acknowledged an AppendEntries (leader only).
    #[serde(default)]
    pub last_contact_ms: Option<u64>,
}

/// `GET /v1/cluster` (and the answer of every membership change).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub cluster_id: Option<String>,
    pub leader_id: Option<u64>,
    pub term: u64,
    /// True while a membership change is in its joint phase or not yet committed.
    #[serde(default)]
    pub membership_changing: bool,
    pub members: Vec<MemberView>,
    pub replication_mode: ReplicationMode,
    pub read_consistency: ReadConsistency,
    /// The oldest revision whose changes can still be watched.
    #[serde(default)]
    pub oldest_revision: u64,
    #[serde(default)]
    pub revision: u64,
}

/// `POST /v1/cluster/members`. `role` stays text so that the node can name a wrong one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub id: u64,
    pub peer_url: String,
    pub client_url: String,
    #[serde(default = "default_role")]
    pub role: String,
}

fn default_role() -> String {
    MemberRole::Voter.as_str().into()
}

/// `PUT /v1/cluster/config`: either or both. Text, so that the node can name a wrong value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_consistency: Option<String>,
}

/// `GET /v1/cluster/config`, and the answer of `PUT /v1/cluster/config`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    pub replication_mode: ReplicationMode,
    pub read_consistency: ReadConsistency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_round_trips_and_tolerates_missing_optional_fields() {
        let v: ClusterView = serde_json::from_str(
            r#"{"cluster_id":"c","leader_id":1,"term":2,"members":[{"id":1,"role":"voter","client_url":"a","peer_url":"b"}],"replication_mode":"sync","read_consistency":"stale"}"#,
        )
        .unwrap();
        assert_eq!(v.members[0].role, MemberRole::Voter);
        assert_eq!(v.replication_mode, ReplicationMode::Sync);
        let back: ClusterView = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        let add: AddMember =
            serde_json::from_str(r#"{"id":3,"peer_url":"p","client_url":"c"}"#).unwrap();
        assert_eq!(add.role, "voter");
    }
}
