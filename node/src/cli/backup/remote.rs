//! Backups in object storage for `node backup save | restore`: a destination or source
//! given as a URL (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///dir`) goes through
//! [`rstore_backup::store`].
//!
//! A save checks that the store answers before it asks for a backup, streams the backup
//! into a write-once object named after its cluster, time and revision while checking the
//! stream as it passes, and then writes the manifest beside it: `complete` with the object's
//! size and SHA-256, or `failed` with the reason (so a schedule never counts it).
//! A restore takes an object URL, or a store URL and a target (the newest good backup, or
//! the newest at or before a revision or a time); it downloads the object beside the data
//! directory, checks it against its manifest, and restores it as a local file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use rstore_api::rate::RateUnderLoad;
use rstore_backup::manifest::{BackupName, Sha256, parse_utc};
use rstore_backup::retention::State;
use rstore_backup::save::{now_unix_ms, paced, save_stream};
use rstore_backup::store::{BackupStore, StoreOptions};

use crate::cli::client::{Endpoint, explain};

/// Whether `s` names an object store rather than a local path.
pub fn is_url(s: &str) -> bool {
    s.contains("://")
}

pub(super) fn open(url: &str, credentials_dir: Option<&Path>) -> anyhow::Result<BackupStore> {
    let opts = StoreOptions {
        credentials_dir: credentials_dir.map(Path::to_path_buf),
        ..StoreOptions::default()
    };
    Ok(BackupStore::open(url, &opts)?)
}

/// `node backup save --out URL`.
pub async fn save(
    ep: &Endpoint,
    credentials_dir: Option<&Path>,
    url: &str,
    max_rate: Option<u64>,
    rate_under_load: Option<RateUnderLoad>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_ms = now_unix_ms();
    let store = open(url, credentials_dir)?;
    // Wrong credentials or a missing bucket fail here, before the cluster streams anything.
    store.check().await?;
    let client = ep.client()?;
    let resp = client.backup(rate_under_load).await.map_err(explain)?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .with_context(|| format!("the member's answer lacks the {name} header"))
    };
    let cluster_id = header("x-rstore-cluster-id")?;
    let revision: u64 = header("x-rstore-revision")?.parse()?;
    let stream = futures::stream::unfold(Some(resp), |resp| async move {
        let mut resp = resp?;
        match resp.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(resp))),
            Ok(None) => None,
            Err(e) => Some((Err(format!("the backup stream broke off: {e}")), None)),
        }
    });
    let stream = paced(Box::pin(stream), max_rate);
    let saved = save_stream(&store, &cluster_id, revision, started_ms, Box::pin(stream)).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "url": saved.url,
            "object": saved.object,
            "cluster_id": saved.header.cluster_id,
            "revision": saved.header.revision,
            "keys": saved.header.keys,
            "bytes": saved.size,
            "sha256": saved.sha256,
            "seconds": (secs * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}

/// Which backup of a store to restore.
#[derive(Debug, Default, Clone)]
pub struct Target {
    /// The newest good backup at or before this revision.
    pub revision: Option<u64>,
    /// The newest good backup taken at or before this time (`2026-12-05T10:00:00Z`).
    pub time: Option<String>,
    pub cluster_id: Option<String>,
}

/// Download the backup that `source` names (an object URL ending in `.rsb`, or a store URL
/// and `target`) into `dir`, checked against its manifest; its local path and object URL.
pub async fn fetch(
    source: &str,
    target: &Target,
    credentials_dir: Option<&Path>,
    dir: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    let (store, object) = match source.strip_suffix(".rsb") {
        Some(_) => {
            // `<store>/<cluster>/backup-….rsb`: the store is what precedes the last two parts.
            let mut parts = source.rsplitn(3, '/');
            let (name, cluster, root) = (parts.next(), parts.next(), parts.next());
            let (Some(name), Some(cluster), Some(root)) = (name, cluster, root) else {
                bail!(
                    "{source} does not name a backup object (STORE/CLUSTER/backup-TIME-rREVISION.rsb)"
                );
            };
            let object = format!("{cluster}/{name}");
            if BackupName::parse(&object).is_none() {
                bail!(
                    "{source} does not name a backup object (STORE/CLUSTER/backup-TIME-rREVISION.rsb)"
                );
            }
            (open(root, credentials_dir)?, object)
        }
        None => {
            let store = open(source, credentials_dir)?;
            let object = pick(&store, target).await?;
            (store, object)
        }
    };
    let url = store.object_url(&object);
    let manifest = store.read_manifest(&object).await?.with_context(|| {
        format!("{url} has no manifest: it is still being written, or its save was cut off")
    })?;
    let local = dir.join(format!(".download-{}.rsb", std::process::id()));
    let written: anyhow::Result<()> = async {
        use std::io::Write;
        let mut download = store.get(&object).await?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&local)?);
        let (mut sha, mut size) = (Sha256::default(), 0u64);
        while let Some(chunk) = download.stream.next().await {
            let chunk = chunk?;
            sha.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk)?;
        }
        out.flush()?;
        manifest.check(size, Some(&sha.finish_hex()))?;
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&local);
        return Err(e.context(format!("backup {url} was not restored")));
    }
    Ok((local, url))
}

/// The last millisecond of the UTC second `t` names: 2026-12-05T10:00:00Z, or as in object
/// names, 20261205T100000Z.
pub(super) fn time_ms(t: &str) -> anyhow::Result<u64> {
    let secs = parse_utc(&t.replace(['-', ':'], ""))
        .with_context(|| format!("--at-time {t}: give a UTC time like 2026-12-05T10:00:00Z"))?;
    Ok(secs * 1000 + 999)
}

/// The newest good backup of `store` that meets `target`.
async fn pick(store: &BackupStore, target: &Target) -> anyhow::Result<String> {
    let before_ms = target.time.as_deref().map(time_ms).transpose()?;
    let listed = store.list_backups(target.cluster_id.as_deref()).await?;
    let good = listed
        .iter()
        .filter(|l| l.state() == State::Good)
        .filter(|l| target.revision.is_none_or(|r| l.name.revision <= r))
        .filter(|l| before_ms.is_none_or(|t| l.name.unix_secs * 1000 <= t))
        .max_by_key(|l| (l.name.revision, l.name.unix_secs));
    match good {
        Some(l) => Ok(l.object.clone()),
        None => bail!(
            "{} holds no complete backup{}{}{} ({} backups listed)",
            store.url(),
            target
                .cluster_id
                .as_ref()
                .map(|c| format!(" of cluster {c}"))
                .unwrap_or_default(),
            target
                .revision
                .map(|r| format!(" at or before revision {r}"))
                .unwrap_or_default(),
            target
                .time
                .as_ref()
                .map(|t| format!(" taken at or before {t}"))
                .unwrap_or_default(),
            listed.len()
        ),
    }
}
