//! A real S3 API server for the tests: `moto_server` (PyPI's `moto[server]`), started on a
//! free loopback port and killed when dropped, even when the test fails. Used by the backup
//! store's tests and the node's backup tests.
//!
//! The server is found by `RSTORE_MOTO_SERVER`, else in `~/.cache/rstore/moto-venv` (where
//! `.ci/run` installs it), else in `/work/.venv-moto`. Without one, [`Moto::start`] returns
//! `None` after saying so, unless `RSTORE_REQUIRE_MOTO=1` (CI), when it panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::servers::{http_status, wait_until_listening};

pub fn moto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RSTORE_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    let cached = cache.map(|c| c.join("rstore/moto-venv/bin/moto_server"));
    let fallback = PathBuf::from("/work/.venv-moto/bin/moto_server");
    cached.into_iter().chain([fallback]).find(|p| p.is_file())
}

/// A running moto server.
pub struct Moto {
    child: Child,
    /// The address it listens on (loopback unless [`Moto::start_on`] said otherwise).
    pub host: std::net::IpAddr,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts a server; `None` (after saying so) when moto is not installed and not required.
    /// With `auth`, moto checks signatures against its IAM users, of which there are none, so
    /// every request's credentials are wrong.
    pub fn start(test: &str, auth: bool) -> Option<Moto> {
        Self::start_on(test, auth, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`Moto::start`], listening on `host` (an address other network namespaces reach,
    /// such as the real control plane's bridge, for the pods).
    pub fn start_on(test: &str, auth: bool, host: std::net::IpAddr) -> Option<Moto> {
        let Some(bin) = moto_binary().filter(|p| p.is_file()) else {
            let msg = "moto_server not found: set RSTORE_MOTO_SERVER, or run .ci/run's install step \
                       (python3 -m venv ~/.cache/rstore/moto-venv && ~/.cache/rstore/moto-venv/bin/pip install 'moto[server]')";
            if std::env::var("RSTORE_REQUIRE_MOTO").is_ok_and(|v| v == "1") {
                panic!("{test}: RSTORE_REQUIRE_MOTO=1 but {msg}");
            }
            eprintln!("SKIPPED {test}: {msg}");
            return None;
        };
        let port = TcpListener::bind((host, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", &host.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", bin.display()));
        let mut moto = Moto { child, host, port };
        wait_until_listening(&mut moto.child, host, port, test, &bin);
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// Writes this server's S3 settings into `dir` ([`write_credentials`]).
    pub fn write_credentials(&self, dir: &Path) {
        write_credentials(dir, &self.endpoint());
    }

    /// Creates a bucket (moto without auth takes an unsigned request); the HTTP status.
    pub fn create_bucket(&self, bucket: &str) -> u16 {
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.host, self.port
        );
        http_status(self.host, self.port, &req)
    }
}

/// Writes the S3 settings of a moto server at `endpoint` (moto checks no signature) into
/// `dir` (created), one file per variable, as a Kubernetes Secret mounted as files gives
/// them (`--credentials-dir`).
pub fn write_credentials(dir: &Path, endpoint: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ] {
        std::fs::write(dir.join(k), v).unwrap();
    }
}
