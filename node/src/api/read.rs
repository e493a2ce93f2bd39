//! The KV API's reads: `GET /v1/kv/{key}` and range listing (`GET /v1/kv`), at the
//! consistency the request asks for (linearizable, leader or stale), served locally once
//! that level allows, or on the leader.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use serde::Serialize;

use super::kv::{json, key_from_path};
use crate::app::App;
use crate::forward::leader::{linearizable_barrier, on_leader};
use crate::store::Record;
use crate::types::ReadConsistency;
use crate::web::{ApiError, ApiResult, parse_query};

/// The consistency of a read: the request's `consistency` parameter, else the cluster default.
pub fn consistency(app: &App, s: Option<&String>) -> ApiResult<ReadConsistency> {
    parse_consistency(s.map(|s| s.as_str()), app.kv.config().read_consistency)
}

fn parse_consistency(s: Option<&str>, default: ReadConsistency) -> ApiResult<ReadConsistency> {
    match s {
        None => Ok(default),
        Some(name) => name.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                format!("unknown consistency '{name}'; use linearizable, leader or stale"),
            )
        }),
    }
}

/// Serve a read locally once its consistency level allows, or forward it to the leader.
async fn read<F>(
    app: &Arc<App>,
    consistency: ReadConsistency,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    local: F,
) -> ApiResult
where
    F: Fn() -> ApiResult,
{
    match consistency {
        ReadConsistency::Stale => local(),
        ReadConsistency::Leader => {
            on_leader(app, method, uri, headers, Bytes::new(), || async {
                local().map(Some)
            })
            .await
        }
        ReadConsistency::Linearizable => {
            linearizable_barrier(app).await?;
            local()
        }
    }
}

fn revision_header(app: &App) -> (&'static str, String) {
    ("x-rstore-revision", app.kv.revision().to_string())
}

pub async fn get(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    let key = key_from_path(app.settings.max_key_bytes, &uri)?;
    let q = parse_query(&uri, &["consistency"])?;
    let consistency = consistency(&app, q.get("consistency"))?;
    read(&app, consistency, &method, &uri, &headers, || {
        let record = app.kv.get(&key);
        let rev = revision_header(&app);
        match record {
            Some(Record {
                create_revision,
                mod_revision,
                version,
                value,
            }) => Ok((
                StatusCode::OK,
                [
                    ("content-type", "application/octet-stream".to_string()),
                    ("etag", format!("\"{version}\"")),
                    rev,
                    ("x-rstore-create-revision", create_revision.to_string()),
                    ("x-rstore-mod-revision", mod_revision.to_string()),
                ],
                value,
            )
                .into_response()),
            None => {
                let mut r = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "key_not_found",
                    format!("key '{key}' does not exist"),
                )
                .into_response();
                r.headers_mut()
                    .insert(rev.0, HeaderValue::from_str(&rev.1).expect("header"));
                Ok(r)
            }
        }
    })
    .await
}

#[derive(Serialize)]
struct ListItem {
    key: String,
    value_base64: String,
    version: u64,
    create_revision: u64,
    mod_revision: u64,
}

#[derive(Serialize)]
struct ListResponse {
    revision: u64,
    items: Vec<ListItem>,
    more: bool,
}

pub const MAX_LIST_LIMIT: usize = 10_000;

/// The query of `GET /v1/kv`.
#[derive(Debug, PartialEq, Eq)]
struct ListParams {
    prefix: String,
    start_after: Option<String>,
    limit: usize,
    /// Checked against the cluster default by [`parse_consistency`].
    consistency: Option<String>,
}

fn list_params(uri: &Uri) -> ApiResult<ListParams> {
    let mut q = parse_query(uri, &["prefix", "start_after", "limit", "consistency"])?;
    // Checked first, as before the refactoring: the default does not matter here.
    if let Some(c) = q.get("consistency") {
        parse_consistency(Some(c), ReadConsistency::Linearizable)?;
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("limit must be a number from 1 to {MAX_LIST_LIMIT}; got '{l}'"),
                ));
            }
        },
    };
    Ok(ListParams {
        prefix: q.remove("prefix").unwrap_or_default(),
        start_after: q.remove("start_after"),
        limit,
        consistency: q.remove("consistency"),
    })
}

/// A list page stops growing once its keys and values reach this many bytes (about 5.4 MiB
/// of JSON with base64 values); `more` then says to continue with `start_after`.
pub const MAX_LIST_BYTES: usize = 4 << 20;

pub async fn list(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    let ListParams {
        prefix,
        start_after,
        limit,
        consistency,
    } = list_params(&uri)?;
    let consistency = parse_consistency(consistency.as_deref(), app.kv.config().read_consistency)?;
    read(&app, consistency, &method, &uri, &headers, || {
        let revision = app.kv.revision();
        let (items, more) = app
            .kv
            .list(&prefix, start_after.as_deref(), limit, MAX_LIST_BYTES);
        let items = items
            .into_iter()
            .map(|i| ListItem {
                key: i.key,
                value_base64: base64::engine::general_purpose::STANDARD.encode(&i.record.value),
                version: i.record.version,
                create_revision: i.record.create_revision,
                mod_revision: i.record.mod_revision,
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            &ListResponse {
                revision,
                items,
                more,
            },
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_levels_parse_with_the_cluster_default() {
        use ReadConsistency::*;
        assert_eq!(parse_consistency(None, Stale).unwrap(), Stale);
        assert_eq!(parse_consistency(None, Linearizable).unwrap(), Linearizable);
        assert_eq!(
            parse_consistency(Some("stale"), Linearizable).unwrap(),
            Stale
        );
        assert_eq!(parse_consistency(Some("leader"), Stale).unwrap(), Leader);
        assert_eq!(
            parse_consistency(Some("linearizable"), Stale).unwrap(),
            Linearizable
        );
        assert!(parse_consistency(Some("eventual"), Stale).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn raw_path_segments_never_panic(path in "/v1/kv/[ -~]{0,80}") {
                if let Ok(uri) = path.parse::<Uri>() {
                    let _ = super::super::super::kv::key_from_path(64, &uri);
                    let _ = list_params(&uri);
                }
            }

            #[test]
            fn list_queries_parse_or_fail_with_400(query in "[a-z_=&%0-9A-F.+-]{0,60}") {
                let uri: Uri = format!("/v1/kv?{query}").parse().unwrap();
                match list_params(&uri) {
                    Ok(p) => prop_assert!((1..=MAX_LIST_LIMIT).contains(&p.limit)),
                    Err(e) => {
                        prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                        prop_assert!(matches!(e.code, "unknown_parameter" | "invalid_request"), "{}", e.code);
                    }
                }
            }

            #[test]
            fn list_limits_are_checked(limit in any::<i64>()) {
                let uri: Uri = format!("/v1/kv?limit={limit}&prefix=a%2F").parse().unwrap();
                match list_params(&uri) {
                    Ok(p) => {
                        prop_assert!((1..=MAX_LIST_LIMIT as i64).contains(&limit));
                        prop_assert_eq!(p.limit as i64, limit);
                        prop_assert_eq!(p.prefix, "a/");
                    }
                    Err(e) => {
                        prop_assert!(!(1..=MAX_LIST_LIMIT as i64).contains(&limit));
                        prop_assert!(e.message.contains(&limit.to_string()), "{}", e.message);
                    }
                }
            }
        }
    }
}
