//! The archiver of a `BackupSchedule` with `spec.archive`: a Deployment of one pod running
//! `node backup archive` against the store, which writes the change stream into the
//! schedule's destination in segments, for point-in-time recovery. Built without IO.
//!
//! One replica, replaced with `Recreate`: two archivers of one cluster would race for the
//! same segment names. It calls the store's client Service with the operator's admin token
//! (so that it can learn every member and follow a leader change), trusts the store's CA,
//! and reads the destination's credentials from the schedule's Secret. Its labels are not
//! the store's, so no Service, PDB or observation of the store ever counts it as a member;
//! the store's NetworkPolicy admits it to the client port whatever `spec.clientAccess` says.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath, PodSecurityContext, PodSpec,
    PodTemplateSpec, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};

use crate::crd::ReplicatedStore;
use crate::crd::backup::BackupSchedule;
use crate::resources::{
    ARCHIVER_NAME, CLIENT_PORT, LABEL_INSTANCE, LABEL_NAME, LABEL_STORE, Names, RUN_AS,
};

/// The archiver's metrics port (`rstore_archive_*`, with the archive lag).
pub const METRICS_PORT: u16 = 9479;
const CA_MOUNT: &str = "/etc/rstore/ca";
const CREDENTIALS_MOUNT: &str = "/etc/rstore/backup-credentials";

/// The Deployment's name.
pub fn name(sched: &BackupSchedule) -> String {
    format!("{}-archive", sched.name_any())
}

/// The archiver of `sched` for store `rs`, when the schedule asks for one.
pub fn deployment(sched: &BackupSchedule, rs: &ReplicatedStore) -> Option<Deployment> {
    let archive = sched.spec.archive.as_ref()?;
    let names = Names::of(rs);
    let labels = BTreeMap::from([
        (LABEL_NAME.to_owned(), ARCHIVER_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), sched.name_any()),
        (LABEL_STORE.to_owned(), names.name.clone()),
    ]);
    let plaintext = rs.spec.tls.insecure_plaintext;
    let scheme = if plaintext { "http" } else { "https" };
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![value(
        "RSTORE_ENDPOINT",
        format!("{scheme}://{}:{CLIENT_PORT}", names.client_host()),
    )];
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    if !plaintext {
        env.push(EnvVar {
            name: "RSTORE_TOKEN".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names.operator_secret(),
                    key: "token".into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        });
        env.push(value("RSTORE_CACERT", format!("{CA_MOUNT}/ca.crt")));
        volumes.push(Volume {
            name: "ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.credentials_secret()),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".into(),
                    path: "ca.crt".into(),
                    mode: None,
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "ca".into(),
            mount_path: CA_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some(secret) = &sched.spec.destination.credentials_secret {
        env.push(value(
            "RSTORE_BACKUP_CREDENTIALS_DIR",
            CREDENTIALS_MOUNT.into(),
        ));
        volumes.push(Volume {
            name: "backup-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "backup-credentials".into(),
            mount_path: CREDENTIALS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let container = Container {
        name: "archiver".into(),
        image: Some(rs.spec.image.clone()),
        args: Some(vec![
            "backup".into(),
            "archive".into(),
            "--to".into(),
            sched.spec.destination.url.clone(),
            "--segment-max-seconds".into(),
            archive.segment_seconds.to_string(),
            "--metrics-addr".into(),
            format!("0.0.0.0:{METRICS_PORT}"),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: i32::from(METRICS_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Some(Deployment {
        metadata: ObjectMeta {
            name: Some(name(sched)),
            namespace: sched.namespace(),
            labels: Some(labels.clone()),
            owner_references: sched.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::backup::{ArchiveSpec, BackupDestination, BackupScheduleSpec, RetentionSpec};
    use crate::crd::{ReplicatedStoreSpec, TlsSpec};

    fn schedule(archive: bool, creds: Option<&str>) -> BackupSchedule {
        let mut s = BackupSchedule::new(
            "nightly",
            BackupScheduleSpec {
                store: "db".into(),
                schedule: "0 2 * * *".into(),
                destination: BackupDestination {
                    url: "s3://b/p".into(),
                    credentials_secret: creds.map(str::to_owned),
                },
                retention: RetentionSpec::default(),
                suspend: false,
                max_attempts: 3,
                max_rate: None,
                rate_under_load: None,
                history_limit: 10,
                archive: archive.then_some(ArchiveSpec {
                    segment_seconds: 15,
                }),
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some("sched-uid".into());
        s
    }

    fn store(plaintext: bool) -> ReplicatedStore {
        let mut rs = ReplicatedStore::new(
            "db",
            ReplicatedStoreSpec {
                tls: TlsSpec {
                    issuer_ref: None,
                    insecure_plaintext: plaintext,
                },
                ..ReplicatedStoreSpec::default()
            },
        );
        rs.metadata.namespace = Some("ns".into());
        rs
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn only_a_schedule_that_asks_gets_an_archiver() {
        assert!(deployment(&schedule(false, None), &store(false)).is_none());
    }

    #[test]
    fn the_archiver_reaches_the_store_as_the_operator_and_writes_to_the_destination() {
        let d = deployment(&schedule(true, Some("creds")), &store(false)).unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("nightly-archive"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].uid,
            "sched-uid"
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        // Never one of the store's pods: not its name label.
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels[LABEL_NAME], "rstore-archiver");
        assert_eq!(labels[LABEL_STORE], "db");
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(
            args.starts_with("backup archive --to s3://b/p --segment-max-seconds 15"),
            "{args}"
        );
        assert_eq!(c.image.as_deref(), Some(crate::crd::DEFAULT_IMAGE));
        let env = env_of(&d);
        assert_eq!(
            env["RSTORE_ENDPOINT"].value.as_deref(),
            Some("https://db.ns.svc:7379")
        );
        let token = env["RSTORE_TOKEN"].value_from.as_ref().unwrap();
        assert_eq!(token.secret_key_ref.as_ref().unwrap().name, "db-operator");
        assert!(env.contains_key("RSTORE_CACERT"));
        assert!(env.contains_key("RSTORE_BACKUP_CREDENTIALS_DIR"));
        let volumes = spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap();
        assert_eq!(volumes.len(), 2);
    }

    #[test]
    fn a_plaintext_store_gets_no_token_and_no_ca() {
        let d = deployment(&schedule(true, None), &store(true)).unwrap();
        let env = env_of(&d);
        assert_eq!(
            env["RSTORE_ENDPOINT"].value.as_deref(),
            Some("http://db.ns.svc:7379")
        );
        assert!(!env.contains_key("RSTORE_TOKEN") && !env.contains_key("RSTORE_CACERT"));
        assert!(!env.contains_key("RSTORE_BACKUP_CREDENTIALS_DIR"));
    }
}
