//! The `ReplicatedStore` spec: what users write, with its defaults and CEL admission rules.
//!
//! The `#[derive(CustomResource)]` here also makes the `ReplicatedStore` type itself. Doc
//! comments on fields become the `kubectl explain` text, so they are written for users.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::status::ReplicatedStoreStatus;

/// The node image used when `spec.image` is not given. Kept here, in one place, so that the
/// CRD default, the docs and the builders agree.
pub const DEFAULT_IMAGE: &str = "ghcr.io/rstore/node:0.1.0";
/// Default number of voters.
pub const DEFAULT_REPLICAS: i32 = 3;
/// Most voters a cluster may have: beyond this, every write waits on too many fsyncs.
pub const MAX_REPLICAS: i32 = 9;
/// Most read replicas (learners) a cluster may have: each one costs the leader a replication
/// stream.
pub const MAX_READ_REPLICAS: i32 = 16;
/// Default volume size of each member's PVC.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";
/// The node's own Raft timing defaults (see docs/api.md); CEL rules use them when a field is
/// left out, so that a partial `raft` block is checked against what the node will really run.
pub const DEFAULT_HEARTBEAT_MS: u32 = 100;
/// See [`DEFAULT_HEARTBEAT_MS`].
pub const DEFAULT_ELECTION_MIN_MS: u32 = 1000;
/// See [`DEFAULT_HEARTBEAT_MS`].
pub const DEFAULT_ELECTION_MAX_MS: u32 = 2000;

/// A replicated key-value store cluster: Raft voters, optional read replicas, and a
/// replication mode. The operator creates, scales, heals and upgrades it one safe step at a
/// time.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
// The printer columns repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "rstore.dev",
    version = "v1alpha1",
    kind = "ReplicatedStore",
    plural = "replicatedstores",
    shortname = "rstore",
    namespaced,
    status = "ReplicatedStoreStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "A replicated key-value store cluster managed by the rstore operator.",
    // The StatefulSet's pods carry a controller-revision-hash label `<name>-<10 characters>`,
    // and label values stop at 63: without this rule a longer name is admitted and then no
    // pod can ever be created (the real API server showed it; the fake one never did).
    validation = Rule::new("size(self.metadata.name) <= 52 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be an RFC 1035 label (lower-case letters, digits and '-', starting with a letter) of at most 52 characters: the StatefulSet's pods and their labels are named after it"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        description = "Desired number of voters",
        json_path = ".spec.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        description = "Members that are ready",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        description = "Pod of the current Raft leader",
        json_path = ".status.leader"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        description = "Replication mode",
        json_path = ".spec.replication.mode"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        description = "Lifecycle phase",
        json_path = ".status.phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.tls) || has(self.tls)").message("spec.tls cannot be removed once set: every member of a cluster must trust the same CA"))]
#[x_kube(validation = Rule::new("has(oldSelf.bootstrap) == has(self.bootstrap)").message("spec.bootstrap cannot be added or removed: it only applies when the cluster is created"))]
pub struct ReplicatedStoreSpec {
    /// Number of voting members (Raft voters), 1 to 9. A cluster of N voters survives the loss
    /// of (N-1)/2 of them in `quorum` mode; odd numbers are the useful ones. Scaling changes
    /// membership one member at a time and never drops below a quorum of healthy voters.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 9").message("replicas must be between 1 and 9"))]
    pub replicas: i32,

    /// Number of read replicas (Raft learners), 0 to 16. They do not vote, replicate
    /// asynchronously and serve `stale` reads.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 16").message("readReplicas must be between 0 and 16"))]
    pub read_replicas: i32,

    /// Replication mode and default read consistency. Changed live through Raft, never by a
    /// restart.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// Container image of the rstore node. Changing it rolls the pods one at a time: followers
    /// first, the leader last, waiting for the cluster to be healthy and caught up in between.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("image must not be empty"))]
    pub image: String,

    /// Persistent storage of each member: one PersistentVolumeClaim per pod.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Compute resources of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Scheduling affinity of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Tolerations of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Node selector of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Topology spread constraints of the member pods, for example one voter per zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// Raft timing. Left out, the node's defaults apply (heartbeat 100 ms, election timeout
    /// 1000 to 2000 ms, a snapshot every 10000 log entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftSpec>,

    /// Stop all changes to the cluster: the operator observes and reports status but takes no
    /// action until this is false again.
    #[serde(default)]
    pub paused: bool,

    /// Who may reach the members' client port (7379), as NetworkPolicy peers (pod and
    /// namespace selectors, IP blocks). Left out, any pod may; the rstore operator's own
    /// namespace is always allowed. The peer port (7380) only ever admits the store's own
    /// pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_access: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,

    /// Transport security. Left out, the operator runs a CA of its own for the store: member
    /// certificates, a token for itself and one for users, all as Secrets, renewed before
    /// they expire. Fixed at creation: the members of one cluster must trust one CA.
    #[serde(default, skip_serializing_if = "TlsSpec::is_default")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.tls cannot change after creation: every member of a cluster must trust the same CA; create a new store and copy the data instead"))]
    pub tls: TlsSpec,

    /// Create the cluster from a backup instead of empty: the first member restores it as
    /// it starts (a new cluster id and new member ids; the keys, values and revisions of the
    /// backup), and the others join it. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.bootstrap cannot change: it only applies when the cluster is created"))]
    pub bootstrap: Option<BootstrapSpec>,
}

/// How a new cluster starts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore this backup into the new cluster.
    pub from_backup: FromBackup,
}

/// The backup a new cluster starts from: a store URL with an optional target, an object's
/// URL, or a `Backup` resource.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.backup)").message("fromBackup takes exactly one of url (a store or a backup object) and backup (a Backup resource)"),
    validation = Rule::new("!has(self.backup) || (!has(self.atRevision) && !has(self.atTime))").message("fromBackup.atRevision and atTime choose among the backups of a store url, not with backup")
)]
pub struct FromBackup {
    /// A store (`s3://BUCKET/PREFIX`, `gs://…`, `az://…`, `file:///DIR`), from which the
    /// newest complete backup is taken (see `atRevision` and `atTime`), or one backup
    /// object's URL (`…/CLUSTER-ID/backup-TIME-rREVISION.rsb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub url: Option<String>,
    /// A `Backup` resource in this namespace that succeeded: its object is restored, from
    /// its destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub backup: Option<String>,
    /// A Secret in this namespace with the object store's settings (as a Backup's
    /// `destination.credentialsSecret`), mounted into the first pod for the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// From a store url: the newest complete backup at or before this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_revision: Option<u64>,
    /// From a store url: the newest complete backup taken at or before this UTC time
    /// (`2026-12-05T10:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub at_time: Option<String>,
}

/// Transport security of a store's members.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A cert-manager issuer of the member certificate. Left out, the operator's own CA
    /// issues one certificate per member. With it, cert-manager issues one certificate that
    /// all members share (a StatefulSet mounts one Secret in every pod), so the peer port
    /// then tells the store's members from outsiders but not from each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,

    /// Run the members without TLS and without client authentication: anyone who can reach
    /// a pod can then read, write and reconfigure the store. For trusted test networks only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plaintext: bool,
}

impl TlsSpec {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// A cert-manager issuer, as a `Certificate`'s `issuerRef`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[x_kube(validation = Rule::new("size(self) > 0").message("issuerRef.name must not be empty"))]
    pub name: String,
    /// `Issuer` (in the store's namespace, the default) or `ClusterIssuer`.
    #[serde(default = "IssuerRef::default_kind")]
    #[x_kube(validation = Rule::new("self == 'Issuer' || self == 'ClusterIssuer'").message("issuerRef.kind must be Issuer or ClusterIssuer"))]
    pub kind: String,
    /// API group of the issuer: `cert-manager.io` unless it is an external issuer.
    #[serde(default = "IssuerRef::default_group")]
    pub group: String,
}

impl IssuerRef {
    fn default_kind() -> String {
        "Issuer".into()
    }
    fn default_group() -> String {
        "cert-manager.io".into()
    }
}

impl Default for ReplicatedStoreSpec {
    fn default() -> Self {
        Self {
            replicas: DEFAULT_REPLICAS,
            read_replicas: 0,
            replication: ReplicationSpec::default(),
            image: DEFAULT_IMAGE.to_owned(),
            storage: StorageSpec::default(),
            resources: None,
            affinity: None,
            tolerations: None,
            node_selector: None,
            topology_spread_constraints: None,
            raft: None,
            paused: false,
            client_access: None,
            tls: TlsSpec::default(),
            bootstrap: None,
        }
    }
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}

fn default_storage_size() -> Quantity {
    Quantity(DEFAULT_STORAGE_SIZE.to_owned())
}

/// Cluster-wide replication settings.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// When a write is acknowledged: `quorum` (a majority of voters has it durable; the
    /// default), `sync` (every voter has it durable; writes fail with 503 while a voter is down)
    /// or `async` (the leader alone has it durable; a leader crash can lose acknowledged
    /// writes).
    #[serde(default)]
    pub mode: ReplicationMode,

    /// Default consistency of reads that do not ask for one: `linearizable` (the default),
    /// `leader` (the leader's local state, no quorum round) or `stale` (the answering node's
    /// local state).
    #[serde(default)]
    pub read_consistency: ReadConsistency,
}

pub use rstore_api::{ReadConsistency, ReplicationMode};

/// Persistent storage of each member.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.storageClassName) || has(self.storageClassName)").message("storageClassName cannot be removed once set"))]
pub struct StorageSpec {
    /// Size of each member's volume, for example `1Gi`. Fixed at creation: a StatefulSet's
    /// volume claim templates cannot change (expand the PVCs themselves if their StorageClass
    /// allows it).
    #[serde(default = "default_storage_size")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.size cannot change after creation: volume claim templates are immutable; expand each PVC instead if its StorageClass allows it"))]
    pub size: Quantity,

    /// StorageClass of the volumes. Left out, the cluster's default class is used. Immutable
    /// once set: existing volumes cannot move to another class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storageClassName is immutable once set"))]
    pub storage_class_name: Option<String>,

    /// What happens to the volumes of members that go away.
    #[serde(default)]
    pub pvc_policy: PvcPolicy,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            pvc_policy: PvcPolicy::default(),
        }
    }
}

/// Retention of PersistentVolumeClaims, as the StatefulSet's
/// `persistentVolumeClaimRetentionPolicy`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcPolicy {
    /// Volumes of members removed by a scale-in: `Delete` (the default; a member that comes
    /// back starts empty with a new id, which Raft requires anyway) or `Retain`.
    #[serde(default = "PvcRetention::delete")]
    pub when_scaled: PvcRetention,

    /// Volumes when the ReplicatedStore is deleted: `Retain` (the default, so that data
    /// outlives an accidental delete) or `Delete`.
    #[serde(default = "PvcRetention::retain")]
    pub when_deleted: PvcRetention,
}

/// Keep or delete a volume.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum PvcRetention {
    /// Keep the volume.
    Retain,
    /// Delete the volume.
    Delete,
}

impl PvcRetention {
    fn retain() -> Self {
        Self::Retain
    }
    fn delete() -> Self {
        Self::Delete
    }
}

// Written by hand because the two fields default differently, and `PvcPolicy::default()` must
// agree with the serde (and therefore schema) defaults.
impl Default for PvcPolicy {
    fn default() -> Self {
        Self {
            when_scaled: PvcRetention::Delete,
            when_deleted: PvcRetention::Retain,
        }
    }
}

/// Raft timing of every member. Fields left out take the node's defaults.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.electionMinMs) ? self.electionMinMs : 1000) > (has(self.heartbeatMs) ? self.heartbeatMs : 100)").message("electionMinMs must be greater than heartbeatMs (defaults: heartbeat 100, election 1000-2000)"),
    validation = Rule::new("(has(self.electionMaxMs) ? self.electionMaxMs : 2000) > (has(self.electionMinMs) ? self.electionMinMs : 1000)").message("electionMaxMs must be greater than electionMinMs (defaults: election 1000-2000)")
)]
pub struct RaftSpec {
    /// Interval between leader heartbeats, in milliseconds (node default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 10").message("heartbeatMs must be at least 10"))]
    pub heartbeat_ms: Option<u32>,

    /// Lower bound of the randomized election timeout, in milliseconds (node default 1000).
    /// Must exceed `heartbeatMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_min_ms: Option<u32>,

    /// Upper bound of the randomized election timeout, in milliseconds (node default 2000).
    /// Must exceed `electionMinMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_max_ms: Option<u32>,

    /// Log entries between snapshots, at least (node default 10000). A state over 64 MiB
    /// also waits until the commands logged since its last snapshot hold a quarter of its
    /// bytes (at most ten times the entries, or 1 GiB of log), each member stretching both by
    /// up to half, by its id, so that members snapshot at different times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("snapshotLogs must be at least 1"))]
    pub snapshot_logs: Option<u64>,
}
