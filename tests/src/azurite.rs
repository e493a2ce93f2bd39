//! A real Azure Blob Storage API server for the tests: Azurite (Microsoft's emulator, from the
//! npm registry), started on a free loopback port with in-memory storage and killed when
//! dropped, even when the test fails. Used by the backup store's Azure tests.
//!
//! The server is found by `RSTORE_AZURITE_BLOB`, else in `~/.cache/rstore/azurite` (where
//! `.ci/run` installs it). Without one, [`Azurite::start`] returns `None` after saying so,
//! unless `RSTORE_REQUIRE_AZURITE=1` (CI), when it panics.
//!
//! Azurite checks every request's Shared Key signature against its one well-known account,
//! so the clients here sign as Azure's SDKs do: object_store for the store under test, and
//! [`Azurite::create_container`] for the one request object_store does not make.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::servers::{http_status, wait_until_listening};

/// The emulator's account and its published key (Azure's documentation of Azurite).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn azurite_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RSTORE_AZURITE_BLOB") {
        return Some(PathBuf::from(path));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("rstore/azurite/node_modules/.bin/azurite-blob")).filter(|p| p.is_file())
}

/// A running Azurite blob server.
pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    /// Starts a server; `None` (after saying so) when Azurite is not installed and not
    /// required.
    pub fn start(test: &str) -> Option<Azurite> {
        let Some(bin) = azurite_binary().filter(|p| p.is_file()) else {
            let msg = "azurite-blob not found: set RSTORE_AZURITE_BLOB, or run .ci/run's install step \
                       (npm install --prefix ~/.cache/rstore/azurite azurite)";
            if std::env::var("RSTORE_REQUIRE_AZURITE").is_ok_and(|v| v == "1") {
                panic!("{test}: RSTORE_REQUIRE_AZURITE=1 but {msg}");
            }
            eprintln!("SKIPPED {test}: {msg}");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        // In memory, in a directory of its own (for anything it writes beside), and without
        // the usage telemetry it sends by default.
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--extentMemoryLimit", "512"])
            .args(["--silent", "--skipApiVersionCheck"])
            .arg("--disableTelemetry")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", bin.display()));
        let mut azurite = Azurite {
            child,
            port,
            _dir: dir,
        };
        let localhost = std::net::Ipv4Addr::LOCALHOST.into();
        wait_until_listening(&mut azurite.child, localhost, port, test, &bin);
        Some(azurite)
    }

    /// The account's endpoint (`AZURE_STORAGE_ENDPOINT`): Azurite serves accounts by path.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Creates a container with a request signed with the account key; the HTTP status
    /// (201 when created).
    pub fn create_container(&self, name: &str) -> u16 {
        let date = k8s_openapi::jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-10-04";
        // Create Container's string to sign: the verb, eleven empty standard headers, the
        // x-ms- headers, then the resource (account, path, and the query).
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &B64.decode(ACCOUNT_KEY).expect("the account key is base64"),
        );
        let signature = B64.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let req = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        http_status(std::net::Ipv4Addr::LOCALHOST.into(), self.port, &req)
    }
}
