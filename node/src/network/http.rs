//! The HTTP client for traffic between members, all on the peer port: Raft RPC, forwarded
//! batches, and requests relayed to the leader. With TLS it presents this member's
//! certificate and trusts only the cluster CA; it is rebuilt after a certificate reload.
//!
//! It is hyper's pooling client without reqwest's layers on top (URL parsing, proxy,
//! redirect and header handling per request): with a batch per request those layers cost
//! about 8% of a member's CPU under write load. Peer URIs are parsed once per peer client
//! and the leader's once per forwarded batch (an `http::Uri`, without URL normalization). Connections never go through an
//! `HTTP_PROXY`: members talk directly.

use std::time::Duration;

use axum::http::{StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::hosts::Resolver;
use crate::tls::Tls;

/// A pooling client; cloning it is cheap and shares the pool.
pub type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// Idle pooled connections are dropped after this, well before a member's listener closes
/// connections idle for its header timeout (10 s by default): a request is then never sent
/// into a connection the other side is closing, where its outcome would be unknown.
pub const POOL_IDLE: Duration = Duration::from_secs(4);

/// Build a client keeping up to `max_idle` idle connections per target: TLS with this
/// member's certificate when `tls` is set, plain HTTP otherwise.
pub fn client(max_idle: usize, tls: Option<&Tls>) -> HttpClient {
    let mut connector = HttpConnector::new_with_resolver(Resolver::new());
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let https = match tls {
        Some(t) => builder
            .with_tls_config((*t.current().peer_client).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(connector),
        None => builder
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector),
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(max_idle)
        .build(https)
}

/// A client that follows certificate reloads: [`PeerHttp::get`] rebuilds it (a new pool)
/// when the certificates changed since it was built.
pub struct PeerHttp {
    tls: Option<std::sync::Arc<Tls>>,
    max_idle: usize,
    cached: std::sync::Mutex<(u64, HttpClient)>,
}

impl PeerHttp {
    pub fn new(tls: Option<std::sync::Arc<Tls>>, max_idle: usize) -> Self {
        let c = client(max_idle, tls.as_deref());
        let generation = tls.as_ref().map_or(0, |t| t.generation());
        Self {
            tls,
            max_idle,
            cached: std::sync::Mutex::new((generation, c)),
        }
    }

    pub fn get(&self) -> HttpClient {
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        let mut cached = self.cached.lock().expect("client lock");
        if cached.0 != generation {
            *cached = (generation, client(self.max_idle, self.tls.as_deref()));
        }
        cached.1.clone()
    }
}

/// Why a POST produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// No connection could be made: the request surely was not sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The request may have been sent, but no complete answer came back.
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

impl PostError {
    /// Whether the request may have reached the target.
    pub fn maybe_sent(&self) -> bool {
        !matches!(self, Self::Connect(_))
    }
}

/// POST `body` (binary) to `uri` and read the whole answer, within `timeout`.
pub async fn post(
    http: &HttpClient,
    uri: &Uri,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), PostError> {
    let req = axum::http::Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PostError::Failed(e.to_string()))?;
    let (status, _, bytes) = send(http, req, timeout).await?;
    Ok((status, bytes))
}

/// Send `req` and read the whole answer (status, headers, body), within `timeout`.
pub async fn send(
    http: &HttpClient,
    req: axum::http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, axum::http::HeaderMap, Bytes), PostError> {
    let exchange = async {
        let resp = http.request(req).await.map_err(|e| {
            if e.is_connect() {
                PostError::Connect(format!("{e:?}"))
            } else {
                PostError::Failed(e.to_string())
            }
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| PostError::Failed(e.to_string()))?
            .to_bytes();
        Ok((status, headers, bytes))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(PostError::Timeout(timeout)))
}

/// `base` (a member's advertised URL) joined with `path`.
pub fn uri(base: &str, path: &str) -> Result<Uri, String> {
    let joined = format!("{}{path}", base.trim_end_matches('/'));
    joined
        .parse()
        .map_err(|e| format!("bad member URL {joined:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_join_without_double_slashes() {
        let u = uri("http://10.0.0.1:7001/", "/raft/append").unwrap();
        assert_eq!(u.to_string(), "http://10.0.0.1:7001/raft/append");
        assert!(uri("not a url", "/x").is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_known_unsent() {
        // Bind then drop a listener: nothing accepts on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let u = uri(&format!("http://127.0.0.1:{port}"), "/x").unwrap();
        let err = post(&client(1, None), &u, vec![1, 2, 3], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!err.maybe_sent(), "{err}");
    }
}
