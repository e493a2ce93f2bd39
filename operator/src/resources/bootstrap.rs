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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BootstrapSpec, FromBackup, ReplicatedStoreSpec};

    fn store(bootstrap: Option<BootstrapSpec>) -> ReplicatedStore {
        let mut rs = ReplicatedStore::new(
            "db",
            ReplicatedStoreSpec {
                bootstrap,
                ..ReplicatedStoreSpec::default()
            },
        );
        rs.metadata.namespace = Some("ns".into());
        rs.metadata.uid = Some("uid-1".into());
        rs
    }

    fn from(credentials: Option<&str>) -> Option<BootstrapSpec> {
        Some(BootstrapSpec {
            from_backup: FromBackup {
                url: Some("s3://b/p".into()),
                backup: None,
                credentials_secret: credentials.map(str::to_owned),
                at_revision: Some(42),
                at_time: None,
            },
        })
    }

    #[test]
    fn only_a_store_from_a_backup_reads_the_config_map_and_only_pod_zero_restores() {
        assert!(env(&store(None)).is_empty());
        assert!(credentials_volume(&store(None)).is_none());
        let rs = store(from(Some("creds")));
        let env = env(&rs);
        let refs: Vec<_> = env
            .iter()
            .filter_map(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref())
            .collect();
        assert_eq!(refs.len(), 4);
        assert!(
            refs.iter()
                .all(|r| r.name == "db-bootstrap" && r.optional == Some(true))
        );
        assert!(env.iter().any(|e| e.name == "RSTORE_BACKUP_CREDENTIALS_DIR"
            && e.value.as_deref() == Some(CREDENTIALS_MOUNT)));
        let (volume, mount) = credentials_volume(&rs).unwrap();
        assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("creds"));
        assert_eq!(mount.read_only, Some(true));
        let source = Source {
            url: "s3://b/p".into(),
            at_revision: Some(42),
            at_time: None,
        };
        let cm = config_map(&rs, &source);
        let data = cm.data.unwrap();
        assert_eq!(data["RSTORE_RESTORE_ON_POD"], "db-0");
        assert_eq!(data["RSTORE_RESTORE_FROM"], "s3://b/p");
        assert_eq!(data["RSTORE_RESTORE_AT_REVISION"], "42");
        assert!(!data.contains_key("RSTORE_RESTORE_AT_TIME"));
        assert_eq!(
            cm.metadata.owner_references.unwrap()[0].uid,
            "uid-1",
            "owned by the store"
        );
        // Without credentials, no volume and no credentials directory.
        let rs = store(from(None));
        assert!(credentials_volume(&rs).is_none());
        assert!(
            !super::env(&rs)
                .iter()
                .any(|e| e.name == "RSTORE_BACKUP_CREDENTIALS_DIR")
        );
    }
}
