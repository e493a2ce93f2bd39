//! A pod that lies to the operator: it answers `GET /v1/node` and `GET /v1/cluster` as the
//! leader of the cluster at term u64::MAX, with a made-up member list (the healthy members
//! left out, made-up ones in). Next to three real node processes, the operator must not
//! take its word: the honest leader's view wins when it is reachable, and when it is not,
//! the liar's view is marked unconfirmed, which the planner never removes members on
//! (`planner::tests::an_unconfirmed_view_removes_no_member`).

use std::time::Duration;

use axum::routing::get;
use futures::StreamExt;
use rstore_operator::nodeapi::{NodeApi, NodeInfo};
use rstore_operator::observe::leader_view;
use rstore_tests::harness::{Cluster, Creds, node_bin};
use serde_json::json;

/// A TLS listener for axum: the liar is a compromised member, with a member certificate of
/// the cluster's CA, so the operator's TLS client talks to it.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serve `app` on 127.0.0.1:0 with a member certificate of `creds`' CA; returns its base URL.
async fn serve_as_member(app: axum::Router, creds: &Creds) -> String {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let pem = creds
        .ca
        .member(&["127.0.0.1".into()], &format!("https://{addr}"))
        .unwrap();
    let certs = rstore_api::client::tls::certs_from_pem(pem.cert.as_bytes(), "liar").unwrap();
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(rstore_api::client::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("https://{addr}")
}

/// Serve the liar's answers; returns its base URL.
async fn liar(cluster_id: String, creds: &Creds) -> String {
    let node = json!({
        "id": 4242, "cluster_id": cluster_id, "role": "leader", "term": u64::MAX,
        "leader_id": 4242, "applied_index": u64::MAX,
        "client_url": "https://liar:7379", "peer_url": "https://liar:7380",
    });
    let member = |id: u64| {
        json!({
            "id": id, "role": "voter", "client_url": format!("https://ghost-{id}:7379"),
            "peer_url": format!("https://ghost-{id}:7380"), "matched_index": 0, "lag": u64::MAX,
            "last_contact_ms": u64::MAX,
        })
    };
    let view = json!({
        "cluster_id": cluster_id, "leader_id": 4242, "term": u64::MAX,
        "members": [member(4242), member(1), member(2)], "membership_changing": false,
        "replication_mode": "quorum", "read_consistency": "linearizable",
        "revision": 0, "oldest_revision": 1,
    });
    let app = axum::Router::new()
        .route(
            "/v1/node",
            get(move || async move { axum::Json(node.clone()) }),
        )
        .route(
            "/v1/cluster",
            get(move || async move { axum::Json(view.clone()) }),
        );
    serve_as_member(app, creds).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_pod_cannot_make_the_operator_trust_its_view() {
    let cluster = Cluster::start(node_bin(), 3).await;
    let leader = cluster.leader().await;
    let creds = cluster.creds.clone().expect("a TLS cluster");
    // The operator's client: the cluster CA and an admin token.
    let nodes = NodeApi::secure(
        Duration::from_secs(2),
        Duration::from_secs(10),
        &creds.ca.pem().cert,
        &creds.admin_token,
    )
    .unwrap();
    let mut real: Vec<(String, NodeInfo)> = Vec::new();
    for n in &cluster.nodes {
        let base = n.direct_client_url.clone();
        real.push((base.clone(), nodes.node(&base).await.unwrap()));
    }
    let cluster_id = real[0].1.cluster_id.clone().unwrap();
    let liar_base = liar(cluster_id, &creds).await;
    let liar_info = nodes.node(&liar_base).await.unwrap();
    assert_eq!(liar_info.term, u64::MAX);

    // Everyone reachable: the liar is asked first (it claims the highest term), is not
    // confirmed, and the real leader's view is taken instead.
    let mut all = vec![(liar_base.clone(), liar_info.clone())];
    all.extend(real.iter().cloned());
    let lv = leader_view(&nodes, &all).await;
    assert_eq!(lv.unconfirmed, None, "the honest view is confirmed");
    let view = lv.view.expect("a view");
    assert_eq!(view.leader_id, Some(cluster.nodes[leader].id));
    assert_eq!(view.members.len(), 3);
    assert!(view.members.iter().all(|m| m.id != 4242));

    // The real leader unreachable: no view is confirmed, so no member will be removed.
    let mut without_leader = vec![(liar_base.clone(), liar_info.clone())];
    without_leader.extend(
        real.iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, r)| r.clone()),
    );
    let lv = leader_view(&nodes, &without_leader).await;
    let why = lv
        .unconfirmed
        .expect("the liar's view must not be confirmed");
    assert!(
        why.contains("agree") || why.contains("not from its leader"),
        "{why}"
    );

    // Control: the same call with only honest nodes confirms.
    let lv = leader_view(&nodes, &real).await;
    assert_eq!(lv.unconfirmed, None);
}

/// A pod that answers with an endless body (declared or chunked) gets an error, and the
/// operator reads no more than its cap of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_no_more_than_its_cap_from_a_node() {
    use rstore_operator::nodeapi::{MAX_REPLY_BYTES, NodeApiError};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let app = axum::Router::new()
        .route(
            "/v1/node",
            get(move || {
                let counter = counter.clone();
                async move {
                    // 1 GiB of JSON-looking bytes, streamed in 64 KiB chunks.
                    let chunk = bytes::Bytes::from(vec![b' '; 64 << 10]);
                    let stream = futures::stream::iter(0..16384).map(move |_| {
                        counter.fetch_add(chunk.len(), Ordering::Relaxed);
                        Ok::<_, std::io::Error>(chunk.clone())
                    });
                    axum::body::Body::from_stream(stream)
                }
            }),
        )
        .route(
            "/v1/cluster",
            get(|| async { ([("content-length", "1073741824")], "") }),
        );
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::create(dir.path());
    let base = serve_as_member(app, &creds).await;
    let nodes = NodeApi::secure(
        Duration::from_secs(10),
        Duration::from_secs(10),
        &creds.ca.pem().cert,
        &creds.admin_token,
    )
    .unwrap();
    let err = nodes.node(&base).await.unwrap_err();
    assert!(matches!(err, NodeApiError::TooLarge { .. }), "{err}");
    // The server may have written a little ahead into the socket, not the whole body.
    let written = sent.load(Ordering::Relaxed);
    assert!(written < 64 << 20, "{written} bytes were streamed");
    assert!(
        err.to_string().contains(&MAX_REPLY_BYTES.to_string()),
        "{err}"
    );
    // A declared length that does not come is an error too, not a wait for 1 GiB.
    assert!(nodes.cluster(&base).await.is_err());
}
