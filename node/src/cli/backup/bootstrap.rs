//! `node serve --restore-from BACKUP`: a member that starts on an empty data directory
//! restores it from a backup first, as `node backup restore` does, and then serves as the
//! only voter of the restored cluster; the other members start empty and join it.
//!
//! This is how the operator bootstraps a `ReplicatedStore` from a backup
//! (`spec.bootstrap.fromBackup`): every pod of the StatefulSet gets the same settings,
//! `--restore-on-pod` names the one pod that restores, and the operator withdraws the
//! settings once the restored cluster is up, so that a member that later loses its disk
//! rejoins instead of restoring a second cluster. A data directory that holds anything is
//! never touched: the restore runs at most once, on a fresh volume.

use std::path::PathBuf;

use clap::Args;
use tracing::info;

use super::{RestoreArgs, restore};
use crate::config::Settings;

/// The `node serve` flags of a restore at start.
#[derive(Args, Debug, Default, Clone)]
pub struct BootstrapArgs {
    /// When the data directory is empty, first restore it from this backup (a file, an
    /// object URL or a store URL, as `node backup restore` takes), then serve as the only
    /// voter of the restored cluster. A data directory that holds anything is left alone.
    #[arg(long, env = "RSTORE_RESTORE_FROM")]
    pub restore_from: Option<String>,
    /// From a store URL: the state exactly at this revision when the store holds the
    /// cluster's archive (`node backup archive`), else the newest complete backup at or
    /// before it.
    #[arg(long, env = "RSTORE_RESTORE_AT_REVISION", requires = "restore_from")]
    pub restore_at_revision: Option<u64>,
    /// From a store URL: the state at this UTC time as the archive has it, else the newest
    /// complete backup taken at or before it.
    #[arg(long, env = "RSTORE_RESTORE_AT_TIME", requires = "restore_from")]
    pub restore_at_time: Option<String>,
    /// Restore only when the environment's POD_NAME is this (the StatefulSet's first pod);
    /// other members start empty and join the restored one.
    #[arg(long, env = "RSTORE_RESTORE_ON_POD", requires = "restore_from")]
    pub restore_on_pod: Option<String>,
    /// A directory of credential files for the object store (a mounted Secret).
    #[arg(long, env = "RSTORE_BACKUP_CREDENTIALS_DIR")]
    pub restore_credentials_dir: Option<PathBuf>,
}

/// Restore `settings.data_dir` from the backup `args` name, when it is asked for, this is
/// the pod named, and the directory is empty; a failed restore fails the start, saying why.
pub async fn restore_at_start(args: &BootstrapArgs, settings: &Settings) -> anyhow::Result<()> {
    let Some(source) = &args.restore_from else {
        return Ok(());
    };
    if let Some(pod) = &args.restore_on_pod {
        let me = std::env::var("POD_NAME").unwrap_or_default();
        if me != *pod {
            info!(pod = %me, restoring_pod = %pod, "not the member that restores the backup: starting empty, to join it");
            return Ok(());
        }
    }
    let dir = &settings.data_dir;
    let holds_data = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if holds_data {
        info!(data_dir = %dir.display(), "the data directory holds data: no restore");
        return Ok(());
    }
    info!(%source, data_dir = %dir.display(), "restoring the data directory from a backup before starting");
    let restored = restore(&RestoreArgs {
        source: source.clone(),
        at_revision: args.restore_at_revision,
        at_time: args.restore_at_time.clone(),
        credentials_dir: args.restore_credentials_dir.clone(),
        data_dir: dir.clone(),
        advertise_client: settings.advertise_client.clone(),
        advertise_peer: settings.advertise_peer.clone(),
        expect_revision: None,
        expect_cluster_id: None,
    })
    .await?;
    info!(
        source = %restored.source,
        revision = restored.revision,
        keys = restored.keys,
        cluster_id = %restored.cluster_id,
        node_id = restored.node_id,
        "restored from the backup: serving as the only voter of the restored cluster"
    );
    Ok(())
}
