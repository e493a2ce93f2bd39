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
    Batch(Vec<Command>),
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
}

impl Command {
    /// Approximate encoded size, used to bound group-commit batches.
    pub fn size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len() + 16,
            Command::Delete { key, .. } => key.len() + 16,
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

/// The result of applying one command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Outcome {
    Put { revision: u64, version: u64 },
    Deleted { revision: u64 },
    NotFound,
    PreconditionFailed { current_version: Option<u64> },
}

/// The state machine's answer to one log entry: one outcome per command.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response(pub Vec<Outcome>);

// Keep the import used by `declare_raft_types!`'s default snapshot type visible.
#[allow(dead_code)]
type DefaultSnapshotData = Cursor<Vec<u8>>;
