//! The sending side of member-to-member traffic, all to the peer port (mutual TLS): Raft RPC
//! in a compact binary (bincode) encoding over HTTP/1.1 ([`client`]), through one pooled
//! HTTP client ([`http`]) that resolves peer names through [`hosts`] first. The envelope and
//! limits here are shared with the receiving side, the peer server ([`crate::peer`]), which
//! checks the sender's certificate against the membership and every envelope's cluster id
//! and target node id before openraft sees it. Forwarding to the leader is
//! [`crate::forward`].

pub mod client;
pub mod hosts;
pub mod http;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Every peer RPC travels in an envelope that says which cluster and which node it is for.
/// Kubernetes reuses pod IPs, so an RPC can reach the wrong process; the receiver refuses
/// it rather than act on it (openraft also panics on an RPC routed to itself).
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub cluster_id: Option<String>,
    pub from: NodeId,
    pub target: NodeId,
    pub body: T,
}

/// HTTP status a receiver uses to refuse an envelope meant for someone else.
pub const REFUSED_STATUS: u16 = 421;

/// Largest RPC body a peer accepts. Senders split append requests that would exceed it.
pub const MAX_RPC_BYTES: usize = 64 << 20;
