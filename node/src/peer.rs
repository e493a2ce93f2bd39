//! The receiving side of member-to-member traffic: the peer port's router. It serves Raft
//! RPC, and the routes of forwarding ([`crate::forward::serve`]: batches forwarded by
//! followers, client API requests relayed to the leader), and nothing else. Every peer
//! request's body is received here ([`receive`]): bounded, from an allowed sender, decoded.
//!
//! Every RPC must come from a current member (or a learner being added): with TLS the
//! listener already required a certificate signed by the cluster CA, and [`check_sender`]
//! requires that it is a member certificate naming the peer URL the membership records for
//! the envelope's sender. Envelopes meant for another cluster or another node are refused.

// Handlers return a ready HTTP response as their early-exit error.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::forward::MAX_BODY_BYTES;
use crate::identity::Identity;
use crate::metrics::RpcLabels;
use crate::network::{Envelope, MAX_RPC_BYTES, REFUSED_STATUS};
use crate::tls::ConnInfo;
use crate::types::{NodeId, TypeConfig};
use crate::web::{ApiError, read_body};

type PeerState = Arc<App>;

/// The peer port's own routes: Raft RPC and `forwarded` (the routes of
/// [`crate::forward::serve`]). Client API requests relayed by members are served by the
/// fallback the caller adds, behind [`crate::forward::serve::relay_guard`].
pub fn router(app: Arc<App>, forwarded: Router<Arc<App>>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .merge(forwarded)
        // Every route reads its body itself, bounded in bytes and in time ([`read_rpc`]).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(close_after_413))
        .with_state(app)
}

fn forbidden(msg: String) -> Response {
    tracing::warn!(reason = %msg, "refused a peer request");
    (StatusCode::FORBIDDEN, msg).into_response()
}

/// Whether `from`, on the connection `conn`, may send to this member: with TLS, its
/// certificate must be a member certificate naming the peer URL of member `from` in the
/// current membership (learners included). A node not yet in any cluster accepts any
/// member certificate of its CA: that is how the leader that adds it first reaches it.
pub fn check_sender(app: &App, conn: Option<&ConnInfo>, from: NodeId) -> Result<(), Response> {
    if app.tls.is_none() {
        return Ok(());
    }
    let Some(cert) = conn.and_then(|c| c.cert.as_deref()) else {
        return Err(forbidden("no client certificate".into()));
    };
    if !cert.is_member() {
        return Err(forbidden(format!(
            "the client certificate ({}) is not a member certificate",
            cert.common_name.as_deref().unwrap_or("no name")
        )));
    }
    let peer_url = {
        let rx = app.raft.metrics();
        let m = rx.borrow();
        let mem = m.membership_config.membership();
        if mem.nodes().next().is_none() {
            return Ok(());
        }
        mem.get_node(&from).map(|n| n.peer_url.clone())
    };
    match peer_url {
        Some(url) if cert.names_peer(&url) => Ok(()),
        Some(url) => Err(forbidden(format!(
            "the certificate of the sender does not name {url}, the peer URL of member {from} (it names {:?})",
            cert.uris
        ))),
        None => Err(forbidden(format!(
            "node {from} is not a member of this cluster"
        ))),
    }
}

/// A body refused for its size was not read to the end, so the connection cannot carry
/// another request: say so, rather than let the sender write into a closed socket.
async fn close_after_413(resp: Response) -> Response {
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return resp;
    }
    // The client port's JSON error, which also closes the connection.
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!(
            "the body exceeds what this peer endpoint reads ({} bytes for Raft RPC, {} for a forwarded batch)",
            MAX_RPC_BYTES + 4096,
            MAX_BODY_BYTES
        ),
    )
    .into_response()
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
    // The encoding of `bincode::serialize`, but strict: bytes left over mean the body is
    // not what the sender wrote (or not meant for this endpoint), and the limit keeps a
    // damaged length prefix from asking for more than a request may hold.
    let env: Envelope<T> = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(MAX_RPC_BYTES as u64)
        .deserialize(body)
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

pub fn reply<T: Serialize>(v: &T) -> Response {
    match bincode::serialize(v) {
        Ok(b) => (StatusCode::OK, b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// With TLS, the sender must hold a member certificate (which member it is, the envelope
/// says: [`check_sender`]).
fn require_member_cert(app: &App, conn: Option<&ConnInfo>) -> Result<(), Response> {
    if app.tls.is_some()
        && !conn
            .and_then(|c| c.cert.as_deref())
            .is_some_and(|c| c.is_member())
    {
        return Err(forbidden(
            "the sender presented no member certificate".into(),
        ));
    }
    Ok(())
}

/// The sender id of an envelope, read from its fixed-size header without decoding the rest.
fn peek_sender(body: &[u8]) -> Result<(NodeId, &[u8]), Response> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[allow(dead_code)]
        cluster_id: Option<String>,
        from: NodeId,
    }
    let head: Head = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(4096)
        .deserialize(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed RPC: {e}")).into_response())?;
    Ok((head.from, body))
}

pub type Conn = Option<axum::Extension<ConnInfo>>;

/// An RPC received whole and checked: its body read as the client port reads bodies (at
/// most `limit` bytes: 413, after reading a bounded amount so that the sender sees the
/// answer; within the body timeout: 408), from a sender allowed to send it, decoded. A
/// sender with no member certificate is refused before its body is read.
pub async fn receive<T: DeserializeOwned>(
    app: &App,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
) -> Result<T, Response> {
    // The certificate is checked before the body is read, and the envelope is decoded (or a
    // cluster id adopted) only once its sender may send it.
    require_member_cert(app, conn)?;
    let body = read_body(headers, body, limit, what, app.settings.body_timeout)
        .await
        .map_err(IntoResponse::into_response)?;
    let (from, body) = peek_sender(&body)?;
    check_sender(app, conn, from)?;
    open_envelope::<T>(&app.identity, body).map(|(_, r)| r)
}

/// The largest Raft RPC body: an envelope around at most [`MAX_RPC_BYTES`] of payload.
const MAX_RAFT_BODY: usize = MAX_RPC_BYTES + 4096;

/// A vote is a few dozen bytes; this leaves room for a long cluster id.
const MAX_VOTE_BODY: usize = 16 << 10;

async fn append(
    State(s): State<PeerState>,
    conn: Conn,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match receive::<openraft::raft::AppendEntriesRequest<TypeConfig>>(
        &s,
        conn.as_deref(),
        &headers,
        body,
        MAX_RAFT_BODY,
        "append RPC",
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(c) = req.leader_commit {
        s.leader_commit
            .fetch_max(c.index, std::sync::atomic::Ordering::Relaxed);
    }
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

async fn vote(State(s): State<PeerState>, conn: Conn, headers: HeaderMap, body: Body) -> Response {
    let req = match receive::<openraft::raft::VoteRequest<NodeId>>(
        &s,
        conn.as_deref(),
        &headers,
        body,
        MAX_VOTE_BODY,
        "vote RPC",
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&s.raft.vote(req).await)
}

async fn snapshot(
    State(s): State<PeerState>,
    conn: Conn,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match receive::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(
        &s,
        conn.as_deref(),
        &headers,
        body,
        MAX_RAFT_BODY,
        "snapshot RPC",
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    reply(&s.raft.install_snapshot(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::ForwardRequest;
    use crate::types::{Command, Condition};
    use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
    use openraft::{CommittedLeaderId, LogId, Vote};
    use proptest::prelude::*;

    const ME: &str = "c0ffee";

    fn identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        id.adopt_cluster(ME).unwrap();
        (dir, id)
    }

    fn status(r: &Response) -> u16 {
        r.status().as_u16()
    }

    /// Decoding `bytes` as every RPC body type: never a panic; a refusal is 400 (cannot
    /// decode) or 421 (someone else's), and nothing else.
    fn decode_all(ident: &Identity, bytes: &[u8]) -> Result<Vec<&'static str>, TestCaseError> {
        let mut accepted = Vec::new();
        macro_rules! one {
            ($t:ty) => {
                match open_envelope::<$t>(ident, bytes) {
                    Ok(_) => accepted.push(stringify!($t)),
                    Err(r) => {
                        prop_assert!(matches!(status(&r), 400 | 421), "status {}", status(&r))
                    }
                }
            };
        }
        one!(VoteRequest<NodeId>);
        one!(AppendEntriesRequest<TypeConfig>);
        one!(InstallSnapshotRequest<TypeConfig>);
        one!(ForwardRequest);
        // The identity is never changed by what was received.
        prop_assert_eq!(ident.cluster_id(), Some(ME.to_string()));
        Ok(accepted)
    }

    fn vote_envelope(cluster: Option<&str>, target: NodeId, term: u64) -> Vec<u8> {
        bincode::serialize(&Envelope {
            cluster_id: cluster.map(str::to_string),
            from: 42,
            target,
            body: VoteRequest::<NodeId>::new(
                Vote::new(term, 42),
                Some(LogId::new(CommittedLeaderId::new(term, 42), 9)),
            ),
        })
        .unwrap()
    }

    fn append_envelope(target: NodeId) -> Vec<u8> {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new(3, 42),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 42), 10)),
            entries: vec![openraft::Entry {
                log_id: LogId::new(CommittedLeaderId::new(3, 42), 11),
                payload: openraft::EntryPayload::Normal(crate::types::Request::Batch(
                    crate::types::Batch {
                        id: 1,
                        cmds: vec![Command::Put {
                            key: "k".into(),
                            value: b"value".to_vec(),
                            cond: Condition::None,
                        }],
                    },
                )),
            }],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 42), 10)),
        };
        bincode::serialize(&Envelope {
            cluster_id: Some(ME.to_string()),
            from: 42,
            target,
            body: req,
        })
        .unwrap()
    }

    #[test]
    fn envelopes_for_others_are_refused_with_421() {
        let (_dir, ident) = identity();
        let me = ident.node_id();
        let ok = open_envelope::<VoteRequest<NodeId>>(&ident, &vote_envelope(Some(ME), me, 5));
        assert_eq!(
            ok.map(|(from, v)| (from, v.vote)).ok(),
            Some((42, Vote::new(5, 42)))
        );
        for bytes in [
            vote_envelope(Some("other"), me, 5),
            vote_envelope(None, me, 5),
            vote_envelope(Some(ME), me ^ 1, 5),
        ] {
            let r = open_envelope::<VoteRequest<NodeId>>(&ident, &bytes)
                .err()
                .unwrap();
            assert_eq!(status(&r), REFUSED_STATUS);
        }
        let r = open_envelope::<VoteRequest<NodeId>>(&ident, b"junk")
            .err()
            .unwrap();
        assert_eq!(status(&r), 400);
        assert_eq!(ident.cluster_id().as_deref(), Some(ME));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (_dir, ident) = identity();
            decode_all(&ident, &bytes)?;
        }

        /// The forwarding RPC (`/internal/v1/forward` on the client port) through the same
        /// decoder: a batch of writes cut short never decodes as a batch, and a damaged one
        /// is refused or decoded without a panic; the sender's decoding of a damaged answer
        /// never panics either.
        #[test]
        fn damaged_forward_batches_are_refused_or_decoded(
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
            keys in proptest::collection::vec("[a-z/]{1,12}", 1..4),
        ) {
            let (_dir, ident) = identity();
            let me = ident.node_id();
            let writes = keys
                .iter()
                .map(|k| Command::Put { key: k.clone(), value: k.as_bytes().to_vec(), cond: Condition::Version(3) })
                .collect();
            let valid = bincode::serialize(&Envelope {
                cluster_id: Some(ME.to_string()),
                from: 42,
                target: me,
                body: ForwardRequest { writes, read_index: true },
            })
            .unwrap();
            prop_assert!(open_envelope::<ForwardRequest>(&ident, &valid).is_ok());
            let truncated = &valid[..cut.index(valid.len())];
            prop_assert!(!decode_all(&ident, truncated)?.contains(&"ForwardRequest"));
            let mut flipped = valid.clone();
            for (i, bit) in &flips {
                flipped[i.index(valid.len())] ^= 1 << bit;
            }
            decode_all(&ident, &flipped)?;
            let _ = bincode::deserialize::<crate::forward::ForwardResponse>(&flipped);
            let _ = bincode::deserialize::<crate::forward::ForwardResponse>(truncated);
        }

        /// Valid envelopes, cut short or with bits flipped: a refusal or a decode, and a
        /// decode only when the envelope is still for this cluster and this node.
        #[test]
        fn damaged_envelopes_are_refused_or_decoded(
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
            append in any::<bool>(),
        ) {
            let (_dir, ident) = identity();
            let me = ident.node_id();
            let valid = if append { append_envelope(me) } else { vote_envelope(Some(ME), me, 7) };
            let truncated = &valid[..cut.index(valid.len())];
            let own = if append { "AppendEntriesRequest<TypeConfig>" } else { "VoteRequest<NodeId>" };
            let accepted = decode_all(&ident, truncated)?;
            prop_assert!(!accepted.contains(&own), "a truncated envelope decoded: {accepted:?}");
            let mut flipped = valid.clone();
            for (i, bit) in &flips {
                flipped[i.index(valid.len())] ^= 1 << bit;
            }
            decode_all(&ident, &flipped)?;
            // An envelope that decodes is still for this node and this cluster.
            if let Ok(env) = bincode::deserialize::<Envelope<VoteRequest<NodeId>>>(&flipped)
                && open_envelope::<VoteRequest<NodeId>>(&ident, &flipped).is_ok()
            {
                prop_assert_eq!(env.target, me);
                prop_assert_eq!(env.cluster_id.as_deref(), Some(ME));
            }
        }
    }
}
