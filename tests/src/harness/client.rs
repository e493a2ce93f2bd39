//! The tests' view of one node's HTTP API: every answer whole ([`Resp`]), with its status,
//! so that tests can assert on exactly what the node said. Requests go through the shared
//! typed client ([`rstore_api::client::NodeClient`]); error bodies are read by its parser.

use rstore_api::client::error::chain;
use rstore_api::client::{ErrorBody, NodeClient as ApiClient};
use serde_json::{Value, json};

pub use rstore_api::ReadConsistency as Consistency;
pub use rstore_api::client::kv_path;

use super::wait::ELECTION;
use super::wait::wait_for;

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected JSON (status {}): {e}: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// `error.code` of a JSON error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        ErrorBody::parse(&self.body).map(|e| e.code)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The version in the `ETag: "<version>"` header.
    pub fn etag_version(&self) -> Option<u64> {
        self.header("etag")?.trim_matches('"').parse().ok()
    }

    /// Assert the status and the JSON error code: `resp.assert_error(412, "precondition_failed")`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.error_code().as_deref()),
            (status, Some(code)),
            "expected {status} {code}, got body {:?}",
            self.text()
        );
    }

    /// Assert a 200 and return the body as JSON.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200, got body {:?}", self.text());
        self.json()
    }
}

/// The HTTP API of one node (cheap to clone; usable from spawned tasks).
#[derive(Clone)]
pub struct NodeClient {
    pub http: reqwest::Client,
    pub url: String,
}

impl NodeClient {
    /// The shared typed client for this node, for the calls that need no raw answer.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(self.http.clone(), self.url.clone())
    }

    /// Send a request; transport errors (connection refused, timeout) are returned.
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Resp, String> {
        let api = self.api();
        let mut req = api.request(method.clone(), path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = api
            .send(req)
            .await
            .map_err(|e| format!("{method} {}{path}: {}", self.url, chain(&e)))?;
        Ok(Resp {
            status: resp.status,
            headers: resp.headers,
            body: resp.body.to_vec(),
        })
    }

    /// Send a request; a transport error fails the test.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn try_get(&self, path: &str) -> Result<Resp, String> {
        self.try_send(reqwest::Method::GET, path, &[], None).await
    }

    pub async fn get_path(&self, path: &str) -> Resp {
        self.send(reqwest::Method::GET, path, &[], None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        let body = serde_json::to_vec(body).expect("encode JSON");
        self.post_raw(path, body).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Resp {
        let headers = [("content-type", "application/json")];
        self.send(reqwest::Method::POST, path, &headers, Some(body))
            .await
    }

    /// `PUT` of a JSON body, once.
    pub async fn put_json(&self, path: &str, body: &Value) -> Resp {
        let body = serde_json::to_vec(body).expect("encode JSON");
        let headers = [("content-type", "application/json")];
        self.send(reqwest::Method::PUT, path, &headers, Some(body))
            .await
    }

    /// `POST /v1/txn`, once.
    pub async fn txn(&self, body: &Value) -> Resp {
        self.post_json("/v1/txn", body).await
    }

    /// `GET /v1/cluster/config` as JSON: this node's applied copy of the settings.
    pub async fn config(&self) -> Value {
        self.get_path("/v1/cluster/config").await.ok_json()
    }

    /// `PUT /v1/cluster/config` (`replication_mode`, `read_consistency`, or both), once.
    pub async fn set_config(&self, change: &Value) -> Resp {
        self.put_json("/v1/cluster/config", change).await
    }

    /// Change the replication mode through this member and check the answer.
    pub async fn set_mode(&self, mode: &str) {
        let config = self
            .set_config(&json!({"replication_mode": mode}))
            .await
            .ok_json();
        assert_eq!(
            config["replication_mode"], mode,
            "answer to setting {mode} via {}: {config}",
            self.url
        );
    }

    /// `PUT /v1/kv/{key}` with extra headers (`If-Match`, `If-None-Match`).
    pub async fn put_with(&self, key: &str, value: &[u8], headers: &[(&str, &str)]) -> Resp {
        self.send(
            reqwest::Method::PUT,
            &kv_path(key),
            headers,
            Some(value.to_vec()),
        )
        .await
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Resp {
        self.put_with(key, value, &[]).await
    }

    /// An unconditional put retried through elections (503 and transport errors) until
    /// it is acknowledged; panics on any other answer or after [`ELECTION`].
    /// Retrying is safe because the write is idempotent.
    pub async fn put_acked(&self, key: &str, value: &[u8]) -> Value {
        let path = kv_path(key);
        let resp = wait_for(
            ELECTION,
            &format!("PUT {key} via {} to be acknowledged", self.url),
            async || match self
                .try_send(reqwest::Method::PUT, &path, &[], Some(value.to_vec()))
                .await
            {
                Ok(r) if r.status == 503 => Err(r.text()),
                Ok(r) => Ok(r),
                Err(e) => Err(e),
            },
        )
        .await;
        resp.ok_json()
    }

    pub async fn get(&self, key: &str, consistency: Consistency) -> Resp {
        let path = format!("{}?consistency={}", kv_path(key), consistency.as_str());
        self.get_path(&path).await
    }

    /// A read retried through elections (503 and transport errors); any other answer is
    /// returned as is.
    pub async fn get_through_elections(&self, key: &str, consistency: Consistency) -> Resp {
        let path = format!("{}?consistency={}", kv_path(key), consistency.as_str());
        wait_for(
            ELECTION,
            &format!("GET {path} via {} to be answered", self.url),
            async || match self.try_get(&path).await {
                Ok(r) if r.status == 503 => Err(r.text()),
                Ok(r) => Ok(r),
                Err(e) => Err(e),
            },
        )
        .await
    }

    pub async fn delete_with(&self, key: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(reqwest::Method::DELETE, &kv_path(key), headers, None)
            .await
    }

    pub async fn delete(&self, key: &str) -> Resp {
        self.delete_with(key, &[]).await
    }

    /// `GET /v1/node` as JSON.
    pub async fn node_info(&self) -> Value {
        self.get_path("/v1/node").await.ok_json()
    }

    /// `GET /v1/cluster` as JSON (forwarded to the leader by followers).
    pub async fn cluster_view(&self) -> Resp {
        self.get_path("/v1/cluster").await
    }

    /// `POST /v1/cluster/members`, once.
    pub async fn add_member(&self, id: u64, peer_url: &str, client_url: &str, role: &str) -> Resp {
        let body = json!({"id": id, "peer_url": peer_url, "client_url": client_url, "role": role});
        self.post_json("/v1/cluster/members", &body).await
    }

    /// `DELETE /v1/cluster/members/{id}`, once.
    pub async fn remove_member(&self, id: u64) -> Resp {
        self.send(
            reqwest::Method::DELETE,
            &format!("/v1/cluster/members/{id}"),
            &[],
            None,
        )
        .await
    }
}
