//! What both HTTP ports share, low in the stack: the JSON error every answer uses
//! (`{"error":{"code","message"}}`, with a stable code and a message that says what to do),
//! the query parser that names unknown parameters, and the one body reader, bounded in bytes
//! (413) and in time (408). The client API and the peer server both read bodies here, so
//! that neither port reaches into the other for it.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A JSON error with a stable code and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {message}"),
        )
    }
    pub fn no_leader(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body was not read, so this connection cannot be reused:
            // say so, or a client would send its next request into a closed socket.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

/// Parse a query string, refusing parameters the route does not know.
pub fn parse_query(uri: &Uri, allowed: &[&str]) -> ApiResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            let known = if allowed.is_empty() {
                "this endpoint takes no parameters".to_string()
            } else {
                format!("known parameters: {}", allowed.join(", "))
            };
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!("unknown query parameter '{k}'; {known}"),
            ));
        }
        out.insert(k.into_owned(), v.into_owned());
    }
    Ok(out)
}

/// How much of a refused body is still read (and dropped) before the 413 goes out, and for
/// how long. A client that writes its whole body before it reads the answer (most do) gets
/// the 413 instead of a broken pipe when the server closes the connection under it; bodies
/// past this are cut off as before.
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Read and drop what is left of `body`, up to [`LINGER_BYTES`] and [`LINGER_TIME`].
async fn linger(mut body: Body, mut seen: usize) {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    while seen <= LINGER_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Read a request body up to `limit` bytes, answering 413 beyond it.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
    timeout: std::time::Duration,
) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    let too_large = |n: Option<usize>| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            match n {
                Some(n) => format!("the {what} is {n} bytes; the limit is {limit} bytes"),
                None => format!("the {what} exceeds the limit of {limit} bytes"),
            },
        )
    };
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        if len <= LINGER_BYTES {
            linger(body, 0).await;
        }
        return Err(too_large(Some(len)));
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    // A body sent a byte at a time must not hold a connection and a handler for ever.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the {what} did not arrive within {} ms (RSTORE_BODY_TIMEOUT_MS); send the body at once",
                    timeout.as_millis()
                ),
            ));
        };
        let Some(frame) = frame else {
            return Ok(buf.freeze());
        };
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("could not read the request body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                linger(body, buf.len() + data.len()).await;
                return Err(too_large(None));
            }
            buf.extend_from_slice(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_parameters_are_named() {
        let uri: Uri = "/v1/kv/a?consistency=stale&bogus=1".parse().unwrap();
        let err = parse_query(&uri, &["consistency"]).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code, "unknown_parameter");
        assert!(err.message.contains("'bogus'"), "{}", err.message);
        let ok = parse_query(&uri, &["consistency", "bogus"]).unwrap();
        assert_eq!(ok["consistency"], "stale");
        assert_eq!(ok["bogus"], "1");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: Uri = "/v1/kv?prefix=a%2Fb%20c".parse().unwrap();
        assert_eq!(parse_query(&uri, &["prefix"]).unwrap()["prefix"], "a/b c");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const ALLOWED: &[&str] = &["prefix", "limit"];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any query string: parsed, or refused as 400 `unknown_parameter` naming a
            /// parameter that is really there and not allowed.
            #[test]
            fn arbitrary_queries_never_panic(query in "[ -~]{0,80}") {
                let Ok(uri) = format!("/x?{query}").parse::<Uri>() else {
                    return Ok(());
                };
                let names: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .collect();
                match parse_query(&uri, ALLOWED) {
                    Ok(q) => {
                        prop_assert!(names.iter().all(|n| ALLOWED.contains(&n.as_str())));
                        prop_assert!(q.keys().all(|k| ALLOWED.contains(&k.as_str())));
                    }
                    Err(e) => {
                        prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "unknown_parameter"));
                        let bad = names.iter().find(|n| !ALLOWED.contains(&n.as_str())).expect("an unknown name");
                        prop_assert!(e.message.contains(&format!("'{bad}'")), "{} lacks {bad}", e.message);
                    }
                }
            }

            /// Unknown names, percent-encoded any way, are always refused by name.
            #[test]
            fn unknown_names_are_always_rejected(name in "\\PC{1,20}", value in "\\PC{0,20}") {
                prop_assume!(!ALLOWED.contains(&name.as_str()));
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("prefix", "p")
                    .append_pair(&name, &value)
                    .finish();
                let uri: Uri = format!("/x?{query}").parse().unwrap();
                let e = parse_query(&uri, ALLOWED).unwrap_err();
                prop_assert_eq!(e.code, "unknown_parameter");
                prop_assert!(e.message.contains(&format!("'{name}'")), "{}", e.message);
                let e = parse_query(&uri, &[]).unwrap_err();
                prop_assert!(e.message.contains("takes no parameters"), "{}", e.message);
            }

            /// Known names with any value round-trip through the encoding.
            #[test]
            fn known_values_round_trip(value in "\\PC{0,40}") {
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("prefix", &value)
                    .finish();
                let uri: Uri = format!("/x?{query}").parse().unwrap();
                prop_assert_eq!(&parse_query(&uri, ALLOWED).unwrap()["prefix"], &value);
            }
        }
    }
}
