//! The admin API's changes: initializing a cluster, adding and removing members, and
//! changing the cluster-wide settings, each run on the leader through the Raft log.
//!
//! Membership changes run one at a time on the leader: a second concurrent change gets
//! 409, and openraft's joint consensus means a configuration is never half-applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, InitializeError, RaftError};

use super::admin::{cluster_view, config_view};
use crate::app::App;
use crate::forward::leader::on_leader;
use crate::types::{Member, NodeId, ReadConsistency, ReplicationMode, Request};
use crate::web::{ApiError, ApiResult, parse_query, read_body};
pub use rstore_api::admin::{AddMember, ConfigChange, MemberRole};

/// Read a small JSON request body within the configured body timeout (`--body-timeout-ms`,
/// as for every other body); `shape` tells the user what is expected.
async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    shape: &str,
) -> ApiResult<(Bytes, T)> {
    let raw = read_body(
        headers,
        body,
        64 << 10,
        "request body",
        app.settings.body_timeout,
    )
    .await?;
    let value = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::bad_request("invalid_request", format!("body must be JSON {shape}: {e}"))
    })?;
    Ok((raw, value))
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "membership_change_in_progress",
        message,
    )
}

fn lock_membership(app: &App) -> ApiResult<tokio::sync::MutexGuard<'_, ()>> {
    app.membership_lock.try_lock().map_err(|_| {
        conflict("another membership change is running on this cluster; retry when it has finished")
    })
}

fn map_write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
) -> ApiResult<Option<Response>> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Ok(None),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => Err(conflict(format!(
            "a previous membership change is not committed yet ({p}); retry shortly"
        ))),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_membership_change",
            e.to_string(),
        )),
        RaftError::Fatal(e) => Err(ApiError::internal(e)),
    }
}

pub async fn init(State(app): State<Arc<App>>, uri: Uri) -> ApiResult {
    parse_query(&uri, &[])?;
    let _guard = lock_membership(&app)?;
    let m = app.metrics_snapshot();
    let mem = m.membership_config.membership();
    if mem.nodes().count() > 0 {
        let only_me = mem.nodes().count() == 1 && mem.get_node(&app.id).is_some();
        if only_me {
            return Ok(axum::Json(cluster_view(&app, &m)).into_response());
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_initialized",
            format!(
                "this node is already a member of cluster {} with {} members; init runs once, on the first node only",
                app.identity.cluster_id().unwrap_or_default(),
                mem.nodes().count()
            ),
        ));
    }
    if let Some(c) = app.identity.cluster_id() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_initialized",
            format!(
                "this node was added to cluster {c} and is waiting for its leader; it cannot start a new cluster"
            ),
        ));
    }
    app.identity
        .adopt_cluster(&crate::identity::new_cluster_id())
        .map_err(ApiError::internal)?;
    let members = BTreeMap::from([(app.id, app.me())]);
    match app.raft.initialize(members).await {
        Ok(()) => {}
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_initialized",
                e.to_string(),
            ));
        }
        Err(e) => return Err(ApiError::internal(e)),
    }
    let m = app
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader == Some(app.id), "became leader")
        .await
        .map_err(|e| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "init_timeout", e.to_string()))?;
    tracing::info!(cluster_id = ?app.identity.cluster_id(), "initialized a new cluster");
    Ok(axum::Json(cluster_view(&app, &m)).into_response())
}

/// A member URL must be a bare `http://host:port`: the scheme the node speaks, and no path,
/// query, fragment or userinfo, which would let an added member point the leader's Raft
/// traffic at some other endpoint.
/// A member URL must be a bare `<scheme>://host:port`, in the one scheme the cluster speaks
/// (`https`, or `http` in plaintext mode).
fn check_url(field: &str, url: &str, scheme: &str) -> ApiResult<()> {
    let refuse = |why: &str| {
        Err(ApiError::bad_request(
            "invalid_request",
            format!("{field} must be a bare {scheme}://host:port URL ({why}); got '{url}'"),
        ))
    };
    let Ok(u) = reqwest::Url::parse(url) else {
        return refuse("it does not parse as a URL");
    };
    if u.scheme() != scheme {
        return refuse(if scheme == "https" {
            "members speak TLS on both ports"
        } else {
            "this cluster runs in plaintext mode"
        });
    }
    if u.host_str().is_none_or(str::is_empty) {
        return refuse("it names no host");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return refuse("it has userinfo");
    }
    if u.path() != "/" {
        return refuse("it has a path");
    }
    if u.query().is_some() || u.fragment().is_some() {
        return refuse("it has a query or fragment");
    }
    Ok(())
}

pub async fn add_member(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    parse_query(&uri, &[])?;
    let (body, req): (_, AddMember) = read_json(
        &app,
        &headers,
        body,
        r#"{"id":u64,"peer_url":..,"client_url":..,"role":"voter|learner"}"#,
    )
    .await?;
    let voter = match req.role.as_str() {
        "voter" => true,
        "learner" => false,
        r => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("role must be voter or learner; got '{r}'"),
            ));
        }
    };
    if req.id == 0 {
        return Err(ApiError::bad_request("invalid_request", "id 0 is reserved"));
    }
    check_url("peer_url", &req.peer_url, app.settings.scheme())?;
    check_url("client_url", &req.client_url, app.settings.scheme())?;
    on_leader(&app, &method, &uri, &headers, body.clone(), || {
        let app = app.clone();
        let req = req.clone();
        async move { add_on_leader(&app, req, voter).await }
    })
    .await
}

async fn add_on_leader(app: &Arc<App>, req: AddMember, voter: bool) -> ApiResult<Option<Response>> {
    let _guard = lock_membership(app)?;
    let member = Member {
        peer_url: req.peer_url.clone(),
        client_url: req.client_url.clone(),
    };
    let m = app.metrics_snapshot();
    let mem = m.membership_config.membership();
    let is_voter = mem.voter_ids().any(|v| v == req.id);
    match mem.get_node(&req.id) {
        Some(existing) if *existing != member => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "member_exists",
                format!(
                    "member {} is already registered with {existing}; remove it first to change its addresses",
                    req.id
                ),
            ));
        }
        Some(_) if is_voter && !voter => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "member_exists",
                format!(
                    "member {} is a voter; remove it first to make it a learner",
                    req.id
                ),
            ));
        }
        Some(_) if is_voter || !voter => {
            // Already there with this role: idempotent.
            return Ok(Some(axum::Json(cluster_view(app, &m)).into_response()));
        }
        Some(_) => {} // a learner to promote
        None => {
            if let Err(e) = app.raft.add_learner(req.id, member.clone(), false).await {
                return map_write_error(e);
            }
            tracing::info!(id = req.id, peer = %member.peer_url, "added learner");
        }
    }
    // Wait until the learner holds everything the leader had when it was added.
    let target = app.metrics_snapshot().last_log_index.unwrap_or(0);
    let timeout = app.settings.catch_up_timeout;
    let id = req.id;
    let caught_up = app
        .raft
        .wait(Some(timeout))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .and_then(|l| *l)
                    .is_some_and(|l| l.index >= target)
            },
            "learner caught up",
        )
        .await;
    if caught_up.is_err() {
        if app.metrics_snapshot().current_leader != Some(app.id) {
            return Ok(None);
        }
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "catch_up_timeout",
            format!(
                "member {id} was added as a learner but did not catch up within {} s (is it running and reachable at {}?); it stays a learner: retry to promote it, or remove it",
                timeout.as_secs(),
                req.peer_url
            ),
        ));
    }
    if voter {
        if let Err(e) = app
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
        {
            return map_write_error(e);
        }
        tracing::info!(id, "promoted to voter");
    }
    Ok(Some(
        axum::Json(cluster_view(app, &app.metrics_snapshot())).into_response(),
    ))
}

pub async fn remove_member(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    parse_query(&uri, &[])?;
    let raw = uri.path().rsplit('/').next().unwrap_or("");
    let id: NodeId = raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_request",
            format!("member id must be a number; got '{raw}'"),
        )
    })?;
    on_leader(&app, &method, &uri, &headers, Bytes::new(), || {
        let app = app.clone();
        async move { remove_on_leader(&app, id).await }
    })
    .await
}

async fn remove_on_leader(app: &Arc<App>, id: NodeId) -> ApiResult<Option<Response>> {
    let _guard = lock_membership(app)?;
    let m = app.metrics_snapshot();
    let mem = m.membership_config.membership();
    if mem.get_node(&id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "member_not_found",
            format!("no member with id {id}; see GET /v1/cluster"),
        ));
    }
    let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_membership_change",
                "cannot remove the only voter; add another voter first",
            ));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    if let Err(e) = app.raft.change_membership(change, false).await {
        return map_write_error(e);
    }
    tracing::info!(id, "removed member");
    // A removed leader steps down; report the view from whoever leads now.
    Ok(Some(
        axum::Json(cluster_view(app, &app.metrics_snapshot())).into_response(),
    ))
}

/// `PUT /v1/cluster/config`: change the cluster-wide settings through the Raft log. They
/// take effect on every member as it applies the entry; no restart.
pub async fn put_config(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    parse_query(&uri, &[])?;
    let (body, change): (_, ConfigChange) = read_json(
        &app,
        &headers,
        body,
        r#"{"replication_mode":"quorum|sync|async","read_consistency":"linearizable|leader|stale"}"#,
    )
    .await?;
    fn named<T: std::str::FromStr<Err = rstore_api::UnknownName>>(
        name: Option<&str>,
    ) -> ApiResult<Option<T>> {
        name.map(str::parse::<T>)
            .transpose()
            .map_err(|e: rstore_api::UnknownName| {
                ApiError::bad_request("invalid_request", e.to_string())
            })
    }
    let mode: Option<ReplicationMode> = named(change.replication_mode.as_deref())?;
    let reads: Option<ReadConsistency> = named(change.read_consistency.as_deref())?;
    on_leader(&app, &method, &uri, &headers, body.clone(), || {
        let app = app.clone();
        async move {
            let mut config = app.kv.config();
            if let Some(m) = mode {
                config.replication_mode = m;
            }
            if let Some(r) = reads {
                config.read_consistency = r;
            }
            match app.raft.client_write(Request::SetConfig(config)).await {
                Ok(_) => {
                    tracing::info!(
                        mode = config.replication_mode.as_str(),
                        reads = config.read_consistency.as_str(),
                        "cluster config changed"
                    );
                    Ok(Some(axum::Json(config_view(&config)).into_response()))
                }
                Err(e) => map_write_error(e),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn member_urls_must_be_bare_http_host_and_port() {
        for ok in [
            "http://127.0.0.1:7380",
            "http://basic-0.basic:7380/",
            "http://[::1]:1",
        ] {
            assert!(check_url("peer_url", ok, "http").is_ok(), "{ok}");
            let tls = ok.replace("http://", "https://");
            assert!(check_url("peer_url", &tls, "https").is_ok(), "{tls}");
            assert!(check_url("peer_url", ok, "https").is_err(), "{ok} with TLS");
        }
        for bad in [
            "http://127.0.0.1:27499/anything?x=",
            "http://127.0.0.1:27499/raft",
            "http://127.0.0.1:27499?x=1",
            "http://127.0.0.1:27499/#frag",
            "http://user:pw@127.0.0.1:7380",
            "https://127.0.0.1:7380",
            "ftp://127.0.0.1:7380",
            "http://",
            "127.0.0.1:7380",
            "",
        ] {
            let e = check_url("peer_url", bad, "http").expect_err(bad);
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "invalid_request"),
                "{bad}"
            );
            assert!(e.message.contains("peer_url"), "{}", e.message);
        }
    }
}
