//! Prometheus metrics of a node, served at `/metrics` on the client port: what an operator
//! needs to see a node's health, load and lag without reading its logs. At the bottom of
//! the stack, so that any layer can count what it does.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub batch_commands: Histogram,
    pub read_index_batch: Histogram,
    pub fsync_seconds: Histogram,
    pub fsync_waiters: Histogram,
    pub term: Gauge,
    pub role: Family<RoleLabels, Gauge>,
    pub last_log_index: Gauge,
    pub applied_index: Gauge,
    pub committed_index: Gauge<u64, AtomicU64>,
    pub snapshot_index: Gauge,
    pub leader_changes: Counter,
    pub election_watchdog: Counter,
    pub voters: Gauge,
    pub learners: Gauge,
    pub storage_bytes: Gauge<u64, AtomicU64>,
    pub revision: Gauge<u64, AtomicU64>,
    pub data_bytes: Gauge<u64, AtomicU64>,
    pub peer_rpc_sent: Family<RpcLabels, Histogram, fn() -> Histogram>,
    pub peer_rpc_served: Family<RpcLabels, Histogram, fn() -> Histogram>,
    pub async_lost: Counter,
    pub async_unconfirmed: Counter,
    pub async_held: Counter,
    pub connections: Family<ListenerLabels, Gauge>,
    pub connections_refused: Family<ListenerLabels, Counter>,
    pub watches: Gauge,
    pub watches_refused: Counter,
    pub watches_cut_off: Counter,
    /// Backups streamed from this member, by outcome (`complete`, `aborted`, `refused`).
    pub backups: Family<OutcomeLabels, Counter>,
    pub backup_bytes: Counter,
    /// Seconds the state's lock was held to copy it for a backup (writes wait that long).
    pub backup_copy_seconds: Histogram,
    /// Seconds backups waited for the rate under load (the member was applying writes).
    pub backup_paced_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rstore");
        let m = Self {
            http_requests: Family::new_with_constructor(latency_histogram),
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            read_index_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            fsync_seconds: latency_histogram(),
            fsync_waiters: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            term: Gauge::default(),
            role: Family::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            committed_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            leader_changes: Counter::default(),
            election_watchdog: Counter::default(),
            voters: Gauge::default(),
            learners: Gauge::default(),
            storage_bytes: Gauge::default(),
            revision: Gauge::default(),
            data_bytes: Gauge::default(),
            peer_rpc_sent: Family::new_with_constructor(latency_histogram),
            peer_rpc_served: Family::new_with_constructor(latency_histogram),
            async_lost: Counter::default(),
            async_unconfirmed: Counter::default(),
            async_held: Counter::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            watches: Gauge::default(),
            watches_refused: Counter::default(),
            watches_cut_off: Counter::default(),
            backups: Family::default(),
            backup_bytes: Counter::default(),
            backup_copy_seconds: latency_histogram(),
            backup_paced_seconds: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_request_duration_seconds",
            "Client API request latency by route, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "write_batch_commands",
            "Client commands per group-committed log entry",
            m.batch_commands.clone(),
        );
        registry.register(
            "read_index_batch_reads",
            "Linearizable reads served by one read-index round",
            m.read_index_batch.clone(),
        );
        registry.register(
            "fsync_duration_seconds",
            "Duration of one durability barrier (flush + fdatasync)",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "fsync_batch_waiters",
            "Writers sharing one durability barrier",
            m.fsync_waiters.clone(),
        );
        registry.register(
            "connections",
            "Open connections by listener",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because the listener was at its connection cap",
            m.connections_refused.clone(),
        );
        registry.register("watches", "Open watch streams", m.watches.clone());
        registry.register(
            "watches_refused",
            "Watches refused (429) at the cap on concurrent watches",
            m.watches_refused.clone(),
        );
        registry.register(
            "watches_cut_off",
            "Watches ended because the watcher fell behind its buffer bound",
            m.watches_cut_off.clone(),
        );
        registry.register(
            "backups",
            "Backups streamed from this member, by outcome: complete, aborted (the client or the stream failed), refused (another was streaming)",
            m.backups.clone(),
        );
        registry.register(
            "backup_bytes",
            "Bytes of backup streams sent by this member",
            m.backup_bytes.clone(),
        );
        registry.register(
            "backup_copy_seconds",
            "Time the state was held to copy it for a backup (writes wait for it)",
            m.backup_copy_seconds.clone(),
        );
        registry.register(
            "backup_paced_seconds",
            "Time backups streaming from this member waited because it was applying writes (the rate under load)",
            m.backup_paced_seconds.clone(),
        );
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register(
            "raft_role",
            "1 for this node's current role",
            m.role.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Index of the last log entry",
            m.last_log_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Index of the last applied entry",
            m.applied_index.clone(),
        );
        registry.register(
            "raft_committed_index",
            "Index of the last entry known committed",
            m.committed_index.clone(),
        );
        registry.register(
            "raft_snapshot_index",
            "Last log index in the current snapshot",
            m.snapshot_index.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Times this node saw the leader change",
            m.leader_changes.clone(),
        );
        registry.register(
            "raft_election_watchdog",
            "Elections this node started because no leader was known for longer than openraft's own retries take (a repeating split vote)",
            m.election_watchdog.clone(),
        );
        registry.register(
            "raft_voters",
            "Voters in the membership config",
            m.voters.clone(),
        );
        registry.register(
            "raft_learners",
            "Learners in the membership config",
            m.learners.clone(),
        );
        registry.register(
            "storage_size_bytes",
            "Bytes on disk of the write-ahead log segments and the snapshot file",
            m.storage_bytes.clone(),
        );
        registry.register(
            "kv_revision",
            "Store revision of the applied state",
            m.revision.clone(),
        );
        registry.register(
            "kv_data_bytes",
            "Bytes of keys and values in the applied state (held in memory; see RSTORE_MAX_DATA_BYTES)",
            m.data_bytes.clone(),
        );
        registry.register(
            "peer_rpc_duration_seconds",
            "Raft RPCs sent to peers, from send to answer",
            m.peer_rpc_sent.clone(),
        );
        registry.register(
            "peer_rpc_served_seconds",
            "Raft RPCs received from peers, time spent in Raft",
            m.peer_rpc_served.clone(),
        );
        registry.register(
            "async_writes_lost",
            "Writes acknowledged in async mode and then truncated by a new leader",
            m.async_lost.clone(),
        );
        registry.register(
            "async_writes_unconfirmed",
            "Writes acknowledged in async mode whose commit was not seen before the write timeout",
            m.async_unconfirmed.clone(),
        );
        registry.register(
            "async_writes_held",
            "Async-mode writes not acknowledged before commit because the leader had not heard from a quorum of voters recently (RSTORE_ASYNC_QUORUM_CONTACT_MS)",
            m.async_held.clone(),
        );
        Self { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}
