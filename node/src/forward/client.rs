//! The follower's side of forwarding: the batched client that sends writes and read-index
//! requests to the leader.
//!
//! Under load, most client requests reach followers (a Kubernetes Service spreads them).
//! Forwarding each one as its own HTTP request doubles the leader's per-request work, so a
//! follower instead sends, per round trip, every write that queued up as one batch (they
//! join the leader's group commit) and one read-index request for every linearizable read
//! waiting (the follower then serves those reads locally once it has applied that index,
//! which is Raft's read-index protocol).
//!
//! The RPC goes to the leader's peer port at [`PATH`], in a bincode [`Envelope`] that
//! names the cluster and the target node, like Raft RPCs, and is authorized like them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{ForwardRequest, ForwardResponse, MAX_BATCH_BYTES, PATH};
use crate::batcher::{Ack, WriteError};
use crate::identity::Identity;
use crate::network::Envelope;
use crate::network::http::{self, PeerHttp};
use crate::readindex::ReadError;
use crate::types::{Command, NodeId};

/// Round trips to the leader in flight at once.
const PIPELINE: usize = 8;
const MAX_BATCH: usize = 1024;

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Write(c, _) => c.size(),
            Item::Read(_) => 0,
        }
    }
}

enum Item {
    Write(Command, oneshot::Sender<Result<Ack, WriteError>>),
    Read(oneshot::Sender<Result<u64, ReadError>>),
}

struct Queued {
    leader: NodeId,
    url: String,
    item: Item,
}

#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Queued>,
}

impl Forwarder {
    pub fn start(
        identity: Arc<Identity>,
        tls: Option<Arc<crate::tls::Tls>>,
        timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        // Up to PIPELINE requests at once to the leader, so that many idle connections.
        tokio::spawn(run(
            rx,
            identity,
            Arc::new(PeerHttp::new(tls, PIPELINE)),
            timeout,
        ));
        Self { tx }
    }

    /// Send a write to the leader `leader` at peer URL `url`.
    pub async fn write(&self, leader: NodeId, url: &str, cmd: Command) -> Result<Ack, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(leader, url, Item::Write(cmd, tx)).await;
        rx.await
            .unwrap_or_else(|_| Err(WriteError::Unknown("the node is shutting down".into())))
    }

    /// Ask the leader for a read index.
    pub async fn read_index(&self, leader: NodeId, url: &str) -> Result<u64, ReadError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(leader, url, Item::Read(tx)).await;
        rx.await
            .unwrap_or_else(|_| Err(ReadError::Unavailable("the node is shutting down".into())))
    }

    async fn enqueue(&self, leader: NodeId, url: &str, item: Item) {
        let _ = self
            .tx
            .send(Queued {
                leader,
                url: url.to_string(),
                item,
            })
            .await;
    }
}

async fn run(
    mut rx: mpsc::Receiver<Queued>,
    identity: Arc<Identity>,
    http: Arc<PeerHttp>,
    timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(PIPELINE));
    let mut carry: Option<Queued> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(mut batch) = crate::batcher::take_batch(
            &mut rx,
            &mut carry,
            MAX_BATCH,
            MAX_BATCH_BYTES,
            |q: &Queued| q.item.size(),
        )
        .await
        else {
            return;
        };
        // Leadership rarely changes within a batch; group by target anyway. The first
        // group holds the pipeline slot.
        let mut permit = Some(permit);
        while !batch.is_empty() {
            let (leader, url) = (batch[0].leader, batch[0].url.clone());
            let (mine, rest): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|q| q.leader == leader);
            batch = rest;
            let identity = identity.clone();
            let http = http.get();
            let permit = permit.take();
            tokio::spawn(async move {
                let _permit = permit;
                send(&identity, &http, timeout, leader, &url, mine).await;
            });
        }
    }
}

async fn send(
    identity: &Identity,
    http: &http::HttpClient,
    timeout: Duration,
    leader: NodeId,
    url: &str,
    items: Vec<Queued>,
) {
    let mut writes = Vec::new();
    let mut write_txs = Vec::new();
    let mut read_txs = Vec::new();
    for q in items {
        match q.item {
            Item::Write(cmd, tx) => {
                writes.push(cmd);
                write_txs.push(tx);
            }
            Item::Read(tx) => read_txs.push(tx),
        }
    }
    let env = Envelope {
        cluster_id: identity.cluster_id(),
        from: identity.node_id(),
        target: leader,
        body: ForwardRequest {
            writes,
            read_index: !read_txs.is_empty(),
        },
    };
    let result = call(http, timeout, url, &env).await;
    match result {
        Ok(resp) => {
            let mut outcomes = resp.writes.into_iter();
            for tx in write_txs {
                let _ = tx.send(outcomes.next().unwrap_or_else(|| {
                    Err(WriteError::Unknown(
                        "the leader returned too few outcomes".into(),
                    ))
                }));
            }
            let read = resp.read_index.unwrap_or_else(|| {
                Err(ReadError::Unavailable(
                    "the leader returned no read index".into(),
                ))
            });
            for tx in read_txs {
                let _ = tx.send(read.clone());
            }
        }
        Err((sent, msg)) => {
            // Nothing was sent: safe to route again. Sent but no answer: unknown.
            let werr = if sent {
                WriteError::Unknown(format!("forwarding to the leader failed ({msg})"))
            } else {
                WriteError::NotLeader(None)
            };
            for tx in write_txs {
                let _ = tx.send(Err(werr.clone()));
            }
            for tx in read_txs {
                let _ = tx.send(Err(if sent {
                    ReadError::Unavailable(msg.clone())
                } else {
                    ReadError::NotLeader(None)
                }));
            }
        }
    }
}

/// `Err((sent, message))`: `sent` is false when the request surely did not reach the leader,
/// or the leader answered that it did nothing (it is not the leader).
async fn call(
    http: &http::HttpClient,
    timeout: Duration,
    url: &str,
    env: &Envelope<ForwardRequest>,
) -> Result<ForwardResponse, (bool, String)> {
    let uri = http::uri(url, PATH).map_err(|e| (false, e))?;
    let body = bincode::serialize(env).map_err(|e| (false, e.to_string()))?;
    let (status, bytes) = http::post(http, &uri, body, timeout)
        .await
        .map_err(|e| (e.maybe_sent(), e.to_string()))?;
    if status == axum::http::StatusCode::MISDIRECTED_REQUEST {
        // Not the leader (or not the node we meant): it did nothing.
        return Err((false, String::from_utf8_lossy(&bytes).to_string()));
    }
    if !status.is_success() {
        return Err((
            true,
            format!(
                "leader answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        ));
    }
    bincode::deserialize(&bytes).map_err(|e| (true, e.to_string()))
}
