//! The KV API's keys and writes: what a key is (`/v1/kv/{key}`, percent-decoded, within
//! its limit), conditional writes (`If-Match`, `If-None-Match`), and the write handlers,
//! from the request to the answer, so that a write reads top to bottom in one file:
//! [`put`] and [`delete`] parse the request, run the command on the leader
//! ([`crate::forward::leader::write_via_leader`]) and turn its outcome into the answer
//! ([`write_response`]). Reads are [`super::read`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use crate::app::App;
use crate::batcher::{Ack, WriteError};
use crate::forward::leader::write_via_leader;
use crate::types::{Command, Condition, Outcome, TxnOpResult};
use crate::web::{ApiError, ApiResult, parse_query, read_body};

/// The key from `/v1/kv/{key}`: percent-decoded, UTF-8, within the size limit.
pub(super) fn key_from_path(max_key_bytes: usize, uri: &Uri) -> ApiResult<String> {
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

pub(super) fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
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
        }
    }
}
