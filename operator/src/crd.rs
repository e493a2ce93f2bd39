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
//!
//! - [`spec`]: the spec types (and the `ReplicatedStore` type the derive makes of them);
//! - [`status`]: the status types;
//! - [`backup`]: the `Backup` and `BackupSchedule` resources;
//! - [`generate`]: the CRD YAML and the Markdown reference made from them.

pub mod backup;
mod generate;
mod spec;
mod status;
#[cfg(test)]
mod tests;

pub use generate::{all_crds, all_crds_yaml, crd, crd_yaml, reference_markdown};
pub use spec::{
    BootstrapSpec, DEFAULT_ELECTION_MAX_MS, DEFAULT_ELECTION_MIN_MS, DEFAULT_HEARTBEAT_MS,
    DEFAULT_IMAGE, DEFAULT_REPLICAS, DEFAULT_STORAGE_SIZE, FromBackup, IssuerRef,
    MAX_READ_REPLICAS, MAX_REPLICAS, PvcPolicy, PvcRetention, RaftSpec, ReadConsistency,
    ReplicatedStore, ReplicatedStoreSpec, ReplicationMode, ReplicationSpec, StorageSpec, TlsSpec,
};
pub use status::{MemberRole, MemberStatus, Phase, ReplicatedStoreStatus};
