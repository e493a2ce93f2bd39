//! Raft type configuration and the commands that travel through the replicated log.
//!
//! A log entry carries a [`Request`]; the state machine answers each with a [`Response`].
//! Client writes are group-committed: one entry holds a batch of [`Command`]s, and each
//! command gets its own revision and [`Outcome`].

use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The openraft type configuration of rstore.
    pub TypeConfig:
        D = Request,
        R = Response,
        Node = Member,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Member>;

/// Addresses of a cluster member, stored in the Raft membership configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Base URL of the peer (Raft RPC) listener.
    pub peer_url: String,
    /// Base URL of the client (KV and admin) listener.
    pub client_url: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{peer: {}, client: {}}}",
            self.peer_url, self.client_url
        )
    }
}

/// The payload of a normal log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A group-committed batch of client commands, applied in order.
    Batch(Batch),
    /// Change the cluster-wide settings.
    SetConfig(ClusterConfig),
}

/// Client commands that travel in one log entry. `id` is unique per leader process and
/// lets the leader learn when the entry is durable in its own log (the `async` mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub id: u64,
    pub cmds: Vec<Command>,
}

/// One client command. Conditions are evaluated by the state machine at apply time,
/// so compare-and-set is atomic with respect to every other write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        cond: Condition,
    },
    Delete {
        key: String,
        cond: Condition,
    },
    Txn(Txn),
}

impl Command {
    /// Approximate encoded size, used to bound group-commit batches.
    pub fn size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len() + 16,
            Command::Delete { key, .. } => key.len() + 16,
            Command::Txn(t) => t.size(),
        }
    }

    /// Whether it may add keys or bytes (so the data quota applies to it).
    pub fn adds_data(&self) -> bool {
        match self {
            Command::Put { .. } => true,
            Command::Delete { .. } => false,
            Command::Txn(t) => t
                .success
                .iter()
                .chain(&t.failure)
                .any(|o| matches!(o, TxnOp::Put { .. })),
        }
    }

    /// Whether the outcome depends on the state it is applied to (and so cannot be
    /// acknowledged before it is applied).
    pub fn is_conditional(&self) -> bool {
        match self {
            Command::Put { cond, .. } | Command::Delete { cond, .. } => *cond != Condition::None,
            Command::Txn(_) => true,
        }
    }
}

/// A precondition on the current state of a key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    None,
    /// The key exists with exactly this version (`If-Match`).
    Version(u64),
    /// The key does not exist (`If-None-Match: *`).
    Absent,
}

/// An atomic multi-key transaction: if every compare holds, run `success`, else `failure`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn size(&self) -> usize {
        let ops = |v: &Vec<TxnOp>| -> usize {
            v.iter()
                .map(|o| match o {
                    TxnOp::Put { key, value } => key.len() + value.len() + 16,
                    TxnOp::Delete { key } | TxnOp::Get { key } => key.len() + 16,
                })
                .sum()
        };
        let cmp: usize = self
            .compare
            .iter()
            .map(|c| {
                c.key.len()
                    + 24
                    + match &c.target {
                        CompareTarget::Value(v) => v.len(),
                        _ => 0,
                    }
            })
            .sum();
        cmp + ops(&self.success) + ops(&self.failure)
    }
}

/// One comparison against the current state of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a comparison looks at. A missing key has version, create and mod revision 0,
/// and no value (a value comparison on a missing key is false, except `NotEqual`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum CompareTarget {
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Existence; only `Equal` and `NotEqual` make sense.
    Exists(bool),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

/// A key's state as returned by a transaction's `get`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum TxnOpResult {
    Put { version: u64 },
    Delete { deleted: bool },
    Get(Option<KeyValue>),
}

/// The result of applying one command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Outcome {
    Put {
        revision: u64,
        version: u64,
    },
    Deleted {
        revision: u64,
    },
    NotFound,
    PreconditionFailed {
        current_version: Option<u64>,
    },
    /// `revision` is the store revision after the transaction (its writes share it).
    Txn {
        succeeded: bool,
        revision: u64,
        results: Vec<TxnOpResult>,
    },
}

/// The state machine's answer to one log entry: one outcome per command.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response(pub Vec<Outcome>);

pub use rstore_api::{ReadConsistency, ReplicationMode};

/// Cluster-wide settings, stored in the state machine.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterConfig {
    pub replication_mode: ReplicationMode,
    pub read_consistency: ReadConsistency,
}
