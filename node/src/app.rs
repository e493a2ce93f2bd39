//! A running node's shared state ([`App`], handed to every handler on both ports) and its
//! settings. Starting and stopping it is [`crate::node`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use crate::auth::Tokens;
use crate::batcher::Batcher;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::network::client::ContactTracker;
use crate::network::forwarder::Forwarder;
use crate::network::http::PeerHttp;
use crate::readindex::ReadIndex;
use crate::store::{self, KvReader};
use crate::tls::{Tls, TlsPaths};
use crate::types::{Member, NodeId, Raft, RaftMetrics};

/// Everything a node needs to start. Built from the command line by `node serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen_client: String,
    pub advertise_client: String,
    pub listen_peer: String,
    pub advertise_peer: String,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_logs: u64,
    /// Size of each write-ahead log segment.
    pub wal_segment_bytes: u64,
    pub write_timeout: Duration,
    pub sync_timeout: Duration,
    /// Write batches in the Raft pipeline at once.
    pub write_pipeline: usize,
    /// `async` mode: most acknowledged-but-uncommitted log entries on the leader.
    pub async_max_lag: u64,
    /// `async` mode: how recently the leader must have heard from a quorum to acknowledge
    /// before commit.
    pub async_quorum_contact: Duration,
    pub catch_up_timeout: Duration,
    /// Writes that add data are refused (507) while the keys and values hold this many bytes.
    pub max_data_bytes: u64,
    /// Change history kept for watches.
    pub watch_history: store::Retention,
    /// TLS on both ports; `None` only with `--insecure-plaintext`.
    pub tls: Option<TlsPaths>,
    /// Bearer tokens (hashed) for the client port.
    pub token_file: Option<PathBuf>,
    /// `/metrics` answers without credentials.
    pub metrics_open: bool,
    /// Open connections per listener; more are closed at once.
    pub max_connections: usize,
    /// Time a connection has to finish its TLS handshake and each request head; also how
    /// long a keep-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Time a request body has to arrive whole (408 after).
    pub body_timeout: Duration,
    /// Concurrent watches on this member; more answer 429.
    pub max_watches: usize,
    /// Bytes a watch may have waiting to be sent before the watcher is cut off.
    pub watch_buffer_bytes: usize,
}

impl Settings {
    /// Whether the client port checks credentials: always with TLS, and in plaintext mode
    /// when a token file is given.
    pub fn authentication(&self) -> bool {
        self.tls.is_some() || self.token_file.is_some()
    }

    /// The URL scheme members speak.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn write_limits(&self) -> crate::types::WriteLimits {
        crate::types::WriteLimits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Store(#[from] store::OpenError),
    #[error(
        "this node is a member of cluster {cluster_id} (says {dir}/identity.json), but its write-ahead log {dir}/wal is gone. Starting empty under the same id would break Raft's safety. Restore the data directory from backup, or wipe it entirely (identity.json too) to rejoin as a new member"
    )]
    DataLost { dir: String, cluster_id: String },
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("{0:#}")]
    Credentials(anyhow::Error),
}

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

pub fn role_name(m: &RaftMetrics) -> &'static str {
    let initialized = m.membership_config.membership().get_node(&m.id).is_some();
    match m.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Follower if !initialized => "uninitialized",
        ServerState::Follower => "follower",
        ServerState::Learner if !initialized => "uninitialized",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
