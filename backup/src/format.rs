//! The backup stream (being written): see the crate doc. The types below are its contract.

use serde::{Deserialize, Serialize};

/// The version of the stream format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a backup holds, the stream's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT_VERSION`] when written.
    pub format: u32,
    /// The id of the cluster the backup was taken from.
    pub cluster_id: String,
    /// The store's revision the backup is consistent at: every write with a revision up to
    /// it is in the backup, and none after it.
    pub revision: u64,
    /// The Raft log index the state was taken at.
    pub log_index: u64,
    /// When the state was taken, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The member that streamed it.
    pub source_node: u64,
    /// How many keys follow, and their key and value bytes.
    pub keys: u64,
    pub data_bytes: u64,
    /// The cluster's settings (replication mode, read consistency), as the node's admin API
    /// gives them.
    pub config: serde_json::Value,
}

/// The stream's last frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub keys: u64,
    /// Lowercase hex SHA-256 of every byte of the stream before the trailer's frame.
    pub sha256: String,
}
