//! The KV API's JSON and headers (docs/api.md, "KV API"): what a write, a delete, a range
//! page, a transaction and a watch line look like, with values as bytes (the wire carries
//! them as `value_base64`).

use serde::{Deserialize, Serialize};

/// The answer to a write (`PUT /v1/kv/{key}`). In `async` mode an unconditional write is
/// acknowledged before it commits: no revision or version yet, `durability: "leader"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub revision: Option<u64>,
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
}

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub revision: u64,
}

/// A value read with `GET /v1/kv/{key}`, with what its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    /// From `ETag: "<version>"`.
    pub version: u64,
    /// `X-Rstore-Revision`: the store revision the read saw.
    pub revision: Option<u64>,
    pub create_revision: Option<u64>,
    pub mod_revision: Option<u64>,
}

/// A write's or a delete's condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precondition {
    #[default]
    None,
    /// `If-Match: "<version>"`: only if the key is at this version.
    Version(u64),
    /// `If-None-Match: *`: only if the key is absent (writes only).
    Absent,
}

impl Precondition {
    /// The request header that carries the condition.
    pub fn header(self) -> Option<(&'static str, String)> {
        match self {
            Self::None => None,
            Self::Version(v) => Some(("if-match", format!("\"{v}\""))),
            Self::Absent => Some(("if-none-match", "*".to_string())),
        }
    }
}

/// `GET /v1/kv?...`: one page of a range listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub prefix: String,
    /// Continue after this key (the last key of the previous page).
    pub start_after: Option<String>,
    /// Items per page (node default 100, max 10000).
    pub limit: Option<usize>,
    pub consistency: Option<crate::ReadConsistency>,
}

impl RangeQuery {
    /// The query string pairs.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![("prefix", self.prefix.clone())];
        if let Some(s) = &self.start_after {
            q.push(("start_after", s.clone()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = self.consistency {
            q.push(("consistency", c.as_str().to_string()));
        }
        q
    }
}

/// One page of a range listing; when `more`, continue with `start_after` = the last key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangePage {
    pub revision: u64,
    pub items: Vec<KvItem>,
    #[serde(default)]
    pub more: bool,
}

/// A key and its value in a range page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvItem {
    pub key: String,
    #[serde(rename = "value_base64", with = "base64_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// `POST /v1/txn`: compares, then the `success` or the `failure` operations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    #[serde(default)]
    pub compare: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// One compare of a transaction: `target` of `key` `op` `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    /// `version`, `create_revision`, `mod_revision`, `value` or `exists`.
    pub target: String,
    /// `=` (the node's default), `!=`, `<` or `>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// An integer, a string (for `value`) or a bool (for `exists`).
    pub value: serde_json::Value,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum TxnOp {
    Put {
        key: String,
        #[serde(rename = "value_base64", with = "base64_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub revision: u64,
    pub results: Vec<TxnResult>,
}

/// The result of one operation, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum TxnResult {
    Put {
        version: u64,
    },
    Delete {
        deleted: bool,
    },
    Get {
        found: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(
            default,
            rename = "value_base64",
            with = "base64_opt",
            skip_serializing_if = "Option::is_none"
        )]
        value: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_revision: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mod_revision: Option<u64>,
    },
}

/// One line of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchLine {
    /// The changes of one revision under the prefix.
    Events { revision: u64, events: Vec<Event> },
    /// Every change up to `revision` has been delivered.
    Progress { progress: Progress },
    /// The last line of a watch the node ends (`compacted`).
    Error { error: super::error::ErrorDetail },
}

/// `progress` of a progress line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub revision: u64,
}

/// A put or a delete seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    #[serde(
        default,
        rename = "value_base64",
        with = "base64_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<u64>,
    pub mod_revision: u64,
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

mod base64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::base64_bytes::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        use base64::Engine;
        Option::<String>::deserialize(d)?
            .map(|t| base64::engine::general_purpose::STANDARD.decode(t))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_bodies_parse() {
        let page: RangePage = serde_json::from_str(
            r#"{"revision":7,"items":[{"key":"a","value_base64":"AAE=","version":1,"create_revision":2,"mod_revision":3}],"more":true}"#,
        )
        .unwrap();
        assert_eq!(page.items[0].value, vec![0, 1]);
        let r: TxnResponse = serde_json::from_str(
            r#"{"succeeded":true,"revision":9,"results":[{"op":"put","version":2},{"op":"delete","deleted":false},{"op":"get","found":true,"key":"a","value_base64":"eA==","version":2,"create_revision":1,"mod_revision":9},{"op":"get","found":false}]}"#,
        )
        .unwrap();
        assert_eq!(r.results[1], TxnResult::Delete { deleted: false });
        assert!(matches!(&r.results[2], TxnResult::Get { value: Some(v), .. } if v == b"x"));
        let lines = [
            r#"{"revision":12,"events":[{"type":"put","key":"a","value_base64":"eA==","version":3,"create_revision":4,"mod_revision":12},{"type":"delete","key":"b","mod_revision":12}]}"#,
            r#"{"progress":{"revision":15}}"#,
            r#"{"error":{"code":"compacted","message":"oldest is 3"}}"#,
        ];
        let parsed: Vec<WatchLine> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            matches!(&parsed[0], WatchLine::Events { revision: 12, events } if events[1].value.is_none())
        );
        assert_eq!(
            parsed[1],
            WatchLine::Progress {
                progress: Progress { revision: 15 }
            }
        );
        assert!(matches!(&parsed[2], WatchLine::Error { error } if error.code == "compacted"));
        let w: Written =
            serde_json::from_str(r#"{"revision":null,"version":null,"durability":"leader"}"#)
                .unwrap();
        assert_eq!(w.revision, None);
        let txn = Txn {
            success: vec![TxnOp::Put {
                key: "a".into(),
                value: b"x".to_vec(),
            }],
            ..Txn::default()
        };
        assert_eq!(
            serde_json::to_string(&txn).unwrap(),
            r#"{"compare":[],"success":[{"op":"put","key":"a","value_base64":"eA=="}],"failure":[]}"#
        );
    }
}
