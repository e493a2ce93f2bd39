//! The pod template of the StatefulSet: what every member runs. The node container with its
//! flags and environment, ports, probes over the client port, security context, resources,
//! placement, the data and credentials volumes, and the revision annotation that tells the
//! planner which pods run an outdated template.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceFieldSelector, SeccompProfile, SecretProjection,
    SecurityContext, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::ReplicatedStore;
use crate::resources::credentials::{CA_FILE, TLS_MOUNT, TOKENS_FILE};
use crate::resources::{
    CLIENT_PORT, CLIENT_PORT_NAME, CONTAINER, DATA_DIR, DATA_MOUNT, DATA_VOLUME, Names, PEER_PORT,
    PEER_PORT_NAME, REVISION_ANNOTATION, RUN_AS,
};

/// The credentials volume of the pods.
pub const TLS_VOLUME: &str = "tls";
/// The node container's termination message file (Kubernetes' default path).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

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
    env.extend(crate::resources::bootstrap::env(rs));
    // Why the node could not start (a restore refused, a bad certificate) reaches the pod's
    // status as its termination message, where observe reads it.
    env.push(env_value(
        "RSTORE_TERMINATION_MESSAGE_PATH",
        TERMINATION_LOG.into(),
    ));
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
    if let Some((volume, mount)) = crate::resources::bootstrap::credentials_volume(rs) {
        volumes.push(volume);
        mounts.push(mount);
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
        termination_message_path: Some(TERMINATION_LOG.into()),
        // A node that dies without writing it (a panic) leaves the end of its log instead.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
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
