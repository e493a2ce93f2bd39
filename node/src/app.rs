//! The state a running node shares with every handler on both ports, as openraft's
//! examples keep it: one struct, built by `Node::start`, so that the handlers above it
//! depend on one thing and the parts below it (storage, Raft, the batcher, peer traffic,
//! configuration) know nothing of HTTP handlers.

use std::sync::Arc;

use crate::auth::Tokens;
use crate::batcher::Batcher;
use crate::config::Settings;
use crate::forward::client::Forwarder;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::network::client::ContactTracker;
use crate::network::http::PeerHttp;
use crate::readindex::ReadIndex;
use crate::store::{self, KvReader};
use crate::tls::Tls;
use crate::types::{Member, NodeId, Raft, RaftMetrics};

/// Shared state of a running node, handed to every HTTP handler.
pub struct App {
    pub id: NodeId,
    pub raft: Raft,
    pub identity: Arc<Identity>,
    pub kv: KvReader,
    /// Commit index as last saved by openraft.
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    /// The highest commit index a leader announced to this node (followers and learners).
    pub leader_commit: Arc<std::sync::atomic::AtomicU64>,
    /// The log, for its size on disk.
    pub log: store::LogStore,
    pub batcher: Batcher,
    pub forwarder: Forwarder,
    pub reads: ReadIndex,
    pub contact: Arc<ContactTracker>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// This member's certificates, re-read when they change (`None` in plaintext mode).
    pub tls: Option<Arc<Tls>>,
    pub tokens: Arc<Tokens>,
    /// The client for requests relayed to the leader's peer port.
    pub peer_http: PeerHttp,
    /// Watches open now, for the cap.
    pub watches: Arc<std::sync::atomic::AtomicUsize>,
    /// Serializes membership changes on this node; others get 409.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// One backup streams from this member at a time (each holds a copy of the state).
    pub backup_lock: Arc<tokio::sync::Mutex<()>>,
}

impl App {
    pub fn metrics_snapshot(&self) -> RaftMetrics {
        // Clone at once: holding the watch borrow blocks the Raft core.
        self.raft.metrics().borrow().clone()
    }

    pub fn me(&self) -> Member {
        Member {
            peer_url: self.settings.advertise_peer.clone(),
            client_url: self.settings.advertise_client.clone(),
        }
    }
}
