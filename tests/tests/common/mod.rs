//! Harness for the cross-process tests: clusters of real `node` processes on loopback.
//!
//! Every node gets its own free client and peer ports and a data directory inside the
//! cluster's temp dir, and writes its log next to it. Processes are killed when their
//! [`TestNode`] is dropped, so a failing test never leaks them; when a test panics, the
//! [`Cluster`] prints the tail of every node's log before it goes.
//!
//! Layout:
//! - [`node_bin`], [`TestNode`]: one process, started, stopped, killed, restarted, wiped;
//! - [`NodeClient`], [`Resp`]: the HTTP contract of docs/api.md, one node at a time;
//! - [`Cluster`]: bootstrap through the admin API, leader lookup, membership helpers;
//! - [`wait_until`], [`wait_for`]: poll a condition, never sleep a fixed time.
//!
//! An [`Interposer`] (the fault-injection suite's proxy or network namespaces,
//! `tests/faults/README.md`) can stand between the nodes: it decides where each node listens,
//! what it advertises to its peers and how its process is started, while the test's own
//! [`NodeClient`]s still talk to the node directly.
//!
//! Every cluster runs as deployed: TLS on both ports with a per-cluster CA ([`Creds`]), a
//! member certificate per node naming its advertised peer URL, and bearer tokens for each
//! role. The harness's own client trusts the CA and sends the admin token. A test that
//! passes `RSTORE_INSECURE_PLAINTEXT=1` in the node environment gets plaintext nodes.
//!
//! Set `RSTORE_NODE_BIN` to test another binary, and `RSTORE_TEST_KEEP=1` to keep the
//! data dirs and logs of every cluster after the test.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long a process may take to answer `GET /v1/node` after it is spawned.
pub const STARTUP: Duration = Duration::from_secs(20);
/// How long an election, a forwarded write or a membership change may take under load.
pub const ELECTION: Duration = Duration::from_secs(30);
/// How long a node may take to catch up with the leader (log replay or snapshot).
pub const CATCH_UP: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd node may take to exit before it is killed.
const GRACEFUL_STOP: Duration = Duration::from_secs(10);
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// Poll interval of [`wait_until`] and [`wait_for`].
const POLL: Duration = Duration::from_millis(50);

/// The `node` binary under test: `$RSTORE_NODE_BIN`, else `target/<profile>/node` next to
/// the running test executable (`target/<profile>/deps/<test>-<hash>`).
pub fn node_bin() -> PathBuf {
    let bin = match std::env::var_os("RSTORE_NODE_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test executable lives in target/<profile>/deps");
            profile_dir.join(format!("node{}", std::env::consts::EXE_SUFFIX))
        }
    };
    assert!(
        bin.is_file(),
        "node binary not found at {}: run `cargo build -p node` first \
         (`cargo test --workspace` builds it), or set RSTORE_NODE_BIN",
        bin.display()
    );
    bin
}

/// Ports handed out by this process, so that two nodes of concurrent tests never get the
/// same one between the probe listener being dropped and the node binding it.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and that this process has not used before.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Poll `cond` every 50 ms until it holds; panic naming `what` after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    wait_for(timeout, what, async || {
        if cond().await {
            Ok(())
        } else {
            Err("condition false".to_string())
        }
    })
    .await
}

/// Poll `f` every 50 ms until it returns `Ok`; panic naming `what` and the last `Err`
/// (a description of what was seen instead) after `timeout`.
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The credentials of one test cluster: its CA, and a token file with one token per role.
pub struct Creds {
    pub dir: PathBuf,
    pub ca: rstore_node::pki::Ca,
    pub admin_token: String,
    pub write_token: String,
    pub read_token: String,
}

impl Creds {
    /// A new CA and tokens, written under `dir`.
    pub fn create(dir: &Path) -> Creds {
        use rstore_node::pki::{Ca, new_token, token_line, write_file};
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
        identity: Option<&rstore_node::pki::Pem>,
    ) -> reqwest::ClientBuilder {
        let mut b = rstore_node::tls::reqwest_client(
            Some(self.ca.pem().cert.as_bytes()),
            identity.map(|p| (p.cert.as_bytes(), p.key.as_bytes())),
        )
        .expect("TLS client config")
        .connect_timeout(Duration::from_secs(2))
        // Below the members' idle timeout (10 s): no request goes out on a connection
        // the member is closing.
        .pool_idle_timeout(Duration::from_secs(4))
        .timeout(Duration::from_secs(20));
        if let Some(t) = token {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().expect("token header"),
            );
            b = b.default_headers(h);
        }
        b
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
    identity: Option<&rstore_node::pki::Pem>,
) -> std::io::Result<Box<dyn RawStream>> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or(rest).to_string();
    let tcp = tokio::net::TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    if scheme != "https" {
        return Ok(Box::new(tcp));
    }
    let creds = creds.expect("https needs the cluster's credentials");
    let config = rstore_node::tls::client_config(
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

/// Something that sits between the nodes on the network: it chooses the address node
/// `index` listens on, the URLs it advertises to its peers and how its process is started,
/// and learns each process's pid and real ports at every start.
pub trait Interposer: Send + Sync {
    /// The IPv4 address node `index` listens on and the test reaches it at.
    fn host(&self, _index: usize) -> String {
        "127.0.0.1".to_string()
    }
    /// The (client, peer) URLs node `index` advertises, given the ports it listens on.
    fn advertise(&self, index: usize, client_port: u16, peer_port: u16) -> (String, String);
    /// The command that runs `program` as node `index` (e.g. in its network namespace).
    /// The spawned child's pid must be the node's.
    fn command(&self, _index: usize, program: &Path) -> Command {
        Command::new(program)
    }
    /// Node `index` was spawned as `pid`, listening on these ports.
    fn spawned(&self, index: usize, pid: u32, client_port: u16, peer_port: u16);
}

/// One `node serve` process and the directory it owns.
pub struct TestNode {
    /// Index in [`Cluster::nodes`], used in log dumps.
    pub index: usize,
    /// The Raft id the process reported at its last start (a wiped node gets a new one).
    pub id: u64,
    /// The client URL the node advertises (its own, or the interposer's).
    pub client_url: String,
    /// The peer URL the node advertises (its own, or the interposer's).
    pub peer_url: String,
    /// The node's own client URL, which [`TestNode::client`] uses.
    pub direct_client_url: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    child: Option<Child>,
    interposer: Option<Arc<dyn Interposer>>,
    /// `None` for a plaintext node.
    creds: Option<Arc<Creds>>,
}

impl TestNode {
    /// A node that will live in `dir`, with fresh ports; not started yet.
    fn new(
        index: usize,
        dir: &Path,
        env: &[(String, String)],
        http: reqwest::Client,
        interposer: Option<Arc<dyn Interposer>>,
        creds: Option<Arc<Creds>>,
    ) -> TestNode {
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).expect("create data dir");
        let mut node = TestNode {
            index,
            id: 0,
            client_url: String::new(),
            peer_url: String::new(),
            direct_client_url: String::new(),
            data_dir,
            log_path: dir.join("node.log"),
            client_port: 0,
            peer_port: 0,
            env: env.to_vec(),
            http,
            child: None,
            interposer,
            creds,
        };
        node.pick_ports();
        node
    }

    fn pick_ports(&mut self) {
        self.client_port = free_port();
        self.peer_port = free_port();
        let host = self.host();
        let scheme = self.scheme();
        self.direct_client_url = format!("{scheme}://{host}:{}", self.client_port);
        (self.client_url, self.peer_url) = match &self.interposer {
            // Interposers name addresses; the scheme is the cluster's.
            Some(i) => {
                let (c, p) = i.advertise(self.index, self.client_port, self.peer_port);
                let fix = |u: String| match u.strip_prefix("http://") {
                    Some(rest) => format!("{scheme}://{rest}"),
                    None => u,
                };
                (fix(c), fix(p))
            }
            None => (
                self.direct_client_url.clone(),
                format!("{scheme}://{host}:{}", self.peer_port),
            ),
        };
    }

    fn scheme(&self) -> &'static str {
        if self.creds.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The cluster's credentials, unless the node runs in plaintext.
    pub fn creds(&self) -> Option<&Arc<Creds>> {
        self.creds.as_ref()
    }

    /// The host in a URL (`https://host:port`), without brackets.
    fn url_host(url: &str) -> String {
        let rest = url.split("://").nth(1).unwrap_or(url);
        let authority = rest.split('/').next().unwrap_or(rest);
        match authority.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => authority.to_string(),
        }
    }

    /// The address this node listens on.
    fn host(&self) -> String {
        match &self.interposer {
            Some(i) => i.host(self.index),
            None => "127.0.0.1".to_string(),
        }
    }

    /// A client for this node's HTTP API.
    pub fn client(&self) -> NodeClient {
        NodeClient {
            http: self.http.clone(),
            url: self.direct_client_url.clone(),
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freeze the process (SIGSTOP). Its kernel still accepts and buffers TCP data.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaw a frozen process (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("signal a running node");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawn the process and wait until it answers `GET /v1/node`. On the very first
    /// start the ports may have been taken in the meantime: then retry on new ones.
    pub async fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.index
        );
        let first_start =
            self.id == 0 && fs::read_dir(&self.data_dir).is_ok_and(|mut d| d.next().is_none());
        let attempts = if first_start { 3 } else { 1 };
        for attempt in 1..=attempts {
            match self.spawn_and_wait().await {
                Ok(id) => {
                    self.id = id;
                    return;
                }
                Err(why) if attempt < attempts => {
                    eprintln!(
                        "node {} failed to start ({why}); retrying on new ports",
                        self.index
                    );
                    self.pick_ports();
                }
                Err(why) => panic!(
                    "node {} failed to start: {why}\n{}",
                    self.index,
                    self.log_tail(LOG_TAIL_LINES)
                ),
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<u64, String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        writeln!(log, "===== harness: starting {} =====", self.client_url).expect("write log");
        let host = self.host();
        let mut command = match &self.interposer {
            Some(i) => i.command(self.index, &node_bin()),
            None => Command::new(node_bin()),
        };
        let tls_args = self.tls_args();
        let child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client", &format!("{host}:{}", self.client_port)])
            .args(["--advertise-client", &self.client_url])
            .args(["--listen-peer", &format!("{host}:{}", self.peer_port)])
            .args(["--advertise-peer", &self.peer_url])
            .args(&tls_args)
            .env("RSTORE_LOG_FORMAT", "text")
            .env("RUST_LOG", "info,openraft=warn")
            .env("NO_COLOR", "1")
            // Small log segments, so that rotation, sealed segments and their removal after
            // a snapshot happen in every test, not only past 16 MiB of log.
            .env("RSTORE_WAL_SEGMENT_BYTES", "65536")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", node_bin().display()))?;
        if let Some(i) = &self.interposer {
            i.spawned(self.index, child.id(), self.client_port, self.peer_port);
        }
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP;
        let mut last;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("process exited with {status}"));
            }
            match self.client().try_get("/v1/node").await {
                Ok(resp) if resp.status == 200 => {
                    let info = resp.json();
                    // Another process may answer on a port we failed to bind: check it is us.
                    if info["client_url"] == self.client_url.as_str()
                        && let Some(id) = info["id"].as_u64()
                    {
                        return Ok(id);
                    }
                    last = info.to_string();
                }
                Ok(resp) => last = format!("{} {}", resp.status, resp.text()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(format!(
                    "GET {}/v1/node did not answer as expected within {STARTUP:?}; last: {last}",
                    self.client_url
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The TLS and token arguments of `node serve` for this node (none in plaintext),
    /// with a fresh member certificate for where the node listens and where it is
    /// advertised, naming its advertised peer URL (as the operator issues them).
    pub fn tls_args(&self) -> Vec<std::ffi::OsString> {
        let Some(creds) = &self.creds else {
            return Vec::new();
        };
        let mut hosts = vec![self.host(), "127.0.0.1".to_string()];
        for u in [&self.client_url, &self.peer_url] {
            let h = Self::url_host(u);
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let dir = self.data_dir.with_file_name("tls");
        let (cert, key) = creds.member_files(&dir, &hosts, &self.peer_url);
        vec![
            "--tls-ca-file".into(),
            creds.ca_file().into(),
            "--tls-cert-file".into(),
            cert.into(),
            "--tls-key-file".into(),
            key.into(),
            "--token-file".into(),
            creds.token_file().into(),
        ]
    }

    /// SIGKILL the process (if running) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the process and wait for it to exit; SIGKILL it if it takes too long.
    pub async fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + GRACEFUL_STOP;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                self.child = None;
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        eprintln!(
            "node {} ignored SIGTERM for {GRACEFUL_STOP:?}; killing it",
            self.index
        );
        self.kill9();
    }

    /// Stop the process if it runs, then start it again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// Remove everything in the data directory (the process must not be running).
    pub fn wipe_data(&mut self) {
        assert!(self.child.is_none(), "wipe the data of a stopped node only");
        fs::remove_dir_all(&self.data_dir).expect("remove data dir");
        fs::create_dir_all(&self.data_dir).expect("recreate data dir");
    }

    /// The last `n` lines of this node's log, with a header naming the node.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<{e}>"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "----- node {} (id {}, {}) last {n} log lines of {} -----\n{tail}",
            self.index,
            self.id,
            self.client_url,
            self.log_path.display()
        )
    }

    /// This node's whole log, for tests that look for a specific event.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected JSON (status {}): {e}: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// `error.code` of a JSON error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["error"]["code"].as_str().map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The version in the `ETag: "<version>"` header.
    pub fn etag_version(&self) -> Option<u64> {
        self.header("etag")?.trim_matches('"').parse().ok()
    }

    /// Assert the status and the JSON error code: `resp.assert_error(412, "precondition_failed")`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.error_code().as_deref()),
            (status, Some(code)),
            "expected {status} {code}, got body {:?}",
            self.text()
        );
    }

    /// Assert a 200 and return the body as JSON.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200, got body {:?}", self.text());
        self.json()
    }
}

/// An error with all its sources, since reqwest's own message hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The HTTP API of one node (cheap to clone; usable from spawned tasks).
#[derive(Clone)]
pub struct NodeClient {
    pub http: reqwest::Client,
    pub url: String,
}

/// Read consistency of `GET /v1/kv/{key}`.
#[derive(Clone, Copy, Debug)]
pub enum Consistency {
    Linearizable,
    Leader,
    Stale,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Leader => "leader",
            Consistency::Stale => "stale",
        }
    }
}

/// The path of a key, percent-encoded except for slashes (keys may contain them).
pub fn kv_path(key: &str) -> String {
    let mut path = String::from("/v1/kv/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

impl NodeClient {
    /// Send a request; transport errors (connection refused, timeout) are returned.
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Resp, String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {}{path}: {}", self.url, error_chain(&e)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| {
            format!(
                "{method} {}{path}: reading body: {}",
                self.url,
                error_chain(&e)
            )
        })?;
        Ok(Resp {
            status,
            headers,
            body: body.to_vec(),
        })
    }

    /// Send a request; a transport error fails the test.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn try_get(&self, path: &str) -> Result<Resp, String> {
        self.try_send(reqwest::Method::GET, path, &[], None).await
    }

    pub async fn get_path(&self, path: &str) -> Resp {
        self.send(reqwest::Method::GET, path, &[], None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        let body = serde_json::to_vec(body).expect("encode JSON");
        self.post_raw(path, body).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Resp {
        let headers = [("content-type", "application/json")];
        self.send(reqwest::Method::POST, path, &headers, Some(body))
            .await
    }

    /// `PUT` of a JSON body, once.
    pub async fn put_json(&self, path: &str, body: &Value) -> Resp {
        let body = serde_json::to_vec(body).expect("encode JSON");
        let headers = [("content-type", "application/json")];
        self.send(reqwest::Method::PUT, path, &headers, Some(body))
            .await
    }

    /// `POST /v1/txn`, once.
    pub async fn txn(&self, body: &Value) -> Resp {
        self.post_json("/v1/txn", body).await
    }

    /// `GET /v1/cluster/config` as JSON: this node's applied copy of the settings.
    pub async fn config(&self) -> Value {
        self.get_path("/v1/cluster/config").await.ok_json()
    }

    /// `PUT /v1/cluster/config` (`replication_mode`, `read_consistency`, or both), once.
    pub async fn set_config(&self, change: &Value) -> Resp {
        self.put_json("/v1/cluster/config", change).await
    }

    /// Change the replication mode through this member and check the answer.
    pub async fn set_mode(&self, mode: &str) {
        let config = self
            .set_config(&json!({"replication_mode": mode}))
            .await
            .ok_json();
        assert_eq!(
            config["replication_mode"], mode,
            "answer to setting {mode} via {}: {config}",
            self.url
        );
    }

    /// `PUT /v1/kv/{key}` with extra headers (`If-Match`, `If-None-Match`).
    pub async fn put_with(&self, key: &str, value: &[u8], headers: &[(&str, &str)]) -> Resp {
        self.send(
            reqwest::Method::PUT,
            &kv_path(key),
            headers,
            Some(value.to_vec()),
        )
        .await
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Resp {
        self.put_with(key, value, &[]).await
    }

    /// An unconditional put retried through elections (503 and transport errors) until
    /// it is acknowledged; panics on any other answer or after [`ELECTION`].
    /// Retrying is safe because the write is idempotent.
    pub async fn put_acked(&self, key: &str, value: &[u8]) -> Value {
        let path = kv_path(key);
        let resp = wait_for(
            ELECTION,
            &format!("PUT {key} via {} to be acknowledged", self.url),
            async || match self
                .try_send(reqwest::Method::PUT, &path, &[], Some(value.to_vec()))
                .await
            {
                Ok(r) if r.status == 503 => Err(r.text()),
                Ok(r) => Ok(r),
                Err(e) => Err(e),
            },
        )
        .await;
        resp.ok_json()
    }

    pub async fn get(&self, key: &str, consistency: Consistency) -> Resp {
        let path = format!("{}?consistency={}", kv_path(key), consistency.as_str());
        self.get_path(&path).await
    }

    /// A read retried through elections (503 and transport errors); any other answer is
    /// returned as is.
    pub async fn get_through_elections(&self, key: &str, consistency: Consistency) -> Resp {
        let path = format!("{}?consistency={}", kv_path(key), consistency.as_str());
        wait_for(
            ELECTION,
            &format!("GET {path} via {} to be answered", self.url),
            async || match self.try_get(&path).await {
                Ok(r) if r.status == 503 => Err(r.text()),
                Ok(r) => Ok(r),
                Err(e) => Err(e),
            },
        )
        .await
    }

    pub async fn delete_with(&self, key: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(reqwest::Method::DELETE, &kv_path(key), headers, None)
            .await
    }

    pub async fn delete(&self, key: &str) -> Resp {
        self.delete_with(key, &[]).await
    }

    /// `GET /v1/node` as JSON.
    pub async fn node_info(&self) -> Value {
        self.get_path("/v1/node").await.ok_json()
    }

    /// `GET /v1/cluster` as JSON (forwarded to the leader by followers).
    pub async fn cluster_view(&self) -> Resp {
        self.get_path("/v1/cluster").await
    }

    /// `POST /v1/cluster/members`, once.
    pub async fn add_member(&self, id: u64, peer_url: &str, client_url: &str, role: &str) -> Resp {
        let body = json!({"id": id, "peer_url": peer_url, "client_url": client_url, "role": role});
        self.post_json("/v1/cluster/members", &body).await
    }

    /// `DELETE /v1/cluster/members/{id}`, once.
    pub async fn remove_member(&self, id: u64) -> Resp {
        self.send(
            reqwest::Method::DELETE,
            &format!("/v1/cluster/members/{id}"),
            &[],
            None,
        )
        .await
    }
}

/// What a node's reads must return: key to value.
pub type Expected = BTreeMap<String, Vec<u8>>;

/// Assert that `client` returns every expected value under `consistency`, retrying only
/// through elections (503). 16 reads are in flight at a time.
pub async fn assert_values(client: &NodeClient, expected: &Expected, consistency: Consistency) {
    let mut reads = futures::stream::iter(expected.iter())
        .map(|(key, value)| async move {
            let resp = client.get_through_elections(key, consistency).await;
            (key, value, resp)
        })
        .buffer_unordered(16);
    while let Some((key, value, resp)) = reads.next().await {
        assert_eq!(
            (resp.status, resp.text()),
            (200, String::from_utf8_lossy(value).into_owned()),
            "{consistency:?} read of {key:?} from {}",
            client.url
        );
    }
}

/// How many expected keys `client` already serves with the right value under `stale`
/// reads; for waiting on a node that is still catching up.
pub async fn count_stale_matches(client: &NodeClient, expected: &Expected) -> usize {
    count_matches(client, expected, Consistency::Stale).await
}

/// How many expected keys `client` serves with the right value under `consistency`; any
/// other answer (old value, 404, 503, transport error) counts as not yet.
pub async fn count_matches(
    client: &NodeClient,
    expected: &Expected,
    consistency: Consistency,
) -> usize {
    futures::stream::iter(expected.iter())
        .map(|(key, value)| async move {
            let path = format!("{}?consistency={}", kv_path(key), consistency.as_str());
            matches!(client.try_get(&path).await, Ok(r) if r.status == 200 && r.body == *value)
        })
        .buffer_unordered(16)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await
}

/// Acknowledged writes of `count` keys `prefix-0000`… through `client`, `parallel` in
/// flight at a time. Returns what was acknowledged.
pub async fn write_keys(
    client: &NodeClient,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> Expected {
    let mut writes = futures::stream::iter(0..count)
        .map(|i| async move {
            let key = format!("{prefix}-{i:04}");
            let value = format!("value of {key}").into_bytes();
            client.put_acked(&key, &value).await;
            (key, value)
        })
        .buffer_unordered(parallel);
    let mut acked = Expected::new();
    while let Some((key, value)) = writes.next().await {
        acked.insert(key, value);
    }
    acked
}

/// The value of an unlabelled sample `name` in Prometheus text, if present.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// The members of a `/v1/cluster` view as (id, role) pairs, sorted.
pub fn members(view: &Value) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = view["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members array in {view}"))
        .iter()
        .map(|m| {
            let id = m["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("member without id: {m}"));
            (id, m["role"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    out.sort();
    out
}

/// Real node processes forming one cluster, with their temp dir and an HTTP client.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    pub tmp: TempDir,
    /// Trusts the cluster CA and sends the admin token.
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    interposer: Option<Arc<dyn Interposer>>,
    /// `None` when the nodes run in plaintext (`RSTORE_INSECURE_PLAINTEXT` in `env`).
    pub creds: Option<Arc<Creds>>,
}

impl Cluster {
    /// Start `n` processes and make them one cluster of `n` voters.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with_env(n, &[]).await
    }

    /// As [`Cluster::start`], with extra environment for every node
    /// (e.g. `RSTORE_SNAPSHOT_LOGS=50` to force snapshots).
    pub async fn start_with_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster::new(env);
        cluster.bootstrap(n).await;
        cluster
    }

    /// Start `n` processes and make them one cluster of `n` voters.
    async fn bootstrap(&mut self, n: usize) {
        assert!(n >= 1);
        let cluster = self;
        for _ in 0..n {
            cluster.spawn_node().await;
        }
        let init = cluster
            .client(0)
            .post_raw("/v1/cluster/init", Vec::new())
            .await;
        init.ok_json();
        for i in 1..n {
            cluster.add_member(0, i, "voter").await;
        }
        cluster.wait_for_voters(&cluster.ids()).await;
    }

    /// A client builder for this cluster's client API: trusting its CA and sending the
    /// admin token (a plain builder for a plaintext cluster). Set the timeouts you need.
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        match &self.creds {
            Some(c) => c.http_builder(Some(&c.admin_token), None),
            None => reqwest::Client::builder(),
        }
    }

    /// The credentials; panics for a plaintext cluster.
    pub fn creds(&self) -> &Creds {
        self.creds.as_deref().expect("a TLS cluster")
    }

    /// An empty cluster: no process yet.
    pub fn new(env: &[(&str, &str)]) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("rstore-test-")
            .tempdir()
            .expect("create temp dir");
        let plaintext = env.iter().any(|(k, _)| *k == "RSTORE_INSECURE_PLAINTEXT");
        let creds = (!plaintext).then(|| Arc::new(Creds::create(&tmp.path().join("creds"))));
        let http = match &creds {
            Some(c) => c.http(Some(&c.admin_token)),
            None => reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(20))
                .build()
                .expect("build HTTP client"),
        };
        Cluster {
            nodes: Vec::new(),
            tmp,
            creds,
            http,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            interposer: None,
        }
    }

    /// As [`Cluster::start_with_env`], with `interposer` between the nodes.
    pub async fn start_interposed(
        n: usize,
        env: &[(&str, &str)],
        interposer: Arc<dyn Interposer>,
    ) -> Cluster {
        let mut cluster = Cluster::new(env);
        cluster.interposer = Some(interposer);
        cluster.bootstrap(n).await;
        cluster
    }

    /// Start a fresh, uninitialized process; returns its index. It is not a member yet.
    pub async fn spawn_node(&mut self) -> usize {
        let index = self.nodes.len();
        let dir = self.tmp.path().join(format!("node-{index}"));
        let mut node = TestNode::new(
            index,
            &dir,
            &self.env,
            self.http.clone(),
            self.interposer.clone(),
            self.creds.clone(),
        );
        node.start().await;
        self.nodes.push(node);
        index
    }

    /// Start a fresh process and add it as a voter through the current leader.
    pub async fn add_node(&mut self) -> usize {
        self.add_node_as("voter").await
    }

    /// Start a fresh process and add it with `role` (`voter` or `learner`) through the
    /// current leader.
    pub async fn add_node_as(&mut self, role: &str) -> usize {
        let index = self.spawn_node().await;
        let leader = self.leader().await;
        self.add_member(leader, index, role).await;
        index
    }

    pub fn client(&self, index: usize) -> NodeClient {
        self.nodes[index].client()
    }

    /// Indexes of the nodes whose process is running.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// The current leader and one running follower.
    pub async fn leader_and_follower(&mut self) -> (usize, usize) {
        let leader = self.leader().await;
        let follower = self
            .running()
            .into_iter()
            .find(|&i| i != leader)
            .expect("a running follower");
        (leader, follower)
    }

    /// The ids the nodes reported at their last start.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    /// Add node `index` (by the id it reports) through node `via`, retrying while the
    /// cluster has no leader or another change is in progress. Returns the cluster view.
    pub async fn add_member(&self, via: usize, index: usize, role: &str) -> Value {
        let node = &self.nodes[index];
        let client = self.client(via);
        let what = format!(
            "adding node {index} (id {}) as {role} via node {via}",
            node.id
        );
        wait_for(ELECTION, &what, async || {
            let resp = client
                .add_member(node.id, &node.peer_url, &node.client_url, role)
                .await;
            match resp.status {
                200 => Ok(resp.json()),
                409 | 503 | 504 => Err(resp.text()),
                _ => panic!(
                    "{what}: unexpected answer {} {:?}",
                    resp.status,
                    resp.text()
                ),
            }
        })
        .await
    }

    /// Remove member `id` through the current leader (retrying like [`Cluster::add_member`])
    /// and check that the returned view no longer lists it.
    pub async fn remove_member(&self, id: u64) -> Value {
        let leader = self.leader().await;
        let client = self.client(leader);
        let what = format!("removing member {id} via node {leader}");
        let view = wait_for(ELECTION, &what, async || {
            let resp = client.remove_member(id).await;
            match resp.status {
                200 => Ok(resp.json()),
                409 | 503 => Err(resp.text()),
                _ => panic!(
                    "{what}: unexpected answer {} {:?}",
                    resp.status,
                    resp.text()
                ),
            }
        })
        .await;
        assert!(
            !members(&view).iter().any(|(m, _)| *m == id),
            "member {id} still listed after removal: {view}"
        );
        view
    }

    /// Index of the running node that says it is the leader (the one with the highest
    /// term, should a deposed leader not know yet), waiting for an election.
    pub async fn leader(&self) -> usize {
        let clients: Vec<(usize, NodeClient)> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| (n.index, n.client()))
            .collect();
        wait_for(ELECTION, "a leader", async || {
            let mut leader: Option<(u64, usize)> = None;
            let mut seen = Vec::new();
            for (index, client) in &clients {
                let Ok(resp) = client.try_get("/v1/node").await else {
                    continue;
                };
                let info: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                let term = info["term"].as_u64().unwrap_or(0);
                if info["role"] == "leader" && leader.is_none_or(|(t, _)| term > t) {
                    leader = Some((term, *index));
                }
                seen.push(format!("node {index}: {info}"));
            }
            leader
                .map(|(_, index)| index)
                .ok_or_else(|| seen.join("; "))
        })
        .await
    }

    /// Wait until `/v1/cluster` (asked of the leader) lists exactly `ids` as voters and a
    /// leader among them.
    pub async fn wait_for_voters(&self, ids: &[u64]) -> Value {
        let mut want: Vec<(u64, String)> =
            ids.iter().map(|&id| (id, "voter".to_string())).collect();
        want.sort();
        let what = format!("voters {ids:?} with a leader");
        wait_for(ELECTION, &what, async || {
            let leader = self.leader().await;
            let view = self.client(leader).cluster_view().await;
            if view.status != 200 {
                return Err(view.text());
            }
            let view = view.json();
            let leader_ok = view["leader_id"].as_u64().is_some_and(|l| ids.contains(&l));
            if leader_ok && members(&view) == want {
                Ok(view)
            } else {
                Err(view.to_string())
            }
        })
        .await
    }

    /// Wait until node `index` has applied at least up to `index_at_least`.
    pub async fn wait_applied(&self, index: usize, index_at_least: u64) {
        let client = self.client(index);
        let what = format!("node {index} to apply index {index_at_least}");
        wait_for(CATCH_UP, &what, async || {
            let info = client.try_get("/v1/node").await?.json();
            match info["applied_index"].as_u64() {
                Some(applied) if applied >= index_at_least => Ok(()),
                _ => Err(info.to_string()),
            }
        })
        .await
    }

    /// Wait until node `index` serves every expected key under `stale` reads, then check
    /// the values one last time.
    pub async fn wait_stale_caught_up(&self, index: usize, expected: &Expected) {
        let client = self.client(index);
        let total = expected.len();
        let what = format!("node {index} to serve all {total} keys with stale reads");
        wait_for(CATCH_UP, &what, async || {
            match count_stale_matches(&client, expected).await {
                n if n == total => Ok(()),
                n => Err(format!("{n} of {total} keys")),
            }
        })
        .await;
        assert_values(&client, expected, Consistency::Stale).await;
    }

    /// Check every expected key on every running node: linearizable reads at once, stale
    /// reads once each node has caught up.
    pub async fn assert_everywhere(&mut self, expected: &Expected) {
        for index in self.running() {
            assert_values(&self.client(index), expected, Consistency::Linearizable).await;
            self.wait_stale_caught_up(index, expected).await;
        }
    }

    /// Print the tail of every node's log to stderr.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            eprintln!("{}", node.log_tail(LOG_TAIL_LINES));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if std::env::var_os("RSTORE_TEST_KEEP").is_some() {
            self.tmp.disable_cleanup(true);
            eprintln!("RSTORE_TEST_KEEP: kept {}", self.tmp.path().display());
        }
        // The nodes are killed next, when `nodes` is dropped, before `tmp` is removed.
    }
}
