//! The error answers of both ports' routers, driven in-process with `tower`'s `oneshot`: a
//! real node (storage, Raft, the batcher) started on listeners bound to port 0 and never
//! served, so that each answer is the routers' own, with no socket in between. What each
//! test asserts is what the handlers answered before the node was reshaped (issue 20); the
//! HTTP contract is in DESIGN.md.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use clap::Parser;
use rstore_node::app::App;
use rstore_node::config::ServeArgs;
use rstore_node::node::Node;
use rstore_node::pki::{new_token, token_line};
use tower::ServiceExt;

/// `node serve`'s flags alone.
#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

struct Fixture {
    app: Arc<App>,
    admin: String,
    reader: String,
    _dir: tempfile::TempDir,
}

/// A plaintext node with a token file (so the client port checks credentials), and a body
/// timeout short enough to test: 300 ms.
async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (admin, reader) = (new_token(), new_token());
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        token_line("ops", "admin", &admin) + &token_line("app", "read", &reader),
    )
    .unwrap();
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data = dir.path().join("data");
    let args = Serve::parse_from([
        "serve",
        "--insecure-plaintext",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client",
        &client.local_addr().unwrap().to_string(),
        "--listen-peer",
        &peer.local_addr().unwrap().to_string(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--body-timeout-ms",
        "300",
        "--max-value-bytes",
        "1024",
        "--heartbeat-ms",
        "50",
        "--election-min-ms",
        "150",
        "--election-max-ms",
        "300",
    ])
    .args;
    let node = Node::start(args.settings().unwrap(), client, peer)
        .await
        .unwrap();
    Fixture {
        app: node.app.clone(),
        admin,
        reader,
        _dir: dir,
    }
}

impl Fixture {
    /// One request through the client port's router.
    async fn client(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        let resp = rstore_node::api::router(self.app.clone())
            .oneshot(req)
            .await
            .unwrap();
        split(resp).await
    }

    /// One request through the peer port's router.
    async fn peer(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        let resp = rstore_node::node::peer_router(self.app.clone())
            .oneshot(req)
            .await
            .unwrap();
        split(resp).await
    }

    fn req(&self, method: &str, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
        let b = Request::builder().method(method).uri(uri);
        match token {
            Some(t) => b.header("authorization", format!("Bearer {t}")),
            None => b,
        }
    }

    /// Make this node a one-voter cluster and wait until it leads.
    async fn init(&self) {
        let (status, _, body) = self
            .client(
                self.req("POST", "/v1/cluster/init", Some(&self.admin))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        self.app
            .raft
            .wait(Some(Duration::from_secs(10)))
            .state(openraft::ServerState::Leader, "leader")
            .await
            .unwrap();
    }
}

async fn split(resp: axum::response::Response) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (parts.status, parts.headers, bytes)
}

/// The stable code of a JSON error answer.
fn code(body: &Bytes) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("not a JSON error ({e}): {body:?}"));
    v["error"]["code"].as_str().unwrap().to_string()
}

/// A request and the answer it must get: method, URI, headers, body, status, error code.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
    StatusCode,
    &'a str,
);

/// A body that never arrives.
fn stalled() -> Body {
    Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
}

#[tokio::test]
async fn the_client_port_refuses_missing_and_weak_credentials() {
    let f = start().await;
    let (status, headers, body) = f
        .client(f.req("GET", "/v1/kv/a", None).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthenticated");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"rstore\"");
    let (status, _, body) = f
        .client(
            f.req("GET", "/v1/kv/a", Some("not-a-token"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let (status, _, body) = f
        .client(
            f.req("PUT", "/v1/kv/a", Some(&f.reader))
                .body(Body::from("v"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "permission_denied")
    );
    // Health needs no credentials.
    let (status, _, _) = f
        .client(f.req("GET", "/healthz", None).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_client_port_refuses_malformed_requests() {
    let f = start().await;
    let cases: &[Case] = &[
        (
            "PUT",
            "/v1/kv/",
            &[],
            "v",
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            "GET",
            "/v1/kv/a?bogus=1",
            &[],
            "",
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
        ),
        (
            "PUT",
            "/v1/kv/a",
            &[("if-match", "nope")],
            "v",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "DELETE",
            "/v1/kv/a",
            &[("if-none-match", "*")],
            "",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/txn",
            &[("content-type", "application/json")],
            "{",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/kv?limit=-1",
            &[],
            "",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/cluster/config",
            &[],
            "not json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/nothing-here",
            &[],
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, uri, headers, body, want, want_code) in cases {
        let mut b = f.req(method, uri, Some(&f.admin));
        for (k, v) in *headers {
            b = b.header(*k, *v);
        }
        let (status, _, got) = f.client(b.body(Body::from(*body)).unwrap()).await;
        assert_eq!(
            (status, code(&got).as_str()),
            (*want, *want_code),
            "{method} {uri}: {got:?}"
        );
    }
}

#[tokio::test]
async fn oversized_and_slow_bodies_are_refused_on_the_client_port() {
    let f = start().await;
    // Over --max-value-bytes: 413, and the connection is not reused.
    let (status, headers, body) = f
        .client(
            f.req("PUT", "/v1/kv/a", Some(&f.admin))
                .header("content-length", "2048")
                .body(Body::from(vec![b'x'; 2048]))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
    );
    assert_eq!(headers["connection"], "close");
    // Over --body-timeout-ms: 408.
    let (status, headers, body) = f
        .client(
            f.req("PUT", "/v1/kv/a", Some(&f.admin))
                .body(stalled())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::REQUEST_TIMEOUT, "request_timeout")
    );
    assert_eq!(headers["connection"], "close");
}

/// Regression (issue 20): admin request bodies were read with the default body timeout
/// (30 s) whatever `--body-timeout-ms` said.
#[tokio::test]
async fn admin_bodies_are_read_within_the_configured_body_timeout() {
    let f = start().await;
    for uri in ["/v1/cluster/config", "/v1/cluster/members"] {
        let method = if uri.ends_with("config") {
            "PUT"
        } else {
            "POST"
        };
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            f.client(f.req(method, uri, Some(&f.admin)).body(stalled()).unwrap()),
        )
        .await;
        let (status, _, body) = answer.unwrap_or_else(|_| {
            panic!("{method} {uri}: no answer within 5 s, with --body-timeout-ms 300")
        });
        assert_eq!(
            (status, code(&body).as_str()),
            (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            "{method} {uri}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn preconditions_that_fail_answer_412_and_absent_keys_404() {
    let f = start().await;
    f.init().await;
    let put = |headers: &[(&str, &str)]| {
        let mut b = f.req("PUT", "/v1/kv/k", Some(&f.admin));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::from("v")).unwrap()
    };
    let (status, headers, body) = f.client(put(&[])).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(headers["etag"], "\"1\"");
    let (status, _, body) = f.client(put(&[("if-none-match", "*")])).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::PRECONDITION_FAILED, "precondition_failed")
    );
    let (status, _, body) = f.client(put(&[("if-match", "\"7\"")])).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::PRECONDITION_FAILED, "precondition_failed")
    );
    let (status, _, body) = f
        .client(
            f.req("DELETE", "/v1/kv/k", Some(&f.admin))
                .header("if-match", "\"7\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::PRECONDITION_FAILED, "precondition_failed")
    );
    let (status, _, body) = f
        .client(
            f.req("GET", "/v1/kv/absent", Some(&f.reader))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::NOT_FOUND, "key_not_found")
    );
    let (status, _, body) = f
        .client(
            f.req("DELETE", "/v1/kv/absent", Some(&f.admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::NOT_FOUND, "key_not_found")
    );
}

#[tokio::test]
async fn the_peer_port_refuses_strangers_malformed_rpcs_and_oversized_bodies() {
    let f = start().await;
    // Not a relayed request (no x-rstore-forwarded): the peer port serves members only.
    let (status, _, _) = f
        .peer(f.req("GET", "/v1/kv/a", None).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bytes that are no envelope.
    let (status, _, body) = f
        .peer(
            f.req("POST", "/raft/vote", None)
                .body(Body::from("garbage"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("malformed RPC"),
        "{body:?}"
    );
    // A vote is small: a body announced far larger is refused before it is read.
    let (status, headers, body) = f
        .peer(
            f.req("POST", "/raft/vote", None)
                .header("content-length", "1000000")
                .body(Body::from(vec![0u8; 1_000_000]))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large")
    );
    assert_eq!(headers["connection"], "close");
    // A body that never arrives: 408, as on the client port.
    let (status, _, body) = f
        .peer(
            f.req("POST", rstore_node::forward::PATH, None)
                .body(stalled())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::REQUEST_TIMEOUT, "request_timeout")
    );
}

#[tokio::test]
async fn conflicting_cluster_changes_answer_409() {
    let f = start().await;
    let init = || {
        f.req("POST", "/v1/cluster/init", Some(&f.admin))
            .body(Body::empty())
            .unwrap()
    };
    // Another membership change holds this node's lock.
    {
        let _running = f.app.membership_lock.lock().await;
        let (status, _, body) = f.client(init()).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (StatusCode::CONFLICT, "membership_change_in_progress")
        );
    }
    // A node another cluster added (it knows that cluster's id) cannot start a new one.
    f.app.identity.adopt_cluster("another-cluster").unwrap();
    let (status, _, body) = f.client(init()).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::CONFLICT, "already_initialized")
    );
}

#[tokio::test]
async fn the_backup_route_answers_who_may_take_one_and_when() {
    let f = start().await;
    let get = |token: &str| {
        f.req("GET", "/v1/cluster/backup", Some(token))
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, body) = f.client(get(&f.reader)).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "permission_denied")
    );
    // Before the member belongs to a cluster there is nothing to back up.
    let (status, _, body) = f.client(get(&f.admin)).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::CONFLICT, "not_initialized")
    );
    let (status, _, body) = f
        .client(
            f.req("GET", "/v1/cluster/backup?at=3", Some(&f.admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    f.init().await;
    let (status, headers, body) = f.client(get(&f.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-rstore-keys"], "0");
    let mut r = rstore_backup::format::Reader::open(&body[..]).unwrap();
    assert_eq!(r.verify_rest().unwrap(), 0);
    assert_eq!(
        headers["x-rstore-cluster-id"].to_str().unwrap(),
        r.header().cluster_id
    );
}
