//! Group commit of client writes, and their acknowledgement per replication mode.
//!
//! openraft 0.9 appends one log entry per `client_write`, so one entry per request would
//! mean one durability barrier per request. The batcher instead turns every command that
//! queued up while earlier batches were in flight into one log entry. At low load a command
//! goes out alone at once (no timer, no added latency); under load batches grow by
//! themselves, bounded in count and bytes.
//!
//! When a write is acknowledged depends on the cluster's replication mode:
//! - `quorum`: once committed (durable on a majority) and applied on the leader;
//! - `sync`: additionally once the leader and every voter have it durable, else a timeout;
//! - `async`: unconditional writes once the leader's own log has them durable. Conditional
//!   writes and transactions still wait to be applied, because their outcome depends on it.
//!   The leader's acknowledged-but-uncommitted backlog is bounded (`async_max_lag` entries):
//!   beyond it, async batches wait for commit, which bounds what a leader crash can lose. And
//!   only a leader that heard from a quorum of voters within `async_quorum_contact` (openraft's
//!   `millis_since_quorum_ack`) acknowledges early: one cut off from the followers stops
//!   acknowledging what it alone holds within that time, instead of until it is deposed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::error::ClientWriteError;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{Flusher, KvReader, LogStore};
use crate::types::{
    Batch, Command, Invalid, NodeId, Outcome, Raft, ReplicationMode, Request, WriteLimits,
};

const MAX_BATCH_COMMANDS: usize = 1024;
/// A batch stops growing past this many bytes of commands (so one entry is at most this
/// plus one command; see [`crate::types::MAX_COMMAND_BYTES`]).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// How a write was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ack {
    /// Applied, with its outcome.
    Applied(Outcome),
    /// `async` mode: durable in the leader's log, not yet replicated or applied.
    Accepted,
}

/// Why a write did not produce an acknowledgement.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum WriteError {
    /// This node was not the leader and the write was not appended: safe to send elsewhere.
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    /// The write may or may not have been applied.
    #[error("{0}")]
    Unknown(String),
    /// `sync` mode: committed on a quorum, but not every voter confirmed it in time.
    #[error("{0}")]
    SyncTimeout(String),
    /// The data is at its quota; the write was not appended.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The command breaks a size or shape limit; it was not appended.
    #[error("{}", .0.message)]
    Invalid(Invalid),
}

struct Pending {
    cmd: Command,
    tx: oneshot::Sender<Result<Ack, WriteError>>,
}

/// Everything a batch needs once it leaves the queue.
struct Ctx {
    raft: Raft,
    kv: KvReader,
    /// The leader's own log, which says when a batch is durable in it (`async` mode).
    log: LogStore,
    flusher: Flusher,
    metrics: Arc<Metrics>,
    write_timeout: Duration,
    sync_timeout: Duration,
    pipeline: usize,
    async_max_lag: u64,
    async_quorum_contact: Duration,
    quorum_contact: Arc<QuorumContact>,
    committed: Arc<std::sync::atomic::AtomicU64>,
    next_id: AtomicU64,
}

/// When this node, as leader, last heard from a quorum of voters.
#[derive(Default)]
struct QuorumContact(std::sync::Mutex<Option<Instant>>);

impl QuorumContact {
    /// Whether that was at most `within` ago.
    fn within(&self, within: Duration) -> bool {
        self.0
            .lock()
            .expect("quorum contact lock")
            .is_some_and(|at| at.elapsed() <= within)
    }

    /// Follow openraft's metrics. They are published on each turn of its event loop, not on
    /// a clock, so the age they carry is turned into an instant when it is seen, and grows
    /// from there until the next publication.
    async fn follow(self: Arc<Self>, raft: Raft) {
        let mut rx = raft.metrics();
        loop {
            let age = {
                let m = rx.borrow_and_update();
                (m.state == ServerState::Leader)
                    .then_some(m.millis_since_quorum_ack)
                    .flatten()
            };
            *self.0.lock().expect("quorum contact lock") =
                age.and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
    kv: KvReader,
    max_data_bytes: u64,
    limits: WriteLimits,
    /// Bytes of writes that add data, admitted and not yet answered: the quota counts them,
    /// so that many concurrent writes cannot all pass a check made before any applies.
    in_flight: Arc<AtomicU64>,
}

/// A write's share of [`Batcher::in_flight`], released when it is answered.
struct InFlight(Arc<AtomicU64>, u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

pub struct BatcherConfig {
    /// Size limits every command is checked against before it is batched.
    pub limits: WriteLimits,
    pub write_timeout: Duration,
    pub sync_timeout: Duration,
    /// `async` mode: most log entries the leader may hold acknowledged but uncommitted
    /// before async batches wait for commit again. This bounds what a leader crash loses.
    pub async_max_lag: u64,
    /// `async` mode: acknowledge before commit only if the leader heard from a quorum of
    /// voters at most this long ago.
    pub async_quorum_contact: Duration,
    /// The commit index as openraft reports it.
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    /// How many batches may be in the Raft pipeline at once.
    pub pipeline: usize,
    /// Writes that add data are refused while the applied keys and values hold this many
    /// bytes (the state machine is in memory).
    pub max_data_bytes: u64,
}

impl Batcher {
    pub fn start(
        raft: Raft,
        kv: KvReader,
        log: LogStore,
        flusher: Flusher,
        metrics: Arc<Metrics>,
        config: BatcherConfig,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        let quorum_contact = Arc::new(QuorumContact::default());
        tokio::spawn(quorum_contact.clone().follow(raft.clone()));
        let batcher_kv = kv.clone();
        let ctx = Arc::new(Ctx {
            raft,
            kv,
            log,
            flusher,
            metrics,
            write_timeout: config.write_timeout,
            sync_timeout: config.sync_timeout,
            pipeline: config.pipeline,
            async_max_lag: config.async_max_lag,
            async_quorum_contact: config.async_quorum_contact,
            quorum_contact,
            committed: config.committed,
            // Unique per leader process, so that ids never collide across restarts.
            next_id: AtomicU64::new(rand::random::<u64>() >> 1),
        });
        tokio::spawn(run(rx, ctx));
        Self {
            tx,
            kv: batcher_kv,
            max_data_bytes: config.max_data_bytes,
            limits: config.limits,
            in_flight: Arc::default(),
        }
    }

    /// Submit one command and wait for its acknowledgement.
    pub async fn write(&self, cmd: Command) -> Result<Ack, WriteError> {
        // The one check every write path shares: the client API, transactions and batches
        // forwarded by other members all end here.
        self.limits.validate(&cmd).map_err(WriteError::Invalid)?;
        // Like etcd's backend quota: checked before the write enters the log, against the
        // applied state (keys, values and per-key bookkeeping) plus the writes admitted and
        // not yet answered; deletes always pass.
        let adds = cmd.adds_data();
        let size = if adds { cmd.size() as u64 } else { 0 };
        let pending = self.in_flight.fetch_add(size, Ordering::AcqRel);
        let _in_flight = InFlight(self.in_flight.clone(), size);
        let held = self.kv.data_bytes();
        if adds && held + pending >= self.max_data_bytes {
            return Err(WriteError::QuotaExceeded(format!(
                "the store holds {held} bytes of keys, values and per-key bookkeeping, and \
                 {pending} more are in writes in flight, at its quota of {} \
                 (RSTORE_MAX_DATA_BYTES); delete keys to make room, or raise the quota on every \
                 member along with its memory (the data is kept in memory)",
                self.max_data_bytes
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, tx })
            .await
            .map_err(|_| WriteError::NotLeader(None))?;
        rx.await
            .unwrap_or_else(|_| Err(WriteError::Unknown("the node is shutting down".into())))
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, ctx: Arc<Ctx>) {
    let slots = Arc::new(Semaphore::new(ctx.pipeline));
    let mut carry: Option<Pending> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = take_batch(
            &mut rx,
            &mut carry,
            MAX_BATCH_COMMANDS,
            MAX_BATCH_BYTES,
            |p| p.cmd.size(),
        )
        .await
        else {
            return;
        };
        ctx.metrics.batch_commands.observe(batch.len() as f64);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            submit(&ctx, batch, permit).await;
        });
    }
}

/// The next group of queued items: the one carried over from the last call (or the next
/// to arrive), then whatever is already queued, up to `max_count` items and `max_bytes` by
/// `size`. An item that would pass `max_bytes` is carried over to start the next group, so
/// a group is at most `max_bytes` plus one item. `None` once the queue is closed.
pub(crate) async fn take_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    carry: &mut Option<T>,
    max_count: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = match carry.take() {
        Some(p) => p,
        None => rx.recv().await?,
    };
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < max_count {
        match rx.try_recv() {
            Ok(p) if bytes + size(&p) > max_bytes => {
                *carry = Some(p);
                break;
            }
            Ok(p) => {
                bytes += size(&p);
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

fn fail(txs: &mut [Option<oneshot::Sender<Result<Ack, WriteError>>>], e: WriteError) {
    for tx in txs.iter_mut().filter_map(Option::take) {
        let _ = tx.send(Err(e.clone()));
    }
}

/// Run one batch through Raft. The pipeline slot is held until every command in it has
/// been answered: in `async` mode that is when the leader's log has it durably, so async
/// throughput is not held back by replication.
async fn submit(ctx: &Ctx, batch: Vec<Pending>, permit: tokio::sync::OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    let mode = ctx.kv.config().replication_mode;
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let asynchronous = mode == ReplicationMode::Async;
    let in_contact = asynchronous && ctx.quorum_contact.within(ctx.async_quorum_contact);
    let early: Vec<bool> = batch
        .iter()
        .map(|p| in_contact && !p.cmd.is_conditional())
        .collect();
    if asynchronous && !in_contact {
        let held = batch.iter().filter(|p| !p.cmd.is_conditional()).count();
        ctx.metrics.async_held.inc_by(held as u64);
    }
    let (cmds, txs): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, Some(p.tx))).unzip();
    let mut txs = txs;
    let ack_rx = early.iter().any(|e| *e).then(|| ctx.log.when_durable(id));
    let deadline = tokio::time::Instant::now() + ctx.write_timeout;

    let mut rx = match ctx
        .raft
        .client_write_ff(Request::Batch(Batch { id, cmds }))
        .await
    {
        Ok(rx) => rx,
        Err(e) => {
            ctx.log.forget(id);
            return fail(&mut txs, WriteError::Unknown(format!("raft stopped: {e}")));
        }
    };
    let mut result = None;
    if let Some(ack_rx) = ack_rx {
        tokio::select! {
            durable = ack_rx => if durable.is_ok() {
                for (tx, _) in txs.iter_mut().zip(&early).filter(|(_, e)| **e) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(Ack::Accepted));
                    }
                }
            },
            r = &mut rx => result = Some(r),
            _ = tokio::time::sleep_until(deadline) => {}
        }
        ctx.log.forget(id);
        // Let the next batch go without waiting for this one's commit, unless the leader
        // already holds too much that is acknowledged but not yet committed.
        let last = ctx.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let backlog = last.saturating_sub(ctx.committed.load(Ordering::Relaxed));
        if txs.iter().all(Option::is_none) && backlog < ctx.async_max_lag {
            permit.take();
        }
    }
    let result = match result {
        Some(r) => Ok(r),
        None => tokio::time::timeout_at(deadline, rx).await,
    };
    let resp = match result {
        Err(_) => {
            let pending = txs.iter().filter(|t| t.is_some()).count();
            if pending < txs.len() {
                ctx.metrics
                    .async_unconfirmed
                    .inc_by((txs.len() - pending) as u64);
            }
            return fail(
                &mut txs,
                WriteError::Unknown(format!(
                    "not committed within {} ms (is a quorum reachable?)",
                    ctx.write_timeout.as_millis()
                )),
            );
        }
        Ok(Err(_)) => return fail(&mut txs, WriteError::Unknown("raft stopped".into())),
        // openraft answers ForwardToLeader only for entries it never appended or that were
        // truncated, which were therefore never applied.
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
            let lost = txs.iter().filter(|t| t.is_none()).count();
            if lost > 0 {
                // Acknowledged in async mode, then truncated: the documented async loss.
                ctx.metrics.async_lost.inc_by(lost as u64);
                tracing::warn!(
                    lost,
                    "async-acknowledged writes were truncated by a new leader"
                );
            }
            return fail(&mut txs, WriteError::NotLeader(f.leader_id));
        }
        Ok(Ok(Err(e))) => return fail(&mut txs, WriteError::Unknown(e.to_string())),
        Ok(Ok(Ok(resp))) => resp,
    };
    if mode == ReplicationMode::Sync
        && let Err(msg) = wait_all_voters(ctx, resp.log_id.index).await
    {
        return fail(&mut txs, WriteError::SyncTimeout(msg));
    }
    let mut outcomes = resp.data.0.into_iter();
    for tx in txs.iter_mut() {
        let outcome = outcomes.next();
        if let Some(tx) = tx.take() {
            let _ = tx.send(outcome.map(Ack::Applied).ok_or_else(|| {
                WriteError::Unknown("state machine returned too few outcomes".into())
            }));
        }
    }
}

/// Whether voter `v` has `index` durable, as the leader's metrics know it.
fn voter_has(m: &crate::types::RaftMetrics, v: NodeId, index: u64) -> bool {
    v == m.id
        || m.replication
            .as_ref()
            .and_then(|r| r.get(&v))
            .and_then(|l| *l)
            .is_some_and(|l| l.index >= index)
}

/// `sync` mode: wait until the leader and every voter have `index` durable.
async fn wait_all_voters(ctx: &Ctx, index: u64) -> Result<(), String> {
    ctx.flusher
        .sync()
        .await
        .map_err(|e| format!("the leader could not make the write durable: {e}"))?;
    let all_have = |m: &crate::types::RaftMetrics| {
        m.membership_config
            .membership()
            .voter_ids()
            .all(|v| voter_has(m, v, index))
    };
    if ctx
        .raft
        .wait(Some(ctx.sync_timeout))
        .metrics(all_have, "every voter has the entry")
        .await
        .is_ok()
    {
        return Ok(());
    }
    let m = ctx.raft.metrics().borrow().clone();
    let mem = m.membership_config.membership();
    let missing: Vec<String> = mem
        .voter_ids()
        .filter(|v| !voter_has(&m, *v, index))
        .map(|v| match mem.get_node(&v) {
            Some(n) => format!("{v} ({})", n.client_url),
            None => v.to_string(),
        })
        .collect();
    Err(format!(
        "sync replication: voters [{}] did not confirm the write within {} ms. It is committed on a quorum and will not be rolled back, but it is not acknowledged as replicated to every voter. Bring the missing voters back, remove them from the cluster, or switch to quorum mode",
        missing.join(", "),
        ctx.sync_timeout.as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_are_bounded_in_count_and_bytes_and_carry_the_overflow() {
        let (tx, mut rx) = mpsc::channel(16);
        for n in [3usize, 3, 5, 1, 1, 1] {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        let mut carry = None;
        let mut groups = Vec::new();
        while let Some(b) = take_batch(&mut rx, &mut carry, 3, 8, |n| *n).await {
            groups.push(b);
        }
        // 3+3 fits 8 bytes and 5 more would not, so 5 starts the next group; that one
        // stops at 3 items; the last 1 is left.
        assert_eq!(groups, vec![vec![3, 3], vec![5, 1, 1], vec![1]]);
    }
}
