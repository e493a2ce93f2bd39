//! Starting and running one node: credentials, storage, Raft, the two listeners, and
//! shutdown, wired together in one place so that no part below needs to know the others.
//! [`Node::start`] takes listeners the caller bound (as mini-redis's `run` does), so that
//! in-process tests bind port 0; the binary binds the addresses its flags name
//! ([`bind`]). The state the parts share is [`crate::app::App`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{ServerState, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::app::App;
use crate::auth::Tokens;
use crate::batcher::{Batcher, BatcherConfig};
use crate::config::Settings;
use crate::forward::client::Forwarder;
use crate::identity::Identity;
use crate::listener::{Limits, Listener};
use crate::metrics::{Metrics, RoleLabels};
use crate::network::client::{ContactTracker, PeerNetwork};
use crate::network::http::PeerHttp;
use crate::readindex::ReadIndex;
use crate::store;
use crate::tls::{Port, Tls};
use crate::types::{NodeId, Raft, role_name};

/// How often certificate and token files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
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

/// Bind the two listeners `settings` name, as `node serve` does before [`Node::start`].
pub async fn bind(settings: &Settings) -> Result<(TcpListener, TcpListener), StartError> {
    let client = TcpListener::bind(&settings.listen_client)
        .await
        .map_err(|e| StartError::Listen(settings.listen_client.clone(), e))?;
    let peer = TcpListener::bind(&settings.listen_peer)
        .await
        .map_err(|e| StartError::Listen(settings.listen_peer.clone(), e))?;
    Ok((client, peer))
}

/// A started node. `run` serves until `shutdown` resolves.
pub struct Node {
    pub app: Arc<App>,
    client_listener: TcpListener,
    peer_listener: TcpListener,
}

impl Node {
    /// Start a node that will serve on the listeners given (bound by the caller, so that
    /// tests can bind port 0): the client port on `client_listener`, the peer port on
    /// `peer_listener`. Nothing is served until [`Node::run`].
    pub async fn start(
        settings: Settings,
        client_listener: TcpListener,
        peer_listener: TcpListener,
    ) -> Result<Self, StartError> {
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
        let tls = match &settings.tls {
            Some(paths) => Some(Tls::load(paths.clone()).map_err(StartError::Credentials)?),
            None => None,
        };
        let tokens = Arc::new(
            Tokens::load(settings.token_file.as_deref()).map_err(StartError::Credentials)?,
        );
        if tls.is_none() {
            tracing::warn!(
                "PLAINTEXT MODE (--insecure-plaintext): no TLS on either port. Anyone who can reach the peer port can send this member Raft traffic, and traffic can be read and changed on the network"
            );
            if !tokens.enabled() {
                tracing::warn!(
                    "no --token-file: anyone who can reach the client port can read, write and reconfigure the cluster"
                );
            }
        }
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
        let growth = storage.sm.growth();
        let committed = storage.log.committed_index();
        let log_handle = storage.log.clone();

        let config = openraft::Config {
            cluster_name: "rstore".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_min_ms,
            election_timeout_max: settings.election_max_ms,
            install_snapshot_timeout: 30_000,
            max_payload_entries: 256,
            // Triggered by `crate::snapshots`, which weighs the state's size too.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: settings.snapshot_logs.min(1000),
            purge_batch_size: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;

        let contact = Arc::new(ContactTracker::default());
        let network = PeerNetwork::new(
            identity.clone(),
            tls.clone(),
            contact.clone(),
            metrics.clone(),
        );
        let sm = storage.sm.for_raft_start();
        let raft = Raft::new(id, Arc::new(config), network, storage.log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let batcher = Batcher::start(
            raft.clone(),
            kv.clone(),
            log_handle.clone(),
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
        let app = Arc::new(App {
            id,
            batcher,
            forwarder: Forwarder::start(
                identity.clone(),
                tls.clone(),
                settings.write_timeout + Duration::from_secs(5),
            ),
            peer_http: PeerHttp::new(tls.clone(), 64),
            tls,
            tokens,
            watches: Arc::default(),
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
            settings,
            membership_lock: tokio::sync::Mutex::new(()),
            backup_lock: Arc::default(),
        });
        tokio::spawn(watch_raft(app.clone()));
        crate::tls::spawn_reloader(app.tls.clone(), app.tokens.clone(), RELOAD_EVERY);
        tokio::spawn(crate::snapshots::run(
            app.raft.clone(),
            app.kv.clone(),
            growth,
            app.settings.snapshot_logs,
            app.id,
        ));
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
        // The membership holds the URLs this member had when it joined (or was restored
        // from a backup with): others reach it there, whatever it advertises now.
        if let Some(m) = app
            .metrics_snapshot()
            .membership_config
            .membership()
            .get_node(&id)
            && (m.client_url != app.settings.advertise_client
                || m.peer_url != app.settings.advertise_peer)
        {
            tracing::warn!(
                member_client = %m.client_url,
                member_peer = %m.peer_url,
                client = %app.settings.advertise_client,
                peer = %app.settings.advertise_peer,
                "this member's URLs in the cluster's membership differ from what it advertises: \
                 peers and forwarded requests use the membership's; start it with those, or \
                 remove and re-add it with the new ones"
            );
        }
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
        let limits = Limits {
            max_connections: app.settings.max_connections,
            header_timeout: app.settings.header_timeout,
        };
        let listener = |port, tcp| Listener {
            port,
            tcp,
            tls: app.tls.clone(),
            limits,
            metrics: app.metrics.clone(),
        };
        let peer = listener(Port::Peer, self.peer_listener)
            .serve(peer_router(app.clone()), stop_rx.clone());
        let client = listener(Port::Client, self.client_listener)
            .serve(crate::api::router(app.clone()), stop_rx.clone());
        let (a, b) = tokio::join!(tokio::spawn(peer), tokio::spawn(client));
        a?;
        b?;
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

/// The peer port's router: Raft RPC and forwarded batches, and client API requests relayed
/// by members, which the client API serves once the relay guard let them in.
pub fn peer_router(app: Arc<App>) -> axum::Router {
    let relayed = crate::api::router(app.clone()).layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::forward::serve::relay_guard,
    ));
    crate::peer::router(app, crate::forward::serve::routes()).fallback_service(relayed)
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
