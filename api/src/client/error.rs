//! What can go wrong in a call to a node, and the one parser of the node's JSON error body
//! (`{"error":{"code":"...","message":"..."}}`, docs/api.md).
//!
//! An answer the node refused keeps its HTTP status next to the stable `code`, so that callers
//! decide on the pair (`412 precondition_failed`, `503 no_leader`, ...) without re-reading the
//! body, and print the node's human `message` as it was written.

use serde::{Deserialize, Serialize};

/// A non-2xx answer of a node: its status, and the code and message of its JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The stable `error.code`, or [`ApiError::UNKNOWN`] when the body was not the documented
    /// JSON (a proxy's page, a truncated answer).
    pub code: String,
    /// The `error.message`, or what the body said instead (cut to [`ApiError::MAX_TEXT`]).
    pub message: String,
}

/// The JSON error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `error` in the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    /// The error body in `body`, if `body` is one.
    pub fn parse(body: &[u8]) -> Option<ErrorDetail> {
        serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|b| b.error)
    }
}

impl ApiError {
    /// The code of an answer whose body is not the documented JSON.
    pub const UNKNOWN: &'static str = "unknown";
    /// The most of a non-JSON body kept as the message.
    pub const MAX_TEXT: usize = 1024;

    /// The error a node answered with `status` and `body`.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        match ErrorBody::parse(body) {
            Some(ErrorDetail { code, message }) => Self {
                status,
                code,
                message,
            },
            None => {
                let mut text = String::from_utf8_lossy(body).trim().to_string();
                if text.len() > Self::MAX_TEXT {
                    let mut end = Self::MAX_TEXT;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                }
                if text.is_empty() {
                    text = format!("HTTP {status}");
                }
                Self {
                    status,
                    code: Self::UNKNOWN.to_string(),
                    message: text,
                }
            }
        }
    }

    /// Whether this is `status` with `code`.
    pub fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && self.code == code
    }

    /// Whether retrying the same request later may succeed: no leader yet, a membership
    /// change in progress, a catch-up or a forward that timed out.
    pub fn is_transient(&self) -> bool {
        matches!(self.status, 409 | 503 | 504)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// An error of a call to a node's HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node could not be reached, or did not answer in time.
    #[error("node {url} unreachable: {}", chain(source))]
    Unreachable {
        /// Base URL called.
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("node {url} answered {api}")]
    Api {
        /// Base URL called.
        url: String,
        #[source]
        api: ApiError,
    },
    /// The answer's body could not be read whole.
    #[error("node {url}: reading the answer: {}", chain(source))]
    Body {
        /// Base URL called.
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not the documented JSON (or headers).
    #[error("node {url} answered unexpected content: {detail}")]
    Decode {
        /// Base URL called.
        url: String,
        detail: String,
    },
    /// The answer was larger than the client's limit.
    #[error("node {url} sent an answer over {limit} bytes; ignored")]
    TooLarge {
        /// Base URL called.
        url: String,
        limit: usize,
    },
}

impl Error {
    /// The node's refusal, if it answered one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api { api, .. } => Some(api),
            _ => None,
        }
    }

    /// The HTTP status the node answered, if it answered an error.
    pub fn status(&self) -> Option<u16> {
        self.api().map(|a| a.status)
    }

    /// Whether the same request may succeed later: an unreachable node, or a transient
    /// refusal ([`ApiError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Body { .. } => true,
            Self::Api { api, .. } => api.is_transient(),
            Self::Decode { .. } | Self::TooLarge { .. } => false,
        }
    }
}

/// An error with all its sources: reqwest's own message hides the cause (refused, reset,
/// certificate unknown).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_error_body_keeps_code_message_and_status() {
        let e = ApiError::from_answer(
            412,
            br#"{"error":{"code":"precondition_failed","message":"version is 3"}}"#,
        );
        assert!(e.is(412, "precondition_failed"));
        assert_eq!(e.message, "version is 3");
        assert_eq!(e.to_string(), "412 precondition_failed: version is 3");
        assert!(!e.is_transient());
        assert!(
            ApiError::from_answer(503, br#"{"error":{"code":"no_leader","message":""}}"#)
                .is_transient()
        );
    }

    #[test]
    fn other_bodies_become_unknown_with_their_text() {
        let e = ApiError::from_answer(502, b"<html>bad gateway</html>");
        assert_eq!(e.code, ApiError::UNKNOWN);
        assert_eq!(e.message, "<html>bad gateway</html>");
        assert_eq!(ApiError::from_answer(500, b"").message, "HTTP 500");
        let long = "é".repeat(ApiError::MAX_TEXT);
        assert!(ApiError::from_answer(500, long.as_bytes()).message.len() <= ApiError::MAX_TEXT);
        assert_eq!(ErrorBody::parse(b"{\"error\":{}}"), None);
    }
}
