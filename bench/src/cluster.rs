//! Starting the two systems under test on loopback: a 3-node rstore cluster
//! (`node serve` processes bootstrapped through the admin API of `docs/api.md`) and a
//! 3-member etcd cluster.
//!
//! Every child process is owned by a [`ChildGuard`], which kills and reaps it when
//! dropped, so that an error, a panic or Ctrl-C in the bench never leaves a cluster
//! running. Each process gets its own temporary data directory, removed after the
//! process is gone; its stdout and stderr go to a log file in that directory, and the
//! tail of that log is quoted when the process fails to start.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rstore_api::admin::MemberRole;
use rstore_api::client::{ConfigChange, NodeClient};
use tempfile::TempDir;

/// How long a cluster may take to come up before the bench gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many bytes of a child's log are quoted in an error.
const LOG_TAIL_BYTES: u64 = 4096;

/// Everything that can go wrong while starting or bootstrapping a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot make certificates: {0}")]
    Tls(String),
    #[error("could not {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited during startup ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        name: String,
        status: ExitStatus,
        log_tail: String,
    },
    #[error("timed out after {timeout:?} waiting for {what}; last answer: {last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
    /// A call to a node, through the shared client.
    #[error("{what}: {source}")]
    Node {
        what: String,
        #[source]
        source: rstore_api::client::Error,
    },
    #[error("etcd {what} failed: {source}")]
    Etcd {
        what: String,
        // Boxed: etcd_client::Error is large and would bloat every Result here.
        #[source]
        source: Box<etcd_client::Error>,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

fn api_err(what: impl Into<String>) -> impl FnOnce(rstore_api::client::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Node { what, source }
}

/// Finds `n` distinct free loopback ports. All listeners are held until every port is
/// chosen, so that the OS cannot hand out the same port twice; they are closed on
/// return, and the small window before the child binds is accepted.
pub fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("bind a loopback port"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("read a bound port"))
}

/// Resident set size of a process in KiB, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A child process that is killed and reaped when dropped, together with its data
/// directory (removed after the process is gone).
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log_path: PathBuf,
    // Dropped after `Drop::drop` has killed the child, so that the process never
    // sees its directory vanish under it.
    _dir: TempDir,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command, dir: TempDir) -> Result<Self, ClusterError> {
        let log_path = dir.path().join("output.log");
        let log =
            File::create(&log_path).map_err(io_err(format!("create {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("duplicate a log file handle"))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let bin = PathBuf::from(cmd.get_program());
        let child = cmd
            .spawn()
            .map_err(|source| ClusterError::Spawn { bin, source })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path,
            _dir: dir,
        })
    }

    /// Process id, for reading its memory use.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Process name used in reports, e.g. `rstore-2`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails with the log tail if the process has already exited.
    pub fn check_alive(&mut self) -> Result<(), ClusterError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ClusterError::Exited {
                name: self.name.clone(),
                status,
                log_tail: log_tail(&self.log_path),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(ClusterError::Io {
                what: format!("poll {}", self.name),
                source: e,
            }),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGKILL: the data is thrown away, so there is nothing to shut down cleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn temp_dir(prefix: &str) -> Result<TempDir, ClusterError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(io_err("create a temporary data directory"))
}

/// Why a poll did not succeed.
enum Wait {
    /// Not yet: poll again. The text is quoted if the wait times out.
    NotYet(String),
    /// Will not get better: stop waiting.
    Fatal(ClusterError),
}

impl From<String> for Wait {
    fn from(s: String) -> Self {
        Self::NotYet(s)
    }
}

/// Polls `probe` until it succeeds, checking between polls that none of the
/// `children` has died.
async fn wait_for<T, F, Fut>(
    what: &str,
    children: &mut [ChildGuard],
    mut probe: F,
) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Wait>>,
{
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        for c in children.iter_mut() {
            c.check_alive()?;
        }
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(Wait::NotYet(e)) => e,
            Err(Wait::Fatal(e)) => return Err(e),
        };
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: what.to_owned(),
                timeout: STARTUP_TIMEOUT,
                last,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// GET `url` and describe anything but a 2xx as "not yet".
async fn get_ok(http: &reqwest::Client, url: &str) -> Result<String, Wait> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(Wait::NotYet(format!("{status}: {body}")))
    }
}

pub use rstore_api::ReplicationMode;

/// What `--mode` led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeOutcome {
    Applied,
    /// The node answered 404: `PUT /v1/cluster/config` is not implemented yet.
    Unsupported,
}

/// Settings for starting rstore nodes.
#[derive(Clone, Debug)]
pub struct RstoreConfig {
    pub node_bin: PathBuf,
    /// TLS and a token, or `None` for `--insecure-plaintext` nodes.
    pub tls: Option<std::sync::Arc<crate::security::BenchTls>>,
    /// Extra environment for every node process (`--rstore-env`).
    pub env: Vec<(String, String)>,
}

/// `node serve` on `data_dir` with the client and peer listeners on these loopback ports,
/// as the bench runs every node: with TLS and tokens unless `cfg.tls` is `None`. `name`
/// names the node's certificate files.
pub fn rstore_serve_command(
    cfg: &RstoreConfig,
    data_dir: &Path,
    name: &str,
    client_port: u16,
    peer_port: u16,
) -> Result<Command, ClusterError> {
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{client_port}");
    let peer_url = format!("{scheme}://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(&cfg.node_bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen-client")
        .arg(format!("127.0.0.1:{client_port}"))
        .arg("--advertise-client")
        .arg(&client_url)
        .arg("--listen-peer")
        .arg(format!("127.0.0.1:{peer_port}"))
        .arg("--advertise-peer")
        .arg(&peer_url)
        .envs(cfg.env.iter().map(|(k, v)| (k, v)));
    match &cfg.tls {
        Some(tls) => {
            let (cert, key) = tls
                .server_files(name, &peer_url)
                .map_err(|e| ClusterError::Tls(e.to_string()))?;
            cmd.arg("--tls-ca-file")
                .arg(tls.ca_file())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--token-file")
                .arg(tls.token_file());
        }
        None => {
            cmd.arg("--insecure-plaintext");
        }
    }
    Ok(cmd)
}

/// A running, bootstrapped 3-node rstore cluster.
#[derive(Debug)]
pub struct RstoreCluster {
    nodes: Vec<ChildGuard>,
    client_urls: Vec<String>,
}

impl RstoreCluster {
    /// Number of nodes started.
    pub const SIZE: usize = 3;

    /// Spawns the nodes, initializes the cluster on node 1, adds nodes 2 and 3 as
    /// voters and waits until every node is ready.
    pub async fn start(cfg: &RstoreConfig, http: &reqwest::Client) -> Result<Self, ClusterError> {
        let ports = free_ports(2 * Self::SIZE)?;
        let mut nodes = Vec::with_capacity(Self::SIZE);
        let mut client_urls = Vec::with_capacity(Self::SIZE);
        let mut peer_urls = Vec::with_capacity(Self::SIZE);
        for i in 0..Self::SIZE {
            let (client_port, peer_port) = (ports[2 * i], ports[2 * i + 1]);
            let scheme = if cfg.tls.is_some() { "https" } else { "http" };
            let client_url = format!("{scheme}://127.0.0.1:{client_port}");
            let peer_url = format!("{scheme}://127.0.0.1:{peer_port}");
            let dir = temp_dir(&format!("rstore-bench-node{}-", i + 1))?;
            let cmd = rstore_serve_command(
                cfg,
                &dir.path().join("data"),
                &format!("rstore-{}", i + 1),
                client_port,
                peer_port,
            )?;
            nodes.push(ChildGuard::spawn(&format!("rstore-{}", i + 1), cmd, dir)?);
            client_urls.push(client_url);
            peer_urls.push(peer_url);
        }
        let mut cluster = Self { nodes, client_urls };
        let node = |url: &str| NodeClient::new(http.clone(), url);

        for url in &cluster.client_urls {
            let client = node(url);
            let client = &client;
            wait_for(
                &format!("GET {url}/healthz"),
                &mut cluster.nodes,
                move || async move {
                    client
                        .healthz()
                        .await
                        .map_err(|e| Wait::NotYet(e.to_string()))
                },
            )
            .await?;
        }

        let first = node(&cluster.client_urls[0]);
        first
            .init()
            .await
            .map_err(api_err(format!("POST {}/v1/cluster/init", first.base())))?;

        let joiners: Vec<(String, String)> = cluster
            .client_urls
            .iter()
            .cloned()
            .zip(peer_urls)
            .skip(1)
            .collect();
        for (i, (url, peer_url)) in joiners.into_iter().enumerate() {
            let node_no = i + 2;
            let info = node(&url)
                .node()
                .await
                .map_err(api_err(format!("GET {url}/v1/node")))?;
            // 409 (another membership change still settling), 503 (no leader yet)
            // and 504 (catch-up timeout) are transient right after init: retry.
            let what = format!("POST {}/v1/cluster/members (node {node_no})", first.base());
            let (what_ref, first, url, peer_url) = (&what, &first, &url, &peer_url);
            wait_for(&what, &mut cluster.nodes, move || async move {
                match first
                    .add_member(info.id, peer_url, url, MemberRole::Voter)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_transient() => Err(Wait::NotYet(e.to_string())),
                    Err(e) => Err(Wait::Fatal(api_err(what_ref.clone())(e))),
                }
            })
            .await?;
        }

        let first = &first;
        wait_for(
            "3 voters and a leader in GET /v1/cluster",
            &mut cluster.nodes,
            move || async move {
                let view = first.cluster().await.map_err(|e| e.to_string())?;
                let voters = view
                    .members
                    .iter()
                    .filter(|m| m.role == MemberRole::Voter)
                    .count();
                match view.leader_id {
                    Some(leader)
                        if voters == Self::SIZE && view.members.iter().any(|m| m.id == leader) =>
                    {
                        Ok(())
                    }
                    _ => Err(Wait::NotYet(format!("{view:?}"))),
                }
            },
        )
        .await?;
        for url in cluster.client_urls.clone() {
            let client = node(&url);
            let client = &client;
            wait_for(
                &format!("GET {url}/readyz"),
                &mut cluster.nodes,
                move || async move {
                    client
                        .readyz()
                        .await
                        .map_err(|e| Wait::NotYet(e.to_string()))
                },
            )
            .await?;
        }
        Ok(cluster)
    }

    /// Asks node 1 to switch replication mode (`PUT /v1/cluster/config`).
    pub async fn set_mode(
        &self,
        http: &reqwest::Client,
        mode: ReplicationMode,
    ) -> Result<ModeOutcome, ClusterError> {
        let node = NodeClient::new(http.clone(), &self.client_urls[0]);
        let change = ConfigChange {
            replication_mode: Some(mode.as_str().to_string()),
            read_consistency: None,
        };
        match node.set_config(&change).await {
            Ok(_) => Ok(ModeOutcome::Applied),
            Err(e) if e.status() == Some(404) => Ok(ModeOutcome::Unsupported),
            Err(e) => Err(api_err(format!("PUT {}/v1/cluster/config", node.base()))(e)),
        }
    }

    /// Client URLs (`http://127.0.0.1:PORT`) of the nodes, node 1 first.
    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }

    /// The node processes.
    pub fn processes(&self) -> &[ChildGuard] {
        &self.nodes
    }
}

/// A running 3-member etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<ChildGuard>,
    client_urls: Vec<String>,
}

/// `GOARCH` name of the architecture we run on, for `ETCD_UNSUPPORTED_ARCH`.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What one etcd member is started with.
pub struct EtcdMember<'a> {
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub client_url: &'a str,
    pub peer_url: &'a str,
    /// `name=peer_url,...` of every member.
    pub initial_cluster: &'a str,
    pub token: &'a str,
}

/// The etcd command line of one member, as the bench runs every member: with TLS on both
/// listeners and client certificates required on both, unless `tls` is `None`.
pub fn etcd_member_command(
    etcd_bin: &Path,
    m: &EtcdMember<'_>,
    tls: Option<&std::sync::Arc<crate::security::BenchTls>>,
) -> Result<Command, ClusterError> {
    let mut cmd = Command::new(etcd_bin);
    // Our own environment must not reconfigure etcd behind the flags' back.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(key);
        }
    }
    // etcd 3.4 refuses to start on anything but amd64 and ppc64le unless told.
    if !matches!(go_arch(), "amd64" | "ppc64le") {
        cmd.env("ETCD_UNSUPPORTED_ARCH", go_arch());
    }
    cmd.arg("--name")
        .arg(m.name)
        .arg("--data-dir")
        .arg(m.data_dir)
        .arg("--listen-client-urls")
        .arg(m.client_url)
        .arg("--advertise-client-urls")
        .arg(m.client_url)
        .arg("--listen-peer-urls")
        .arg(m.peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(m.peer_url)
        .arg("--initial-cluster")
        .arg(m.initial_cluster)
        .arg("--initial-cluster-state")
        .arg("new")
        .arg("--initial-cluster-token")
        .arg(m.token)
        .arg("--logger")
        .arg("zap")
        .arg("--log-outputs")
        .arg("stderr");
    if let Some(tls) = tls {
        let (cert, key) = tls
            .server_files(m.name, m.peer_url)
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        cmd.arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--trusted-ca-file")
            .arg(tls.ca_file())
            .arg("--client-cert-auth")
            .arg("--peer-cert-file")
            .arg(&cert)
            .arg("--peer-key-file")
            .arg(&key)
            .arg("--peer-trusted-ca-file")
            .arg(tls.ca_file())
            .arg("--peer-client-cert-auth");
    }
    Ok(cmd)
}

impl EtcdCluster {
    /// Number of members started.
    pub const SIZE: usize = 3;

    /// Spawns the members with a static `--initial-cluster` and waits until every
    /// member reports healthy and the cluster accepts a write.
    pub async fn start(
        etcd_bin: &Path,
        http: &reqwest::Client,
        tls: Option<&std::sync::Arc<crate::security::BenchTls>>,
    ) -> Result<Self, ClusterError> {
        Self::start_with(etcd_bin, http, tls, &[]).await
    }

    /// [`Self::start`] with extra flags for every member (e.g. a larger
    /// `--quota-backend-bytes`).
    pub async fn start_with(
        etcd_bin: &Path,
        http: &reqwest::Client,
        tls: Option<&std::sync::Arc<crate::security::BenchTls>>,
        extra_args: &[String],
    ) -> Result<Self, ClusterError> {
        let ports = free_ports(2 * Self::SIZE)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let names: Vec<String> = (1..=Self::SIZE)
            .map(|i| format!("bench-etcd-{i}"))
            .collect();
        let client_urls: Vec<String> = (0..Self::SIZE)
            .map(|i| format!("{scheme}://127.0.0.1:{}", ports[2 * i]))
            .collect();
        let peer_urls: Vec<String> = (0..Self::SIZE)
            .map(|i| format!("{scheme}://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_urls)
            .map(|(n, p)| format!("{n}={p}"))
            .collect::<Vec<_>>()
            .join(",");
        // A fresh token per run keeps members of an earlier, leaked run from joining.
        let token = format!("rstore-bench-{}-{}", std::process::id(), ports[0]);

        let mut members = Vec::with_capacity(Self::SIZE);
        for i in 0..Self::SIZE {
            let dir = temp_dir(&format!("rstore-bench-etcd{}-", i + 1))?;
            let member = EtcdMember {
                name: &names[i],
                data_dir: &dir.path().join("data"),
                client_url: &client_urls[i],
                peer_url: &peer_urls[i],
                initial_cluster: &initial_cluster,
                token: &token,
            };
            let mut cmd = etcd_member_command(etcd_bin, &member, tls)?;
            cmd.args(extra_args);
            members.push(ChildGuard::spawn(&format!("etcd-{}", i + 1), cmd, dir)?);
        }
        let mut cluster = Self {
            members,
            client_urls,
        };

        for url in cluster.client_urls.clone() {
            let health = format!("{url}/health");
            let health = &health;
            wait_for(
                &format!("GET {health}"),
                &mut cluster.members,
                move || async move {
                    let body = get_ok(http, health).await?;
                    if body.contains("\"true\"") {
                        Ok(())
                    } else {
                        Err(Wait::NotYet(body))
                    }
                },
            )
            .await?;
        }
        // Health says a leader exists; a write through every member proves the
        // gRPC path the load will use.
        for url in cluster.client_urls.clone() {
            let mut client =
                etcd_client::Client::connect([url.as_str()], tls.map(|t| t.etcd_options()))
                    .await
                    .map_err(|source| ClusterError::Etcd {
                        what: format!("connect to {url}"),
                        source: Box::new(source),
                    })?;
            client
                .put("rstore-bench/startup", url.as_bytes(), None)
                .await
                .map_err(|source| ClusterError::Etcd {
                    what: format!("startup put via {url}"),
                    source: Box::new(source),
                })?;
        }
        Ok(cluster)
    }

    /// Client URLs of the members.
    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }

    /// The member processes.
    pub fn processes(&self) -> &[ChildGuard] {
        &self.members
    }
}
