//! `POST /v1/txn`: an atomic multi-key transaction. Every compare is checked against the
//! same state; then either the success or the failure operations run, all or nothing,
//! through the Raft log like any write (so a leader crash mid-flight applies it entirely
//! or not at all).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use serde::Deserialize;

use super::forward::write_via_leader;
use super::kv::{check_key, read_body, write_response_txn};
use super::{ApiError, ApiResult, parse_query};
use crate::app::App;
use crate::types::{Command, Compare, CompareOp, CompareTarget, Txn, TxnOp};

/// Most compares, and most operations per branch, in one transaction.
pub const MAX_TXN_OPS: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<OpBody>,
    #[serde(default)]
    failure: Vec<OpBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    /// version | create_revision | mod_revision | value | exists
    target: String,
    /// = | != | < | > (default =)
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    value_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    /// put | delete | get
    op: String,
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", msg)
}

fn bytes_of(what: &str, value: Option<&str>, b64: Option<&str>) -> ApiResult<Vec<u8>> {
    match (value, b64) {
        (Some(v), None) => Ok(v.as_bytes().to_vec()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| bad(format!("{what}: value_base64 is not valid base64: {e}"))),
        (Some(_), Some(_)) => Err(bad(format!("{what}: give value or value_base64, not both"))),
        (None, None) => Err(bad(format!(
            "{what}: a value (value or value_base64) is required"
        ))),
    }
}

fn parse_compare(app: &App, i: usize, c: CompareBody) -> ApiResult<Compare> {
    let what = format!("compare[{i}]");
    let key = check_key(app, c.key.into_bytes())?;
    let op = match c.op.as_deref().unwrap_or("=") {
        "=" | "==" | "equal" => CompareOp::Equal,
        "!=" | "not_equal" => CompareOp::NotEqual,
        "<" | "less" => CompareOp::Less,
        ">" | "greater" => CompareOp::Greater,
        o => return Err(bad(format!("{what}: unknown op '{o}'; use =, !=, < or >"))),
    };
    let number = || -> ApiResult<u64> {
        c.value.as_ref().and_then(|v| v.as_u64()).ok_or_else(|| {
            bad(format!(
                "{what}: target {} needs a non-negative integer value",
                c.target
            ))
        })
    };
    let target = match c.target.as_str() {
        "version" => CompareTarget::Version(number()?),
        "create_revision" => CompareTarget::CreateRevision(number()?),
        "mod_revision" => CompareTarget::ModRevision(number()?),
        "value" => {
            let text = match &c.value {
                None => None,
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(_) => {
                    return Err(bad(format!(
                        "{what}: value must be a string (or use value_base64)"
                    )));
                }
            };
            let v = bytes_of(&what, text, c.value_base64.as_deref())?;
            if v.len() > app.settings.max_value_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    format!(
                        "{what}: the value exceeds {} bytes",
                        app.settings.max_value_bytes
                    ),
                ));
            }
            CompareTarget::Value(v)
        }
        "exists" => {
            if matches!(op, CompareOp::Less | CompareOp::Greater) {
                return Err(bad(format!("{what}: exists compares only with = or !=")));
            }
            CompareTarget::Exists(
                c.value.as_ref().and_then(|v| v.as_bool()).ok_or_else(|| {
                    bad(format!("{what}: target exists needs value true or false"))
                })?,
            )
        }
        t => {
            return Err(bad(format!(
                "{what}: unknown target '{t}'; use version, create_revision, mod_revision, value or exists"
            )));
        }
    };
    Ok(Compare { key, op, target })
}

fn parse_op(app: &App, branch: &str, i: usize, o: OpBody) -> ApiResult<TxnOp> {
    let what = format!("{branch}[{i}]");
    let key = check_key(app, o.key.into_bytes())?;
    let no_value = |op: &str| -> ApiResult<()> {
        if o.value.is_some() || o.value_base64.is_some() {
            Err(bad(format!("{what}: {op} takes no value")))
        } else {
            Ok(())
        }
    };
    match o.op.as_str() {
        "put" => {
            let value = bytes_of(&what, o.value.as_deref(), o.value_base64.as_deref())?;
            if value.len() > app.settings.max_value_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    format!(
                        "{what}: the value is {} bytes; the limit is {} bytes",
                        value.len(),
                        app.settings.max_value_bytes
                    ),
                ));
            }
            Ok(TxnOp::Put { key, value })
        }
        "delete" => no_value("delete").map(|_| TxnOp::Delete { key }),
        "get" => no_value("get").map(|_| TxnOp::Get { key }),
        op => Err(bad(format!(
            "{what}: unknown op '{op}'; use put, delete or get"
        ))),
    }
}

pub async fn txn(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    parse_query(&uri, &[])?;
    let limit = app.settings.max_value_bytes * 4 + (64 << 10);
    let raw = read_body(&headers, body, limit, "transaction").await?;
    let body: TxnBody = serde_json::from_slice(&raw).map_err(|e| {
        bad(format!(
            "the body must be JSON {{\"compare\":[..],\"success\":[..],\"failure\":[..]}}: {e}"
        ))
    })?;
    for (name, n) in [
        ("compare", body.compare.len()),
        ("success", body.success.len()),
        ("failure", body.failure.len()),
    ] {
        if n > MAX_TXN_OPS {
            return Err(bad(format!(
                "{name} has {n} entries; the limit is {MAX_TXN_OPS}"
            )));
        }
    }
    let txn = Txn {
        compare: body
            .compare
            .into_iter()
            .enumerate()
            .map(|(i, c)| parse_compare(&app, i, c))
            .collect::<ApiResult<_>>()?,
        success: body
            .success
            .into_iter()
            .enumerate()
            .map(|(i, o)| parse_op(&app, "success", i, o))
            .collect::<ApiResult<_>>()?,
        failure: body
            .failure
            .into_iter()
            .enumerate()
            .map(|(i, o)| parse_op(&app, "failure", i, o))
            .collect::<ApiResult<_>>()?,
    };
    let r = write_via_leader(&app, Command::Txn(txn)).await?;
    write_response_txn(r).map(IntoResponse::into_response)
}
