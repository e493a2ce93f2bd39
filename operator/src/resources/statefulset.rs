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
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceFieldSelector, SeccompProfile,
    SecretProjection, SecurityContext, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::credentials::{CA_FILE, TLS_MOUNT, TOKENS_FILE};
use super::{
    CLIENT_PORT, CLIENT_PORT_NAME, CONTAINER, DATA_DIR, DATA_MOUNT, DATA_VOLUME, Names, PEER_PORT,
    PEER_PORT_NAME, REVISION_ANNOTATION, RUN_AS, owned_meta,
};
use crate::crd::{PvcRetention, ReplicatedStore};

/// The credentials volume of the pods.
pub const TLS_VOLUME: &str = "tls";

/// The StatefulSet with `replicas` pods of `template`.
///
/// Reconcile passes the desired template ([`pod_template`]) only when the planner decides to
/// roll, and otherwise the template the StatefulSet already has, so that a spec change never
/// reaches pods before the planner allows it.
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

/// The pod template the spec asks for, with its revision annotation.
pub fn pod_template(rs: &ReplicatedStore) -> PodTemplateSpec {
    let names = Names::of(rs);
    let spec = &rs.spec;
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..EnvVarSource::default()
        }),
    };
    let env_value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    // `$(POD_NAME)` is expanded by the kubelet from the variables defined before it.
    let host = format!("$(POD_NAME).{}.$(POD_NAMESPACE).svc", names.peer_service());
    let plaintext = spec.tls.insecure_plaintext;
    let scheme = if plaintext { "http" } else { "https" };
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        env_value("RSTORE_DATA_DIR", DATA_DIR.into()),
        env_value("RSTORE_LISTEN_CLIENT", format!("0.0.0.0:{CLIENT_PORT}")),
        env_value("RSTORE_LISTEN_PEER", format!("0.0.0.0:{PEER_PORT}")),
        env_value(
            "RSTORE_ADVERTISE_CLIENT",
            format!("{scheme}://{host}:{CLIENT_PORT}"),
        ),
        env_value(
            "RSTORE_ADVERTISE_PEER",
            format!("{scheme}://{host}:{PEER_PORT}"),
        ),
        env_value("RSTORE_LOG_FORMAT", "json".into()),
        // For `kubectl exec ... -- node kv ...` in the pod (with RSTORE_TOKEN set).
        env_value(
            "RSTORE_ENDPOINT",
            format!("{scheme}://127.0.0.1:{CLIENT_PORT}"),
        ),
    ];
    if plaintext {
        env.push(env_value("RSTORE_INSECURE_PLAINTEXT", "true".into()));
    } else {
        // Each pod picks its own certificate from the Secret every pod mounts; with
        // cert-manager, all share one.
        let file = |f: &str| format!("{TLS_MOUNT}/{f}");
        let (cert, key) = match &spec.tls.issuer_ref {
            None => (file("$(POD_NAME).crt"), file("$(POD_NAME).key")),
            Some(_) => (file("tls.crt"), file("tls.key")),
        };
        env.extend([
            env_value("RSTORE_TLS_CA_FILE", file(CA_FILE)),
            env_value("RSTORE_TLS_CERT_FILE", cert),
            env_value("RSTORE_TLS_KEY_FILE", key),
            env_value("RSTORE_TOKEN_FILE", file(TOKENS_FILE)),
            env_value("RSTORE_CACERT", file(CA_FILE)),
        ]);
    }
    env.extend([
        // The node keeps its data in memory and sizes its data quota from this (the
        // container's memory limit, or the node's allocatable memory without one).
        EnvVar {
            name: "RSTORE_MEMORY_LIMIT_BYTES".into(),
            value: None,
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: None,
                    resource: "limits.memory".into(),
                    divisor: None,
                }),
                ..EnvVarSource::default()
            }),
        },
    ]);
    if let Some(raft) = &spec.raft {
        let timing = [
            ("RSTORE_HEARTBEAT_MS", raft.heartbeat_ms.map(u64::from)),
            (
                "RSTORE_ELECTION_MIN_MS",
                raft.election_min_ms.map(u64::from),
            ),
            (
                "RSTORE_ELECTION_MAX_MS",
                raft.election_max_ms.map(u64::from),
            ),
            ("RSTORE_SNAPSHOT_LOGS", raft.snapshot_logs),
        ];
        for (name, value) in timing {
            if let Some(v) = value {
                env.push(env_value(name, v.to_string()));
            }
        }
    }
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(CLIENT_PORT_NAME.into()),
            // The kubelet does not verify the certificate of an HTTPS probe.
            scheme: Some(if plaintext { "HTTP" } else { "HTTPS" }.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let mut mounts = vec![VolumeMount {
        name: DATA_VOLUME.into(),
        mount_path: DATA_MOUNT.into(),
        ..VolumeMount::default()
    }];
    let mut volumes = Vec::new();
    if !plaintext {
        mounts.push(VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(tls_volume(&names, spec.tls.issuer_ref.is_some()));
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        args: Some(vec!["serve".into()]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some(CLIENT_PORT_NAME.into()),
                container_port: i32::from(CLIENT_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(PEER_PORT_NAME.into()),
                container_port: i32::from(PEER_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 2, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(names.labels()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: (!volumes.is_empty()).then_some(volumes),
            // The node never calls the Kubernetes API: a pod that cannot read a token
            // cannot leak one.
            automount_service_account_token: Some(false),
            affinity: spec.affinity.clone(),
            tolerations: spec.tolerations.clone(),
            node_selector: spec.node_selector.clone(),
            topology_spread_constraints: spec.topology_spread_constraints.clone(),
            // A graceful stop flushes and leaves the cluster view consistent; give it time.
            termination_grace_period_seconds: Some(30),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    };
    let revision = template_revision(&template);
    if let Some(meta) = template.metadata.as_mut() {
        meta.annotations = Some(BTreeMap::from([(REVISION_ANNOTATION.to_owned(), revision)]));
    }
    template
}

/// The credentials volume: the store's `<name>-tls` Secret, and with cert-manager the Secret
/// it issues the members' certificate to. Readable by the node's group only.
fn tls_volume(names: &Names, cert_manager: bool) -> Volume {
    let secret = |name: String, items: Option<Vec<KeyToPath>>| VolumeProjection {
        secret: Some(SecretProjection {
            name,
            items,
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    let mut sources = vec![secret(names.tls_secret(), None)];
    if cert_manager {
        let item = |k: &str| KeyToPath {
            key: k.into(),
            path: k.into(),
            mode: None,
        };
        sources.push(secret(
            names.member_certificate_secret(),
            Some(vec![item(CA_FILE), item("tls.crt"), item("tls.key")]),
        ));
    }
    Volume {
        name: TLS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(sources),
        }),
        ..Volume::default()
    }
}

/// A checksum of the template (without its revision annotation): the same template always
/// gives the same revision, across operator restarts and versions of Rust.
pub fn template_revision(template: &PodTemplateSpec) -> String {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.remove(REVISION_ANNOTATION);
        }
        if meta.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
            meta.annotations = None;
        }
    }
    // Serializing k8s-openapi types is deterministic: fields in declaration order, maps sorted.
    let bytes = serde_json::to_vec(&t).unwrap_or_default();
    format!("{:08x}", crc32fast::hash(&bytes))
}

/// The revision annotation of a template or pod metadata.
pub fn revision_of(meta: Option<&ObjectMeta>) -> Option<String> {
    meta?
        .annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RaftSpec, ReplicatedStoreSpec};

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
