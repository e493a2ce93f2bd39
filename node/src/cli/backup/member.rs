//! The new member a restore makes: its identity (a new cluster id and member id) and a log
//! that starts after the snapshot it is to hold, for a restore from a backup file
//! (`backup.rs`, `seed`) and to a point in time (`pitr.rs`).

use std::path::Path;

use openraft::storage::RaftLogStorage;

use crate::identity::{Identity, new_cluster_id};
use rstore_backup::format::{Entry, FormatError};

use crate::store::{self, Record, Retention, SnapshotWriter};
use crate::types::{ClusterConfig, LogId, Member, SnapshotMeta, StoredMembership};

/// What a restore made.
pub struct Restored {
    /// The file or object URL restored from.
    pub source: String,
    pub cluster_id: String,
    pub node_id: u64,
    pub revision: u64,
    pub keys: u64,
}

/// A new member's identity in `staging` (a new cluster id and member id) and a log that
/// starts after the snapshot it is to hold; the cluster id, the member id and the
/// snapshot's meta.
pub async fn new_member(
    (advertise_client, advertise_peer): (&str, &str),
    staging: &Path,
    snapshot_id: String,
) -> anyhow::Result<(String, u64, SnapshotMeta)> {
    let identity = Identity::load_or_create(staging)?;
    let cluster_id = new_cluster_id();
    identity.adopt_cluster(&cluster_id)?;
    let node_id = identity.node_id();

    // The state a cluster has just after `init`, compacted: a membership of one voter at
    // log index 0, covered by the snapshot, with the log purged up to it.
    let at = LogId::new(openraft::CommittedLeaderId::new(0, 0), 0);
    let member = Member {
        peer_url: advertise_peer.trim_end_matches('/').to_string(),
        client_url: advertise_client.trim_end_matches('/').to_string(),
    };
    let membership = openraft::Membership::new(
        vec![[node_id].into_iter().collect()],
        [(node_id, member)]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(at),
        last_membership: StoredMembership::new(Some(at), membership),
        snapshot_id,
    };
    {
        let retention = Retention {
            revisions: 1,
            bytes: 1,
        };
        let mut opened = store::open(staging, store::SEGMENT_BYTES, retention, |_| {}).await?;
        opened.log.purge(at).await?;
        opened.log.cover_snapshot(Some(at)).await?;
    }
    Ok((cluster_id, node_id, meta))
}

/// The new member's whole data in `staging`: its identity and log ([`new_member`]), and the
/// snapshot of `entries` (the state at `revision`, `keys` keys of `bytes` bytes, with the
/// cluster settings `config`); its cluster id and member id.
#[allow(clippy::too_many_arguments)]
pub async fn seed_member(
    urls: (&str, &str),
    staging: &Path,
    snapshot_id: String,
    revision: u64,
    config: &ClusterConfig,
    (keys, bytes): (u64, u64),
    entries: impl Iterator<Item = Result<Entry, FormatError>>,
) -> anyhow::Result<(String, u64)> {
    let (cluster_id, node_id, meta) = new_member(urls, staging, snapshot_id).await?;
    let mut w = SnapshotWriter::create(
        &staging.join("snapshot"),
        &meta,
        revision,
        config,
        keys,
        bytes,
    )?;
    for e in entries {
        let e = e?;
        w.push(
            &e.key,
            &Record {
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                version: e.version,
                value: e.value.into(),
            },
        )?;
    }
    w.finish()?;
    Ok((cluster_id, node_id))
}
