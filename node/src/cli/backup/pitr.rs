//! Point-in-time recovery for `node backup restore STORE --at-revision R | --at-time T`:
//! the newest complete full backup at or before the target, then the archived segments
//! after it (`node backup archive`), replayed exactly up to the target and no further.
//!
//! Everything that can be decided from the listing is decided before anything is written:
//! a target beyond the newest archived revision, before the oldest full backup, or behind a
//! gap in the archive is refused, saying what the archive does hold. Each segment is then
//! read whole and checked (its manifest, size, SHA-256, frames, cluster and revision range)
//! before its changes are applied, and each change must continue the state it is applied to
//! ([`rstore_backup::archive::Replay`]). Anything wrong names the object and fails the
//! restore, which leaves nothing behind.
//!
//! A cluster whose store holds no archived segment is restored as before: the newest full
//! backup at or before the target.

use std::path::Path;

use anyhow::{Context, bail};
use rstore_backup::archive::{PlanError, Replay, SegmentName, plan};
use rstore_backup::archive_store::ListedSegment;
use rstore_backup::format::Reader;
use rstore_backup::retention::State;
use rstore_backup::segment::SegmentHeader;
use rstore_backup::store::{BackupStore, Listed};

use super::member::{Restored, seed_member};
use super::remote::{self, Target};
use crate::types::ClusterConfig;

/// What a point-in-time restore reads.
pub struct Plan {
    store: BackupStore,
    /// The full backup: its object URL and revision.
    pub base_url: String,
    base_revision: u64,
    /// The target revision, and the segments from the base to it, in order.
    target: u64,
    segments: Vec<SegmentName>,
}

impl Plan {
    /// Whether the full backup is at the target: no segment to replay.
    pub fn is_exact(&self) -> bool {
        self.base_revision == self.target
    }
}

/// The plan of a restore from a store URL to `--at-revision` or `--at-time`, or `None`
/// when no point in time was asked for or the cluster has no archive.
pub async fn prepare(
    source: &str,
    target: &Target,
    credentials_dir: Option<&Path>,
) -> anyhow::Result<Option<Plan>> {
    if (target.revision.is_none() && target.time.is_none()) || source.ends_with(".rsb") {
        return Ok(None);
    }
    let store = remote::open(source, credentials_dir)?;
    let backups = store.list_backups(target.cluster_id.as_deref()).await?;
    let Some(cluster_id) = cluster(&store, target, &backups).await? else {
        return Ok(None);
    };
    let (good_segments, bad_segments): (Vec<_>, Vec<_>) = store
        .list_segments(&cluster_id)
        .await?
        .into_iter()
        .partition(|s| s.state() == State::Good);
    let segments: Vec<(SegmentName, SegmentHeader)> = good_segments
        .into_iter()
        .filter_map(|s| match s.manifest {
            Some(Ok(m)) => Some((s.name, m.segment?)),
            _ => None,
        })
        .collect();
    if segments.is_empty() {
        return Ok(None);
    }
    let good: Vec<&Listed> = backups
        .iter()
        .filter(|b| b.state() == State::Good && b.name.cluster_id == cluster_id)
        .collect();
    let Some(oldest) = good.iter().min_by_key(|b| b.name.revision) else {
        bail!(
            "{} holds archived changes of cluster {cluster_id} but no complete full backup of it to start from: a restore needs one at or before its target",
            store.url()
        );
    };
    let newest_archived = segments.iter().map(|(n, _)| n.last).max().unwrap_or(0);
    let target = match (target.revision, &target.time) {
        (Some(_), Some(_)) => bail!("give --at-revision or --at-time, not both"),
        (Some(r), None) => r,
        (None, Some(t)) => at_time(&store, &good, &segments, t).await?,
        (None, None) => unreachable!("checked above"),
    };
    let Some(base) = good
        .iter()
        .filter(|b| b.name.revision <= target)
        .max_by_key(|b| b.name.revision)
    else {
        bail!(
            "revision {target} is before the oldest full backup of cluster {cluster_id} in {} (at revision {}): the archive restores from a full backup on, so a target from revision {} to {newest_archived} can be restored",
            store.url(),
            oldest.name.revision,
            oldest.name.revision
        );
    };
    let names: Vec<SegmentName> = segments.into_iter().map(|(n, _)| n).collect();
    let chain = match base.name.revision == target {
        true => Vec::new(),
        false => plan(base.name.revision, target, &names)
            .map_err(|e| {
                // A segment that is there but does not count says why.
                let why = match &e {
                    PlanError::Gap { missing, .. } => bad_segments
                        .iter()
                        .find(|b| b.name.first <= *missing && *missing <= b.name.last)
                        .map(|b| format!(" ({})", unusable(&store, b))),
                    _ => None,
                };
                anyhow::anyhow!("{e}{}", why.unwrap_or_default())
            })
            .with_context(|| {
                format!(
                    "cannot restore cluster {cluster_id} at revision {target} from {}",
                    store.url()
                )
            })?,
    };
    Ok(Some(Plan {
        base_url: store.object_url(&base.object),
        base_revision: base.name.revision,
        store,
        target,
        segments: chain,
    }))
}

/// Why a listed segment does not count.
fn unusable(store: &BackupStore, s: &ListedSegment) -> String {
    let url = store.object_url(&s.object);
    match (&s.manifest, s.size) {
        (None, _) => format!("{url} has no manifest: its upload was cut off before it completed"),
        (Some(Err(e)), _) => format!("the manifest of {url} cannot be used: {e}"),
        (Some(Ok(_)), None) => format!("{url} is missing; only its manifest is there"),
        (Some(Ok(m)), Some(size)) => match m.check(size, None) {
            Err(e) => format!("{url}: {e}"),
            Ok(()) => format!("{url} has a manifest that is not a segment's"),
        },
    }
}

/// The cluster whose archive to restore from: `--expect-cluster-id`, or the only one with
/// backups in the store; `None` when the store holds no backup (the full-backup path then
/// says so).
async fn cluster(
    store: &BackupStore,
    target: &Target,
    backups: &[Listed],
) -> anyhow::Result<Option<String>> {
    if let Some(c) = &target.cluster_id {
        return Ok(Some(c.clone()));
    }
    let mut clusters: Vec<&str> = backups.iter().map(|b| b.name.cluster_id.as_str()).collect();
    clusters.dedup();
    match clusters.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        many => {
            for c in many {
                if !store.list_segments(c).await?.is_empty() {
                    bail!(
                        "{} holds the backups of clusters {}: say which to restore with --expect-cluster-id",
                        store.url(),
                        many.join(", ")
                    );
                }
            }
            Ok(None)
        }
    }
}

/// The newest revision received by the UTC time `t`: a full backup's, or an archived
/// change's (the archiver's receive time, so within the archive lag of the cluster's).
async fn at_time(
    store: &BackupStore,
    backups: &[&Listed],
    segments: &[(SegmentName, SegmentHeader)],
    t: &str,
) -> anyhow::Result<u64> {
    let ms = remote::time_ms(t)?;
    let newest = segments
        .iter()
        .max_by_key(|(n, _)| n.last)
        .expect("segments are not empty");
    // After the newest segment: only if the archiver confirmed nothing changed by then.
    let idle = match ms > newest.1.closed_unix_ms {
        true => store.read_position(&newest.0.cluster_id).await?,
        false => None,
    };
    let confirmed = idle
        .as_ref()
        .filter(|p| p.revision == newest.0.last)
        .map_or(newest.1.closed_unix_ms, |p| p.confirmed_unix_ms);
    if let Some(p) = idle.filter(|p| p.revision == newest.0.last && p.confirmed_unix_ms >= ms) {
        let from_backups = backups
            .iter()
            .filter(|b| b.name.unix_secs * 1000 <= ms)
            .map(|b| b.name.revision)
            .max();
        return Ok(from_backups.unwrap_or(0).max(p.revision));
    }
    if ms > newest.1.closed_unix_ms {
        bail!(
            "{t} is beyond the archive: its newest segment {} holds the changes up to revision {}, and the archive knows of no change after it up to {} (UTC), but not later. Restore at or before then, or wait for the archiver to upload or confirm more",
            store.object_url(&newest.0.object()),
            newest.0.last,
            utc(confirmed)
        );
    }
    let from_backups = backups
        .iter()
        .filter(|b| b.name.unix_secs * 1000 <= ms)
        .map(|b| b.name.revision)
        .max();
    // Segments closed by then hold only changes received before; the one open then is read.
    let mut from_segments = segments
        .iter()
        .filter(|(_, h)| h.closed_unix_ms <= ms)
        .map(|(n, _)| n.last)
        .max();
    if let Some((name, _)) = segments
        .iter()
        .find(|(_, h)| h.first_received_unix_ms <= ms && ms < h.closed_unix_ms)
    {
        let (_, revisions) = store.read_segment(&name.object()).await?;
        let last = revisions
            .iter()
            .filter(|r| r.received_unix_ms <= ms)
            .map(|r| r.revision)
            .max();
        from_segments = from_segments.max(last);
    }
    from_backups.max(from_segments).with_context(|| {
        format!(
            "{t} is before the oldest full backup in {} and before any archived change",
            store.url()
        )
    })
}

fn utc(ms: u64) -> String {
    let s = rstore_backup::manifest::format_utc(ms / 1000);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

/// Write the state at the plan's target into `staging`: the full backup at `file`, then
/// the plan's segments, each read and checked whole before its changes are applied.
/// `urls` are the new member's client and peer URLs; `expect_revision` refuses another
/// revision.
pub async fn seed(
    plan: &Plan,
    file: &Path,
    staging: &Path,
    urls: (&str, &str),
    expect_revision: Option<u64>,
) -> anyhow::Result<Restored> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut reader = Reader::open(std::io::BufReader::with_capacity(1 << 20, f))
        .with_context(|| format!("backup {} is not usable", plan.base_url))?;
    let header = reader.header().clone();
    let cluster = &header.cluster_id;
    if header.revision != plan.base_revision {
        bail!(
            "backup {} is at revision {}, not the {} its name says",
            plan.base_url,
            header.revision,
            plan.base_revision
        );
    }
    let config: ClusterConfig = serde_json::from_value(header.config.clone())
        .context("its cluster settings are not valid")?;
    let mut state = Replay::new(header.revision);
    while let Some(e) = reader
        .next_entry()
        .with_context(|| format!("backup {} is not usable", plan.base_url))?
    {
        state.insert(e);
    }
    for name in &plan.segments {
        let url = plan.store.object_url(&name.object());
        if name.cluster_id != *cluster {
            bail!(
                "segment {url} is of another cluster than backup {} ({cluster})",
                plan.base_url
            );
        }
        let (_, revisions) = plan.store.read_segment(&name.object()).await?;
        let from = state.revision();
        for rev in revisions
            .iter()
            .filter(|r| r.revision > from && r.revision <= plan.target)
        {
            state.apply(rev).map_err(|e| {
                anyhow::anyhow!("segment {url} does not continue the restored state: {e}")
            })?;
        }
    }
    state.finish_at(plan.target);
    let revision = state.revision();
    if let Some(want) = expect_revision
        && want != revision
    {
        bail!("it restores revision {revision}, not the expected {want}");
    }
    let (entries, keys, bytes) = state.into_entries();
    let snapshot_id = format!("restored-{cluster}-r{revision}-pitr");
    let (cluster_id, node_id) = seed_member(
        urls,
        staging,
        snapshot_id,
        revision,
        &config,
        (keys, bytes),
        entries.into_iter().map(Ok),
    )
    .await?;
    Ok(Restored {
        source: match plan.segments.len() {
            1 => format!("{} and 1 archived segment", plan.base_url),
            n => format!("{} and {n} archived segments", plan.base_url),
        },
        cluster_id,
        node_id,
        revision,
        keys,
    })
}
