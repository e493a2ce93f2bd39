//! The volume provisioner of the agent's StorageClasses (provisioner
//! [`PROVISIONER`](crate::k8s::agent::common::PROVISIONER)), as kind's local-path provisioner:
//! - a pending claim of such a class gets a PersistentVolume `pvc-<claim uid>`: a directory
//!   `volumes/pvc-<uid>` of the plane, with the claim's size and access modes, pre-bound to
//!   the claim (`claimRef`); Kubernetes's PV controller then binds the pair;
//! - a volume it provisioned that is `Released` (its claim deleted) under the `Delete`
//!   reclaim policy is deleted with its directory; under `Retain` it stays, as in any cluster.

use std::path::{Path, PathBuf};

use anyhow::Result;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::info;

use super::common::{PROVISIONER, Stores};

const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

pub struct Provisioner {
    client: Client,
    root: PathBuf,
}

impl Provisioner {
    pub fn new(client: Client, dir: &Path) -> Self {
        Self {
            client,
            root: dir.join("volumes"),
        }
    }

    pub async fn sync(&self, stores: &Stores) -> Result<()> {
        let pvs = Api::<PersistentVolume>::all(self.client.clone());
        for claim in stores.claims.state() {
            let spec = claim.spec.clone().unwrap_or_default();
            let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
            if !pending || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
                continue;
            }
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(class_name) = spec.storage_class_name.clone() else {
                continue;
            };
            let Some(class) = stores.classes.get(&ObjectRef::new(&class_name)) else {
                continue;
            };
            if class.provisioner != PROVISIONER {
                continue;
            }
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            let name = format!("pvc-{uid}");
            if stores.volumes.get(&ObjectRef::new(&name)).is_some() {
                continue;
            }
            let size = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone())
                .unwrap_or_else(|| "1Gi".into());
            let path = self.root.join(&name);
            std::fs::create_dir_all(&path)?;
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                    "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
                    "storageClassName": class_name,
                    "volumeMode": "Filesystem",
                    "hostPath": {"path": path.to_string_lossy(), "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "namespace": claim.namespace(), "name": claim.name_any(), "uid": uid,
                    },
                }
            }))?;
            match pvs.create(&PostParams::default(), &pv).await {
                Ok(_) => {
                    info!(claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()), volume = %name, "provisioned")
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        for pv in stores.volumes.state() {
            let ours =
                pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
            let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            let delete = pv
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                == Some("Delete");
            if !(ours && released && delete) || pv.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(path) = pv
                .spec
                .as_ref()
                .and_then(|s| s.host_path.as_ref())
                .map(|h| PathBuf::from(&h.path))
                && path.starts_with(&self.root)
            {
                let _ = std::fs::remove_dir_all(&path);
            }
            match pvs.delete(&pv.name_any(), &DeleteParams::default()).await {
                Ok(_) => info!(volume = %pv.name_any(), "released volume deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
