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

use super::kv::{check_key, write_response_txn};
use crate::app::App;
use crate::forward::leader::write_via_leader;
use crate::types::{Command, Compare, CompareOp, CompareTarget, Txn, TxnOp};
use crate::web::{ApiError, ApiResult, parse_query, read_body};

pub use crate::types::MAX_TXN_OPS;

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

/// A transaction is checked against the same limits as every write (from the node's
/// settings); the batcher checks it again whatever route it came in on.
pub type TxnLimits = crate::types::WriteLimits;

/// Largest transaction request body: a few values at the limit, plus room for the JSON
/// around them.
pub fn body_bytes(limits: &TxnLimits) -> usize {
    limits.max_value_bytes * 4 + (64 << 10)
}

/// Turn a request body into a checked transaction, or a 400/413 that says what is wrong.
pub fn parse_txn(limits: &TxnLimits, raw: &[u8]) -> ApiResult<Txn> {
    let body: TxnBody = serde_json::from_slice(raw).map_err(|e| {
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
    Ok(Txn {
        compare: body
            .compare
            .into_iter()
            .enumerate()
            .map(|(i, c)| parse_compare(limits, i, c))
            .collect::<ApiResult<_>>()?,
        success: body
            .success
            .into_iter()
            .enumerate()
            .map(|(i, o)| parse_op(limits, "success", i, o))
            .collect::<ApiResult<_>>()?,
        failure: body
            .failure
            .into_iter()
            .enumerate()
            .map(|(i, o)| parse_op(limits, "failure", i, o))
            .collect::<ApiResult<_>>()?,
    })
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

fn parse_compare(limits: &TxnLimits, i: usize, c: CompareBody) -> ApiResult<Compare> {
    let what = format!("compare[{i}]");
    let key = check_key(limits.max_key_bytes, c.key.into_bytes())?;
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
            if v.len() > limits.max_value_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    format!("{what}: the value exceeds {} bytes", limits.max_value_bytes),
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

fn parse_op(limits: &TxnLimits, branch: &str, i: usize, o: OpBody) -> ApiResult<TxnOp> {
    let what = format!("{branch}[{i}]");
    let key = check_key(limits.max_key_bytes, o.key.into_bytes())?;
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
            if value.len() > limits.max_value_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    format!(
                        "{what}: the value is {} bytes; the limit is {} bytes",
                        value.len(),
                        limits.max_value_bytes
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
    let limits = app.settings.write_limits();
    let raw = read_body(
        &headers,
        body,
        body_bytes(&limits),
        "transaction",
        app.settings.body_timeout,
    )
    .await?;
    let txn = parse_txn(&limits, &raw)?;
    let r = write_via_leader(&app, Command::Txn(txn)).await?;
    write_response_txn(r).map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const LIMITS: TxnLimits = TxnLimits {
        max_key_bytes: 16,
        max_value_bytes: 32,
    };

    /// A valid transaction is within every limit it was checked against.
    fn check_valid(t: &Txn) -> Result<(), TestCaseError> {
        prop_assert!(t.compare.len() <= MAX_TXN_OPS);
        for c in &t.compare {
            prop_assert!((1..=LIMITS.max_key_bytes).contains(&c.key.len()));
            if let CompareTarget::Value(v) = &c.target {
                prop_assert!(v.len() <= LIMITS.max_value_bytes);
            }
        }
        for op in t.success.iter().chain(&t.failure) {
            let key = match op {
                TxnOp::Put { key, value } => {
                    prop_assert!(value.len() <= LIMITS.max_value_bytes);
                    key
                }
                TxnOp::Delete { key } | TxnOp::Get { key } => key,
            };
            prop_assert!((1..=LIMITS.max_key_bytes).contains(&key.len()));
        }
        Ok(())
    }

    fn check(raw: &[u8]) -> Result<(), TestCaseError> {
        match parse_txn(&LIMITS, raw) {
            Ok(t) => check_valid(&t),
            Err(e) => {
                prop_assert!(
                    matches!(
                        (e.status, e.code),
                        (StatusCode::BAD_REQUEST, "invalid_request" | "invalid_key")
                            | (
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "value_too_large" | "key_too_large"
                            )
                    ),
                    "{:?} {} {}",
                    e.status,
                    e.code,
                    e.message
                );
                Ok(())
            }
        }
    }

    /// Any JSON value, biased towards the shape of a transaction.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z=!<>_]{0,20}".prop_map(Value::from),
            prop_oneof![
                Just("put"),
                Just("get"),
                Just("delete"),
                Just("version"),
                Just("value"),
                Just("exists"),
                Just("mod_revision"),
                Just("create_revision"),
                Just("="),
                Just("!="),
                Just("<"),
                Just(">"),
                Just("AAE="),
                Just("!!"),
            ]
            .prop_map(Value::from),
        ];
        let field = prop_oneof![
            Just("compare"),
            Just("success"),
            Just("failure"),
            Just("key"),
            Just("op"),
            Just("target"),
            Just("value"),
            Just("value_base64"),
            Just("bogus"),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(field.clone().prop_map(String::from), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn op() -> impl Strategy<Value = Value> {
        (
            prop_oneof![Just("put"), Just("get"), Just("delete"), Just("nope")],
            "[a-z]{0,20}",
            proptest::option::of("[a-z]{0,40}"),
            proptest::option::of("[A-Za-z0-9+/=]{0,60}"),
        )
            .prop_map(|(op, key, value, b64)| {
                let mut o = json!({"op": op, "key": key});
                if let Some(v) = value {
                    o["value"] = json!(v);
                }
                if let Some(b) = b64 {
                    o["value_base64"] = json!(b);
                }
                o
            })
    }

    fn compare() -> impl Strategy<Value = Value> {
        (
            "[a-z]{0,20}",
            prop_oneof![
                Just("version"),
                Just("create_revision"),
                Just("mod_revision"),
                Just("value"),
                Just("exists"),
                Just("other"),
            ],
            proptest::option::of(prop_oneof![
                Just("="),
                Just("!="),
                Just("<"),
                Just(">"),
                Just("~"),
            ]),
            prop_oneof![
                Just(Value::Null),
                any::<u64>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                "[a-z]{0,40}".prop_map(Value::from),
            ],
        )
            .prop_map(|(key, target, op, value)| {
                let mut c = json!({"key": key, "target": target, "value": value});
                if let Some(op) = op {
                    c["op"] = json!(op);
                }
                c
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            check(&raw)?;
        }

        #[test]
        fn arbitrary_json_never_panics(v in json_value()) {
            check(&serde_json::to_vec(&v).unwrap())?;
        }

        #[test]
        fn transaction_shaped_json_is_valid_or_refused(
            compares in proptest::collection::vec(compare(), 0..4),
            success in proptest::collection::vec(op(), 0..4),
            failure in proptest::collection::vec(op(), 0..4),
        ) {
            let body = json!({"compare": compares, "success": success, "failure": failure});
            let raw = serde_json::to_vec(&body).unwrap();
            check(&raw)?;
            // Every prefix of a valid body is refused, never half-parsed.
            if parse_txn(&LIMITS, &raw).is_ok() && raw.len() > 1 {
                prop_assert!(parse_txn(&LIMITS, &raw[..raw.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn limits_are_enforced() {
        let key = |n: usize| "k".repeat(n);
        let ok = json!({"success": [{"op": "put", "key": key(16), "value": "v".repeat(32)}]});
        assert!(parse_txn(&LIMITS, ok.to_string().as_bytes()).is_ok());
        let e = parse_txn(
            &LIMITS,
            json!({"success": [{"op": "put", "key": key(17), "value": "v"}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.code, "key_too_large");
        let e = parse_txn(
            &LIMITS,
            json!({"failure": [{"op": "put", "key": "a", "value": "v".repeat(33)}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.code, "value_too_large");
        let many: Vec<Value> = (0..=MAX_TXN_OPS)
            .map(|_| json!({"op": "get", "key": "a"}))
            .collect();
        let e = parse_txn(&LIMITS, json!({"success": many}).to_string().as_bytes()).unwrap_err();
        assert!(e.message.contains("limit is 128"), "{}", e.message);
        let e = parse_txn(&LIMITS, br#"{"compare":[],"bogus":1}"#).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
    }
}
