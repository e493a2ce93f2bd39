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

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::sync::{broadcast, mpsc};

use super::{ApiError, ApiResult, parse_query};
use crate::app::App;
use crate::store::{EventKind, HistoryError, KvReader, RevisionEvents};

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

pub async fn watch(State(app): State<Arc<App>>, uri: Uri) -> ApiResult {
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
    // Subscribe before reading history, so nothing falls between the two.
    let live = kv.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(stream(kv, live, tx, start, prefix, progress));
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
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
async fn catch_up(
    kv: &KvReader,
    tx: &mpsc::Sender<Bytes>,
    mut next: u64,
    prefix: &str,
) -> Option<u64> {
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
                let _ = tx.send(Bytes::from(l)).await;
                return None;
            }
        };
        let done = revs.len() < 256;
        for rev in revs {
            if let Some(l) = line(&rev, prefix) {
                tx.send(l).await.ok()?;
            }
            next = rev.revision + 1;
        }
        if done {
            return Some(next);
        }
    }
}

async fn stream(
    kv: KvReader,
    mut live: broadcast::Receiver<Arc<RevisionEvents>>,
    tx: mpsc::Sender<Bytes>,
    start: u64,
    prefix: String,
    progress: Duration,
) {
    let Some(mut next) = catch_up(&kv, &tx, start, &prefix).await else {
        return;
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
                        match catch_up(&kv, &tx, next, &prefix).await {
                            Some(n) => next = n,
                            None => return,
                        }
                        continue;
                    }
                    if let Some(l) = line(&rev, &prefix)
                        && tx.send(l).await.is_err()
                    {
                        return;
                    }
                    next = rev.revision + 1;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    match catch_up(&kv, &tx, next, &prefix).await {
                        Some(n) => next = n,
                        None => return,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let mut l = serde_json::to_vec(&serde_json::json!({"progress": {"revision": next - 1}})).expect("json");
                l.push(b'\n');
                if tx.send(Bytes::from(l)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
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
