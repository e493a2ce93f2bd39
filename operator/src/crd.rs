//! The `ReplicatedStore` custom resource (`rstore.dev/v1alpha1`).
//!
//! The Rust types here are the single source of the CRD: `operator crd` prints what
//! [`kube::CustomResourceExt::crd`] makes of them, `crds/replicatedstore.yaml` is that output,
//! and a test fails when the two drift apart. Doc comments on fields become the
//! `kubectl explain` text, so they are written for users, not for Rust readers.
//!
//! Admission rules live next to the fields they guard (`#[x_kube(validation = ...)]`), so that
//! the apiserver rejects impossible specs before the operator ever sees them. The operator
//! still re-checks what it depends on: a CRD can be installed without its rules.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

    /// Log entries between snapshots (node default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("snapshotLogs must be at least 1"))]
    pub snapshot_logs: Option<u64>,
}

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

/// The CRD as YAML, exactly as `crds/replicatedstore.yaml` holds it.
pub fn crd_yaml() -> Result<String, crate::Error> {
    serde_yaml::to_string(&crd()).map_err(crate::Error::CrdSerialize)
}

/// The CRD as it is published: the derived one, without the integer formats JSON Schema
/// generators emit for unsigned Rust types (`uint32`, `uint64`). Kubernetes knows only
/// `int32` and `int64` and warns on every apply of a CRD with others ("unrecognized format");
/// the `minimum: 0` next to them keeps the meaning.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                let unsigned = map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"));
                if unsigned {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let crd = ReplicatedStore::crd();
    let mut v = serde_json::to_value(&crd).unwrap_or_default();
    strip(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

/// Fields whose type is a Kubernetes API type: the reference names it rather than repeating
/// the Kubernetes documentation.
const KUBERNETES_TYPES: &[(&str, &str)] = &[
    ("spec.resources", "ResourceRequirements"),
    ("spec.affinity", "Affinity"),
    ("spec.tolerations", "[]Toleration"),
    ("spec.nodeSelector", "map[string]string"),
    (
        "spec.topologySpreadConstraints",
        "[]TopologySpreadConstraint",
    ),
    ("spec.storage.size", "Quantity"),
    ("status.conditions", "[]Condition"),
];

/// The CRD reference as Markdown (`docs/crd.md`), generated from the same schema as the CRD,
/// so that it says exactly what `kubectl explain` says.
pub fn reference_markdown() -> String {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let mut out = String::from(
        "# ReplicatedStore reference\n\n\
         Generated from the Rust types by `operator crd-reference` (a test fails when this file \
         is out of date). `apiVersion: rstore.dev/v1alpha1`, `kind: ReplicatedStore`, short name \
         `rstore`, namespaced. Rules marked *CEL* are enforced by the API server at admission.\n",
    );
    for (section, title) in [
        ("spec", "Spec"),
        ("status", "Status (written by the operator)"),
    ] {
        out.push_str(&format!(
            "\n## {title}\n\n| field | type | default | description |\n|---|---|---|---|\n"
        ));
        if let Some(node) = schema["properties"].get(section) {
            walk(section, node, &mut out);
        }
    }
    out
}

fn walk(path: &str, node: &serde_json::Value, out: &mut String) {
    let Some(props) = node["properties"].as_object() else {
        return;
    };
    for (name, field) in props {
        let full = format!("{path}.{name}");
        let k8s = KUBERNETES_TYPES
            .iter()
            .find(|(p, _)| *p == full)
            .map(|(_, t)| *t);
        let ty = match k8s {
            Some(t) => format!("Kubernetes `{t}`"),
            None => type_name(field),
        };
        let default = field
            .get("default")
            .map_or(String::new(), |d| format!("`{d}`"));
        let mut description = field["description"]
            .as_str()
            .unwrap_or_default()
            .replace('\n', " ");
        if let Some(values) = field["enum"].as_array() {
            let v: Vec<String> = values
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                .collect();
            description.push_str(&format!(" One of {}.", v.join(", ")));
        }
        for rule in field["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            description.push_str(&format!(
                " *CEL:* {}.",
                rule["message"].as_str().unwrap_or_default()
            ));
        }
        let required = node["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == name));
        let marker = if required { " (required)" } else { "" };
        out.push_str(&format!(
            "| `{}`{marker} | {ty} | {default} | {} |\n",
            full.split_once('.').map_or(full.as_str(), |(_, rest)| rest),
            description.replace('|', "\\|").trim()
        ));
        if k8s.is_some() {
            continue;
        }
        if field["properties"].is_object() {
            walk(&full, field, out);
        } else if field["items"]["properties"].is_object() {
            walk(&format!("{full}[]"), &field["items"], out);
        }
    }
}

fn type_name(field: &serde_json::Value) -> String {
    match field["type"].as_str() {
        Some("array") => format!("[]{}", type_name(&field["items"])),
        Some("object") if field["properties"].is_object() => "object".into(),
        Some("object") => "map".into(),
        Some(t) => t.into(),
        None => "any".into(),
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use kube::core::cel::Validator;
    use serde_json::{Value, json};

    use super::*;

    const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/replicatedstore.yaml");

    #[test]
    fn crd_reference_matches_the_rust_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/crd.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let generated = reference_markdown();
        assert!(
            on_disk == generated,
            "docs/crd.md is out of date with operator/src/crd.rs; regenerate it with: \
             cargo run -p operator -- crd-reference > docs/crd.md"
        );
        for needle in [
            "`replicas`",
            "`replication.mode`",
            "*CEL:* replicas must be between 1 and 9",
            "`members[].nodeId`",
        ] {
            assert!(
                generated.contains(needle),
                "{needle} missing from the reference"
            );
        }
    }

    #[test]
    fn crds_folder_matches_the_rust_types() {
        let generated = crd_yaml().unwrap();
        let on_disk = std::fs::read_to_string(CRD_PATH).unwrap_or_default();
        assert!(
            on_disk == generated,
            "crds/replicatedstore.yaml is out of date with the Rust types in operator/src/crd.rs; \
             regenerate it with: cargo run -p operator -- crd > crds/replicatedstore.yaml"
        );
    }

    fn schema() -> Value {
        let crd = ReplicatedStore::crd();
        let version = &crd.spec.versions[0];
        serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "rstore.dev/v1alpha1",
            "kind": "ReplicatedStore",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": spec,
        })
    }

    /// The CEL rule messages that reject `spec` (creation), or that reject moving from `old`.
    fn rejections(spec: Value, old: Option<Value>) -> Vec<String> {
        let old = old.map(object);
        match Validator::new().validate(&schema(), &object(spec), old.as_ref()) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
        }
    }

    #[test]
    fn names_subresources_and_columns() {
        let crd = ReplicatedStore::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("replicatedstores.rstore.dev")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["rstore".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.readyReplicas");
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Replicas", "Ready", "Leader", "Mode", "Phase", "Age"]
        );
    }

    #[test]
    fn every_spec_and_status_field_is_documented() {
        fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (name, child) in props {
                    let p = format!("{path}.{name}");
                    if child.get("description").is_none() {
                        missing.push(p.clone());
                    }
                    walk(&p, child, missing);
                }
            }
            if let Some(items) = node.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let s = schema();
        let mut missing = Vec::new();
        walk("spec", &s["properties"]["spec"], &mut missing);
        walk("status", &s["properties"]["status"], &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a doc comment: {missing:?}"
        );
    }

    #[test]
    fn defaults_agree_between_serde_schema_and_default() {
        let from_empty: ReplicatedStoreSpec = serde_json::from_value(json!({})).unwrap();
        assert_eq!(from_empty, ReplicatedStoreSpec::default());
        let s = schema();
        let spec = &s["properties"]["spec"]["properties"];
        assert_eq!(spec["replicas"]["default"], json!(DEFAULT_REPLICAS));
        assert_eq!(spec["readReplicas"]["default"], json!(0));
        assert_eq!(spec["image"]["default"], json!(DEFAULT_IMAGE));
        assert_eq!(spec["paused"]["default"], json!(false));
        assert_eq!(
            spec["replication"]["properties"]["mode"]["default"],
            json!("quorum")
        );
        let storage = &spec["storage"]["properties"];
        assert_eq!(storage["size"]["default"], json!(DEFAULT_STORAGE_SIZE));
        assert_eq!(
            storage["pvcPolicy"]["properties"]["whenScaled"]["default"],
            json!("Delete")
        );
        assert_eq!(
            storage["pvcPolicy"]["properties"]["whenDeleted"]["default"],
            json!("Retain")
        );
        let round_trip: ReplicatedStoreSpec =
            serde_json::from_value(serde_json::to_value(ReplicatedStoreSpec::default()).unwrap())
                .unwrap();
        assert_eq!(round_trip, ReplicatedStoreSpec::default());
    }

    #[test]
    fn cel_accepts_sane_specs() {
        assert_eq!(rejections(json!({}), None), Vec::<String>::new());
        let full = json!({
            "replicas": 5, "readReplicas": 2, "image": "rstore/node:2",
            "replication": {"mode": "sync", "readConsistency": "stale"},
            "storage": {"size": "10Gi", "storageClassName": "fast"},
            "raft": {"heartbeatMs": 50, "electionMinMs": 500, "electionMaxMs": 900},
        });
        assert_eq!(rejections(full.clone(), None), Vec::<String>::new());
        assert_eq!(rejections(full.clone(), Some(full)), Vec::<String>::new());
        // Setting a class for the first time is allowed.
        let before = json!({"storage": {"size": "1Gi"}});
        let after = json!({"storage": {"size": "1Gi", "storageClassName": "fast"}});
        assert_eq!(rejections(after, Some(before)), Vec::<String>::new());
    }

    #[test]
    fn cel_rejects_impossible_specs() {
        let cases = [
            (json!({"replicas": 0}), "replicas must be between 1 and 9"),
            (json!({"replicas": 10}), "replicas must be between 1 and 9"),
            (
                json!({"readReplicas": -1}),
                "readReplicas must be between 0 and 16",
            ),
            (
                json!({"readReplicas": 17}),
                "readReplicas must be between 0 and 16",
            ),
            (json!({"image": ""}), "image must not be empty"),
            (
                json!({"raft": {"heartbeatMs": 500, "electionMinMs": 400}}),
                "electionMinMs must be greater",
            ),
            // The node's default heartbeat (100) applies when it is left out.
            (
                json!({"raft": {"electionMinMs": 100, "electionMaxMs": 200}}),
                "electionMinMs must be greater",
            ),
            (
                json!({"raft": {"electionMinMs": 900, "electionMaxMs": 900}}),
                "electionMaxMs must be greater",
            ),
            (
                json!({"raft": {"electionMinMs": 3000}}),
                "electionMaxMs must be greater",
            ),
            (
                json!({"raft": {"heartbeatMs": 1}}),
                "heartbeatMs must be at least 10",
            ),
        ];
        for (spec, expected) in cases {
            let got = rejections(spec.clone(), None);
            assert!(
                got.iter().any(|m| m.contains(expected)),
                "{spec}: expected {expected:?}, got {got:?}"
            );
        }
    }

    /// The raft rules spell out the node's defaults; this ties them to the named constants.
    #[test]
    fn cel_raft_defaults_match_the_constants() {
        let (hb, min, max) = (
            DEFAULT_HEARTBEAT_MS,
            DEFAULT_ELECTION_MIN_MS,
            DEFAULT_ELECTION_MAX_MS,
        );
        let accepted = [
            json!({"electionMinMs": hb + 1}),
            json!({"heartbeatMs": min - 1}),
            json!({"electionMaxMs": min + 1}),
            json!({"electionMinMs": max - 1}),
        ];
        for raft in accepted {
            assert_eq!(
                rejections(json!({"raft": raft.clone()}), None),
                Vec::<String>::new(),
                "{raft}"
            );
        }
        let rejected = [
            json!({"electionMinMs": hb}),
            json!({"heartbeatMs": min}),
            json!({"electionMaxMs": min}),
            json!({"electionMinMs": max}),
        ];
        for raft in rejected {
            assert!(
                !rejections(json!({"raft": raft.clone()}), None).is_empty(),
                "{raft}"
            );
        }
    }

    #[test]
    fn cel_makes_storage_class_immutable_once_set() {
        let fast = json!({"storage": {"size": "1Gi", "storageClassName": "fast"}});
        let slow = json!({"storage": {"size": "1Gi", "storageClassName": "slow"}});
        let unset = json!({"storage": {"size": "1Gi"}});
        let changed = rejections(slow, Some(fast.clone()));
        assert!(
            changed.iter().any(|m| m.contains("immutable")),
            "{changed:?}"
        );
        let removed = rejections(unset, Some(fast));
        assert!(
            removed.iter().any(|m| m.contains("cannot be removed")),
            "{removed:?}"
        );
        let bigger = json!({"storage": {"size": "2Gi", "storageClassName": "fast"}});
        let same = json!({"storage": {"size": "1Gi", "storageClassName": "fast"}});
        let resized = rejections(bigger, Some(same));
        assert!(
            resized
                .iter()
                .any(|m| m.contains("storage.size cannot change")),
            "{resized:?}"
        );
    }

    #[test]
    fn cel_fixes_transport_security_at_creation() {
        let issuer = |name: &str| json!({"tls": {"issuerRef": {"name": name}}});
        let plaintext = json!({"tls": {"insecurePlaintext": true}});
        assert_eq!(rejections(issuer("corp"), None), Vec::<String>::new());
        assert_eq!(rejections(plaintext.clone(), None), Vec::<String>::new());
        assert_eq!(
            rejections(issuer("corp"), Some(issuer("corp"))),
            Vec::<String>::new()
        );
        for (after, before) in [
            (issuer("other"), issuer("corp")),
            (json!({"tls": {}}), plaintext.clone()),
            (json!({}), plaintext),
            (json!({}), issuer("corp")),
        ] {
            let got = rejections(after.clone(), Some(before.clone()));
            assert!(
                got.iter().any(|m| m.contains("spec.tls cannot")),
                "{before} -> {after}: {got:?}"
            );
        }
        let bad_kind = json!({"tls": {"issuerRef": {"name": "x", "kind": "Vault"}}});
        let got = rejections(bad_kind, None);
        assert!(
            got.iter().any(|m| m.contains("Issuer or ClusterIssuer")),
            "{got:?}"
        );
    }

    #[test]
    fn schema_enums_reject_unknown_modes() {
        let s = schema();
        let replication = &s["properties"]["spec"]["properties"]["replication"]["properties"];
        assert_eq!(
            replication["mode"]["enum"],
            json!(["quorum", "sync", "async"])
        );
        assert_eq!(
            replication["readConsistency"]["enum"],
            json!(["linearizable", "leader", "stale"])
        );
    }
}
