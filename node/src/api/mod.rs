//! The client port: KV API ([`kv`]), admin API ([`admin`]), health, readiness and metrics,
//! behind the authorization layer ([`crate::auth`]). Requests that must run on the leader
//! are forwarded there ([`forward`]), so a client behind a Kubernetes Service never has to
//! find the leader itself.

pub mod admin;
pub mod forward;
pub mod kv;
pub mod txn;
pub mod watch;

use std::collections::HashMap;
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

/// A JSON error with a stable code and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {message}"),
        )
    }
    pub fn no_leader(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body was not read, so this connection cannot be reused:
            // say so, or a client would send its next request into a closed socket.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

/// Parse a query string, refusing parameters the route does not know.
pub fn parse_query(uri: &Uri, allowed: &[&str]) -> ApiResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            let known = if allowed.is_empty() {
                "this endpoint takes no parameters".to_string()
            } else {
                format!("known parameters: {}", allowed.join(", "))
            };
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!("unknown query parameter '{k}'; {known}"),
            ));
        }
        out.insert(k.into_owned(), v.into_owned());
    }
    Ok(out)
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        // An empty key is answered 400 invalid_key by the same handlers.
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/txn", post(txn::txn))
        .route("/v1/watch", get(watch::watch))
        .route(
            "/v1/cluster/config",
            get(admin::get_config).put(admin::put_config),
        )
        .route("/v1/node", get(admin::node))
        .route("/v1/cluster", get(admin::cluster))
        .route("/v1/cluster/init", post(admin::init))
        .route("/v1/cluster/members", post(admin::add_member))
        .route("/v1/cluster/members/{id}", delete(admin::remove_member))
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
            crate::auth::authorize,
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
    fn unknown_parameters_are_named() {
        let uri: Uri = "/v1/kv/a?consistency=stale&bogus=1".parse().unwrap();
        let err = parse_query(&uri, &["consistency"]).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code, "unknown_parameter");
        assert!(err.message.contains("'bogus'"), "{}", err.message);
        let ok = parse_query(&uri, &["consistency", "bogus"]).unwrap();
        assert_eq!(ok["consistency"], "stale");
        assert_eq!(ok["bogus"], "1");
    }

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

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: Uri = "/v1/kv?prefix=a%2Fb%20c".parse().unwrap();
        assert_eq!(parse_query(&uri, &["prefix"]).unwrap()["prefix"], "a/b c");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const ALLOWED: &[&str] = &["prefix", "limit"];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any query string: parsed, or refused as 400 `unknown_parameter` naming a
            /// parameter that is really there and not allowed.
            #[test]
            fn arbitrary_queries_never_panic(query in "[ -~]{0,80}") {
                let Ok(uri) = format!("/x?{query}").parse::<Uri>() else {
                    return Ok(());
                };
                let names: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .collect();
                match parse_query(&uri, ALLOWED) {
                    Ok(q) => {
                        prop_assert!(names.iter().all(|n| ALLOWED.contains(&n.as_str())));
                        prop_assert!(q.keys().all(|k| ALLOWED.contains(&k.as_str())));
                    }
                    Err(e) => {
                        prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "unknown_parameter"));
                        let bad = names.iter().find(|n| !ALLOWED.contains(&n.as_str())).expect("an unknown name");
                        prop_assert!(e.message.contains(&format!("'{bad}'")), "{} lacks {bad}", e.message);
                    }
                }
            }

            /// Unknown names, percent-encoded any way, are always refused by name.
            #[test]
            fn unknown_names_are_always_rejected(name in "\\PC{1,20}", value in "\\PC{0,20}") {
                prop_assume!(!ALLOWED.contains(&name.as_str()));
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("prefix", "p")
                    .append_pair(&name, &value)
                    .finish();
                let uri: Uri = format!("/x?{query}").parse().unwrap();
                let e = parse_query(&uri, ALLOWED).unwrap_err();
                prop_assert_eq!(e.code, "unknown_parameter");
                prop_assert!(e.message.contains(&format!("'{name}'")), "{}", e.message);
                let e = parse_query(&uri, &[]).unwrap_err();
                prop_assert!(e.message.contains("takes no parameters"), "{}", e.message);
            }

            /// Known names with any value round-trip through the encoding.
            #[test]
            fn known_values_round_trip(value in "\\PC{0,40}") {
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("prefix", &value)
                    .finish();
                let uri: Uri = format!("/x?{query}").parse().unwrap();
                prop_assert_eq!(&parse_query(&uri, ALLOWED).unwrap()["prefix"], &value);
            }
        }
    }
}
