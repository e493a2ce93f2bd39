//! `node backup archive`: continuous archiving of a cluster's change stream into object
//! storage, for point-in-time recovery (docs/backup.md, "Point-in-time recovery").
//!
//! It watches every key from the revision after the newest archived segment (or, when there
//! is none, after the newest full backup: a full backup is the base every restore starts
//! from), cuts the changes into segments by size and age ([`rstore_backup::segment`]) and
//! uploads each once, with its manifest, under `CLUSTER/wal/`. A revision is never split.
//!
//! The watch is resumed from the next revision after any break (a member restarting, a
//! leader change, a slow-watcher cut-off), on the same member or another one of the
//! cluster's (learned from `GET /v1/cluster`), with backoff. If the cluster no longer keeps
//! the next revision, the archive cannot continue without a gap: the archiver continues
//! after a newer full backup if there is one that covers the gap, and fails otherwise,
//! naming the gap. SIGTERM or Ctrl-C uploads what is pending and exits.

mod metrics;
mod resume;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use rstore_api::ReadConsistency;
use rstore_api::client::{Error as ClientError, NodeClient, RangeQuery, WatchLine};
use rstore_backup::archive::Position;
use rstore_backup::segment::{Change, ChangeKind, Revision, SegmentWriter};
use rstore_backup::store::{BackupStore, StoreError};
use tokio::sync::mpsc;

use self::metrics::ArchiveMetrics;
use self::resume::{newest_backup, oldest_kept, resume_point};
use self::stream::{Seen, Stop, read_lines};
use crate::cli::client::Endpoint;

#[derive(Args, Debug)]
pub struct ArchiveArgs {
    /// The store to archive into (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///dir`):
    /// the one `node backup save --out` writes the cluster's full backups to.
    #[arg(long)]
    pub to: String,
    /// A directory of credential files for the object store (see `backup save`).
    #[arg(long, env = "RSTORE_BACKUP_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Cut a segment once it holds this many bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub segment_max_bytes: usize,
    /// Cut a segment once its oldest change is this many seconds old (bounds the archive
    /// lag, and so what losing the cluster loses).
    #[arg(long, default_value_t = 60.0)]
    pub segment_max_seconds: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks one; printed).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Other members' client URLs to fail over to (repeatable). With an admin token the
    /// archiver also learns them from GET /v1/cluster.
    #[arg(long = "fallback-endpoint")]
    pub fallback_endpoints: Vec<String>,
    #[command(flatten)]
    pub ep: Endpoint,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Archiver {
    store: BackupStore,
    cluster_id: String,
    /// The clients of the cluster's members; `current` is watched.
    members: Vec<NodeClient>,
    current: usize,
    metrics: Arc<ArchiveMetrics>,
    args: ArchiveArgs,
    /// The next revision to archive.
    next: u64,
    segment: SegmentWriter,
    /// When the current segment's first change arrived.
    opened: Option<Instant>,
    /// The newest revision a progress line confirmed, and when the position was last
    /// recorded in the store.
    progress: u64,
    recorded: Option<Instant>,
}

/// `node backup archive`.
pub async fn run(args: ArchiveArgs) -> anyhow::Result<()> {
    if args.segment_max_bytes == 0
        || args.segment_max_seconds.is_nan()
        || args.segment_max_seconds <= 0.0
    {
        bail!("--segment-max-bytes and --segment-max-seconds must be more than 0");
    }
    let store = super::remote::open(&args.to, args.credentials_dir.as_deref())?;
    store.check().await?;
    let first = args.ep.client()?;
    let mut members = vec![first.clone()];
    for url in &args.fallback_endpoints {
        members.push(NodeClient::new(first.http().clone(), url));
    }
    // The cluster id, from the first member that answers.
    let mut answer = None;
    for (i, m) in members.iter().enumerate() {
        match m.node().await {
            Ok(info) => {
                answer = Some((m.base().to_string(), info));
                break;
            }
            Err(e) if i + 1 == members.len() => {
                return Err(crate::cli::client::explain(e))
                    .context("cannot learn the cluster id from any member given");
            }
            Err(e) => tracing::warn!(member = m.base(), error = %e, "cannot reach the member"),
        }
    }
    let (base, node) = answer.expect("the loop answers or returns");
    let cluster_id = node.cluster_id.with_context(|| {
        format!("{base} is not a member of a cluster yet: initialize it or join it first")
    })?;
    let metrics = Arc::new(ArchiveMetrics::new());
    let metrics_url = match args.metrics_addr {
        Some(addr) => {
            let bound = metrics::serve(addr, metrics.clone()).await?;
            Some(format!("http://{bound}/metrics"))
        }
        None => None,
    };
    let next = resume_point(&store, &cluster_id).await?;
    // Caught from here on: a stop uploads what is pending.
    let stop = Stop::new()?;
    metrics.archived_revision.set(next - 1);
    println!(
        "{}",
        serde_json::json!({
            "archiving": cluster_id,
            "to": store.url(),
            "from_revision": next,
            "metrics": metrics_url,
        })
    );
    let mut a = Archiver {
        segment: SegmentWriter::new(&cluster_id, next),
        store,
        cluster_id,
        members,
        current: 0,
        metrics,
        args,
        next,
        opened: None,
        progress: 0,
        recorded: None,
    };
    a.run(stop).await
}

impl Archiver {
    async fn run(&mut self, mut stop: Stop) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let client = self.members[self.current].clone();
            let watch = match client.watch("", Some(self.next)).await {
                Ok(w) => w,
                Err(ClientError::Api { api, .. }) if api.code == "compacted" => {
                    self.compacted(&api.message).await?;
                    continue;
                }
                Err(ClientError::Api { api, .. }) if matches!(api.status, 401 | 403) => {
                    bail!(
                        "{} refused the watch ({api}): give the archiver a token or certificate whose role may watch (read, write or admin)",
                        client.base()
                    );
                }
                Err(e) => {
                    self.metrics.fail("watch");
                    tracing::warn!(error = %e, "cannot watch; retrying on another member");
                    self.flush_if_due().await?;
                    if self.next_member(&mut backoff, &mut stop).await {
                        return self.stop().await;
                    }
                    continue;
                }
            };
            self.learn_members(&client).await;
            let (tx, mut rx) = mpsc::channel(256);
            let reader = tokio::spawn(read_lines(watch, tx));
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let ended = loop {
                tokio::select! {
                    seen = rx.recv() => match seen {
                        Some(Seen::Line(line)) => {
                            backoff = Duration::from_millis(100);
                            if let Some(code) = self.take(line)? {
                                break Some(code);
                            }
                            self.flush_if_due().await?;
                            self.record_position().await;
                        }
                        Some(Seen::Ended(e)) => break e,
                        None => break None,
                    },
                    _ = tick.tick() => {
                        self.flush_if_due().await?;
                        self.update_lag();
                    }
                    _ = stop.recv() => {
                        reader.abort();
                        return self.stop().await;
                    }
                }
            };
            reader.abort();
            match ended {
                Some(message) if message.starts_with("compacted:") => {
                    self.compacted(&message).await?;
                }
                Some(message) => {
                    self.metrics.fail("watch");
                    tracing::warn!(error = %message, "the watch broke off; resuming");
                    if self.next_member(&mut backoff, &mut stop).await {
                        return self.stop().await;
                    }
                }
                None => {
                    self.metrics.fail("watch");
                    tracing::info!("the member ended the watch; resuming");
                    if self.next_member(&mut backoff, &mut stop).await {
                        return self.stop().await;
                    }
                }
            }
        }
    }

    /// Take one watch line; `Some(reason)` when the stream must be reopened.
    fn take(&mut self, line: WatchLine) -> anyhow::Result<Option<String>> {
        match line {
            WatchLine::Events { revision, events } => {
                self.metrics
                    .cluster_revision
                    .set(self.metrics.cluster_revision.get().max(revision));
                if revision < self.next {
                    return Ok(None); // delivered before a reconnect
                }
                let changes = events
                    .into_iter()
                    .map(|e| {
                        let kind = match e.kind.as_str() {
                            "put" => ChangeKind::Put,
                            "delete" => ChangeKind::Delete,
                            other => bail!("the watch sent an event of unknown type {other:?}"),
                        };
                        Ok(Change {
                            kind,
                            key: e.key,
                            value: e.value.unwrap_or_default(),
                            create_revision: e.create_revision.unwrap_or(0),
                            version: e.version.unwrap_or(0),
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let rev = Revision {
                    revision,
                    received_unix_ms: now_ms(),
                    changes,
                };
                self.segment.push(&rev)?;
                self.opened.get_or_insert_with(Instant::now);
                self.next = revision + 1;
                self.update_lag();
                Ok(None)
            }
            WatchLine::Progress { progress } => {
                self.progress = progress.revision;
                self.metrics
                    .cluster_revision
                    .set(self.metrics.cluster_revision.get().max(progress.revision));
                self.update_lag();
                Ok(None)
            }
            WatchLine::Error { error } if error.code == "compacted" => {
                Ok(Some(format!("compacted: {}", error.message)))
            }
            WatchLine::Error { error } => Ok(Some(format!("{}: {}", error.code, error.message))),
        }
    }

    fn update_lag(&self) {
        let m = &self.metrics;
        m.lag_revisions.set(
            m.cluster_revision
                .get()
                .saturating_sub(m.archived_revision.get()),
        );
        let secs = match self.segment.first_received_unix_ms() {
            Some(first) => now_ms().saturating_sub(first) as f64 / 1000.0,
            None => 0.0,
        };
        m.lag_seconds.set(secs);
    }

    async fn flush_if_due(&mut self) -> anyhow::Result<()> {
        let due = self.segment.len() >= self.args.segment_max_bytes
            || self
                .opened
                .is_some_and(|t| t.elapsed().as_secs_f64() >= self.args.segment_max_seconds);
        if due { self.flush().await } else { Ok(()) }
    }

    /// Upload the current segment (if it holds anything), retrying while the store fails.
    async fn flush(&mut self) -> anyhow::Result<()> {
        let Some(last) = self.segment.last_pushed() else {
            return Ok(());
        };
        let started = now_ms();
        let full = std::mem::replace(
            &mut self.segment,
            SegmentWriter::new(&self.cluster_id, last + 1),
        );
        self.opened = None;
        let (header, bytes) = full.finish(last, started)?;
        let mut backoff = Duration::from_millis(200);
        let up = loop {
            match self
                .store
                .write_segment(&header, bytes.clone(), started, now_ms())
                .await
            {
                Ok(up) => break up,
                Err(e @ StoreError::AlreadyExists { .. }) => {
                    return Err(anyhow::Error::new(e).context(
                        "another archiver writes this cluster's archive, or one that died left this segment: run one archiver per cluster, and restart this one (it resumes after what is archived)",
                    ));
                }
                Err(e) if e.is_transient() => {
                    self.metrics.fail("upload");
                    let waited = now_ms().saturating_sub(header.first_received_unix_ms);
                    self.metrics.lag_seconds.set(waited as f64 / 1000.0);
                    tracing::warn!(error = %e, "segment upload failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    self.metrics.fail("upload");
                    return Err(e.into());
                }
            }
        };
        self.metrics.segments.inc();
        self.metrics.bytes.inc_by(up.size);
        self.metrics.archived_revision.set(last);
        self.update_lag();
        println!(
            "{}",
            serde_json::json!({
                "segment": up.object,
                "first_revision": header.first_revision,
                "last_revision": last,
                "revisions": header.revisions,
                "bytes": up.size,
            })
        );
        Ok(())
    }

    /// When idle (everything up to the revision the member last confirmed is archived),
    /// record that in the store, at most once per `--segment-max-seconds`: a restore at a
    /// time after the newest segment then knows that nothing changed since.
    async fn record_position(&mut self) {
        let interval = Duration::from_secs_f64(self.args.segment_max_seconds);
        if !self.segment.is_empty()
            || self.progress + 1 != self.next
            || self.recorded.is_some_and(|t| t.elapsed() < interval)
        {
            return;
        }
        // The member watched may lag: the position is what a linearizable read confirms
        // (any role that may watch may read).
        let probe = RangeQuery {
            prefix: String::new(),
            limit: Some(1),
            consistency: Some(ReadConsistency::Linearizable),
            ..RangeQuery::default()
        };
        match self.members[self.current].range(&probe).await {
            Ok(page) if page.revision == self.progress => {}
            _ => return,
        }
        let position = Position {
            cluster_id: self.cluster_id.clone(),
            revision: self.progress,
            confirmed_unix_ms: now_ms(),
        };
        match self.store.write_position(&position).await {
            Ok(()) => self.recorded = Some(Instant::now()),
            Err(e) => {
                self.metrics.fail("upload");
                tracing::warn!(error = %e, "cannot record the archive's position");
            }
        }
    }

    /// The cluster no longer keeps `self.next`: continue after a newer full backup that
    /// covers the gap, or fail naming it.
    async fn compacted(&mut self, message: &str) -> anyhow::Result<()> {
        self.metrics.fail("compacted");
        self.flush().await?;
        let oldest = oldest_kept(message);
        if let Some(b) = newest_backup(&self.store, &self.cluster_id).await?
            && b + 1 > self.next
            && oldest.is_none_or(|o| b + 1 >= o)
        {
            tracing::warn!(
                from = self.next,
                to = b,
                "the cluster no longer keeps these revisions; continuing after the full backup at the last of them (restores between them are not possible)"
            );
            self.next = b + 1;
            self.segment = SegmentWriter::new(&self.cluster_id, self.next);
            return Ok(());
        }
        bail!(
            "the cluster no longer keeps revision {} ({message}): revisions {} to {} are lost to the archive. Take a full backup now (node backup save --out {} ...) and start the archiver again: it continues after that backup",
            self.next,
            self.next,
            oldest.map_or("the oldest kept".into(), |o| (o - 1).to_string()),
            self.store.url()
        )
    }

    /// Learn the cluster's other members, to fail over to.
    async fn learn_members(&mut self, client: &NodeClient) {
        let Ok(view) = client.cluster_local().await else {
            return;
        };
        for m in view.members {
            let url = m.client_url.trim_end_matches('/');
            if !self.members.iter().any(|c| c.base() == url) {
                self.members
                    .push(NodeClient::new(client.http().clone(), url));
            }
        }
    }

    /// Move on to the next member after `backoff`; `true` when asked to stop meanwhile.
    async fn next_member(&mut self, backoff: &mut Duration, stop: &mut Stop) -> bool {
        self.current = (self.current + 1) % self.members.len();
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stop.recv() => true,
        }
    }

    /// Upload what is pending, and end.
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.flush().await?;
        tracing::info!(
            next = self.next,
            "stopped; everything received was archived"
        );
        Ok(())
    }
}
