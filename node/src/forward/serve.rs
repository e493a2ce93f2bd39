//! The leader's side of forwarding, on the peer port: forwarded batches of writes and
//! read-index requests ([`super::PATH`], sent by [`super::client`]), and the guard in front
//! of client API requests relayed whole ([`super::leader`]). Both are received like any peer
//! request ([`crate::peer::receive`]): only members get in.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{FORWARDED, ForwardRequest, ForwardResponse, MAX_BODY_BYTES, PATH};
use crate::app::App;
use crate::peer::{Conn, check_sender, receive, reply};
use crate::tls::ConnInfo;
use crate::types::NodeId;

/// The forwarding routes the peer port serves ([`crate::peer::router`] adds them).
pub fn routes() -> Router<Arc<App>> {
    Router::new().route(PATH, post(forwarded_batch))
}

/// The leader's side of the batched forwarder. Every write goes through the batcher, which
/// checks it as it checks writes from the client API.
async fn forwarded_batch(
    State(app): State<Arc<App>>,
    conn: Conn,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match receive::<ForwardRequest>(
        &app,
        conn.as_deref(),
        &headers,
        body,
        MAX_BODY_BYTES,
        "forwarded batch",
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    if app.metrics_snapshot().state != openraft::ServerState::Leader {
        return (StatusCode::MISDIRECTED_REQUEST, "not the leader").into_response();
    }
    let writes = futures::future::join_all(req.writes.into_iter().map(|c| app.batcher.write(c)));
    let read = async {
        if req.read_index {
            Some(app.reads.wait().await)
        } else {
            None
        }
    };
    let (writes, read_index) = tokio::join!(writes, read);
    reply(&ForwardResponse { writes, read_index })
}

/// The guard in front of relayed client API requests: they must name the member that sends
/// them (`x-rstore-forwarded: <id>`) and come from it.
pub async fn relay_guard(
    State(app): State<Arc<App>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let from = req
        .headers()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok());
    let Some(from) = from else {
        return (
            StatusCode::NOT_FOUND,
            "the peer port serves members only; clients use the client port",
        )
            .into_response();
    };
    if let Err(r) = check_sender(&app, req.extensions().get::<ConnInfo>(), from) {
        return r;
    }
    next.run(req).await
}
