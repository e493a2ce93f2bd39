//! `node backup save | restore | inspect | archive`: take a consistent backup of a running
//! cluster into a file, in the manner of `etcdctl snapshot save`, check one, and prepare a new
//! cluster's first member from one; archive the change stream continuously
//! ([`archive`]) and restore to any revision it holds ([`pitr`]).
//!
//! A restore reads the backup once, checking every frame, the key order, the counts and the
//! SHA-256 as it writes the new member's data into a staging directory beside the target;
//! only a backup that checked out to its last byte is moved into place. A corrupt,
//! truncated or spliced backup leaves nothing behind and names the file, the byte offset and
//! what is wrong. The new member is the only voter of a new cluster (new cluster id, new
//! member id) holding the backup's keys, values and revisions; more members join it with
//! `node cluster add`, and get the data from it by Raft.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rstore_api::rate::RateUnderLoad;
use rstore_backup::format::{Header, Reader};

mod archive;
pub mod bootstrap;
mod member;
mod pitr;
mod remote;

use self::member::{Restored, seed_member};
use super::client::Endpoint;
use crate::store;
use crate::types::ClusterConfig;

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Stream a consistent backup from a member (admin role) into a file.
    Save(SaveArgs),
    /// Check a backup file to its last byte and print what it holds.
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
    /// Prepare the data directory of a new cluster's first member from a backup, or from a
    /// backup and the archived changes after it (point-in-time recovery).
    Restore(RestoreArgs),
    /// Archive the cluster's changes continuously into the store that holds its full
    /// backups, for point-in-time recovery (runs until SIGTERM or Ctrl-C).
    Archive(archive::ArchiveArgs),
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the backup: a file (written to FILE.partial, renamed once complete and
    /// checked), or an object store URL (`s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `file:///dir`), where it is written once under CLUSTER/backup-TIME-rREVISION.rsb with
    /// a manifest beside it.
    #[arg(long)]
    pub out: String,
    /// A directory of credential files for the object store, one per variable name
    /// (AWS_ACCESS_KEY_ID, …: a Kubernetes Secret mounted as files); the environment works too.
    #[arg(long, env = "RSTORE_BACKUP_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Read the backup no faster than this many bytes per second (`64MiB`, `500KB`): the
    /// member then spends proportionally less CPU on it, beside the writes it serves.
    /// Unlimited when left out.
    #[arg(long, value_parser = rstore_api::rate::parse_rate)]
    pub max_rate: Option<u64>,
    /// How fast the member streams the backup while it is applying writes (`100MB`,
    /// `64MiB`, or `unlimited`); on an idle member the backup always streams at full speed.
    /// The member's `--backup-rate-under-load` when left out.
    #[arg(long)]
    pub rate_under_load: Option<RateUnderLoad>,
    #[command(flatten)]
    pub ep: Endpoint,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup: a file, an object URL (STORE/CLUSTER/backup-TIME-rREVISION.rsb), or a
    /// store URL, from which the newest complete backup is taken (see --at-revision and
    /// --at-time).
    pub source: String,
    /// From a store URL: the state exactly at this revision, from the newest full backup at
    /// or before it and the archived changes after it (`node backup archive`); when the
    /// cluster has no archive, the newest complete backup at or before it.
    #[arg(long)]
    pub at_revision: Option<u64>,
    /// From a store URL: the state at this UTC time (2026-12-05T10:00:00Z), as the
    /// archiver received the changes; without an archive, the newest complete backup taken
    /// at or before then.
    #[arg(long)]
    pub at_time: Option<String>,
    /// A directory of credential files for the object store (see `backup save`).
    #[arg(long, env = "RSTORE_BACKUP_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// The new member's data directory: it must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new member's client URL, as it will be served (`node serve --advertise-client`).
    #[arg(long)]
    pub advertise_client: String,
    /// The new member's peer URL, as it will be served (`node serve --advertise-peer`).
    #[arg(long)]
    pub advertise_peer: String,
    /// Refuse the backup unless it is at this revision.
    #[arg(long)]
    pub expect_revision: Option<u64>,
    /// Refuse the backup unless it was taken from this cluster (from a store URL: take only
    /// this cluster's backups).
    #[arg(long)]
    pub expect_cluster_id: Option<String>,
}

pub async fn run_backup(cmd: BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Save(args) if remote::is_url(&args.out) => {
            remote::save(
                &args.ep,
                args.credentials_dir.as_deref(),
                &args.out,
                args.max_rate,
                args.rate_under_load,
            )
            .await
        }
        BackupCommand::Save(args) => save(args).await,
        BackupCommand::Inspect { file } => {
            let (header, bytes) = inspect(&file)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "file": file.display().to_string(),
                    "bytes": bytes,
                    "header": header,
                    "verified": true,
                }))?
            );
            Ok(())
        }
        BackupCommand::Archive(args) => archive::run(args).await,
        BackupCommand::Restore(args) => {
            let r = restore(&args).await?;
            println!(
                "restored revision {} ({} keys) from {} into {}: new cluster {}, member {}\n\
                 start it with: node serve --data-dir {} --advertise-client {} --advertise-peer {} ...\n\
                 then add members with: node cluster add --id ID --client-url URL --peer-url URL (ID from the new member's GET /v1/node)",
                r.revision,
                r.keys,
                r.source,
                args.data_dir.display(),
                r.cluster_id,
                r.node_id,
                args.data_dir.display(),
                args.advertise_client,
                args.advertise_peer,
            );
            Ok(())
        }
    }
}

/// Read the whole backup at `path`, checking everything; its header and size.
pub fn inspect(path: &Path) -> anyhow::Result<(Header, u64)> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = Reader::open(std::io::BufReader::with_capacity(1 << 20, f))
        .with_context(|| format!("backup {} is not usable", path.display()))?;
    r.verify_rest()
        .with_context(|| format!("backup {} is not usable", path.display()))?;
    Ok((r.header().clone(), r.offset()))
}

async fn save(args: SaveArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = args.ep.client()?;
    let mut resp = client
        .backup(args.rate_under_load)
        .await
        .map_err(super::client::explain)?;
    let out = PathBuf::from(&args.out);
    let partial = out.with_extension("partial");
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    // The stream is written and checked as it arrives, in one pass.
    let checker = rstore_backup::check::Checker::start(Some(file));
    let mut pacer = rstore_backup::save::Pacer::new(args.max_rate);
    let mut bytes = 0u64;
    let mut broke = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                let n = chunk.len();
                if !checker.feed(chunk) {
                    break; // the checker stopped: its error says why
                }
                pacer.after(n).await;
            }
            Ok(None) => break,
            Err(e) => {
                broke = Some(anyhow::Error::new(e).context("the backup stream broke off"));
                break;
            }
        }
    }
    let checked = checker.finish().map_err(anyhow::Error::from);
    let checked = match (broke, checked) {
        (None, Ok(c)) => c,
        (Some(e), _) | (None, Err(e)) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context(format!("no backup was saved to {}", out.display())));
        }
    };
    std::fs::rename(&partial, &out)
        .with_context(|| format!("cannot move the backup to {}", out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "file": out.display().to_string(),
            "cluster_id": checked.header.cluster_id,
            "revision": checked.header.revision,
            "keys": checked.header.keys,
            "bytes": bytes,
            "sha256": checked.sha256,
            "seconds": (secs * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}

/// Prepare `args.data_dir` from the backup: checked in full before the directory appears.
pub async fn restore(args: &RestoreArgs) -> anyhow::Result<Restored> {
    let dir = &args.data_dir;
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && let Some(entry) = entries.next()
    {
        bail!(
            "{} is not empty (it holds {}): restore into a new, empty data directory",
            dir.display(),
            entry?.file_name().to_string_lossy()
        );
    }
    let name = dir
        .file_name()
        .with_context(|| format!("{} names no directory", dir.display()))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = parent.join(format!(
        ".{}.restoring-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // To a point in time: the full backup it starts from, and the archived changes after.
    let pitr = match remote::is_url(&args.source) {
        true => {
            let target = remote::Target {
                revision: args.at_revision,
                time: args.at_time.clone(),
                cluster_id: args.expect_cluster_id.clone(),
            };
            pitr::prepare(&args.source, &target, args.credentials_dir.as_deref()).await?
        }
        false => None,
    };
    // From object storage: downloaded beside the target and checked against its manifest.
    let (file, source, download) = if let Some(p) = &pitr {
        let (local, url) = remote::fetch(
            &p.base_url,
            &remote::Target::default(),
            args.credentials_dir.as_deref(),
            &parent,
        )
        .await?;
        (local.clone(), url, Some(local))
    } else if remote::is_url(&args.source) {
        let target = remote::Target {
            revision: args.at_revision,
            time: args.at_time.clone(),
            cluster_id: args.expect_cluster_id.clone(),
        };
        let (local, url) = remote::fetch(
            &args.source,
            &target,
            args.credentials_dir.as_deref(),
            &parent,
        )
        .await?;
        (local.clone(), url, Some(local))
    } else {
        if args.at_revision.is_some() || args.at_time.is_some() {
            bail!(
                "--at-revision and --at-time choose among the backups of a store URL, not a file"
            );
        }
        (PathBuf::from(&args.source), args.source.clone(), None)
    };
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    // A target a full backup holds exactly is restored from it alone, as before.
    let seeded = match &pitr {
        Some(p) if !p.is_exact() => {
            let urls = (args.advertise_client.as_str(), args.advertise_peer.as_str());
            pitr::seed(p, &file, &staging, urls, args.expect_revision).await
        }
        _ => seed(args, &file, &source, &staging).await,
    };
    if let Some(d) = download {
        let _ = std::fs::remove_file(d);
    }
    match seeded {
        Ok(r) => {
            if dir.exists() {
                std::fs::remove_dir(dir)
                    .with_context(|| format!("cannot replace the empty {}", dir.display()))?;
            }
            std::fs::rename(&staging, dir)
                .with_context(|| format!("cannot move the restored data to {}", dir.display()))?;
            store::fsync::sync_dir(&parent)?;
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e.context(format!(
                "backup {source} was not restored; {} was left as it was",
                dir.display()
            )))
        }
    }
}

/// Write a new member's data into `staging`: identity, a log that starts after the
/// snapshot, and the snapshot holding the backup.
async fn seed(
    args: &RestoreArgs,
    file: &Path,
    source: &str,
    staging: &Path,
) -> anyhow::Result<Restored> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut reader = Reader::open(std::io::BufReader::with_capacity(1 << 20, f))?;
    let header = reader.header().clone();
    if let Some(want) = args.expect_revision
        && want != header.revision
    {
        bail!(
            "it is at revision {}, not the expected {want}",
            header.revision
        );
    }
    if let Some(want) = &args.expect_cluster_id
        && *want != header.cluster_id
    {
        bail!(
            "it was taken from cluster {}, not the expected {want}",
            header.cluster_id
        );
    }
    let config: ClusterConfig = serde_json::from_value(header.config.clone())
        .context("its cluster settings are not valid")?;
    let snapshot_id = format!("restored-{}-r{}", header.cluster_id, header.revision);
    let urls = (args.advertise_client.as_str(), args.advertise_peer.as_str());
    let (cluster_id, node_id) = seed_member(
        urls,
        staging,
        snapshot_id,
        header.revision,
        &config,
        (header.keys, header.data_bytes),
        std::iter::from_fn(|| reader.next_entry().transpose()),
    )
    .await?;
    Ok(Restored {
        source: source.to_string(),
        cluster_id,
        node_id,
        revision: header.revision,
        keys: header.keys,
    })
}
