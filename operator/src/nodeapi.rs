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

use rstore_api::client::{Credentials, NodeClient, TlsError};
use rstore_api::rate::RateUnderLoad;

use crate::crd::{MemberRole, ReadConsistency, ReplicationMode};

/// Errors of a node API call: the typed client's (one definition of the node's HTTP
/// contract, its error body and the reply cap).
pub type NodeApiError = rstore_api::client::Error;

/// The most the operator reads of one node's answer: a view of the largest cluster is a
/// few kilobytes, and no pod can make the operator buffer more than this.
pub const MAX_REPLY_BYTES: usize = 4 << 20;

// The node's admin JSON, shared with it (one definition: no drift).
pub use rstore_api::admin::{AddMember, ClusterView, ConfigChange, MemberView, NodeInfo};
pub use rstore_api::client::ClusterConfig;

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

/// The message of credentials that make no client, as the operator has always put it in
/// conditions and Events.
pub fn credentials_error(e: TlsError) -> String {
    match e {
        TlsError::Invalid { what, detail } if what == "the CA" => {
            format!("the store's CA is not a PEM certificate: {detail}")
        }
        TlsError::Invalid { what, .. } if what == "the token" => {
            "the token is not a valid header value".to_owned()
        }
        other => other.to_string(),
    }
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
        let creds = match tls {
            Some((ca_pem, token)) => Credentials::ca(ca_pem).with_token(token),
            None => Credentials::none(),
        };
        // Pods are reached directly, never through an HTTP_PROXY (the builder has no proxy).
        let mut b = creds
            .reqwest_builder()
            .map_err(credentials_error)?
            .connect_timeout(read_timeout)
            // Below the members' idle timeout (10 s), so that no request goes out on a
            // connection the member is closing.
            .pool_idle_timeout(Duration::from_secs(4))
            .dns_resolver(hosts.clone());
        if tls.is_some() {
            b = b.https_only(true);
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

    /// The node at `base`, its calls bounded by `timeout` and [`MAX_REPLY_BYTES`].
    fn at(&self, base: &str, timeout: Duration) -> NodeClient {
        NodeClient::new(self.http.clone(), base)
            .with_timeout(timeout)
            .with_reply_limit(MAX_REPLY_BYTES)
    }

    /// `GET /v1/node`.
    pub async fn node(&self, base: &str) -> Result<NodeInfo, NodeApiError> {
        self.at(base, self.read_timeout).node().await
    }

    /// `GET /v1/cluster` (the node forwards it to its leader).
    pub async fn cluster(&self, base: &str) -> Result<ClusterView, NodeApiError> {
        self.at(base, self.read_timeout).cluster().await
    }

    /// `GET /v1/cluster?consistency=stale`: the node's own view, not forwarded.
    pub async fn cluster_local(&self, base: &str) -> Result<ClusterView, NodeApiError> {
        self.at(base, self.read_timeout).cluster_local().await
    }

    /// `GET /v1/cluster/backup` (admin): the open answer, without a total timeout or a size
    /// cap (a backup of a large store takes a while); only connecting is bounded.
    pub async fn backup(
        &self,
        base: &str,
        rate_under_load: Option<RateUnderLoad>,
    ) -> Result<reqwest::Response, NodeApiError> {
        NodeClient::new(self.http.clone(), base)
            .backup(rate_under_load)
            .await
    }

    /// `POST /v1/cluster/init`.
    pub async fn init(&self, base: &str) -> Result<ClusterView, NodeApiError> {
        self.at(base, self.change_timeout).init().await
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
        self.at(base, self.change_timeout)
            .add_member(id, peer_url, client_url, role)
            .await
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub async fn remove_member(&self, base: &str, id: u64) -> Result<ClusterView, NodeApiError> {
        self.at(base, self.change_timeout).remove_member(id).await
    }

    /// `PUT /v1/cluster/config`.
    pub async fn set_config(
        &self,
        base: &str,
        mode: ReplicationMode,
        read_consistency: ReadConsistency,
    ) -> Result<ClusterConfig, NodeApiError> {
        let change = ConfigChange {
            replication_mode: Some(mode.as_str().to_owned()),
            read_consistency: Some(read_consistency.as_str().to_owned()),
        };
        self.at(base, self.change_timeout).set_config(&change).await
    }
}
