//! Opening an object store from a backup URL: the URL's scheme picks the backend, and the
//! settings and credentials come from, in increasing precedence, the environment, files in a
//! credentials directory (a Kubernetes Secret mounted as files), and [`StoreOptions`].
//!
//! Credentials, by backend (the environment variable, or a file of that name in
//! [`StoreOptions::credentials_dir`], holding the value):
//! - S3 (`s3://`): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`;
//!   also `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT` (S3-compatible stores),
//!   `AWS_ALLOW_HTTP`, and the web-identity variables of EKS (`AWS_WEB_IDENTITY_TOKEN_FILE`,
//!   `AWS_ROLE_ARN`). With none, the instance's metadata service is asked.
//! - GCS (`gs://`): `GOOGLE_SERVICE_ACCOUNT` (the path of a service-account JSON file) or
//!   `GOOGLE_SERVICE_ACCOUNT_KEY` (the JSON itself), or `GOOGLE_APPLICATION_CREDENTIALS`.
//! - Azure (`az://` or `azure://`): `AZURE_STORAGE_ACCOUNT_NAME` with
//!   `AZURE_STORAGE_ACCOUNT_KEY`, or a SAS token (`AZURE_STORAGE_SAS_KEY`), or a service
//!   principal (`AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`).
//!
//! Any other setting object_store knows for the backend can be given the same ways, by its
//! variable name (files whose names it does not know are ignored, and so are hidden ones).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::error::StoreError;

/// How to reach the store, beyond its URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// An S3-compatible store's endpoint (`http://127.0.0.1:9000` for MinIO), or Azure's.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain HTTP; implied by an `http://` endpoint.
    pub allow_http: bool,
    /// A directory of files named as the variables above (a mounted Secret).
    pub credentials_dir: Option<PathBuf>,
    /// Settings by object_store's key (`aws_access_key_id`, ...), over all others.
    pub settings: Vec<(String, String)>,
    /// Whether to read settings from the environment at all.
    pub from_env: bool,
    /// The size of the parts a large upload is sent in (at least 5 MiB, S3's minimum).
    pub part_size: usize,
    /// How many parts are sent at once (memory use is about this times `part_size`).
    pub upload_concurrency: usize,
    /// How long one request may take, and how long and how often it is retried.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: usize,
    pub retry_timeout: Duration,
}

/// S3's smallest part but the last.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            allow_http: false,
            credentials_dir: None,
            settings: Vec::new(),
            from_env: true,
            part_size: 8 * 1024 * 1024,
            upload_concurrency: 4,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
        }
    }
}

impl StoreOptions {
    /// Adds a setting by object_store's key.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }
}

/// The backends a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    S3,
    Gcs,
    Azure,
    Local,
}

impl Backend {
    /// What to check when the store refuses the credentials.
    pub(crate) fn credentials_hint(self) -> &'static str {
        match self {
            Self::S3 => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and the region and endpoint)",
            Self::Gcs => "GOOGLE_SERVICE_ACCOUNT (a key file's path) or GOOGLE_SERVICE_ACCOUNT_KEY",
            Self::Azure => {
                "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY"
            }
            Self::Local => "the directory's owner and permissions",
        }
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Self::S3 => "AWS_",
            Self::Gcs => "GOOGLE_",
            Self::Azure => "AZURE_",
            Self::Local => "\0",
        }
    }
}

/// The store a URL names and the prefix under which backups are kept in it.
pub(crate) fn build(
    url: &str,
    opts: &StoreOptions,
) -> Result<(Arc<dyn ObjectStore>, Path, Backend), StoreError> {
    let bad = |reason: &str| StoreError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let backend = match parsed.scheme() {
        "s3" | "s3a" => Backend::S3,
        "gs" => Backend::Gcs,
        "az" | "azure" => Backend::Azure,
        "file" => Backend::Local,
        other => return Err(bad(&format!("unknown scheme {other}:"))),
    };
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(
            "a query or fragment is not allowed; give settings as options",
        ));
    }
    let config_err = |e: object_store::Error| StoreError::Config {
        url: url.to_string(),
        reason: super::error::chain(&e),
    };
    if backend == Backend::Local {
        if parsed
            .host_str()
            .is_some_and(|h| !h.is_empty() && h != "localhost")
        {
            return Err(bad(
                "a file URL names a local directory: file:///dir (three slashes)",
            ));
        }
        let dir = parsed
            .to_file_path()
            .map_err(|()| bad("not a local path"))?;
        if !dir.is_dir() {
            return Err(StoreError::NoDirectory {
                url: url.to_string(),
            });
        }
        let fs = LocalFileSystem::new_with_prefix(&dir).map_err(config_err)?;
        return Ok((Arc::new(fs), Path::default(), backend));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("the bucket or container is missing"));
    }
    let prefix = Path::from_url_path(parsed.path()).map_err(|e| bad(&e.to_string()))?;
    let settings = gather(backend, opts)?;
    let endpoint = opts.endpoint.clone().or_else(|| {
        lookup(
            &settings,
            &["aws_endpoint", "aws_endpoint_url", "azure_storage_endpoint"],
        )
    });
    let allow_http = opts.allow_http
        || endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
    let client = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(opts.request_timeout)
        .with_connect_timeout(opts.connect_timeout);
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: opts.max_retries,
        retry_timeout: opts.retry_timeout,
    };
    // Every backend: the settings it knows, then the URL, the client and the retries.
    macro_rules! builder {
        ($new:expr) => {
            known(&settings)
                .fold($new, |b, (k, v)| b.with_config(k, v))
                .with_url(url)
                .with_client_options(client)
                .with_retry(retry)
        };
    }
    let store: Arc<dyn ObjectStore> = match backend {
        Backend::S3 => {
            let mut b = builder!(AmazonS3Builder::new()).with_allow_http(allow_http);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(r) = &opts.region {
                b = b.with_region(r);
            }
            Arc::new(b.build().map_err(config_err)?)
        }
        Backend::Gcs => Arc::new(
            builder!(GoogleCloudStorageBuilder::new())
                .build()
                .map_err(config_err)?,
        ),
        Backend::Azure => {
            let mut b = builder!(MicrosoftAzureBuilder::new()).with_allow_http(allow_http);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            Arc::new(b.build().map_err(config_err)?)
        }
        Backend::Local => unreachable!("handled above"),
    };
    Ok((store, prefix, backend))
}

/// The settings whose keys the backend's builder knows (by object_store's key names).
fn known<K: std::str::FromStr>(settings: &[(String, String)]) -> impl Iterator<Item = (K, &str)> {
    settings
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str())))
}

fn lookup(settings: &[(String, String)], keys: &[&str]) -> Option<String> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| keys.contains(&k.as_str()))
        .map(|(_, v)| v.clone())
}

/// The settings for `backend`, lowest precedence first: environment, files, options.
fn gather(backend: Backend, opts: &StoreOptions) -> Result<Vec<(String, String)>, StoreError> {
    let prefix = backend.env_prefix();
    let mut out = Vec::new();
    if opts.from_env {
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str())
                && k.starts_with(prefix)
            {
                out.push((k.to_ascii_lowercase(), v.to_string()));
            }
        }
        // Like the AWS SDKs: AWS_REGION wins over AWS_DEFAULT_REGION (object_store knows both).
        out.sort_by_key(|(k, _)| k == "aws_region");
    }
    if let Some(dir) = &opts.credentials_dir {
        out.extend(read_dir(dir, prefix)?);
    }
    out.extend(opts.settings.iter().cloned());
    Ok(out)
}

/// The files of a mounted Secret whose names start with `prefix`, as settings.
fn read_dir(dir: &FsPath, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
    let err = |e: std::io::Error| StoreError::Config {
        url: dir.display().to_string(),
        reason: format!("cannot read the credentials directory: {e}"),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.starts_with(prefix) || !entry.path().is_file() {
            continue;
        }
        let value = std::fs::read_to_string(entry.path()).map_err(err)?;
        out.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mounted_secret_gives_the_backends_settings() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE\n"),
            ("AWS_SECRET_ACCESS_KEY", " secret \n"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "other backend"),
            ("..data", "kubernetes' own"),
        ] {
            std::fs::write(dir.path().join(name), value).unwrap();
        }
        std::fs::create_dir(dir.path().join("AWS_SUBDIR")).unwrap();
        let opts = StoreOptions {
            credentials_dir: Some(dir.path().into()),
            from_env: false,
            ..StoreOptions::default()
        }
        .with("aws_secret_access_key", "given");
        let got = gather(Backend::S3, &opts).unwrap();
        let want = [
            ("aws_access_key_id", "AKIDEXAMPLE"),
            ("aws_secret_access_key", "secret"),
            ("aws_secret_access_key", "given"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        let azure = gather(Backend::Azure, &opts).unwrap();
        assert_eq!(
            azure[0],
            ("azure_storage_account_key".into(), "other backend".into())
        );
        let missing = StoreOptions {
            credentials_dir: Some(dir.path().join("nope")),
            ..opts
        };
        let err = gather(Backend::S3, &missing).unwrap_err();
        assert!(err.to_string().contains("credentials directory"), "{err}");
    }
}
