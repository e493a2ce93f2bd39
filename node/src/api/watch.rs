//! `GET /v1/watch?prefix=&start_revision=&progress_ms=`: a stream of changes as
//! newline-delimited JSON, one line per revision:
//!
//! ```text
//! {"revision":12,"events":[{"type":"put","key":"a","value_base64":"..","version":3,"create_revision":4,"mod_revision":12}]}
//! {"progress":{"revision":15}}
//! ```
//!
//! All events of one revision (a transaction) are on one line, so a client that lost its
//! connection resumes with `start_revision` = last line's revision + 1, without gaps or
//! duplicates. A progress line says every change up to that revision has been delivered.
//! History older than the retention answers 410 `compacted`, naming the oldest revision kept.
//!
//! Slow watchers never stall writes: live changes come through a bounded broadcast, and a
//! watcher that falls behind catches up from the stored history instead.
//!
//! Limits: at most `--max-watches` watches per member (past it, 429 `too_many_watches`),
//! and each watch may have at most `--watch-buffer-bytes` of lines waiting for its client
//! (one line more when a single revision is bigger): past that the stream waits for the
//! client. A watcher that makes no room for [`STALL_TIMEOUT`] gets a last line
//! `{"error":{"code":"watch_too_slow",..},"resume_revision":N}` and the stream ends; it
//! resumes with `start_revision=N`, everything before N having been sent. A client that
//! reads nothing even then is disconnected after [`DRAIN_TIMEOUT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::sync::{broadcast, mpsc};

use crate::app::App;
use crate::store::{EventKind, HistoryError, KvReader, RevisionEvents};
use crate::web::{ApiError, ApiResult, parse_query};

fn compacted(requested: u64, oldest: u64) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "compacted",
        format!(
            "revision {requested} is compacted; the oldest revision kept is {oldest}. Read the current state (its X-Rstore-Revision header) and watch from that revision + 1"
        ),
    )
}

fn line(rev: &RevisionEvents, prefix: &str) -> Option<Bytes> {
    let events: Vec<serde_json::Value> = rev
        .events
        .iter()
        .filter(|e| e.key.starts_with(prefix))
        .map(|e| match e.kind {
            EventKind::Put => serde_json::json!({
                "type": "put",
                "key": e.key,
                "value_base64": base64::engine::general_purpose::STANDARD.encode(&e.value),
                "version": e.version,
                "create_revision": e.create_revision,
                "mod_revision": rev.revision,
            }),
            EventKind::Delete => serde_json::json!({
                "type": "delete",
                "key": e.key,
                "mod_revision": rev.revision,
            }),
        })
        .collect();
    if events.is_empty() {
        return None;
    }
    let mut out =
        serde_json::to_vec(&serde_json::json!({"revision": rev.revision, "events": events}))
            .expect("json");
    out.push(b'\n');
    Some(Bytes::from(out))
}

/// The query of `GET /v1/watch`.
#[derive(Debug, PartialEq, Eq)]
struct WatchParams {
    prefix: String,
    start_revision: Option<u64>,
    progress_ms: Option<u64>,
}

fn watch_params(uri: &Uri) -> ApiResult<WatchParams> {
    let q = parse_query(uri, &["prefix", "start_revision", "progress_ms"])?;
    let number = |name: &str| -> ApiResult<Option<u64>> {
        q.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("{name} must be a non-negative integer; got '{v}'"),
                    )
                })
            })
            .transpose()
    };
    Ok(WatchParams {
        start_revision: number("start_revision")?,
        progress_ms: number("progress_ms")?,
        prefix: q.get("prefix").cloned().unwrap_or_default(),
    })
}

/// How long a watcher that was cut off has to read what was queued for it before its
/// connection is closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch at its byte bound waits for its client to make room.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One open watch, counted against the member's cap until its body is dropped.
struct Slot {
    app: Arc<App>,
}

impl Slot {
    fn take(app: &Arc<App>) -> ApiResult<Self> {
        let max = app.settings.max_watches;
        let taken = app
            .watches
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            app.metrics.watches_refused.inc();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_watches",
                format!(
                    "this member already serves {max} watches (--max-watches); close unused watches, watch a wider prefix with one stream, or use another member"
                ),
            ));
        }
        app.metrics.watches.inc();
        Ok(Self { app: app.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app.watches.fetch_sub(1, Ordering::AcqRel);
        self.app.metrics.watches.dec();
    }
}

/// The sending side of one watch: lines go to the client's body through a channel, and
/// the bytes waiting there are bounded.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Signalled by the body whenever the client took a line.
    room: Arc<tokio::sync::Notify>,
    bound: usize,
}

enum Stop {
    /// The client went away.
    Gone,
    /// The client fell behind the bound; it was told where to resume.
    TooSlow,
}

impl Sink {
    /// Queue `line` (the events of `revision`), waiting for room while the watch is at its
    /// bound; a client that makes none for [`STALL_TIMEOUT`] is cut off.
    async fn send(&self, line: Bytes, revision: u64) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + STALL_TIMEOUT;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let queued = self.queued.load(Ordering::Acquire);
            if queued == 0 || queued + line.len() <= self.bound {
                break;
            }
            tokio::select! {
                _ = room => continue,
                _ = self.tx.closed() => return Err(Stop::Gone),
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let mut l = serde_json::to_vec(&serde_json::json!({
                "error": {
                    "code": "watch_too_slow",
                    "message": format!(
                        "this watcher fell {} bytes behind and read nothing for {} s, so it was cut off; every change before revision {revision} was sent. Resume with start_revision={revision}",
                        self.bound,
                        STALL_TIMEOUT.as_secs()
                    ),
                },
                "resume_revision": revision,
            }))
            .expect("json");
            l.push(b'\n');
            let _ = self.tx.try_send(Bytes::from(l));
            return Err(Stop::TooSlow);
        }
        self.queued.fetch_add(line.len(), Ordering::AcqRel);
        self.tx.send(line).await.map_err(|_| Stop::Gone)
    }

    async fn send_meta(&self, line: Bytes) -> Result<(), Stop> {
        self.tx.send(line).await.map_err(|_| Stop::Gone)
    }
}

pub async fn watch(
    State(app): State<Arc<App>>,
    conn: Option<axum::Extension<crate::tls::ConnInfo>>,
    uri: Uri,
) -> ApiResult {
    let WatchParams {
        prefix,
        start_revision,
        progress_ms,
    } = watch_params(&uri)?;
    let kv = app.kv.clone();
    let start = start_revision.unwrap_or(kv.revision() + 1).max(1);
    let progress = Duration::from_millis(progress_ms.unwrap_or(5_000).max(100));
    let oldest = kv.oldest_revision();
    if start < oldest {
        return Err(compacted(start, oldest));
    }
    let slot = Slot::take(&app)?;
    // Subscribe before reading history, so nothing falls between the two.
    let live = kv.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let queued = Arc::new(AtomicUsize::new(0));
    let room = Arc::new(tokio::sync::Notify::new());
    let sink = Sink {
        tx,
        queued: queued.clone(),
        room: room.clone(),
        bound: app.settings.watch_buffer_bytes,
    };
    let metrics = app.metrics.clone();
    let closer = conn.map(|c| c.closer.clone());
    tokio::spawn(async move {
        if let Stop::TooSlow = stream(kv, live, &sink, start, prefix, progress).await {
            metrics.watches_cut_off.inc();
            // The client has DRAIN_TIMEOUT to read what is queued, the error line last;
            // one that reads nothing (so hyper never asks the body for more) loses its
            // connection, and with it everything buffered for it.
            let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
            let drained = async {
                while sink.tx.capacity() < sink.tx.max_capacity() {
                    tokio::select! {
                        _ = sink.room.notified() => {}
                        _ = sink.tx.closed() => return,
                    }
                }
            };
            if tokio::time::timeout_at(deadline, drained).await.is_err()
                && let Some(c) = closer
            {
                c.notify_one();
            }
        }
    });
    // What the client takes frees room in the bound. (A client that takes nothing is
    // disconnected by the task above: hyper then never polls this stream.)
    let body = Body::from_stream(futures::stream::unfold(
        (rx, queued, room, slot),
        |(mut rx, queued, room, slot)| async move {
            let b = rx.recv().await?;
            let n = b.len().min(queued.load(Ordering::Acquire));
            queued.fetch_sub(n, Ordering::AcqRel);
            room.notify_waiters();
            Some((Ok::<_, std::io::Error>(b), (rx, queued, room, slot)))
        },
    ));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .header("cache-control", "no-cache")
        .body(body)
        .map_err(ApiError::internal)?
        .into_response())
}

/// Deliver history from `next` on; returns the next revision to deliver, or `None` when
/// the stream must end (client gone, or history compacted under a slow watcher).
async fn catch_up(kv: &KvReader, tx: &Sink, mut next: u64, prefix: &str) -> Result<u64, Stop> {
    loop {
        let revs = match kv.history(next, 256) {
            Ok(r) => r,
            Err(HistoryError::Compacted { requested, oldest }) => {
                let e = compacted(requested, oldest);
                let mut l = serde_json::to_vec(
                    &serde_json::json!({"error": {"code": e.code, "message": e.message}}),
                )
                .expect("json");
                l.push(b'\n');
                let _ = tx.send_meta(Bytes::from(l)).await;
                return Err(Stop::Gone);
            }
        };
        let done = revs.len() < 256;
        for rev in revs {
            if let Some(l) = line(&rev, prefix) {
                tx.send(l, rev.revision).await?;
            }
            next = rev.revision + 1;
        }
        if done {
            return Ok(next);
        }
    }
}

/// Stream changes from `start` on until the client goes or falls too far behind.
async fn stream(
    kv: KvReader,
    mut live: broadcast::Receiver<Arc<RevisionEvents>>,
    tx: &Sink,
    start: u64,
    prefix: String,
    progress: Duration,
) -> Stop {
    let mut next = match catch_up(&kv, tx, start, &prefix).await {
        Ok(n) => n,
        Err(stop) => return stop,
    };
    let mut tick = tokio::time::interval(progress);
    tick.tick().await;
    loop {
        tokio::select! {
            r = live.recv() => match r {
                Ok(rev) => {
                    if rev.revision < next {
                        continue; // already delivered from history
                    }
                    if rev.revision > next {
                        // The state jumped past `next` (a snapshot from the leader was
                        // installed): deliver the gap from history, which answers 410 if
                        // it is not kept, rather than skip it silently.
                        match catch_up(&kv, tx, next, &prefix).await {
                            Ok(n) => next = n,
                            Err(stop) => return stop,
                        }
                        continue;
                    }
                    if let Some(l) = line(&rev, &prefix)
                        && let Err(stop) = tx.send(l, rev.revision).await
                    {
                        return stop;
                    }
                    next = rev.revision + 1;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    match catch_up(&kv, tx, next, &prefix).await {
                        Ok(n) => next = n,
                        Err(stop) => return stop,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Stop::Gone,
            },
            _ = tick.tick() => {
                let mut l = serde_json::to_vec(&serde_json::json!({"progress": {"revision": next - 1}})).expect("json");
                l.push(b'\n');
                if let Err(stop) = tx.send_meta(Bytes::from(l)).await {
                    return stop;
                }
            }
            _ = tx.tx.closed() => return Stop::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn watch_parameters_parse() {
        let uri: Uri = "/v1/watch?prefix=a%2Fb&start_revision=7&progress_ms=250"
            .parse()
            .unwrap();
        assert_eq!(
            watch_params(&uri).unwrap(),
            WatchParams {
                prefix: "a/b".into(),
                start_revision: Some(7),
                progress_ms: Some(250),
            }
        );
        let uri: Uri = "/v1/watch?start_revision=-1".parse().unwrap();
        let e = watch_params(&uri).unwrap_err();
        assert!(e.message.contains("start_revision"), "{}", e.message);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_watch_queries_parse_or_fail_with_400(query in "[a-z_=&%0-9A-F.+-]{0,60}") {
            let uri: Uri = format!("/v1/watch?{query}").parse().unwrap();
            if let Err(e) = watch_params(&uri) {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                prop_assert!(matches!(e.code, "unknown_parameter" | "invalid_request"), "{}", e.code);
            }
        }

        #[test]
        fn revisions_are_non_negative_integers(v in "-?[0-9]{1,22}|[a-z]{1,5}") {
            let uri: Uri = format!("/v1/watch?start_revision={v}&progress_ms={v}").parse().unwrap();
            match (watch_params(&uri), v.parse::<u64>()) {
                (Ok(p), Ok(n)) => prop_assert_eq!((p.start_revision, p.progress_ms), (Some(n), Some(n))),
                (Err(e), Err(_)) => prop_assert!(e.message.contains(&format!("'{v}'")), "{}", e.message),
                (r, n) => prop_assert!(false, "{v}: {r:?} vs {n:?}"),
            }
        }
    }
}
