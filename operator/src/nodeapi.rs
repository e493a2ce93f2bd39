//! A typed client for the node's admin API (docs/api.md, "Admin API"): what the operator
//! reads from every pod and the membership changes it asks the leader for.
//!
//! One pooled `reqwest` client per store; short timeouts for reads, so that one unreachable
//! pod never stalls a reconcile, and a longer one for membership changes, which the node
//! bounds itself (a learner's catch-up).
//!
//! With TLS the client trusts only the store's CA and sends the operator's admin token. It
//! calls each pod by the DNS name its certificate carries (`<pod>.<name>-peer.<ns>.svc`), so
//! that the name is verified, but connects to the pod IP the API server reports
//! ([`NodeApi::learn`]): no DNS lookup, no wait for DNS to publish a new pod.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

use crate::crd::{MemberRole, ReadConsistency, ReplicationMode};

/// Errors of a node API call.
#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    /// The node could not be reached or did not answer in time.
    #[error("node {url} unreachable: {source}")]
    Unreachable {
        /// Base URL called.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("node {url} answered {status} {code}: {message}")]
    Refused {
        /// Base URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The stable error code of the JSON error body.
        code: String,
        /// Its message.
        message: String,
    },
    /// The answer could not be read.
    #[error("node {url} answered unexpected JSON: {source}")]
    Decode {
        /// Base URL called.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not the documented JSON.
    #[error("node {url} answered unexpected JSON: {source}")]
    Json {
        /// Base URL called.
        url: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The answer was larger than any honest node sends.
    #[error("node {url} sent an answer over {limit} bytes; ignored")]
    TooLarge {
        /// Base URL called.
        url: String,
        /// [`MAX_REPLY_BYTES`].
        limit: usize,
    },
}

/// The most the operator reads of one node's answer: a view of the largest cluster is a
/// few kilobytes, and no pod can make the operator buffer more than this.
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// Read a body whole, up to `limit` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, NodeApiError> {
    let too_large = || NodeApiError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| NodeApiError::Decode {
        url: url.to_owned(),
        source,
    })? {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

// The node's admin JSON, shared with it (one definition: no drift).
pub use rstore_api::admin::{AddMember, ClusterView, ConfigChange, MemberView, NodeInfo};

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// Host names and the IPs to connect to for them, as a `reqwest` resolver: names it does not
/// hold go to the system resolver. The operator fills it from the pods' IPs; the local
/// control plane from its pods' loopback addresses.
#[derive(Debug, Default)]
pub struct HostTable(RwLock<HashMap<String, IpAddr>>);

impl HostTable {
    /// Resolve `host` to `ip` from now on.
    pub fn set(&self, host: &str, ip: IpAddr) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), ip);
    }

    /// The address `host` resolves to here (`<name>.cluster.local` as `<name>`).
    pub fn get(&self, host: &str) -> Option<IpAddr> {
        let host = host.trim_end_matches('.');
        let host = host.strip_suffix(".cluster.local").unwrap_or(host);
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied()
    }
}

impl reqwest::dns::Resolve for HostTable {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let known = self.get(name.as_str());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match known {
                Some(ip) => vec![SocketAddr::new(ip, 0)],
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// `b` trusting only `ca_pem` (no public roots) and sending `token` as a bearer token.
pub fn with_credentials(
    b: reqwest::ClientBuilder,
    ca_pem: &str,
    token: &str,
) -> Result<reqwest::ClientBuilder, String> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| format!("the store's CA is not a PEM certificate: {e}"))?;
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| "the token is not a valid header value".to_owned())?;
    auth.set_sensitive(true);
    Ok(b.use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            auth,
        )])))
}

/// The node admin API client.
#[derive(Debug, Clone)]
pub struct NodeApi {
    http: reqwest::Client,
    read_timeout: Duration,
    change_timeout: Duration,
    hosts: Arc<HostTable>,
    secure: bool,
}

impl NodeApi {
    /// A plaintext client with the given timeouts for reads and for membership changes.
    pub fn new(read_timeout: Duration, change_timeout: Duration) -> Self {
        Self::build(read_timeout, change_timeout, None).unwrap_or_else(|_| Self {
            http: reqwest::Client::default(),
            read_timeout,
            change_timeout,
            hosts: Arc::default(),
            secure: false,
        })
    }

    /// A client trusting only `ca_pem` and sending `token` (an admin bearer token).
    pub fn secure(
        read_timeout: Duration,
        change_timeout: Duration,
        ca_pem: &str,
        token: &str,
    ) -> Result<Self, String> {
        Self::build(read_timeout, change_timeout, Some((ca_pem, token)))
    }

    fn build(
        read_timeout: Duration,
        change_timeout: Duration,
        tls: Option<(&str, &str)>,
    ) -> Result<Self, String> {
        let hosts = Arc::new(HostTable::default());
        // Pods are reached directly, never through an HTTP_PROXY.
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(read_timeout)
            // Below the members' idle timeout (10 s), so that no request goes out on a
            // connection the member is closing.
            .pool_idle_timeout(Duration::from_secs(4))
            .dns_resolver(hosts.clone());
        if let Some((ca_pem, token)) = tls {
            b = with_credentials(b, ca_pem, token)?.https_only(true);
        }
        Ok(Self {
            http: b
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            read_timeout,
            change_timeout,
            hosts,
            secure: tls.is_some(),
        })
    }

    /// Whether this client speaks TLS (and pods are called by name).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Connect to `ip` for `host` from now on.
    pub fn learn(&self, host: &str, ip: IpAddr) {
        self.hosts.set(host, ip);
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, NodeApiError> {
        let resp = req
            .send()
            .await
            .map_err(|source| NodeApiError::Unreachable {
                url: base.to_owned(),
                source,
            })?;
        let status = resp.status();
        let body = read_capped(resp, base, MAX_REPLY_BYTES).await?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => ("unknown".to_owned(), format!("HTTP {status}")),
            };
            return Err(NodeApiError::Refused {
                url: base.to_owned(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|source| NodeApiError::Json {
            url: base.to_owned(),
            source,
        })
    }

    /// `GET /v1/node`.
    pub async fn node(&self, base: &str) -> Result<NodeInfo, NodeApiError> {
        let req = self
            .http
            .get(format!("{base}/v1/node"))
            .timeout(self.read_timeout);
        self.call(base, req).await
    }

    /// `GET /v1/cluster` (the node forwards it to its leader).
    pub async fn cluster(&self, base: &str) -> Result<ClusterView, NodeApiError> {
        let req = self
            .http
            .get(format!("{base}/v1/cluster"))
            .timeout(self.read_timeout);
        self.call(base, req).await
    }

    /// `GET /v1/cluster?consistency=stale`: the node's own view, not forwarded.
    pub async fn cluster_local(&self, base: &str) -> Result<ClusterView, NodeApiError> {
        let req = self
            .http
            .get(format!("{base}/v1/cluster?consistency=stale"))
            .timeout(self.read_timeout);
        self.call(base, req).await
    }

    /// `POST /v1/cluster/init`.
    pub async fn init(&self, base: &str) -> Result<ClusterView, NodeApiError> {
        let req = self
            .http
            .post(format!("{base}/v1/cluster/init"))
            .timeout(self.change_timeout);
        self.call(base, req).await
    }

    /// `POST /v1/cluster/members`.
    pub async fn add_member(
        &self,
        base: &str,
        id: u64,
        peer_url: &str,
        client_url: &str,
        role: MemberRole,
    ) -> Result<ClusterView, NodeApiError> {
        let body = AddMember {
            id,
            peer_url: peer_url.to_owned(),
            client_url: client_url.to_owned(),
            role: role.as_str().to_owned(),
        };
        let req = self
            .http
            .post(format!("{base}/v1/cluster/members"))
            .json(&body)
            .timeout(self.change_timeout);
        self.call(base, req).await
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub async fn remove_member(&self, base: &str, id: u64) -> Result<ClusterView, NodeApiError> {
        let req = self
            .http
            .delete(format!("{base}/v1/cluster/members/{id}"))
            .timeout(self.change_timeout);
        self.call(base, req).await
    }

    /// `PUT /v1/cluster/config`.
    pub async fn set_config(
        &self,
        base: &str,
        mode: ReplicationMode,
        read_consistency: ReadConsistency,
    ) -> Result<serde_json::Value, NodeApiError> {
        let req = self
            .http
            .put(format!("{base}/v1/cluster/config"))
            .json(&ConfigChange {
                replication_mode: Some(mode.as_str().to_owned()),
                read_consistency: Some(read_consistency.as_str().to_owned()),
            })
            .timeout(self.change_timeout);
        self.call(base, req).await
    }
}
