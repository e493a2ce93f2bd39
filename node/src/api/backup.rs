//! `GET /v1/cluster/backup` (admin): a consistent backup of the whole store, streamed in
//! the format of [`rstore_backup::format`].
//!
//! The member first passes a linearizable read barrier (so the backup holds every write
//! acknowledged before the request), then copies the state under its lock in one go (so it
//! holds exactly the writes up to one revision), and encodes and sends the copy off the
//! lock, while writes go on, on a thread of its own at the lowest CPU priority (nice 19), so
//! that the encoding and hashing take the CPU the member's writes leave idle rather than
//! the writes' share (RocksDB lowers its compaction threads for the same reason). Any member
//! can serve it; one backup streams from a member at a time, and a second gets 409. The
//! answer's headers carry the revision, the cluster id and the key count before the body
//! starts; the body's trailer carries its SHA-256.
//!
//! A lower priority is not enough on a machine the writes keep busy: the encoder still gets
//! its share, and the connection's TLS and the reader's work run at normal priority. So
//! while the member is applying writes, a [`Governor`] paces the encoder to the request's
//! `rate_under_load` (the node's `--backup-rate-under-load` when it does not say), and on an
//! idle member the backup streams as fast as it can: one setting gives a fast backup when
//! there is room and a small cost to the writes when there is not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rstore_api::rate::RateUnderLoad;
use rstore_backup::format::{FORMAT_VERSION, Header, Writer};

use super::admin::config_view;
use crate::app::App;
use crate::background;
use crate::forward::leader::linearizable_barrier;
use crate::metrics::OutcomeLabels;
use crate::web::{ApiError, ApiResult, parse_query};

/// Chunks queued between the encoder and the connection (each about 256 KiB).
const QUEUE: usize = 8;
/// A member counts as applying writes for this long after its commit index last moved.
const LOAD_WINDOW: Duration = Duration::from_millis(250);

pub async fn backup(State(app): State<Arc<App>>, uri: Uri) -> ApiResult {
    let query = parse_query(&uri, &["rate_under_load"])?;
    let rate_under_load = match query.get("rate_under_load") {
        None => app.settings.backup_rate_under_load,
        Some(text) => text.parse::<RateUnderLoad>().map_err(|e| {
            ApiError::bad_request("invalid_request", format!("rate_under_load: {e}"))
        })?,
    };
    let outcome = |outcome| {
        app.metrics
            .backups
            .get_or_create(&OutcomeLabels { outcome })
            .inc()
    };
    let Some(cluster_id) = app.identity.cluster_id() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_initialized",
            "this member belongs to no cluster yet: initialize the cluster or add this member to one, then back it up",
        ));
    };
    let Ok(permit) = app.backup_lock.clone().try_lock_owned() else {
        outcome("refused");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backup_in_progress",
            "a backup is already streaming from this member; retry when it ends, or take this one from another member",
        ));
    };
    linearizable_barrier(&app).await?;
    let started = Instant::now();
    let copy = app.kv.copy_all();
    app.metrics
        .backup_copy_seconds
        .observe(started.elapsed().as_secs_f64());
    let header = Header {
        format: FORMAT_VERSION,
        cluster_id: cluster_id.clone(),
        revision: copy.revision,
        log_index: copy.applied_index,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        source_node: app.id,
        keys: copy.records.len() as u64,
        data_bytes: copy
            .records
            .iter()
            .map(|(k, r)| (k.len() + r.value.len()) as u64)
            .sum(),
        config: config_view(&copy.config),
    };
    let revision = header.revision;
    let keys = header.keys;
    tracing::info!(revision, keys, bytes = header.data_bytes, %rate_under_load, "backup started");
    let mut governor = Governor::new(
        rate_under_load.bytes_per_second(),
        app.committed.clone(),
        Instant::now(),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
    let metrics = app.metrics.clone();
    let encoder = background::spawn("rstore-backup", move || {
        let _permit = permit;
        let mut w = Writer::new(header);
        let mut sent = 0u64;
        let paced = metrics.backup_paced_seconds.clone();
        let mut send = |b: Vec<u8>, sent: &mut u64| {
            let wait = governor.wait(b.len(), Instant::now());
            if !wait.is_zero() {
                paced.inc_by(wait.as_secs_f64());
                std::thread::sleep(wait);
            }
            *sent += b.len() as u64;
            tx.blocking_send(Bytes::from(b)).is_ok()
        };
        for (key, r) in &copy.records {
            w.push(
                key.as_bytes(),
                r.create_revision,
                r.mod_revision,
                r.version,
                &r.value,
            );
            let ready = w.take();
            if !ready.is_empty() && !send(ready, &mut sent) {
                tracing::warn!(revision, sent, "backup aborted: the client went away");
                metrics
                    .backups
                    .get_or_create(&OutcomeLabels { outcome: "aborted" })
                    .inc();
                return;
            }
        }
        let ok = match w.finish() {
            Ok(rest) => send(rest, &mut sent),
            Err(e) => {
                tracing::error!(error = %e, "backup aborted");
                false
            }
        };
        metrics.backup_bytes.inc_by(sent);
        let paced = governor.waited().as_secs_f64();
        let outcome = if ok { "complete" } else { "aborted" };
        metrics
            .backups
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        tracing::info!(
            revision,
            keys,
            bytes = sent,
            outcome,
            paced_seconds = paced,
            "backup streamed"
        );
    });
    if let Err(e) = encoder {
        outcome("aborted");
        return Err(ApiError::internal(format!(
            "start the backup's encoder thread: {e}"
        )));
    }
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(b), rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/vnd.rstore.backup")
        .header("x-rstore-revision", revision.to_string())
        .header("x-rstore-cluster-id", cluster_id.as_str())
        .header("x-rstore-keys", keys.to_string())
        .header(
            "content-disposition",
            format!("attachment; filename=\"rstore-{cluster_id}-r{revision}.rsb\""),
        )
        .body(body)
        .map_err(ApiError::internal)
        .map(IntoResponse::into_response)
}

/// Paces a backup's encoder while the member is applying writes: each chunk then goes out
/// no sooner than the rate allows after the one before it; on an idle member nothing waits,
/// and a pause in the writes lets the backup run at full speed again after [`LOAD_WINDOW`].
/// The signal is the commit index, which every member (leader, follower or learner)
/// advances with each write it takes in; it is an atomic, so the low-priority encoder holds
/// no lock a write could wait for.
struct Governor {
    /// Bytes per second while writes arrive; `None`: never paced.
    rate: Option<u64>,
    committed: Arc<AtomicU64>,
    seen: u64,
    last_write: Option<Instant>,
    next_send: Instant,
    waited: Duration,
}

impl Governor {
    fn new(rate: Option<u64>, committed: Arc<AtomicU64>, now: Instant) -> Self {
        let seen = committed.load(Ordering::Relaxed);
        Self {
            rate,
            committed,
            seen,
            last_write: None,
            next_send: now,
            waited: Duration::ZERO,
        }
    }

    /// `n` bytes are ready to go at `now`: how long to wait before sending them.
    fn wait(&mut self, n: usize, now: Instant) -> Duration {
        let committed = self.committed.load(Ordering::Relaxed);
        if committed != self.seen {
            self.seen = committed;
            self.last_write = Some(now);
        }
        let loaded = self
            .last_write
            .is_some_and(|t| now.saturating_duration_since(t) < LOAD_WINDOW);
        let (Some(rate), true) = (self.rate, loaded) else {
            self.next_send = now;
            return Duration::ZERO;
        };
        let start = self.next_send.max(now);
        self.next_send = start + Duration::from_secs_f64(n as f64 / rate as f64);
        let wait = start - now;
        self.waited += wait;
        wait
    }

    /// The time spent waiting so far.
    fn waited(&self) -> Duration {
        self.waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1_000_000;

    #[test]
    fn an_idle_member_streams_at_full_speed() {
        let committed = Arc::new(AtomicU64::new(7));
        let t0 = Instant::now();
        let mut g = Governor::new(Some(MB as u64), committed, t0);
        for i in 0..10 {
            assert_eq!(g.wait(MB, t0 + Duration::from_millis(i)), Duration::ZERO);
        }
        assert_eq!(g.waited(), Duration::ZERO);
    }

    #[test]
    fn while_writes_arrive_chunks_go_out_at_the_rate_and_after_them_at_full_speed() {
        let committed = Arc::new(AtomicU64::new(7));
        let t0 = Instant::now();
        let mut g = Governor::new(Some(MB as u64), committed.clone(), t0);
        committed.store(8, Ordering::Relaxed);
        // Half a second's worth each, sent back to back: the first goes at once, the next
        // waits for the first's half second.
        assert_eq!(g.wait(MB / 2, t0), Duration::ZERO);
        committed.store(9, Ordering::Relaxed);
        assert_eq!(g.wait(MB / 2, t0), Duration::from_millis(500));
        // The writes stop: one window later nothing waits, and no credit was saved up.
        let later = t0 + LOAD_WINDOW + Duration::from_millis(1);
        assert_eq!(g.wait(MB, later), Duration::ZERO);
        assert_eq!(g.waited(), Duration::from_millis(500));
        // They start again.
        committed.store(10, Ordering::Relaxed);
        assert_eq!(g.wait(MB, later), Duration::ZERO);
        assert_eq!(g.wait(MB, later), Duration::from_secs(1));
    }

    #[test]
    fn unlimited_never_waits_even_under_load() {
        let committed = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let mut g = Governor::new(None, committed.clone(), t0);
        for i in 1..10 {
            committed.store(i, Ordering::Relaxed);
            assert_eq!(g.wait(MB, t0), Duration::ZERO);
        }
    }
}
