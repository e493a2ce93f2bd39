//! Forwarding: how a request that must run on the leader gets there, both sides in one
//! place. Any node accepts any request, so a client behind a Kubernetes Service never has
//! to find the leader itself.
//!
//! - [`client`]: a follower's batched forwarder, which sends queued writes and read-index
//!   requests to the leader's peer port in one round trip ([`PATH`]);
//! - [`leader`]: finding the leader and running a request there: writes and read-index
//!   waits through the batched forwarder, other leader-only requests relayed whole, with the
//!   role established here (header [`FORWARDED`]);
//! - [`serve`]: the leader's side, on the peer port: the handler of forwarded batches, and
//!   the guard in front of relayed client API requests.
//!
//! The wire format below is what both sides share. (`client` sits under the shared
//! [`crate::app::App`], which holds a forwarder; `leader` and `serve` sit above it.)

pub mod client;
pub mod leader;
pub mod serve;

use serde::{Deserialize, Serialize};

use crate::batcher::{Ack, WriteError};
use crate::readindex::ReadError;
use crate::types::Command;

/// Where forwarded batches go, on the leader's peer port.
pub const PATH: &str = "/internal/v1/forward";
/// Header of a client API request a member relays to the leader: the sender's node id.
pub const FORWARDED: &str = "x-rstore-forwarded";
/// Header of the answer of a node that was relayed a request but is not the leader.
pub const NOT_LEADER: &str = "x-rstore-not-leader";
/// A forwarded batch stops growing past this many bytes of commands, so that it stays well
/// within what the leader reads ([`MAX_BODY_BYTES`]) however many large writes queue up.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Largest forwarded batch the leader reads: one batch at its byte bound, plus one command
/// at its limit, plus room for the envelope.
pub const MAX_BODY_BYTES: usize = MAX_BATCH_BYTES + crate::types::MAX_COMMAND_BYTES + (1 << 20);

#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub writes: Vec<Command>,
    /// Whether a read index is wanted.
    pub read_index: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardResponse {
    pub writes: Vec<Result<Ack, WriteError>>,
    pub read_index: Option<Result<u64, ReadError>>,
}
