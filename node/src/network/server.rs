//! The receiving side of Raft RPC: the peer port's router. It serves Raft RPC and nothing
//! else, and refuses envelopes meant for another cluster or another node.

// Handlers return a ready HTTP response as their early-exit error.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Envelope, MAX_RPC_BYTES, REFUSED_STATUS};
use crate::identity::Identity;
use crate::metrics::{Metrics, RpcLabels};
use crate::types::{NodeId, Raft, TypeConfig};

#[derive(Clone)]
pub struct PeerState {
    pub raft: Raft,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
}

pub fn router(state: PeerState) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_RPC_BYTES + 4096))
        .with_state(state)
}

fn refuse(msg: String) -> Response {
    tracing::warn!(reason = %msg, "refused a peer RPC");
    (
        StatusCode::from_u16(REFUSED_STATUS).expect("valid status"),
        msg,
    )
        .into_response()
}

/// Decode and check an envelope. A node that has no cluster id yet adopts the sender's:
/// that is how a new member learns which cluster added it.
pub fn open_envelope<T: DeserializeOwned>(
    identity: &Identity,
    body: &[u8],
) -> Result<(NodeId, T), Response> {
    let env: Envelope<T> = bincode::deserialize(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed RPC: {e}")).into_response())?;
    if env.target != identity.node_id() {
        return Err(refuse(format!(
            "RPC for node {} reached node {}",
            env.target,
            identity.node_id()
        )));
    }
    match (identity.cluster_id(), env.cluster_id) {
        (_, None) => {
            return Err(refuse(format!(
                "RPC from node {} carries no cluster id",
                env.from
            )));
        }
        (Some(mine), Some(theirs)) if mine != theirs => {
            return Err(refuse(format!(
                "RPC for cluster {theirs} reached a member of cluster {mine}"
            )));
        }
        (Some(_), Some(_)) => {}
        (None, Some(theirs)) => {
            if let Err(e) = identity.adopt_cluster(&theirs) {
                return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response());
            }
            tracing::info!(cluster_id = %theirs, from = env.from, "joined cluster");
        }
    }
    Ok((env.from, env.body))
}

fn reply<T: Serialize>(v: &T) -> Response {
    match bincode::serialize(v) {
        Ok(b) => (StatusCode::OK, b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(State(s): State<PeerState>, body: Bytes) -> Response {
    let req =
        match open_envelope::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&s.identity, &body)
        {
            Ok((_, r)) => r,
            Err(r) => return r,
        };
    let start = std::time::Instant::now();
    let r = s.raft.append_entries(req).await;
    s.metrics
        .peer_rpc_served
        .get_or_create(&RpcLabels {
            rpc: "append".into(),
        })
        .observe(start.elapsed().as_secs_f64());
    reply(&r)
}

async fn vote(State(s): State<PeerState>, body: Bytes) -> Response {
    let req = match open_envelope::<openraft::raft::VoteRequest<NodeId>>(&s.identity, &body) {
        Ok((_, r)) => r,
        Err(r) => return r,
    };
    reply(&s.raft.vote(req).await)
}

async fn snapshot(State(s): State<PeerState>, body: Bytes) -> Response {
    let req = match open_envelope::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(
        &s.identity,
        &body,
    ) {
        Ok((_, r)) => r,
        Err(r) => return r,
    };
    reply(&s.raft.install_snapshot(req).await)
}
