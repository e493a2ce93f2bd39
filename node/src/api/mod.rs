//! The client port's router: KV API ([`kv`], [`txn`], [`watch`]), admin API ([`admin`]),
//! health, readiness and metrics, behind the authorization layer ([`authorize`]). Requests
//! that must run on the leader get there through [`crate::forward::leader`], so a client
//! behind a Kubernetes Service never has to find the leader itself.

pub mod admin;
pub mod authorize;
pub mod backup;
pub mod cluster;
pub mod kv;
pub mod read;
pub mod txn;
pub mod watch;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::app::App;
use crate::metrics::HttpLabels;
use crate::web::ApiError;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/kv", get(read::list))
        .route(
            "/v1/kv/{*key}",
            get(read::get).put(kv::put).delete(kv::delete),
        )
        // An empty key is answered 400 invalid_key by the same handlers.
        .route("/v1/kv/", get(read::get).put(kv::put).delete(kv::delete))
        .route("/v1/txn", post(txn::txn))
        .route("/v1/watch", get(watch::watch))
        .route(
            "/v1/cluster/config",
            get(admin::get_config).put(cluster::put_config),
        )
        .route("/v1/node", get(admin::node))
        .route("/v1/cluster", get(admin::cluster))
        .route("/v1/cluster/backup", get(backup::backup))
        .route("/v1/cluster/init", post(cluster::init))
        .route("/v1/cluster/members", post(cluster::add_member))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(metrics))
        .fallback(|uri: Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such endpoint: {}", uri.path()),
            )
        })
        // Bodies are read with explicit limits in the handlers, to answer 413 in JSON.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            app.clone(),
            authorize::authorize,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method()).to_string();
    let resp = next.run(req).await;
    app.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// The method as a metrics label: the methods the API serves, and `other` for the rest, so
/// that junk methods cannot add series without bound.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let snapshot = std::fs::metadata(app.settings.data_dir.join("snapshot").join("current"))
        .map_or(0, |m| m.len());
    app.metrics
        .storage_bytes
        .set(app.log.size_on_disk() + snapshot);
    app.metrics.revision.set(app.kv.revision());
    app.metrics.data_bytes.set(app.kv.data_bytes());
    app.metrics
        .committed_index
        .set(app.committed.load(std::sync::atomic::Ordering::Relaxed));
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::PUT), "PUT");
        for junk in ["FOO", "BAR1", "PROPFIND"] {
            assert_eq!(
                method_label(&Method::from_bytes(junk.as_bytes()).unwrap()),
                "other"
            );
        }
        assert_eq!(method_label(&Method::OPTIONS), "other");
    }
}
