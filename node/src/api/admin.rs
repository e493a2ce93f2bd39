//! The admin API's status: what a node and the cluster report (`GET /v1/node`,
//! `GET /v1/cluster`, `GET /v1/cluster/config`) and readiness (`/readyz`). Reading only;
//! changing the cluster is [`super::cluster`].

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::forward::leader::on_leader;
use crate::types::{ClusterConfig, NodeId, RaftMetrics, role_name};
use crate::web::{ApiError, ApiResult, parse_query};
pub use rstore_api::admin::{ClusterView, MemberRole, MemberView, NodeInfo, Security};

pub async fn node(State(app): State<Arc<App>>, uri: Uri) -> ApiResult {
    parse_query(&uri, &[])?;
    let m = app.metrics_snapshot();
    Ok(axum::Json(NodeInfo {
        id: app.id,
        cluster_id: app.identity.cluster_id(),
        role: role_name(&m).to_string(),
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        committed_index: app.committed.load(std::sync::atomic::Ordering::Relaxed),
        snapshot_index: m.snapshot.map(|l| l.index),
        revision: app.kv.revision(),
        client_url: app.settings.advertise_client.clone(),
        peer_url: app.settings.advertise_peer.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        security: Security {
            plaintext: app.tls.is_none(),
            peer_auth: if app.tls.is_some() { "tls" } else { "none" }.to_string(),
            client_auth: match (app.tls.is_some(), app.tokens.enabled()) {
                (true, _) => "certificates+tokens",
                (false, true) => "tokens",
                (false, false) => "none",
            }
            .to_string(),
        },
    })
    .into_response())
}

pub(super) fn cluster_view(app: &App, m: &RaftMetrics) -> ClusterView {
    let mem = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
    let leader_last = m.last_log_index.unwrap_or(0);
    let replication = m.replication.as_ref();
    let members = mem
        .nodes()
        .map(|(id, node)| {
            let matched = if *id == app.id && m.state == openraft::ServerState::Leader {
                m.last_log_index
            } else {
                replication
                    .and_then(|r| r.get(id))
                    .map(|l| l.map(|l| l.index).unwrap_or(0))
            };
            MemberView {
                id: *id,
                role: if voters.contains(id) {
                    MemberRole::Voter
                } else {
                    MemberRole::Learner
                },
                client_url: node.client_url.clone(),
                peer_url: node.peer_url.clone(),
                matched_index: matched,
                lag: matched.map(|i| leader_last.saturating_sub(i)),
                last_contact_ms: if *id == app.id {
                    replication.map(|_| 0)
                } else {
                    replication
                        .and(app.contact.since(*id))
                        .map(|d| d.as_millis() as u64)
                },
            }
        })
        .collect();
    let config = app.kv.config();
    ClusterView {
        cluster_id: app.identity.cluster_id(),
        leader_id: m.current_leader,
        term: m.current_term,
        membership_changing: mem.get_joint_config().len() > 1,
        members,
        replication_mode: config.replication_mode,
        read_consistency: config.read_consistency,
        oldest_revision: app.kv.oldest_revision(),
        revision: app.kv.revision(),
    }
}

pub async fn cluster(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    let q = parse_query(&uri, &["consistency"])?;
    let stale = match q.get("consistency").map(|s| s.as_str()) {
        Some("stale") => true,
        None | Some("leader") | Some("linearizable") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("unknown consistency '{other}'; use leader or stale"),
            ));
        }
    };
    let local = || async {
        Ok(Some(
            axum::Json(cluster_view(&app, &app.metrics_snapshot())).into_response(),
        ))
    };
    if stale {
        return local().await.map(|r| r.expect("some"));
    }
    on_leader(&app, &method, &uri, &headers, Bytes::new(), local).await
}

/// Entries a follower may trail the leader's commit index and still be ready.
const READY_LAG: u64 = 1000;

pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let m = app.metrics_snapshot();
    let not_ready = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if m.membership_config.membership().get_node(&app.id).is_none() {
        return not_ready("not a member of an initialized cluster".into());
    }
    let Some(leader) = m.current_leader else {
        return not_ready("no leader known".into());
    };
    if leader != app.id {
        // Caught up means: applied close to what the leader says is committed.
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let leader_commit = app.leader_commit.load(std::sync::atomic::Ordering::Relaxed);
        if leader_commit.saturating_sub(applied) > READY_LAG {
            return not_ready(format!(
                "catching up: applied {applied} of the leader's commit index {leader_commit}"
            ));
        }
    }
    (StatusCode::OK, "ready").into_response()
}

pub(super) fn config_view(c: &ClusterConfig) -> serde_json::Value {
    serde_json::json!({
        "replication_mode": c.replication_mode.as_str(),
        "read_consistency": c.read_consistency.as_str(),
    })
}

pub async fn get_config(State(app): State<Arc<App>>, uri: Uri) -> ApiResult {
    parse_query(&uri, &[])?;
    Ok(axum::Json(config_view(&app.kv.config())).into_response())
}
