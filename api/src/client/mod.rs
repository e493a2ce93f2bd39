//! A typed client of one node's HTTP API (docs/api.md): the KV API, transactions, watches,
//! the admin API and health, for every program that talks to a node (the `node` command
//! line and `node dev`, the operator, the benchmark's set-up, the tests).
//!
//! Layout:
//! - [`NodeClient`]: one node's base URL on a shared, pooled `reqwest::Client`; each call
//!   returns the documented JSON as types, or an [`Error`];
//! - [`error`]: [`Error`], and [`ApiError`], the one parser of the node's JSON error body;
//! - [`tls`]: [`Credentials`], the one builder of TLS clients (CA, client certificate,
//!   bearer token);
//! - [`kv`]: the KV API's bodies.
//!
//! Calls never retry: what is safe to retry (an idempotent put, a membership change through
//! an election) is the caller's decision, helped by [`Error::is_transient`].

pub mod error;
pub mod kv;
pub mod tls;

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

pub use crate::admin::{AddMember, ClusterConfig, ClusterView, ConfigChange, NodeInfo};
pub use error::{ApiError, Error, ErrorBody, ErrorDetail};
pub use kv::{
    Compare, Deleted, Event, KvItem, Precondition, RangePage, RangeQuery, Txn, TxnOp, TxnResponse,
    TxnResult, Versioned, WatchLine, Written,
};
pub use tls::{Credentials, TlsError};

use crate::ReadConsistency;
use crate::admin::MemberRole;
use crate::rate::RateUnderLoad;

/// The most a client reads of one answer by default: a range page or a transaction's gets
/// are bounded by the node well below this.
pub const DEFAULT_REPLY_LIMIT: usize = 64 << 20;

/// The path of `key` under `/v1/kv/`, percent-encoded except for the unreserved characters
/// and slashes (keys may contain them).
pub fn kv_path(key: &str) -> String {
    let mut path = String::from("/v1/kv/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

/// An answer read whole, whatever its status.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The version in the `ETag: "<version>"` header.
    pub fn etag_version(&self) -> Option<u64> {
        self.header("etag")?.trim_matches('"').parse().ok()
    }

    /// The node's refusal, unless the status is a success.
    pub fn api_error(&self) -> Option<ApiError> {
        (!(200..300).contains(&self.status)).then(|| ApiError::from_answer(self.status, &self.body))
    }
}

/// One node's HTTP API. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
    timeout: Option<Duration>,
    reply_limit: usize,
}

impl NodeClient {
    /// The node at `base` (`https://host:port`), called through `http` (see
    /// [`Credentials::reqwest_builder`]).
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> Self {
        Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            timeout: None,
            reply_limit: DEFAULT_REPLY_LIMIT,
        }
    }

    /// Every request of this client times out after `timeout` (overriding the
    /// `reqwest::Client`'s own).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Refuse answers over `limit` bytes ([`Error::TooLarge`]).
    pub fn with_reply_limit(mut self, limit: usize) -> Self {
        self.reply_limit = limit;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request for `path_and_query` on this node, for what the typed calls do not cover.
    pub fn request(&self, method: Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path_and_query}", self.base));
        match self.timeout {
            Some(t) => req.timeout(t),
            None => req,
        }
    }

    /// Send `req` and read the answer whole, whatever its status; only transport errors
    /// and oversized answers are errors.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<RawResponse, Error> {
        let mut resp = req.send().await.map_err(|source| Error::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let too_large = || Error::TooLarge {
            url: self.base.clone(),
            limit: self.reply_limit,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.reply_limit as u64)
        {
            return Err(too_large());
        }
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|source| Error::Body {
            url: self.base.clone(),
            source,
        })? {
            if body.len() + chunk.len() > self.reply_limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawResponse {
            status,
            headers,
            body: body.into(),
        })
    }

    /// Send `req`; a non-2xx answer becomes [`Error::Api`].
    pub async fn send_ok(&self, req: reqwest::RequestBuilder) -> Result<RawResponse, Error> {
        let resp = self.send(req).await?;
        match resp.api_error() {
            Some(api) => Err(Error::Api {
                url: self.base.clone(),
                api,
            }),
            None => Ok(resp),
        }
    }

    /// Send `req` and decode a 2xx answer's JSON.
    pub async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let resp = self.send_ok(req).await?;
        serde_json::from_slice(&resp.body).map_err(|e| Error::Decode {
            url: self.base.clone(),
            detail: format!("{e}: {:?}", String::from_utf8_lossy(&resp.body)),
        })
    }

    /// `GET /v1/cluster/backup` (admin): a consistent backup of the whole store, as an open
    /// answer to read with `chunk()`. It has no total timeout and no size cap (a backup of a
    /// large store takes a while); a refusal is [`Error::Api`]. `rate_under_load` paces it
    /// while the member is applying writes (`None`: the member's own setting).
    pub async fn backup(
        &self,
        rate_under_load: Option<RateUnderLoad>,
    ) -> Result<reqwest::Response, Error> {
        let mut req = self.http.get(format!("{}/v1/cluster/backup", self.base));
        if let Some(rate) = rate_under_load {
            req = req.query(&[("rate_under_load", rate.to_string())]);
        }
        let resp = req.send().await.map_err(|source| Error::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        Err(Error::Api {
            url: self.base.clone(),
            api: ApiError::from_answer(status, &body),
        })
    }

    // ---- KV API ----

    /// `GET /v1/kv/{key}`; `None` for 404 `key_not_found`. `consistency: None` uses the
    /// cluster's default.
    pub async fn get(
        &self,
        key: &str,
        consistency: Option<ReadConsistency>,
    ) -> Result<Option<Versioned>, Error> {
        match self.get_existing(key, consistency).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::Api { api, .. }) if api.is(404, "key_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/kv/{key}` of a key that should exist: a missing one is the node's 404
    /// `key_not_found` [`Error::Api`], with the node's message (what the command line
    /// prints).
    pub async fn get_existing(
        &self,
        key: &str,
        consistency: Option<ReadConsistency>,
    ) -> Result<Versioned, Error> {
        let mut path = kv_path(key);
        if let Some(c) = consistency {
            path.push_str("?consistency=");
            path.push_str(c.as_str());
        }
        let resp = self.send_ok(self.request(Method::GET, &path)).await?;
        let num = |name: &str| resp.header(name).and_then(|v| v.parse().ok());
        let version = resp.etag_version().ok_or_else(|| Error::Decode {
            url: self.base.clone(),
            detail: format!("GET {path}: no ETag version"),
        })?;
        Ok(Versioned {
            version,
            revision: num("x-rstore-revision"),
            create_revision: num("x-rstore-create-revision"),
            mod_revision: num("x-rstore-mod-revision"),
            value: resp.body.to_vec(),
        })
    }

    /// `PUT /v1/kv/{key}` with `value`, under `condition`.
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<reqwest::Body>,
        condition: Precondition,
    ) -> Result<Written, Error> {
        let mut req = self.request(Method::PUT, &kv_path(key)).body(value);
        if let Some((name, v)) = condition.header() {
            req = req.header(name, v);
        }
        self.call(req).await
    }

    /// `DELETE /v1/kv/{key}`, under `condition` (`If-Match` only).
    pub async fn delete(&self, key: &str, condition: Precondition) -> Result<Deleted, Error> {
        let mut req = self.request(Method::DELETE, &kv_path(key));
        if let Some((name, v)) = condition.header() {
            req = req.header(name, v);
        }
        self.call(req).await
    }

    /// `GET /v1/kv?...`: one page.
    pub async fn range(&self, query: &RangeQuery) -> Result<RangePage, Error> {
        self.call(self.request(Method::GET, "/v1/kv").query(&query.pairs()))
            .await
    }

    /// `POST /v1/txn`.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, Error> {
        self.call(self.request(Method::POST, "/v1/txn").json(txn))
            .await
    }

    /// `POST /v1/txn` of a body as the user wrote it (the command line's `--file`): the
    /// node names what is wrong with it.
    pub async fn txn_raw(&self, body: Vec<u8>) -> Result<TxnResponse, Error> {
        let req = self
            .request(Method::POST, "/v1/txn")
            .header("content-type", "application/json")
            .body(body);
        self.call(req).await
    }

    /// `GET /v1/watch`: the stream of changes under `prefix`, from `start_revision`
    /// (default: the next one). A timeout set on the client bounds the whole stream: give
    /// long watches a client without one.
    pub async fn watch(&self, prefix: &str, start_revision: Option<u64>) -> Result<Watch, Error> {
        let mut q = vec![("prefix", prefix.to_string())];
        if let Some(r) = start_revision {
            q.push(("start_revision", r.to_string()));
        }
        let resp = self
            .request(Method::GET, "/v1/watch")
            .query(&q)
            .send()
            .await
            .map_err(|source| Error::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = self.send_body(resp).await?;
            return Err(Error::Api {
                url: self.base.clone(),
                api: ApiError::from_answer(status, &body),
            });
        }
        Ok(Watch {
            url: self.base.clone(),
            resp,
            buf: Vec::new(),
        })
    }

    async fn send_body(&self, resp: reqwest::Response) -> Result<Bytes, Error> {
        resp.bytes().await.map_err(|source| Error::Body {
            url: self.base.clone(),
            source,
        })
    }

    // ---- Admin API ----

    /// `GET /v1/node`.
    pub async fn node(&self) -> Result<NodeInfo, Error> {
        self.call(self.request(Method::GET, "/v1/node")).await
    }

    /// `GET /v1/cluster` (followers forward it to the leader).
    pub async fn cluster(&self) -> Result<ClusterView, Error> {
        self.call(self.request(Method::GET, "/v1/cluster")).await
    }

    /// `GET /v1/cluster?consistency=stale`: this node's own view, not forwarded.
    pub async fn cluster_local(&self) -> Result<ClusterView, Error> {
        self.call(self.request(Method::GET, "/v1/cluster?consistency=stale"))
            .await
    }

    /// `POST /v1/cluster/init`.
    pub async fn init(&self) -> Result<ClusterView, Error> {
        self.call(self.request(Method::POST, "/v1/cluster/init"))
            .await
    }

    /// `POST /v1/cluster/members`: add `id` as a learner, and promote it if `role` is
    /// voter.
    pub async fn add_member(
        &self,
        id: u64,
        peer_url: &str,
        client_url: &str,
        role: MemberRole,
    ) -> Result<ClusterView, Error> {
        let body = AddMember {
            id,
            peer_url: peer_url.to_string(),
            client_url: client_url.to_string(),
            role: role.as_str().to_string(),
        };
        self.call(
            self.request(Method::POST, "/v1/cluster/members")
                .json(&body),
        )
        .await
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub async fn remove_member(&self, id: u64) -> Result<ClusterView, Error> {
        self.call(self.request(Method::DELETE, &format!("/v1/cluster/members/{id}")))
            .await
    }

    /// `GET /v1/cluster/config`: this node's applied copy of the settings.
    pub async fn config(&self) -> Result<ClusterConfig, Error> {
        self.call(self.request(Method::GET, "/v1/cluster/config"))
            .await
    }

    /// `PUT /v1/cluster/config`; answers the new settings.
    pub async fn set_config(&self, change: &ConfigChange) -> Result<ClusterConfig, Error> {
        self.call(self.request(Method::PUT, "/v1/cluster/config").json(change))
            .await
    }

    // ---- Health ----

    /// `GET /healthz`: the process serves.
    pub async fn healthz(&self) -> Result<(), Error> {
        self.send_ok(self.request(Method::GET, "/healthz"))
            .await
            .map(drop)
    }

    /// `GET /readyz`: in a cluster, with a leader, caught up. A 503's message says why not.
    pub async fn readyz(&self) -> Result<(), Error> {
        self.send_ok(self.request(Method::GET, "/readyz"))
            .await
            .map(drop)
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let resp = self.send_ok(self.request(Method::GET, "/metrics")).await?;
        Ok(String::from_utf8_lossy(&resp.body).into_owned())
    }
}

/// An open watch: its lines, in order, as they arrive.
#[derive(Debug)]
pub struct Watch {
    url: String,
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    /// The next line; `None` when the node ended the stream. A line that is not the
    /// documented JSON is an [`Error::Decode`].
    pub async fn next(&mut self) -> Result<Option<WatchLine>, Error> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| Error::Decode {
                        url: self.url.clone(),
                        detail: format!("watch line {:?}: {e}", String::from_utf8_lossy(&line)),
                    });
            }
            match self.resp.chunk().await.map_err(|source| Error::Body {
                url: self.url.clone(),
                source,
            })? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_except_slashes() {
        assert_eq!(kv_path("a/b c%"), "/v1/kv/a/b%20c%25");
        assert_eq!(kv_path("é"), "/v1/kv/%C3%A9");
        assert_eq!(
            Precondition::Version(3).header(),
            Some(("if-match", "\"3\"".to_string()))
        );
    }
}
