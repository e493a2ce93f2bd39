//! The sending side of Raft RPC: openraft's network factory and per-target clients.
//!
//! openraft calls `new_client` for every replication stream, election round and
//! linearizable read, so clients are cheap handles onto one pooled HTTP client per peer,
//! built once. Successful AppendEntries are recorded per target, because openraft 0.9 has
//! no per-member last-contact time and `GET /v1/cluster` reports one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::http::{self, HttpClient};
use super::{Envelope, MAX_RPC_BYTES, REFUSED_STATUS};
use crate::identity::Identity;
use crate::metrics::{Metrics, RpcLabels};
use crate::tls::Tls;
use crate::types::{Member, NodeId, TypeConfig};
use axum::http::Uri;

/// When each peer last answered an AppendEntries successfully.
#[derive(Default)]
pub struct ContactTracker {
    last: Mutex<HashMap<NodeId, Instant>>,
}

impl ContactTracker {
    pub fn record(&self, target: NodeId) {
        self.last
            .lock()
            .expect("contact lock")
            .insert(target, Instant::now());
    }

    pub fn since(&self, target: NodeId) -> Option<Duration> {
        self.last
            .lock()
            .expect("contact lock")
            .get(&target)
            .map(|t| t.elapsed())
    }
}

/// A target's client: built for this peer URL and this generation of the certificates.
type PooledClient = (String, u64, HttpClient);

/// openraft's network factory.
#[derive(Clone)]
pub struct PeerNetwork {
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    contact: Arc<ContactTracker>,
    tls: Option<Arc<Tls>>,
    clients: Arc<Mutex<HashMap<NodeId, PooledClient>>>,
}

impl PeerNetwork {
    pub fn new(
        identity: Arc<Identity>,
        tls: Option<Arc<Tls>>,
        contact: Arc<ContactTracker>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            identity,
            metrics,
            contact,
            tls,
            clients: Default::default(),
        }
    }

    /// The pooled client for `target`, rebuilt when its URL or the certificates changed.
    fn client_for(&self, target: NodeId, url: &str) -> HttpClient {
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        let mut clients = self.clients.lock().expect("clients lock");
        match clients.get(&target) {
            Some((u, g, c)) if u == url && *g == generation => c.clone(),
            _ => {
                let c = http::client(8, self.tls.as_deref());
                clients.insert(target, (url.to_string(), generation, c.clone()));
                c
            }
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        let uri = |path: &str| http::uri(&node.peer_url, path);
        PeerClient {
            target,
            uris: uri("/raft/append").and_then(|append| {
                Ok(Uris {
                    append,
                    snapshot: uri("/raft/snapshot")?,
                    vote: uri("/raft/vote")?,
                })
            }),
            network: self.clone(),
            peer_url: node.peer_url.clone(),
            identity: self.identity.clone(),
            contact: self.contact.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// A client for one target node.
pub struct PeerClient {
    target: NodeId,
    metrics: Arc<Metrics>,
    /// Parsed once per client; an unparsable peer URL makes every RPC fail as unreachable.
    uris: Result<Uris, String>,
    /// Hands out the pooled client per RPC: a replication stream's client lives as long as
    /// the leader's term, and must pick up reloaded certificates.
    network: PeerNetwork,
    peer_url: String,
    identity: Arc<Identity>,
    contact: Arc<ContactTracker>,
}

/// Where each RPC goes on one peer.
struct Uris {
    append: Uri,
    snapshot: Uri,
    vote: Uri,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Snapshot,
    Vote,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Self::Append => "append",
            Self::Snapshot => "snapshot",
            Self::Vote => "vote",
        }
    }
}

/// A transport-level failure, before any Raft answer.
enum Transport {
    Unreachable(Unreachable),
    Network(NetworkError),
    /// No answer within the deadline (the request may have been sent).
    TimedOut(NetworkError),
    TooLarge,
}

impl<E: std::error::Error> From<Transport> for RPCError<NodeId, Member, E> {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Unreachable(u) => RPCError::Unreachable(u),
            Transport::Network(n) | Transport::TimedOut(n) => RPCError::Network(n),
            Transport::TooLarge => RPCError::Network(NetworkError::new(&std::io::Error::other(
                "RPC body exceeds the peer limit",
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        body: Req,
        timeout: Duration,
    ) -> Result<Resp, Transport> {
        let uris = self
            .uris
            .as_ref()
            .map_err(|e| Transport::Unreachable(Unreachable::new(&Refused(e.clone()))))?;
        let uri = match rpc {
            Rpc::Append => &uris.append,
            Rpc::Snapshot => &uris.snapshot,
            Rpc::Vote => &uris.vote,
        };
        let env = Envelope {
            cluster_id: self.identity.cluster_id(),
            from: self.identity.node_id(),
            target: self.target,
            body,
        };
        let start = std::time::Instant::now();
        let bytes =
            bincode::serialize(&env).map_err(|e| Transport::Network(NetworkError::new(&e)))?;
        if bytes.len() > MAX_RPC_BYTES {
            return Err(Transport::TooLarge);
        }
        let client = self.network.client_for(self.target, &self.peer_url);
        let (status, body) = http::post(&client, uri, bytes, timeout)
            .await
            .map_err(|e| {
                if matches!(e, http::PostError::Timeout(_)) {
                    Transport::TimedOut(NetworkError::new(&e))
                } else if e.maybe_sent() {
                    Transport::Network(NetworkError::new(&e))
                } else {
                    Transport::Unreachable(Unreachable::new(&e))
                }
            })?;
        if status.as_u16() == REFUSED_STATUS {
            // The process at that address is not the member we want (wrong cluster or id):
            // back off as if it were down.
            let why = String::from_utf8_lossy(&body).to_string();
            return Err(Transport::Unreachable(Unreachable::new(&Refused(why))));
        }
        if !status.is_success() {
            let why = format!("peer answered {status}: {}", String::from_utf8_lossy(&body));
            return Err(Transport::Network(NetworkError::new(&Refused(why))));
        }
        let out =
            bincode::deserialize(&body).map_err(|e| Transport::Network(NetworkError::new(&e)));
        self.metrics
            .peer_rpc_sent
            .get_or_create(&RpcLabels {
                rpc: rpc.name().to_string(),
            })
            .observe(start.elapsed().as_secs_f64());
        out
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        let res: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            match self.call(Rpc::Append, rpc, option.hard_ttl()).await {
                Ok(r) => r,
                // Ask openraft to send fewer entries per request: when they exceed the
                // peer's limit, and when they could not be sent within the deadline (the
                // heartbeat interval), which many large entries to a lagging follower on a
                // busy machine can miss on every retry, so that it never catches up.
                Err(Transport::TooLarge | Transport::TimedOut(_)) if n > 1 => {
                    return Err(RPCError::PayloadTooLarge(
                        PayloadTooLarge::new_entries_hint(n / 2),
                    ));
                }
                Err(t) => return Err(t.into()),
            };
        let resp = res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        self.contact.record(self.target);
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let res: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> =
            self.call(Rpc::Snapshot, rpc, option.hard_ttl()).await?;
        let resp = res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        self.contact.record(self.target);
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let res: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            self.call(Rpc::Vote, rpc, option.hard_ttl()).await?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn backoff(&self) -> Backoff {
        // A restarted peer should be found again quickly; 500 ms is openraft's default.
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
