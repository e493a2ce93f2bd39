//! Linearizable reads on the leader, with read-index rounds shared by concurrent readers.
//!
//! `ensure_linearizable()` costs a heartbeat round to a quorum. A single task runs rounds
//! back to back; every reader that arrived while a round was running joins the next one.
//! A reader never joins a round that started before it arrived, which is what keeps the
//! read linearizable.
//!
//! A round that fails to hear from a quorum (a slow follower, a busy machine) is retried, a
//! new round each time, for up to `retry_for` (the election timeout): only a quorum that
//! stays silent that long makes the read fail with `no_quorum`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::types::{NodeId, Raft};

/// Pause between read-index rounds that did not hear from a quorum.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ReadError {
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct ReadIndex {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<u64, ReadError>>>,
}

impl ReadIndex {
    pub fn start(raft: Raft, metrics: Arc<Metrics>, retry_for: Duration) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<u64, ReadError>>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                metrics.read_index_batch.observe(waiters.len() as f64);
                let started = Instant::now();
                let r = loop {
                    match raft.ensure_linearizable().await {
                        Ok(read_log_id) => break Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
                        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                            break Err(ReadError::NotLeader(f.leader_id));
                        }
                        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))
                            if started.elapsed() < retry_for =>
                        {
                            tracing::debug!(error = %e, "read-index round without a quorum; retrying");
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                        Err(e) => break Err(ReadError::Unavailable(e.to_string())),
                    }
                };
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        });
        Self { tx }
    }

    /// Wait until this node (the leader) may serve a linearizable read from its local
    /// state; returns the read index, which it has applied.
    pub async fn wait(&self) -> Result<u64, ReadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| ReadError::Unavailable("shutting down".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ReadError::Unavailable("shutting down".into())))
    }
}
