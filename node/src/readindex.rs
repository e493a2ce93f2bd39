//! Linearizable reads on the leader, with read-index rounds shared by concurrent readers.
//!
//! `ensure_linearizable()` costs a heartbeat round to a quorum. A single task runs rounds
//! back to back; every reader that arrived while a round was running joins the next one.
//! A reader never joins a round that started before it arrived, which is what keeps the
//! read linearizable.

use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::types::{NodeId, Raft};

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
    pub fn start(raft: Raft, metrics: Arc<Metrics>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<u64, ReadError>>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                metrics.read_index_batch.observe(waiters.len() as f64);
                let r = match raft.ensure_linearizable().await {
                    Ok(read_log_id) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(ReadError::NotLeader(f.leader_id))
                    }
                    Err(e) => Err(ReadError::Unavailable(e.to_string())),
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
