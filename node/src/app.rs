//! Starting and running one node: storage, Raft, the two listeners, and shutdown.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use openraft::{ServerState, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::batcher::{Batcher, BatcherConfig};
use crate::forwarder::Forwarder;
use crate::identity::Identity;
use crate::metrics::{Metrics, RoleLabels};
use crate::network::client::{ContactTracker, PeerNetwork};
use crate::network::server::{PeerState, router as peer_router};
use crate::readindex::ReadIndex;
use crate::store::{self, KvReader};
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
}

impl Settings {
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
    /// Forwarding client (to the leader's client port).
    pub http: reqwest::Client,
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

/// A started node. `run` serves until `shutdown` resolves.
pub struct Node {
    pub app: Arc<App>,
    client_listener: TcpListener,
    peer_listener: TcpListener,
}

impl Node {
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| StartError::DataDir(settings.data_dir.clone(), e))?;
        let identity = Arc::new(Identity::load_or_create(&settings.data_dir)?);
        // A node joins a cluster only after its log exists, so a member without one lost
        // it. (A log in the old format, `db/`, gets its own message from the store.)
        if let Some(cluster_id) = identity.cluster_id()
            && !settings.data_dir.join("wal").exists()
            && !settings.data_dir.join("db").exists()
        {
            return Err(StartError::DataLost {
                dir: settings.data_dir.display().to_string(),
                cluster_id,
            });
        }
        let id = identity.node_id();
        let limits = settings.write_limits();
        limits.check().map_err(StartError::Config)?;
        let metrics = Arc::new(Metrics::new());
        let m = metrics.clone();
        let storage = store::open(
            &settings.data_dir,
            settings.wal_segment_bytes,
            settings.watch_history,
            move |s| {
                m.fsync_seconds.observe(s.duration.as_secs_f64());
                m.fsync_waiters.observe(s.waiters as f64);
            },
        )
        .await?;
        let kv = storage.sm.reader();
        let committed = storage.log.committed_index();
        let log_handle = storage.log.clone();

        let config = openraft::Config {
            cluster_name: "rstore".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_min_ms,
            election_timeout_max: settings.election_max_ms,
            install_snapshot_timeout: 30_000,
            max_payload_entries: 256,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_logs),
            max_in_snapshot_log_to_keep: settings.snapshot_logs.min(1000),
            purge_batch_size: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;

        let contact = Arc::new(ContactTracker::default());
        let network = PeerNetwork::new(identity.clone(), contact.clone(), metrics.clone());
        let raft = Raft::new(id, Arc::new(config), network, storage.log, storage.sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let client_listener = TcpListener::bind(&settings.listen_client)
            .await
            .map_err(|e| StartError::Listen(settings.listen_client.clone(), e))?;
        let peer_listener = TcpListener::bind(&settings.listen_peer)
            .await
            .map_err(|e| StartError::Listen(settings.listen_peer.clone(), e))?;

        let batcher = Batcher::start(
            raft.clone(),
            kv.clone(),
            storage.acks.clone(),
            storage.flusher.clone(),
            metrics.clone(),
            BatcherConfig {
                limits,
                write_timeout: settings.write_timeout,
                sync_timeout: settings.sync_timeout,
                pipeline: settings.write_pipeline,
                max_data_bytes: settings.max_data_bytes,
                async_max_lag: settings.async_max_lag,
                async_quorum_contact: settings.async_quorum_contact,
                committed: committed.clone(),
            },
        );
        // Members talk directly: an HTTP_PROXY set for the pod must not carry cluster traffic.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client builds");
        let app = Arc::new(App {
            id,
            batcher,
            forwarder: Forwarder::start(
                identity.clone(),
                settings.write_timeout + Duration::from_secs(5),
            ),
            reads: ReadIndex::start(
                raft.clone(),
                metrics.clone(),
                Duration::from_millis(settings.election_max_ms),
            ),
            raft,
            identity,
            kv,
            committed,
            leader_commit: Arc::default(),
            log: log_handle,
            contact,
            metrics,
            http,
            settings,
            membership_lock: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(watch_raft(app.clone()));
        tokio::spawn(crate::watchdog::run(
            app.raft.clone(),
            Duration::from_millis(app.settings.election_max_ms),
            app.metrics.clone(),
        ));
        tracing::info!(
            node_id = id,
            cluster_id = ?app.identity.cluster_id(),
            client = %app.settings.advertise_client,
            peer = %app.settings.advertise_peer,
            "node started"
        );
        Ok(Self {
            app,
            client_listener,
            peer_listener,
        })
    }

    /// Serve both listeners until `shutdown` resolves, then stop Raft and flush storage.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = self.app;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let stop = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        // A Raft core that stops on its own (it panics on a broken invariant, e.g. storage
        // that lost durable data) must take the process with it: a node that keeps serving
        // HTTP without Raft answers stale reads and looks alive to its operator.
        let raft_died = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let mut rx = app.raft.metrics();
            let died = raft_died.clone();
            let stop = stop_tx.clone();
            tokio::spawn(async move {
                while rx.borrow_and_update().state != ServerState::Shutdown {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
                if !*stop.borrow() {
                    tracing::error!("the Raft core stopped unexpectedly; shutting the node down");
                    died.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = stop.send(true);
                }
            });
        }
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        // axum does not set TCP_NODELAY on accepted connections; without it, Nagle's
        // algorithm and delayed ACKs stall small request/response exchanges by milliseconds.
        let nodelay = |tcp: &mut tokio::net::TcpStream| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        };
        let peer = axum::serve(
            self.peer_listener.tap_io(nodelay),
            peer_router(PeerState {
                raft: app.raft.clone(),
                metrics: app.metrics.clone(),
                identity: app.identity.clone(),
                leader_commit: app.leader_commit.clone(),
            }),
        )
        .with_graceful_shutdown(wait(stop_rx.clone()));
        let client = axum::serve(
            self.client_listener.tap_io(nodelay),
            crate::api::router(app.clone()),
        )
        .with_graceful_shutdown(wait(stop_rx.clone()));
        let (a, b) = tokio::join!(
            tokio::spawn(peer.into_future()),
            tokio::spawn(client.into_future())
        );
        a??;
        b??;
        tracing::info!("listeners closed; stopping raft");
        if let Err(e) = app.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if raft_died.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!(
                "the Raft core stopped unexpectedly (its error or panic is logged above). If it \
                 reports an invalid state, the data directory is damaged: restore it from backup, \
                 or wipe it entirely to rejoin as a new member"
            );
        }
        tracing::info!("node stopped");
        Ok(())
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

/// Follow Raft's metrics: update gauges, count and log leader changes.
async fn watch_raft(app: Arc<App>) {
    let mut rx = app.raft.metrics();
    let mut last_leader: Option<NodeId> = None;
    let mut last_role = "";
    loop {
        let m = rx.borrow_and_update().clone();
        let metrics = &app.metrics;
        metrics.term.set(m.current_term as i64);
        metrics
            .last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        metrics
            .applied_index
            .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        metrics
            .snapshot_index
            .set(m.snapshot.map(|l| l.index).unwrap_or(0) as i64);
        let mem = m.membership_config.membership();
        let voters: BTreeSet<_> = mem.voter_ids().collect();
        metrics.voters.set(voters.len() as i64);
        metrics.learners.set(mem.learner_ids().count() as i64);
        let role = role_name(&m);
        if role != last_role {
            if !last_role.is_empty() {
                metrics
                    .role
                    .get_or_create(&RoleLabels {
                        role: last_role.into(),
                    })
                    .set(0);
            }
            metrics
                .role
                .get_or_create(&RoleLabels { role: role.into() })
                .set(1);
            tracing::info!(role, term = m.current_term, "role changed");
            last_role = role;
        }
        if m.current_leader != last_leader {
            if m.current_leader.is_some() {
                metrics.leader_changes.inc();
            }
            tracing::info!(leader = ?m.current_leader, term = m.current_term, "leader changed");
            last_leader = m.current_leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
