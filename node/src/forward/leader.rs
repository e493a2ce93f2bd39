//! The client API's side of forwarding: finding the leader, and running a request there:
//! writes and read-index requests through the batched forwarder, other leader-only requests
//! relayed whole to the leader's peer port (where only members get in) with the role
//! established here.
//!
//! A relayed request carries `x-rstore-forwarded`. A node that receives one but is not
//! the leader (leadership moved in between) answers 503 with `x-rstore-not-leader`, and the
//! forwarding node looks for the leader again, until a deadline. A forwarded request is
//! only retried when the receiver says it did not act on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::batcher::{Ack, WriteError};
use crate::readindex::ReadError;
use crate::types::{Command, NodeId};
use crate::web::{ApiError, ApiResult};

use super::{FORWARDED, NOT_LEADER};

/// Where a leader-only request should run.
pub enum Route {
    Local,
    Remote { id: NodeId, peer_url: String },
}

/// How long to wait for a leader before answering 503.
fn leader_wait(app: &App) -> Duration {
    Duration::from_millis(app.settings.election_max_ms * 2 + 500)
}

/// Find the leader, waiting through an election if needed.
pub async fn leader_route(app: &App, deadline: Instant) -> ApiResult<Route> {
    loop {
        // Read only what routing needs, under a short borrow: this runs on every request,
        // and a held borrow of the metrics watch blocks the Raft core.
        let (leader, is_leader, leader_url, member, membership_index) = {
            let rx = app.raft.metrics();
            let m = rx.borrow();
            let mem = m.membership_config.membership();
            (
                m.current_leader,
                m.state == openraft::ServerState::Leader,
                m.current_leader
                    .and_then(|l| mem.get_node(&l))
                    .map(|n| n.peer_url.clone()),
                mem.get_node(&app.id).is_some(),
                m.membership_config.log_id().map(|l| l.index),
            )
        };
        match (leader, leader_url) {
            (Some(l), _) if l == app.id && is_leader => return Ok(Route::Local),
            (Some(l), Some(peer_url)) if l != app.id => {
                return Ok(Route::Remote { id: l, peer_url });
            }
            _ => {}
        }
        if !member && leader.is_none() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_initialized",
                "this node is not part of a cluster yet: run `POST /v1/cluster/init` on the first node, or add this node from the leader with `POST /v1/cluster/members`",
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ApiError::no_leader(
                "no leader is known (an election is in progress or a quorum is unreachable); retry shortly",
            ));
        }
        let seen = (leader, membership_index);
        let _ = app
            .raft
            .wait(Some(deadline - now))
            .metrics(
                |m| {
                    (
                        m.current_leader,
                        m.membership_config.log_id().map(|l| l.index),
                    ) != seen
                        || m.state == openraft::ServerState::Leader
                },
                "leader or membership changed",
            )
            .await;
        // Don't spin when the wait returned at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn deadline(app: &App) -> Instant {
    Instant::now() + leader_wait(app)
}

/// The answer of a node that was sent a forwarded request but is not the leader.
pub fn not_leader_response() -> Response {
    let mut r = ApiError::no_leader("leadership moved while the request was forwarded; retry")
        .into_response();
    r.headers_mut()
        .insert(NOT_LEADER, "1".parse().expect("header"));
    r
}

pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

const PASS_REQUEST: &[&str] = &[
    "if-match",
    "if-none-match",
    "content-type",
    crate::auth::RELAYED_ROLE,
];
const PASS_RESPONSE: &[&str] = &[
    "content-type",
    "etag",
    "x-rstore-revision",
    "x-rstore-create-revision",
    "x-rstore-mod-revision",
];

/// Relay the request to the leader's peer port at `peer_url` and pass its answer on.
/// `Ok(None)` means the receiver was not the leader and did nothing: find it again.
pub async fn forward_once(
    app: &Arc<App>,
    peer_url: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Option<Response>> {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = crate::network::http::uri(peer_url, path).map_err(ApiError::internal)?;
    let mut req = axum::http::Request::builder()
        .method(method.clone())
        .uri(target)
        .header(FORWARDED, app.id.to_string());
    for h in PASS_REQUEST {
        if let Some(v) = headers.get(*h) {
            req = req.header(*h, v);
        }
    }
    let req = req
        .body(http_body_util::Full::new(body))
        .map_err(ApiError::internal)?;
    let timeout = app.settings.write_timeout + Duration::from_secs(5);
    let (status, resp_headers, bytes) = match crate::network::http::send(
        &app.peer_http.get(),
        req,
        timeout,
    )
    .await
    {
        Ok(r) => r,
        Err(e) if !e.maybe_sent() => return Ok(None),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!(
                    "relaying to the leader at {peer_url} failed ({e}); the request may or may not have been applied"
                ),
            ));
        }
    };
    if resp_headers.contains_key(NOT_LEADER) {
        return Ok(None);
    }
    let mut out = Response::builder().status(status);
    for h in PASS_RESPONSE {
        if let Some(v) = resp_headers.get(*h) {
            out = out.header(*h, v);
        }
    }
    Ok(Some(
        out.body(axum::body::Body::from(bytes))
            .map_err(ApiError::internal)?,
    ))
}

/// Route to the leader and make one `attempt` there. An attempt answers `Ok(None)` when it
/// did nothing because leadership moved (safe to repeat): then route again, until the
/// deadline. The attempt is given the deadline too.
async fn retry_on_leader<T, F, Fut>(app: &Arc<App>, mut attempt: F) -> ApiResult<T>
where
    F: FnMut(Route, Instant) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Option<T>>>,
{
    let deadline = deadline(app);
    loop {
        if let Some(r) = attempt(leader_route(app, deadline).await?, deadline).await? {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            return Err(ApiError::no_leader("the leader kept moving; retry shortly"));
        }
        // Leadership is moving: give the new leader's heartbeats a moment to arrive.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Run `local` on this node if it is the leader, or forward the HTTP request to the leader.
/// `local` returns `Ok(None)` when it found that this node is not the leader after all
/// (nothing was applied), and the request is routed again.
pub async fn on_leader<F, Fut>(
    app: &Arc<App>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    local: F,
) -> ApiResult
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ApiResult<Option<Response>>>,
{
    let (local, body) = (&local, &body);
    retry_on_leader(app, |route, _| async move {
        match route {
            Route::Local => local().await,
            Route::Remote { .. } if is_forwarded(headers) => Ok(Some(not_leader_response())),
            Route::Remote { peer_url, .. } => {
                forward_once(app, &peer_url, method, uri, headers, body.clone()).await
            }
        }
    })
    .await
}

/// Run a write on the leader: through the local batcher if this node leads, else through
/// the batched forwarder. Writes that surely were not applied are routed again.
pub async fn write_via_leader(app: &Arc<App>, cmd: Command) -> ApiResult<Result<Ack, WriteError>> {
    let cmd = &cmd;
    retry_on_leader(app, |route, _| async move {
        let r = match route {
            Route::Local => app.batcher.write(cmd.clone()).await,
            Route::Remote { id, peer_url } => app.forwarder.write(id, &peer_url, cmd.clone()).await,
        };
        Ok(match r {
            Err(WriteError::NotLeader(_)) => None,
            other => Some(other),
        })
    })
    .await
}

/// Wait until this node may serve a linearizable read locally: on the leader after a
/// (shared) read-index round, on a follower once it has applied the leader's read index.
pub async fn linearizable_barrier(app: &Arc<App>) -> ApiResult<()> {
    retry_on_leader(app, |route, deadline| async move {
        let r = match route {
            Route::Local => app.reads.wait().await,
            Route::Remote { id, peer_url } => {
                match app.forwarder.read_index(id, &peer_url).await {
                    Ok(index) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        app.raft
                            .wait(Some(left.max(Duration::from_millis(100))))
                            .applied_index_at_least(Some(index), "read index applied")
                            .await
                            .map(|_| index)
                            .map_err(|e| {
                                ReadError::Unavailable(format!(
                                    "this member is behind the leader: {e}"
                                ))
                            })
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match r {
            Ok(_) => Ok(Some(())),
            Err(ReadError::NotLeader(_)) => Ok(None),
            Err(ReadError::Unavailable(m)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_quorum",
                format!("cannot confirm a linearizable read ({m}); retry, or read with consistency=stale"),
            )),
        }
    })
    .await
}
