//! Raft type configuration and the commands that travel through the replicated log.
//!
//! A log entry carries a [`Request`]; the state machine answers each with a [`Response`].
//! Client writes are group-committed: one entry holds a batch of [`Command`]s, and each
//! command gets its own revision and [`Outcome`].

use std::io::Cursor;

use openraft::ServerState;
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

/// Most comparisons or operations in one list of a transaction.
pub const MAX_TXN_OPS: usize = 128;

/// Largest command (by [`Command::size`]) the batcher takes. Every route a write can come in
/// on ends in the batcher, and a batch is at most [`crate::batcher::MAX_BATCH_BYTES`] plus one
/// command, so no log entry can grow past what one peer RPC carries
/// ([`crate::network::MAX_RPC_BYTES`]): an entry that could not be replicated would stall the
/// cluster for good.
pub const MAX_COMMAND_BYTES: usize = 8 << 20;

/// The size limits every write is checked against, whatever port or route it came in on.
#[derive(Debug, Clone, Copy)]
pub struct WriteLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

/// Why a command was refused before it reached the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalid {
    /// 413 rather than 400.
    pub too_large: bool,
    pub code: String,
    pub message: String,
}

impl Invalid {
    fn new(too_large: bool, code: &str, message: String) -> Self {
        Self {
            too_large,
            code: code.into(),
            message,
        }
    }
    fn bad(code: &str, message: String) -> Self {
        Self::new(false, code, message)
    }
    fn large(code: &str, message: String) -> Self {
        Self::new(true, code, message)
    }
}

impl WriteLimits {
    /// The settings themselves must let every accepted write fit in one log entry.
    pub fn check(&self) -> Result<(), String> {
        if self.max_key_bytes == 0 {
            return Err("the key size limit must be at least 1 byte".into());
        }
        if self.max_key_bytes + self.max_value_bytes + 16 > MAX_COMMAND_BYTES {
            return Err(format!(
                "RSTORE_MAX_KEY_BYTES ({}) plus RSTORE_MAX_VALUE_BYTES ({}) must stay below {} \
                 bytes, the largest write one Raft entry may carry",
                self.max_key_bytes,
                self.max_value_bytes,
                MAX_COMMAND_BYTES - 16
            ));
        }
        Ok(())
    }

    fn key(&self, what: &str, key: &str) -> Result<(), Invalid> {
        if key.is_empty() {
            return Err(Invalid::bad(
                "invalid_key",
                format!("{what}: the key is empty; keys are 1 or more bytes"),
            ));
        }
        if key.len() > self.max_key_bytes {
            return Err(Invalid::large(
                "key_too_large",
                format!(
                    "{what}: the key is {} bytes; the limit is {} bytes",
                    key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    fn value(&self, what: &str, value: &[u8]) -> Result<(), Invalid> {
        if value.len() > self.max_value_bytes {
            return Err(Invalid::large(
                "value_too_large",
                format!(
                    "{what}: the value is {} bytes; the limit is {} bytes",
                    value.len(),
                    self.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Check one command: keys, values, transaction lengths, and its total size.
    pub fn validate(&self, cmd: &Command) -> Result<(), Invalid> {
        match cmd {
            Command::Put { key, value, .. } => {
                self.key("put", key)?;
                self.value("put", value)?;
            }
            Command::Delete { key, .. } => self.key("delete", key)?,
            Command::Txn(t) => {
                for (name, n) in [
                    ("compare", t.compare.len()),
                    ("success", t.success.len()),
                    ("failure", t.failure.len()),
                ] {
                    if n > MAX_TXN_OPS {
                        return Err(Invalid::bad(
                            "invalid_request",
                            format!("{name} has {n} entries; the limit is {MAX_TXN_OPS}"),
                        ));
                    }
                }
                for (i, c) in t.compare.iter().enumerate() {
                    let what = format!("compare[{i}]");
                    self.key(&what, &c.key)?;
                    if let CompareTarget::Value(v) = &c.target {
                        self.value(&what, v)?;
                    }
                }
                for (list, ops) in [("success", &t.success), ("failure", &t.failure)] {
                    for (i, o) in ops.iter().enumerate() {
                        let what = format!("{list}[{i}]");
                        match o {
                            TxnOp::Put { key, value } => {
                                self.key(&what, key)?;
                                self.value(&what, value)?;
                            }
                            TxnOp::Delete { key } | TxnOp::Get { key } => self.key(&what, key)?,
                        }
                    }
                }
            }
        }
        let size = cmd.size();
        if size > MAX_COMMAND_BYTES {
            return Err(Invalid::large(
                "request_too_large",
                format!(
                    "the write is {size} bytes; one write may carry at most {MAX_COMMAND_BYTES} \
                     bytes: split it into smaller writes"
                ),
            ));
        }
        Ok(())
    }
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
    /// The transaction's gets would return `bytes` of keys and values, over
    /// [`MAX_TXN_RESPONSE_BYTES`]: nothing was applied. (Appended last: the order of the
    /// variants is part of the forwarding RPC's encoding.)
    TxnTooLarge {
        bytes: u64,
    },
}

/// The most a transaction's gets may return, in bytes of keys and values (about 11 MiB of
/// JSON with base64 values); a larger one is refused whole at apply, before any of its
/// writes.
pub const MAX_TXN_RESPONSE_BYTES: u64 = 8 << 20;

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

/// The role a node's metrics show, as the admin API and the logs name it.
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
