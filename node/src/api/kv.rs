//! The KV API: get, put, delete and range listing of keys.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use crate::app::App;
use crate::batcher::{Ack, WriteError};
use crate::forward::leader::{linearizable_barrier, on_leader, write_via_leader};
use crate::store::Record;
use crate::types::{Command, Condition, Outcome, ReadConsistency, TxnOpResult};
use crate::web::{ApiError, ApiResult, parse_query, read_body};

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

/// The key from `/v1/kv/{key}`: percent-decoded, UTF-8, within the size limit.
fn key_from_path(max_key_bytes: usize, uri: &Uri) -> ApiResult<String> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or("");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    check_key(max_key_bytes, bytes)
}

/// A key as given by a client: 1..=`max_key_bytes` bytes of UTF-8.
pub fn check_key(max_key_bytes: usize, bytes: Vec<u8>) -> ApiResult<String> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_key",
            "the key is empty; keys are 1 or more bytes",
        ));
    }
    if bytes.len() > max_key_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "key_too_large",
            format!(
                "the key is {} bytes; the limit is {} bytes",
                bytes.len(),
                max_key_bytes
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        ApiError::bad_request(
            "invalid_key",
            "the key is not valid UTF-8 after percent-decoding",
        )
    })
}

/// The compare-and-set condition from `If-Match` / `If-None-Match`.
fn condition(headers: &HeaderMap) -> ApiResult<Condition> {
    let header = |name: &str| -> ApiResult<Option<String>> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(|s| s.trim().to_string()).map_err(|_| {
                    ApiError::bad_request("invalid_request", format!("{name} is not valid text"))
                })
            })
            .transpose()
    };
    match (header("if-match")?, header("if-none-match")?) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_request",
            "use either If-Match or If-None-Match, not both",
        )),
        (Some(m), None) => {
            let v = m.trim_start_matches("W/").trim_matches('"');
            v.parse::<u64>().map(Condition::Version).map_err(|_| {
                ApiError::bad_request(
                    "invalid_request",
                    format!("If-Match must be a version as returned in ETag, like \"3\"; got {m}"),
                )
            })
        }
        (None, Some(n)) if n == "*" => Ok(Condition::Absent),
        (None, Some(n)) => Err(ApiError::bad_request(
            "invalid_request",
            format!("If-None-Match supports only *, to create a key that does not exist; got {n}"),
        )),
        (None, None) => Ok(Condition::None),
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("valid header")
}

fn precondition_failed(key: &str, current: Option<u64>) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        match current {
            Some(v) => format!(
                "key '{key}' is at version {v}; read it again and retry with If-Match: \"{v}\""
            ),
            None => format!("key '{key}' does not exist"),
        },
    )
}

/// A transaction's result as JSON.
pub fn write_response_txn(r: Result<Ack, WriteError>) -> ApiResult {
    let (succeeded, revision, results) = match r {
        Ok(Ack::Applied(Outcome::Txn {
            succeeded,
            revision,
            results,
        })) => (succeeded, revision, results),
        Ok(Ack::Applied(Outcome::TxnTooLarge { bytes })) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "response_too_large",
                format!(
                    "the transaction's gets would return {bytes} bytes of keys and values, over the limit of {}; nothing was applied. Split the gets over several transactions, or read the keys with GET",
                    crate::types::MAX_TXN_RESPONSE_BYTES
                ),
            ));
        }
        Ok(other) => {
            return Err(ApiError::internal(format!(
                "unexpected transaction outcome {other:?}"
            )));
        }
        Err(e) => return write_response("", Err(e)),
    };
    let results: Vec<serde_json::Value> = results
        .into_iter()
        .map(|r| match r {
            TxnOpResult::Put { version } => serde_json::json!({"op": "put", "version": version}),
            TxnOpResult::Delete { deleted } => {
                serde_json::json!({"op": "delete", "deleted": deleted})
            }
            TxnOpResult::Get(None) => serde_json::json!({"op": "get", "found": false}),
            TxnOpResult::Get(Some(kv)) => serde_json::json!({
                "op": "get",
                "found": true,
                "key": kv.key,
                "value_base64": base64::engine::general_purpose::STANDARD.encode(&kv.value),
                "version": kv.version,
                "create_revision": kv.create_revision,
                "mod_revision": kv.mod_revision,
            }),
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"succeeded": succeeded, "revision": revision, "results": results}),
    ))
}

/// Turn a write's result into a response.
/// The answer to a write the batcher refused before it reached the log.
fn invalid(inv: crate::types::Invalid) -> ApiError {
    // The codes the batcher's checks use, as the static strings the API's errors carry.
    let code = [
        "invalid_key",
        "key_too_large",
        "value_too_large",
        "request_too_large",
    ]
    .into_iter()
    .find(|c| *c == inv.code)
    .unwrap_or("invalid_request");
    let status = if inv.too_large {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, code, inv.message)
}

pub fn write_response(key: &str, r: Result<Ack, WriteError>) -> ApiResult {
    let outcome = match r {
        Ok(Ack::Applied(o)) => o,
        Ok(Ack::Accepted) => {
            // async mode: durable on the leader only; revision and version are not known yet.
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({"revision": null, "version": null, "durability": "leader"}),
            ));
        }
        Err(WriteError::SyncTimeout(msg)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sync_replication_timeout",
                msg,
            ));
        }
        Err(WriteError::NotLeader(_)) => {
            return Err(ApiError::no_leader("the leader kept moving; retry shortly"));
        }
        Err(WriteError::Invalid(inv)) => return Err(invalid(inv)),
        Err(WriteError::QuotaExceeded(msg)) => {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "quota_exceeded",
                msg,
            ));
        }
        Err(WriteError::Unknown(msg)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!(
                    "{msg}; the write may or may not have been applied: read the key before retrying"
                ),
            ));
        }
    };
    Ok(match outcome {
        Outcome::Put { revision, version } => {
            let mut r = json(
                StatusCode::OK,
                &serde_json::json!({"revision": revision, "version": version}),
            );
            r.headers_mut().insert("etag", etag(version));
            r
        }
        Outcome::Deleted { revision } => {
            json(StatusCode::OK, &serde_json::json!({"revision": revision}))
        }
        Outcome::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "key_not_found",
                format!("key '{key}' does not exist"),
            ));
        }
        Outcome::Txn { .. } | Outcome::TxnTooLarge { .. } => {
            return Err(ApiError::internal(
                "a transaction outcome answered a single-key write",
            ));
        }
        Outcome::PreconditionFailed { current_version } => {
            return Err(precondition_failed(key, current_version));
        }
    })
}

pub async fn put(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let key = key_from_path(app.settings.max_key_bytes, &uri)?;
    parse_query(&uri, &[])?;
    let cond = condition(&headers)?;
    let value = read_body(
        &headers,
        body,
        app.settings.max_value_bytes,
        "value",
        app.settings.body_timeout,
    )
    .await?;
    let cmd = Command::Put {
        key: key.clone(),
        value: value.to_vec(),
        cond,
    };
    write_response(&key, write_via_leader(&app, cmd).await?)
}

pub async fn delete(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let key = key_from_path(app.settings.max_key_bytes, &uri)?;
    parse_query(&uri, &[])?;
    let cond = match condition(&headers)? {
        Condition::Absent => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "If-None-Match: * makes no sense on DELETE",
            ));
        }
        c => c,
    };
    write_response(
        &key,
        write_via_leader(
            &app,
            Command::Delete {
                key: key.clone(),
                cond,
            },
        )
        .await?,
    )
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

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn conditions_follow_http_semantics() {
        assert_eq!(condition(&headers(&[])).unwrap(), Condition::None);
        assert_eq!(
            condition(&headers(&[("if-match", "\"7\"")])).unwrap(),
            Condition::Version(7)
        );
        assert_eq!(
            condition(&headers(&[("if-match", "W/\"7\"")])).unwrap(),
            Condition::Version(7)
        );
        assert_eq!(
            condition(&headers(&[("if-none-match", "*")])).unwrap(),
            Condition::Absent
        );
        for bad in [
            headers(&[("if-match", "abc")]),
            headers(&[("if-none-match", "\"3\"")]),
            headers(&[("if-match", "1"), ("if-none-match", "*")]),
        ] {
            let e = condition(&bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
        }
    }

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
        use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
        use proptest::prelude::*;

        /// What a path segment may not hold raw; `/` stays raw, as keys may contain it.
        const PATH: &AsciiSet = &CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'%')
            .add(b'<')
            .add(b'>')
            .add(b'?')
            .add(b'`')
            .add(b'{')
            .add(b'}')
            .add(b'[')
            .add(b']')
            .add(b'\\')
            .add(b'^')
            .add(b'|');

        const MAX: usize = 64;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_bytes_are_a_key_or_a_clear_error(bytes in proptest::collection::vec(any::<u8>(), 0..MAX * 2)) {
                let n = bytes.len();
                let utf8 = std::str::from_utf8(&bytes).is_ok();
                match check_key(MAX, bytes.clone()) {
                    Ok(k) => {
                        prop_assert!((1..=MAX).contains(&n));
                        prop_assert_eq!(k.as_bytes(), &bytes[..]);
                    }
                    Err(e) if n == 0 => prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_key")),
                    Err(e) if n > MAX => {
                        prop_assert_eq!((e.status, e.code), (StatusCode::PAYLOAD_TOO_LARGE, "key_too_large"));
                        prop_assert!(e.message.contains(&n.to_string()), "{}", e.message);
                    }
                    Err(e) => {
                        prop_assert!(!utf8);
                        prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_key"));
                    }
                }
            }

            #[test]
            fn any_percent_encoded_path_is_a_key_or_a_clear_error(bytes in proptest::collection::vec(any::<u8>(), 0..MAX * 2)) {
                let encoded: String = percent_encoding::percent_encode(&bytes, percent_encoding::NON_ALPHANUMERIC).to_string();
                let uri: Uri = format!("/v1/kv/{encoded}").parse().unwrap();
                match key_from_path(MAX, &uri) {
                    Ok(k) => prop_assert_eq!(k.as_bytes(), &bytes[..]),
                    Err(e) => prop_assert!(matches!(e.status, StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE)),
                }
            }

            #[test]
            fn valid_keys_round_trip_through_the_path(key in "\\PC{1,40}") {
                prop_assume!(key.len() <= MAX);
                let path = format!("/v1/kv/{}", utf8_percent_encode(&key, PATH));
                let uri: Uri = path.parse().map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
                prop_assert_eq!(key_from_path(MAX, &uri).map_err(|e| e.message).unwrap(), key);
            }

            #[test]
            fn raw_path_segments_never_panic(path in "/v1/kv/[ -~]{0,80}") {
                if let Ok(uri) = path.parse::<Uri>() {
                    let _ = key_from_path(MAX, &uri);
                    let _ = list_params(&uri);
                }
            }

            #[test]
            fn conditions_parse_or_fail_with_400(
                m in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
                n in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
            ) {
                let mut h = HeaderMap::new();
                for (name, v) in [("if-match", &m), ("if-none-match", &n)] {
                    if let Some(v) = v
                        && let Ok(v) = HeaderValue::from_bytes(v)
                    {
                        h.insert(name, v);
                    }
                }
                let (has_m, has_n) = (h.contains_key("if-match"), h.contains_key("if-none-match"));
                match condition(&h) {
                    Ok(Condition::None) => prop_assert!(!has_m && !has_n),
                    Ok(Condition::Version(_)) => prop_assert!(has_m && !has_n),
                    Ok(Condition::Absent) => prop_assert!(!has_m && has_n),
                    Err(e) => {
                        prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_request"));
                        prop_assert!(has_m || has_n);
                    }
                }
            }

            #[test]
            fn etag_versions_round_trip(v in any::<u64>(), weak in any::<bool>()) {
                let tag = format!("{}\"{v}\"", if weak { "W/" } else { "" });
                let h = headers(&[("if-match", &tag)]);
                prop_assert_eq!(condition(&h).unwrap(), Condition::Version(v));
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
