//! Apply stage, for a store created from a backup: the ConfigMap pod 0 restores from
//! ([`crate::resources::bootstrap`]), written before the StatefulSet exists and deleted once
//! the restored cluster has an id.
//!
//! `fromBackup.backup` names a `Backup` resource: it is resolved here to its object's URL,
//! and the store waits (`BackupPending`) until that Backup has succeeded. No pod starts
//! before the ConfigMap exists, so pod 0 never starts empty by mistake.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::controller::context::Context;
use crate::crd::ReplicatedStore;
use crate::crd::backup::{Backup, BackupPhase};
use crate::resources::bootstrap::{Source, config_map};
use crate::resources::{FIELD_MANAGER, Names};

/// Why the restore cannot be set up yet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Backup it names is not there or has not succeeded.
    #[error("{0}")]
    Pending(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[source] Box<kube::Error>),
}

/// Makes sure the ConfigMap says what pod 0 restores while the cluster has no id, and is
/// gone once it has one.
pub async fn ensure(ctx: &Context, rs: &ReplicatedStore, key: &str) -> Result<(), Error> {
    let Some(bootstrap) = &rs.spec.bootstrap else {
        return Ok(());
    };
    let names = Names::of(rs);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let initialized = rs
        .status
        .as_ref()
        .and_then(|s| s.cluster_id.as_ref())
        .is_some();
    if initialized {
        let first = ctx
            .bootstrapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned());
        if first {
            match api
                .delete(&names.bootstrap_config(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    ctx.bootstrapped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(key);
                    return Err(Error::Kube(Box::new(e)));
                }
            }
        }
        return Ok(());
    }
    let from = &bootstrap.from_backup;
    let source = match (&from.url, &from.backup) {
        (Some(url), _) => Source {
            url: url.clone(),
            at_revision: from.at_revision,
            at_time: from.at_time.clone(),
        },
        (None, Some(name)) => {
            let backup = Api::<Backup>::namespaced(ctx.client.clone(), &names.namespace)
                .get_opt(name)
                .await
                .map_err(|e| Error::Kube(Box::new(e)))?
                .ok_or_else(|| {
                    Error::Pending(format!(
                        "spec.bootstrap.fromBackup.backup names Backup {}/{name}, which does \
                         not exist: create it, or name the backup object by url",
                        names.namespace
                    ))
                })?;
            let status = backup.status.unwrap_or_default();
            match (status.phase, status.object) {
                (Some(BackupPhase::Succeeded), Some(object)) => Source {
                    url: object,
                    at_revision: None,
                    at_time: None,
                },
                (phase, _) => {
                    return Err(Error::Pending(format!(
                        "Backup {}/{name} has not succeeded (phase {}): the store starts once \
                         it has",
                        names.namespace,
                        phase.map_or("none".to_owned(), |p| format!("{p:?}"))
                    )));
                }
            }
        }
        (None, None) => {
            return Err(Error::Pending(
                "spec.bootstrap.fromBackup names neither a url nor a backup".into(),
            ));
        }
    };
    let cm = config_map(rs, &source);
    api.patch(
        &cm.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map_err(|e| Error::Kube(Box::new(e)))?;
    Ok(())
}
