//! One real `node serve` process: its ports, data directory and log; started, stopped,
//! killed, paused, restarted and wiped. The binary is given by the caller (a test of the
//! `node` package passes `env!("CARGO_BIN_EXE_node")`, other tests [`node_bin`]).
//!
//! An [`Interposer`] (the fault-injection suite's proxy or network namespaces) may decide
//! where the node listens, what it advertises and how its process is started.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::NodeClient;
use super::creds::Creds;
use super::wait::POLL;
use super::wait::{LOG_TAIL_LINES, STARTUP};

/// How long a SIGTERM'd node may take to exit before it is killed.
const GRACEFUL_STOP: Duration = Duration::from_secs(10);

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
    /// The `node` binary this node runs.
    bin: PathBuf,
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
    pub(super) fn new(
        bin: &Path,
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
            bin: bin.to_path_buf(),
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
            Some(i) => i.command(self.index, &self.bin),
            None => Command::new(&self.bin),
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
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
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
