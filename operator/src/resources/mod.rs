//! The Kubernetes objects a `ReplicatedStore` owns, built as pure functions of the resource
//! (no client, no IO), one module per object: [`statefulset`], [`service`], [`pdb`],
//! [`networkpolicy`], [`certmanager`], [`bootstrap`] (a restore from a backup), and
//! [`credentials`] for the content of the store's
//! certificate and token Secrets (the reconcile's apply stage writes them).
//!
//! Names, labels and ports are typed constants here, so that the builders, the observer, the
//! local pod runner and the Helm chart agree on them.

pub mod bootstrap;
pub mod certmanager;
pub mod credentials;
pub mod networkpolicy;
pub mod pdb;
pub mod service;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::ReplicatedStore;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "rstore-operator";
/// Client port of a node (KV, admin, health, metrics).
pub const CLIENT_PORT: u16 = 7379;
/// Peer port of a node (Raft RPC only).
pub const PEER_PORT: u16 = 7380;
/// Name of the client port in containers and Services.
pub const CLIENT_PORT_NAME: &str = "client";
/// Name of the peer port in containers and Services.
pub const PEER_PORT_NAME: &str = "peer";
/// Name of the node container.
pub const CONTAINER: &str = "node";
/// Name of the data volume claim template.
pub const DATA_VOLUME: &str = "data";
/// Where the data volume is mounted in the node container.
pub const DATA_MOUNT: &str = "/data";
/// The node's data directory, inside the volume (a subdirectory, so that a filesystem's
/// `lost+found` at the volume root is never mistaken for node data).
pub const DATA_DIR: &str = "/data/rstore";
/// Pod template annotation carrying [`statefulset::template_revision`]; pods inherit it, so a
/// pod whose value differs from the StatefulSet's runs an outdated template.
pub const REVISION_ANNOTATION: &str = "rstore.dev/revision";
/// Label keys.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label keys.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label keys.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label keys.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// UID and GID the node runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// The `app.kubernetes.io/name` of a BackupSchedule's archiver pods (never a store's).
pub const ARCHIVER_NAME: &str = "rstore-archiver";
/// The label that names the store an archiver serves.
pub const LABEL_STORE: &str = "rstore.dev/store";

/// Names of everything one `ReplicatedStore` owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The resource's name; also the StatefulSet's, the client Service's and the PDB's.
    pub name: String,
    /// The resource's namespace.
    pub namespace: String,
}

impl Names {
    /// Names for resource `name` in `namespace`.
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// Names of the objects owned by `rs`.
    pub fn of(rs: &ReplicatedStore) -> Self {
        Self {
            name: rs.name_any(),
            namespace: rs.namespace().unwrap_or_else(|| "default".into()),
        }
    }

    /// The StatefulSet.
    pub fn statefulset(&self) -> &str {
        &self.name
    }

    /// The client Service (ready members only).
    pub fn client_service(&self) -> &str {
        &self.name
    }

    /// The headless Service that gives each pod its stable DNS name.
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.name)
    }

    /// The PodDisruptionBudget.
    pub fn pdb(&self) -> &str {
        &self.name
    }

    /// Pod `ordinal` of the StatefulSet.
    pub fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// The ordinal of a pod name of this StatefulSet.
    pub fn ordinal_of(&self, pod: &str) -> Option<u32> {
        let rest = pod.strip_prefix(&self.name)?.strip_prefix('-')?;
        if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
            return None;
        }
        rest.parse().ok()
    }

    /// Stable DNS name of pod `ordinal` through the headless Service.
    pub fn pod_host(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(ordinal),
            self.peer_service(),
            self.namespace
        )
    }

    /// The Secret holding the store's CA (certificate and key); only the operator reads it.
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.name)
    }

    /// The Secret every pod mounts: the CA certificate, member certificates and keys, and
    /// the token file (hashes only).
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.name)
    }

    /// The Secret with the operator's own admin token for this store.
    pub fn operator_secret(&self) -> String {
        format!("{}-operator", self.name)
    }

    /// The Secret with the user credential (named in status).
    pub fn credentials_secret(&self) -> String {
        format!("{}-credentials", self.name)
    }

    /// The ConfigMap pod 0 restores a backup from (`spec.bootstrap`), while bootstrapping.
    pub fn bootstrap_config(&self) -> String {
        format!("{}-bootstrap", self.name)
    }

    /// The cert-manager `Certificate` of the members (with `spec.tls.issuerRef`).
    pub fn member_certificate(&self) -> String {
        format!("{}-member", self.name)
    }

    /// The Secret cert-manager writes the members' certificate to.
    pub fn member_certificate_secret(&self) -> String {
        format!("{}-member-tls", self.name)
    }

    /// Every name a member is reached at besides its own pod name: the client Service (short
    /// and qualified) and `localhost` (the in-pod CLI, `kubectl port-forward`). DNS names only;
    /// certificates add `127.0.0.1`.
    pub fn shared_hosts(&self) -> Vec<String> {
        let client = self.client_host();
        vec![
            self.client_service().to_owned(),
            format!("{}.{}", self.client_service(), self.namespace),
            format!("{client}.cluster.local"),
            client,
            "localhost".into(),
        ]
    }

    /// DNS name of the client Service.
    pub fn client_host(&self) -> String {
        format!("{}.{}.svc", self.client_service(), self.namespace)
    }

    /// The peer URL member `ordinal` advertises, which its certificate names.
    pub fn peer_url(&self, ordinal: u32) -> String {
        format!("https://{}:{PEER_PORT}", self.pod_host(ordinal))
    }

    /// Labels that select this resource's pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_owned(), "rstore".to_owned()),
            (LABEL_INSTANCE.to_owned(), self.name.clone()),
        ])
    }

    /// The label selector string of [`Names::selector_labels`].
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Labels on every owned object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned());
        labels.insert(LABEL_COMPONENT.to_owned(), "store".to_owned());
        labels
    }
}

/// Metadata of an owned object: name, namespace, labels, and the controller owner reference
/// that makes Kubernetes delete it with the resource.
pub fn owned_meta(rs: &ReplicatedStore, name: &str) -> ObjectMeta {
    let names = Names::of(rs);
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: owner_reference(rs).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

fn owner_reference(rs: &ReplicatedStore) -> Option<OwnerReference> {
    // `None` only for an object that was never stored (no uid), as in some pure tests.
    rs.controller_owner_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("db", "prod")
    }

    #[test]
    fn ordinals_round_trip_and_reject_lookalikes() {
        let n = names();
        for i in [0, 1, 9, 10, 123] {
            assert_eq!(n.ordinal_of(&n.pod(i)), Some(i));
        }
        for bad in [
            "db", "db-", "db-01", "db-x", "dbx-1", "other-1", "db-1-2", "db--1",
        ] {
            assert_eq!(n.ordinal_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn hosts_go_through_the_headless_service() {
        assert_eq!(names().pod_host(2), "db-2.db-peer.prod.svc");
        assert_eq!(
            names().selector_string(),
            "app.kubernetes.io/instance=db,app.kubernetes.io/name=rstore"
        );
    }
}
