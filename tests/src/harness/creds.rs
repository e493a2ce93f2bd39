//! A test cluster's credentials (its CA and a token per role) and the clients made from
//! them: `reqwest` clients through the shared TLS builder ([`rstore_api::client::Credentials`]),
//! and raw TLS or TCP streams for tests that write HTTP by hand.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rstore_api::client::Credentials;
use rstore_api::pki::{Ca, Pem};

/// The credentials of one test cluster: its CA, and a token file with one token per role.
pub struct Creds {
    pub dir: PathBuf,
    pub ca: Ca,
    pub admin_token: String,
    pub write_token: String,
    pub read_token: String,
}

impl Creds {
    /// A new CA and tokens, written under `dir`.
    pub fn create(dir: &Path) -> Creds {
        use rstore_api::pki::{new_token, token_line, write_file};
        fs::create_dir_all(dir).expect("create creds dir");
        let ca = Ca::generate("test").expect("generate CA");
        write_file(&dir.join("ca.crt"), &ca.pem().cert, false).expect("write CA");
        let (admin_token, write_token, read_token) = (new_token(), new_token(), new_token());
        let lines = [
            token_line("test-admin", "admin", &admin_token),
            token_line("test-writer", "write", &write_token),
            token_line("test-reader", "read", &read_token),
        ]
        .concat();
        write_file(&dir.join("tokens"), &lines, true).expect("write tokens");
        Creds {
            dir: dir.to_path_buf(),
            ca,
            admin_token,
            write_token,
            read_token,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// An HTTP client trusting the cluster CA, sending `token` if given.
    pub fn http(&self, token: Option<&str>) -> reqwest::Client {
        self.http_builder(token, None)
            .build()
            .expect("build HTTP client")
    }

    /// A client builder trusting the CA, with a token and/or a client certificate.
    pub fn http_builder(
        &self,
        token: Option<&str>,
        identity: Option<&Pem>,
    ) -> reqwest::ClientBuilder {
        let mut credentials = Credentials::ca(self.ca.pem().cert.as_bytes());
        if let Some(t) = token {
            credentials = credentials.with_token(t);
        }
        if let Some(p) = identity {
            credentials = credentials.with_identity(p.cert.as_bytes(), p.key.as_bytes());
        }
        credentials
            .reqwest_builder()
            .expect("TLS client config")
            .connect_timeout(Duration::from_secs(2))
            // Below the members' idle timeout (10 s): no request goes out on a connection
            // the member is closing.
            .pool_idle_timeout(Duration::from_secs(4))
            .timeout(Duration::from_secs(20))
    }

    /// A client presenting a member certificate for `peer_url` (as the member there would),
    /// for requests to peer ports.
    pub fn member_http(&self, peer_url: &str) -> reqwest::Client {
        let pem = self
            .ca
            .member(&["127.0.0.1".to_string()], peer_url)
            .expect("issue member certificate");
        self.http_builder(None, Some(&pem))
            .build()
            .expect("build HTTP client")
    }

    /// Write a member certificate for a node reached at `hosts` whose peer URL is
    /// `peer_url` into `dir`; returns the certificate and key paths.
    pub fn member_files(&self, dir: &Path, hosts: &[String], peer_url: &str) -> (PathBuf, PathBuf) {
        self.ca
            .member(hosts, peer_url)
            .expect("issue member certificate")
            .write(dir, "node")
            .expect("write member certificate");
        (dir.join("node.crt"), dir.join("node.key"))
    }
}

/// A byte stream to a node: TLS or plain TCP.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

/// Open a raw connection to `url` (`https://host:port` or `http://host:port`): TLS trusting
/// `creds`' CA, presenting `identity` if given. For tests that write HTTP by hand.
pub async fn raw_connect(
    url: &str,
    creds: Option<&Creds>,
    identity: Option<&Pem>,
) -> std::io::Result<Box<dyn RawStream>> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or(rest).to_string();
    let tcp = tokio::net::TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    if scheme != "https" {
        return Ok(Box::new(tcp));
    }
    let creds = creds.expect("https needs the cluster's credentials");
    let config = rstore_api::client::tls::client_config(
        creds.ca.pem().cert.as_bytes(),
        identity.map(|p| (p.cert.as_bytes(), p.key.as_bytes())),
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&authority)
        .to_string();
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}
