//! TLS for both systems in the benchmark, so that they are compared as deployed.
//!
//! One CA per run signs: a member certificate per rstore node (as `node cert`/`node dev`
//! issue them) and an admin token for the load and admin clients; for etcd, a certificate
//! per member used for its client and peer listeners (both with client certificate
//! authentication, `--client-cert-auth`, `--peer-client-cert-auth`) and a client
//! certificate for the load. `--plaintext` turns all of it off, to measure the cost of TLS.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rstore_api::client::Credentials;
use rstore_api::pki::{Ca, Pem, new_token, token_line, write_file};
use tempfile::TempDir;

pub struct BenchTls {
    dir: TempDir,
    pub ca: Ca,
    /// The rstore admin token the benchmark's clients send.
    pub token: String,
    /// The client certificate etcd's clients present.
    pub etcd_client: Pem,
}

impl std::fmt::Debug for BenchTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchTls")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl BenchTls {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let dir = tempfile::Builder::new()
            .prefix("rstore-bench-tls-")
            .tempdir()?;
        let ca = Ca::generate("bench")?;
        write_file(&dir.path().join("ca.crt"), &ca.pem().cert, false)?;
        let token = new_token();
        write_file(
            &dir.path().join("tokens"),
            &token_line("bench", "admin", &token),
            true,
        )?;
        let etcd_client = ca.client("bench", "admin")?;
        Ok(Arc::new(Self {
            dir,
            ca,
            token,
            etcd_client,
        }))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// Certificate and key files for a server at 127.0.0.1 (and `localhost`); `peer_url`
    /// is the rstore member's URI name (etcd ignores it).
    pub fn server_files(&self, stem: &str, peer_url: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.ca
            .member(&["127.0.0.1".into(), "localhost".into()], peer_url)?
            .write(self.dir.path(), stem)?;
        Ok((
            self.dir.path().join(format!("{stem}.crt")),
            self.dir.path().join(format!("{stem}.key")),
        ))
    }

    /// The etcd client certificate and key as files, for `etcdctl --cert --key`.
    pub fn etcd_client_files(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.dir.path().join("etcd-client.crt");
        let key = self.dir.path().join("etcd-client.key");
        write_file(&cert, &self.etcd_client.cert, false)?;
        write_file(&key, &self.etcd_client.key, true)?;
        Ok((cert, key))
    }

    /// What rstore's clients trust and send: the CA and the admin token.
    pub fn rstore_credentials(&self) -> Credentials {
        Credentials::ca(self.ca.pem().cert.as_bytes()).with_token(&self.token)
    }

    /// A reqwest client trusting the CA, sending the rstore token, and presenting the etcd
    /// client certificate (etcd's `/health` needs one; rstore ignores it next to a token).
    pub fn admin_client(&self) -> anyhow::Result<reqwest::Client> {
        self.rstore_credentials()
            .with_identity(
                self.etcd_client.cert.as_bytes(),
                self.etcd_client.key.as_bytes(),
            )
            .reqwest_builder()?
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("build the HTTP client")
    }

    /// The TLS configuration and `Authorization` value of the rstore load clients, from the
    /// same credentials as every other client.
    pub fn rstore_load_tls(&self) -> anyhow::Result<crate::load::RstoreTls> {
        let credentials = self.rstore_credentials();
        Ok(crate::load::RstoreTls {
            config: Arc::new(
                credentials
                    .rustls_config()?
                    .context("the rstore credentials have a CA")?,
            ),
            authorization: credentials
                .authorization()?
                .context("the rstore credentials have a token")?,
        })
    }

    /// etcd's client TLS options. etcd-client's TLS (rustls 0.19) cannot verify IP
    /// addresses, so it checks the name `localhost`, which every etcd certificate carries.
    pub fn etcd_options(&self) -> etcd_client::ConnectOptions {
        etcd_client::ConnectOptions::default().with_tls(
            etcd_client::TlsOptions::new()
                .domain_name("localhost")
                .ca_certificate(etcd_client::Certificate::from_pem(&self.ca.pem().cert))
                .identity(etcd_client::Identity::from_pem(
                    &self.etcd_client.cert,
                    &self.etcd_client.key,
                )),
        )
    }
}
