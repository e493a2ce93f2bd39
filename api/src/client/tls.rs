//! The one way to build a client of a node: trust the cluster's CA (and nothing else),
//! present a client certificate and/or send a bearer token.
//!
//! [`Credentials`] holds the PEM bytes and the token; it builds a `reqwest` client builder
//! for the typed client ([`super::NodeClient`]), or a bare rustls configuration and an
//! `Authorization` value for callers that drive their own transport (the benchmark's raw
//! HTTP/1.1 connections, tests that write HTTP by hand). Crypto is ring, as in the node.

use std::path::Path;
use std::sync::Arc;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A credential that could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
}

fn invalid(what: &str, detail: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// The crypto provider of every client (ring, as the node and the operator use).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM text; `what` names it in errors.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, format!("not PEM certificates ({e:?})")))?;
    if certs.is_empty() {
        return Err(invalid(what, "holds no certificate"));
    }
    Ok(certs)
}

/// A rustls client configuration trusting only `ca_pem`, presenting `identity`
/// (certificate and key PEM) if given.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem, "the CA")? {
        roots
            .add(c)
            .map_err(|e| invalid("the CA", format!("not a usable CA certificate ({e})")))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS", e))?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certs_from_pem(cert, "the client certificate")?,
                PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| invalid("the client key", format!("not a PEM key ({e:?})")))?,
            )
            .map_err(|e| invalid("the client certificate", e))?,
        None => builder.with_no_client_auth(),
    })
}

/// What a client trusts and presents. All optional: none of them is a plaintext client.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The cluster CA (PEM): the only root trusted. `None`: plaintext (`http://`) only.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// A bearer token, sent on every request.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Credentials {
    /// Plaintext, no token.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusting `ca_pem`.
    pub fn ca(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: Some(ca_pem.into()),
            ..Self::default()
        }
    }

    /// Also send `token`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Also present this client certificate and key (PEM).
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The credentials in files, as the command line names them (`--cacert`, `--cert`,
    /// `--key`, `--token`).
    pub fn from_files(
        ca: Option<&Path>,
        cert_and_key: Option<(&Path, &Path)>,
        token: Option<&str>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            ca_pem: ca.map(read).transpose()?,
            identity: match cert_and_key {
                Some((c, k)) => Some((read(c)?, read(k)?)),
                None => None,
            },
            token: token.map(|t| t.trim().to_string()),
        })
    }

    /// The rustls configuration, or `None` without a CA (plaintext).
    pub fn rustls_config(&self) -> Result<Option<ClientConfig>, TlsError> {
        self.ca_pem
            .as_deref()
            .map(|ca| {
                client_config(
                    ca,
                    self.identity
                        .as_ref()
                        .map(|(c, k)| (c.as_slice(), k.as_slice())),
                )
            })
            .transpose()
    }

    /// The `Authorization: Bearer ...` value (marked sensitive), if there is a token.
    pub fn authorization(&self) -> Result<Option<HeaderValue>, TlsError> {
        self.token
            .as_deref()
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .map_err(|_| invalid("the token", "not a valid header value"))?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
    }

    /// A `reqwest` builder with these credentials and no proxy (nodes are reached
    /// directly). Add timeouts, a resolver or `https_only` as the caller needs.
    pub fn reqwest_builder(&self) -> Result<reqwest::ClientBuilder, TlsError> {
        let mut b = reqwest::Client::builder().no_proxy();
        if let Some(config) = self.rustls_config()? {
            b = b.use_preconfigured_tls(config);
        }
        if let Some(auth) = self.authorization()? {
            b = b.default_headers(HeaderMap::from_iter([(AUTHORIZATION, auth)]));
        }
        Ok(b)
    }
}
