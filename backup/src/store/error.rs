//! What went wrong with the object store, said so that the user knows what to do: each error
//! names the URL or the object, and the cause is read from object_store's error (its variant,
//! and the store's own error code in the response body, such as S3's `NoSuchBucket`).

use crate::manifest::ManifestError;

/// An object-store failure. `url` is the store's URL, `object` an object's full URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{url} is not a backup location: {reason}. Use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, \
         az://CONTAINER/PREFIX (or azure://) or file:///ABSOLUTE/DIRECTORY"
    )]
    BadUrl { url: String, reason: String },
    #[error("{url}: the object store cannot be set up: {reason}")]
    Config { url: String, reason: String },
    #[error(
        "{url}: the object store refused the credentials, or they lack permission ({detail}). \
         Check the key and secret given in the environment or the credentials directory (the \
         Secret): {hint}"
    )]
    Credentials {
        url: String,
        detail: String,
        hint: &'static str,
    },
    #[error(
        "{url}: the bucket or container does not exist ({detail}). Create it, or fix its name \
         in the URL"
    )]
    NoBucket { url: String, detail: String },
    #[error("{url}: the directory does not exist. Create it (mkdir -p), or fix the URL")]
    NoDirectory { url: String },
    #[error(
        "{url}: cannot reach the object store ({detail}). Check the endpoint and region, that \
         the service is running and reachable from here, and allow_http for an http:// endpoint"
    )]
    Unreachable { url: String, detail: String },
    #[error("{object} already exists: backups are written once and never replaced")]
    AlreadyExists { object: String },
    #[error("{object} does not exist")]
    NotFound { object: String },
    #[error("{object}: reading the data to upload failed, nothing was kept: {reason}")]
    Source { object: String, reason: String },
    #[error("{object}: {op} failed: {detail}")]
    Other {
        object: String,
        op: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (the store was unreachable or
    /// answered with an error of its own), as opposed to a mistake that must be fixed first.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Other { .. })
    }
}

/// The whole chain of an error's messages.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// The error code in an S3 or Azure XML error body, such as `NoSuchBucket`.
fn xml_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// Turns object_store's error from operation `op` on `object` (a full URL) of the store at
/// `url` into one that says what to do.
pub(crate) fn classify(
    err: object_store::Error,
    url: &str,
    object: &str,
    op: &'static str,
    hint: &'static str,
) -> StoreError {
    let text = chain(&err);
    let detail = match xml_code(&text) {
        Some(code) => format!("{op} {object}: {code}"),
        None => format!("{op} {object}: {}", shorten(&text)),
    };
    let (url, object) = (url.to_string(), object.to_string());
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&[
        "NoSuchBucket",
        "ContainerNotFound",
        "bucket does not exist",
        "The specified bucket",
    ]) {
        return StoreError::NoBucket { url, detail };
    }
    match err {
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StoreError::AlreadyExists { object }
        }
        object_store::Error::NotFound { .. } => StoreError::NotFound { object },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            StoreError::Credentials { url, detail, hint }
        }
        _ if has(&[
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "AuthenticationFailed",
            "403 Forbidden",
            "401 Unauthorized",
        ]) =>
        {
            StoreError::Credentials { url, detail, hint }
        }
        _ if has(&[
            "error sending request",
            "tcp connect",
            "Connection refused",
            "dns error",
            "operation timed out",
            "connection closed before",
        ]) =>
        {
            StoreError::Unreachable { url, detail }
        }
        _ => StoreError::Other { object, op, detail },
    }
}

/// An error's text cut to a readable length (response bodies can be long).
fn shorten(text: &str) -> String {
    const MAX: usize = 600;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
