//! The StatefulSet: stable pod names, one PersistentVolumeClaim per pod, the node's ports,
//! probes, security context, resources and placement.
//!
//! Pods are never restarted by the StatefulSet controller (`updateStrategy: OnDelete`): the
//! operator deletes them one at a time, followers first and the leader last. Pods start in
//! parallel (`podManagementPolicy: Parallel`), because an uninitialized node is harmless and
//! membership is driven by the operator, not by pod order.
//!
//! The pod template carries a revision (a checksum of the template itself) as an annotation;
//! pods inherit it, which tells the planner which pods run an outdated template.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::crd::{PvcRetention, ReplicatedStore};
use crate::resources::{DATA_VOLUME, Names, owned_meta};

mod pod;

pub use pod::{TLS_VOLUME, pod_template, revision_of, template_revision};

/// The StatefulSet with `replicas` pods of `template`.
///
/// The build stage makes it with the desired template ([`pod_template`]); a step writes that
/// template only when the planner decides to roll, and otherwise the template the StatefulSet
/// already has, so that a spec change never reaches pods before the planner allows it.
pub fn build(rs: &ReplicatedStore, replicas: u32, template: PodTemplateSpec) -> StatefulSet {
    let names = Names::of(rs);
    let storage = &rs.spec.storage;
    let retention = |r: PvcRetention| match r {
        PvcRetention::Retain => "Retain".to_owned(),
        PvcRetention::Delete => "Delete".to_owned(),
    };
    StatefulSet {
        metadata: owned_meta(rs, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(names.peer_service()),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some(retention(storage.pvc_policy.when_scaled)),
                    when_deleted: Some(retention(storage.pvc_policy.when_deleted)),
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(names.labels()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            storage.size.clone(),
                        )])),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            template,
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Probe;

    use super::*;
    use crate::crd::{RaftSpec, ReplicatedStoreSpec};
    use crate::resources::credentials::TLS_MOUNT;

    pub(crate) fn rs(spec: ReplicatedStoreSpec) -> ReplicatedStore {
        let mut rs = ReplicatedStore::new("db", spec);
        rs.metadata.namespace = Some("prod".into());
        rs.metadata.uid = Some("uid-1".into());
        rs
    }

    fn env_of(t: &PodTemplateSpec) -> BTreeMap<String, String> {
        t.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn statefulset_is_wired_for_the_node() {
        let rs = rs(ReplicatedStoreSpec::default());
        let sts = build(&rs, 3, pod_template(&rs));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("db-peer"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReplicatedStore");
        assert_eq!(owner.controller, Some(true));
        let retention = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        let env = env_of(&spec.template);
        assert_eq!(
            env["RSTORE_ADVERTISE_PEER"],
            "https://$(POD_NAME).db-peer.$(POD_NAMESPACE).svc:7380"
        );
        // The certificate it names is the one the operator issues for that pod.
        assert_eq!(
            env["RSTORE_ADVERTISE_PEER"]
                .replace("$(POD_NAME)", "db-1")
                .replace("$(POD_NAMESPACE)", "prod"),
            Names::of(&rs).peer_url(1)
        );
        assert_eq!(
            env["RSTORE_TLS_CERT_FILE"],
            "/etc/rstore/tls/$(POD_NAME).crt"
        );
        assert_eq!(env["RSTORE_TOKEN_FILE"], "/etc/rstore/tls/tokens");
        assert!(!env.contains_key("RSTORE_INSECURE_PLAINTEXT"));
        assert_eq!(env["RSTORE_DATA_DIR"], "/data/rstore");
        let pod = spec.template.spec.as_ref().unwrap();
        let memory = pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "RSTORE_MEMORY_LIMIT_BYTES")
            .and_then(|e| e.value_from.as_ref()?.resource_field_ref.as_ref())
            .expect("the memory limit is passed to the node");
        assert_eq!(memory.resource, "limits.memory");
        let c = &pod.containers[0];
        let probe_path =
            |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
        // The node never calls the API server: no service-account token in its pods.
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        // Selector labels are a subset of the pod labels, or the API server rejects it.
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(labels.get(k), Some(v));
        }
    }

    #[test]
    fn pods_mount_their_credentials_and_probe_over_https() {
        let tls = pod_template(&rs(ReplicatedStoreSpec::default()));
        let pod = tls.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let scheme = |p: &Option<Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .scheme
                .clone()
        };
        assert_eq!(scheme(&c.readiness_probe).as_deref(), Some("HTTPS"));
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == TLS_VOLUME)
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (TLS_MOUNT, Some(true))
        );
        let sources = |t: &PodTemplateSpec| -> Vec<String> {
            t.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0]
                .projected
                .as_ref()
                .unwrap()
                .sources
                .as_ref()
                .unwrap()
                .iter()
                .map(|s| s.secret.as_ref().unwrap().name.clone())
                .collect()
        };
        assert_eq!(sources(&tls), vec!["db-tls"]);

        let mut spec = ReplicatedStoreSpec::default();
        spec.tls.issuer_ref = Some(crate::crd::IssuerRef {
            name: "corp".into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        });
        let cm = pod_template(&rs(spec));
        assert_eq!(sources(&cm), vec!["db-tls", "db-member-tls"]);
        assert_eq!(
            env_of(&cm)["RSTORE_TLS_CERT_FILE"],
            "/etc/rstore/tls/tls.crt"
        );

        let mut spec = ReplicatedStoreSpec::default();
        spec.tls.insecure_plaintext = true;
        let plain = pod_template(&rs(spec));
        let env = env_of(&plain);
        assert_eq!(env["RSTORE_INSECURE_PLAINTEXT"], "true");
        assert!(env["RSTORE_ADVERTISE_CLIENT"].starts_with("http://"));
        assert!(!env.contains_key("RSTORE_TLS_CA_FILE"));
        assert!(plain.spec.as_ref().unwrap().volumes.is_none());
        let c = &plain.spec.as_ref().unwrap().containers[0];
        assert_eq!(scheme(&c.liveness_probe).as_deref(), Some("HTTP"));
    }

    #[test]
    fn revision_follows_the_template_and_nothing_else() {
        let a = rs(ReplicatedStoreSpec::default());
        let ta = pod_template(&a);
        let rev = revision_of(ta.metadata.as_ref()).unwrap();
        assert_eq!(
            rev,
            template_revision(&ta),
            "annotation excluded from the hash"
        );
        assert_eq!(pod_template(&a), ta, "deterministic");
        // Replica counts and storage are not part of the template.
        let b = rs(ReplicatedStoreSpec {
            replicas: 5,
            read_replicas: 2,
            ..ReplicatedStoreSpec::default()
        });
        assert_eq!(
            revision_of(pod_template(&b).metadata.as_ref()).unwrap(),
            rev
        );
        for changed in [
            ReplicatedStoreSpec {
                image: "ghcr.io/rstore/node:0.2.0".into(),
                ..ReplicatedStoreSpec::default()
            },
            ReplicatedStoreSpec {
                raft: Some(RaftSpec {
                    heartbeat_ms: Some(50),
                    ..RaftSpec::default()
                }),
                ..ReplicatedStoreSpec::default()
            },
        ] {
            let t = pod_template(&rs(changed));
            assert_ne!(revision_of(t.metadata.as_ref()).unwrap(), rev);
        }
    }

    #[test]
    fn raft_timing_reaches_the_node_env() {
        let t = pod_template(&rs(ReplicatedStoreSpec {
            raft: Some(RaftSpec {
                heartbeat_ms: Some(50),
                election_min_ms: Some(500),
                election_max_ms: None,
                snapshot_logs: Some(2000),
            }),
            ..ReplicatedStoreSpec::default()
        }));
        let env = env_of(&t);
        assert_eq!(env["RSTORE_HEARTBEAT_MS"], "50");
        assert_eq!(env["RSTORE_ELECTION_MIN_MS"], "500");
        assert_eq!(env["RSTORE_SNAPSHOT_LOGS"], "2000");
        assert!(!env.contains_key("RSTORE_ELECTION_MAX_MS"));
    }
}
