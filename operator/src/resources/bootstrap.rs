//! A store created from a backup (`spec.bootstrap.fromBackup`): the ConfigMap that tells pod
//! 0 what to restore, and what the pod template takes from it.
//!
//! Every pod reads the restore settings from the ConfigMap `<name>-bootstrap` through
//! optional references, and `RSTORE_RESTORE_ON_POD` makes only pod 0 act on them (`node
//! serve --restore-from`, which restores only into an empty data directory). The operator
//! keeps the ConfigMap while the cluster has no id yet and deletes it once the restored
//! cluster is up; a member that later starts on an empty volume then finds nothing to
//! restore and joins, so one backup is never restored twice into one store.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, EnvVar, EnvVarSource, SecretVolumeSource, Volume, VolumeMount,
};
use kube::Resource;
use kube::api::ObjectMeta;

use crate::crd::ReplicatedStore;
use crate::resources::Names;

/// Where the restore's credentials Secret is mounted.
pub const CREDENTIALS_MOUNT: &str = "/etc/rstore/backup-credentials";
const CREDENTIALS_VOLUME: &str = "backup-credentials";

/// What pod 0 restores: resolved by the operator from `fromBackup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// A store URL or a backup object's URL.
    pub url: String,
    pub at_revision: Option<u64>,
    pub at_time: Option<String>,
}

/// The ConfigMap pod 0 restores from.
pub fn config_map(rs: &ReplicatedStore, source: &Source) -> ConfigMap {
    let names = Names::of(rs);
    let mut data = BTreeMap::from([
        ("RSTORE_RESTORE_FROM".to_owned(), source.url.clone()),
        ("RSTORE_RESTORE_ON_POD".to_owned(), names.pod(0)),
    ]);
    if let Some(r) = source.at_revision {
        data.insert("RSTORE_RESTORE_AT_REVISION".into(), r.to_string());
    }
    if let Some(t) = &source.at_time {
        data.insert("RSTORE_RESTORE_AT_TIME".into(), t.clone());
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(names.bootstrap_config()),
            namespace: Some(names.namespace.clone()),
            labels: Some(names.selector_labels()),
            owner_references: rs.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The pod template's environment from the ConfigMap (every reference optional: the
/// ConfigMap is gone once the cluster is up).
pub fn env(rs: &ReplicatedStore) -> Vec<EnvVar> {
    let Some(bootstrap) = &rs.spec.bootstrap else {
        return Vec::new();
    };
    let names = Names::of(rs);
    let mut env: Vec<EnvVar> = [
        "RSTORE_RESTORE_FROM",
        "RSTORE_RESTORE_ON_POD",
        "RSTORE_RESTORE_AT_REVISION",
        "RSTORE_RESTORE_AT_TIME",
    ]
    .into_iter()
    .map(|key| EnvVar {
        name: key.into(),
        value: None,
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: names.bootstrap_config(),
                key: key.into(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
    })
    .collect();
    if bootstrap.from_backup.credentials_secret.is_some() {
        env.push(EnvVar {
            name: "RSTORE_BACKUP_CREDENTIALS_DIR".into(),
            value: Some(CREDENTIALS_MOUNT.into()),
            value_from: None,
        });
    }
    env
}

/// The credentials Secret as a volume and its mount, when `fromBackup` names one.
pub fn credentials_volume(rs: &ReplicatedStore) -> Option<(Volume, VolumeMount)> {
    let secret = rs
        .spec
        .bootstrap
        .as_ref()?
        .from_backup
        .credentials_secret
        .clone()?;
    Some((
        Volume {
            name: CREDENTIALS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: CREDENTIALS_VOLUME.into(),
            mount_path: CREDENTIALS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ))
}
