//! Group commit of client writes.
//!
//! openraft 0.9 appends one log entry per `client_write`, so one entry per request would
//! mean one durability barrier per request. The batcher instead turns every command that
//! queued up while earlier batches were in flight into one log entry. At low load a command
//! goes out alone at once (no timer, no added latency); under load batches grow by
//! themselves, bounded in count and bytes.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::Metrics;
use crate::types::{Command, NodeId, Outcome, Raft, Request};

/// How many batches may be in the Raft pipeline at once.
const MAX_IN_FLIGHT: usize = 4;
const MAX_BATCH_COMMANDS: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Why a write did not produce an outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node was not the leader and the write was not appended: safe to send elsewhere.
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    /// The write may or may not have been applied.
    #[error("{0}")]
    Unknown(String),
}

struct Pending {
    cmd: Command,
    tx: oneshot::Sender<Result<Outcome, WriteError>>,
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    pub fn start(raft: Raft, metrics: Arc<Metrics>, write_timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(run(rx, raft, metrics, write_timeout));
        Self { tx }
    }

    /// Submit one command and wait for its outcome.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, tx })
            .await
            .map_err(|_| WriteError::NotLeader(None))?;
        rx.await
            .unwrap_or_else(|_| Err(WriteError::Unknown("the node is shutting down".into())))
    }
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    raft: Raft,
    metrics: Arc<Metrics>,
    write_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.cmd.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        metrics.batch_commands.observe(batch.len() as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (cmds, txs): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.tx)).unzip();
            let fail_all = |txs: Vec<oneshot::Sender<_>>, e: WriteError| {
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            };
            let rx = match raft.client_write_ff(Request::Batch(cmds)).await {
                Ok(rx) => rx,
                Err(e) => return fail_all(txs, WriteError::Unknown(format!("raft stopped: {e}"))),
            };
            match tokio::time::timeout(write_timeout, rx).await {
                Err(_) => fail_all(
                    txs,
                    WriteError::Unknown(format!(
                        "not committed within {} ms (is a quorum reachable?)",
                        write_timeout.as_millis()
                    )),
                ),
                Ok(Err(_)) => fail_all(txs, WriteError::Unknown("raft stopped".into())),
                // openraft answers ForwardToLeader only for entries it never appended or
                // that were truncated, which were therefore never applied.
                Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
                    fail_all(txs, WriteError::NotLeader(f.leader_id))
                }
                Ok(Ok(Err(e))) => fail_all(txs, WriteError::Unknown(e.to_string())),
                Ok(Ok(Ok(resp))) => {
                    let mut outcomes = resp.data.0.into_iter();
                    for tx in txs {
                        let r = outcomes.next().ok_or_else(|| {
                            WriteError::Unknown("state machine returned too few outcomes".into())
                        });
                        let _ = tx.send(r);
                    }
                }
            }
        });
    }
}
