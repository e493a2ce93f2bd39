//! The command line: `node serve`, `node dev`, and a client (`node kv ...`, `node cluster ...`)
//! that speaks the HTTP API, in the manner of etcdctl.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::Settings;

#[derive(Parser, Debug)]
#[command(
    name = "node",
    version,
    about = "rstore node: a replicated key-value store member, and its client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size of the `serve` arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one cluster member.
    Serve(ServeArgs),
    /// Start a local cluster of N members on loopback, for trying rstore out.
    Dev(crate::dev::DevArgs),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Inspect and change cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Make certificates and tokens: a cluster CA, member and client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// A new cluster CA: DIR/ca.crt and DIR/ca.key (keep the key private).
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// A name for the CA (e.g. the cluster's).
        #[arg(long, default_value = "rstore")]
        name: String,
    },
    /// A member certificate, signed by the CA in --ca-dir: OUT.crt and OUT.key.
    Member {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The member's advertised peer URL (https://host:port); it becomes the certificate's
        /// URI name, which peers check against the membership.
        #[arg(long)]
        peer_url: String,
        /// Every host (DNS name or IP) clients and peers reach the member at; the peer
        /// URL's host is always included.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Path without extension of the files to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// A client certificate with a role (read, write or admin): OUT.crt and OUT.key.
    Client {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// A new bearer token: prints it, and appends its hash to the token file members read.
    Token {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        #[arg(long)]
        token_file: PathBuf,
    },
}

fn split_out(out: &std::path::Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = out
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let stem = out
        .file_name()
        .and_then(|s| s.to_str())
        .context("--out must end in a file name")?
        .to_string();
    Ok((dir, stem))
}

/// `node cert ...`.
pub fn run_cert(cmd: CertCommand) -> anyhow::Result<()> {
    use crate::pki::{Ca, Pem, new_token, token_line};
    match cmd {
        CertCommand::Ca { dir, name } => {
            if dir.join("ca.key").exists() {
                bail!(
                    "{} already holds a CA key; refusing to replace it",
                    dir.display()
                );
            }
            Ca::generate(&name)?.pem().write(&dir, "ca")?;
            println!("wrote {0}/ca.crt and {0}/ca.key", dir.display());
        }
        CertCommand::Member {
            ca_dir,
            peer_url,
            mut hosts,
            out,
        } => {
            let ca = Ca::from_pem(Pem::read(&ca_dir, "ca")?)?;
            let url = reqwest::Url::parse(&peer_url).context("--peer-url is not a URL")?;
            if let Some(h) = url.host_str() {
                let h = h.trim_start_matches('[').trim_end_matches(']').to_string();
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
            let (dir, stem) = split_out(&out)?;
            ca.member(&hosts, &peer_url)?.write(&dir, &stem)?;
            println!("wrote {0}/{stem}.crt and {0}/{stem}.key", dir.display());
        }
        CertCommand::Client {
            ca_dir,
            name,
            role,
            out,
        } => {
            let ca = Ca::from_pem(Pem::read(&ca_dir, "ca")?)?;
            let (dir, stem) = split_out(&out)?;
            ca.client(&name, &role)?.write(&dir, &stem)?;
            println!("wrote {0}/{stem}.crt and {0}/{stem}.key", dir.display());
        }
        CertCommand::Token {
            name,
            role,
            token_file,
        } => {
            let token = new_token();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&token_file)
                .with_context(|| format!("cannot open {}", token_file.display()))?;
            std::io::Write::write_all(&mut f, token_line(&name, &role, &token).as_bytes())?;
            eprintln!(
                "appended the hash of a {role} token for {name} to {}; members re-read it within seconds",
                token_file.display()
            );
            println!("{token}");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory for this member's data (identity, Raft log, state machine, snapshots).
    #[arg(long, env = "RSTORE_DATA_DIR", default_value = "./rstore-data")]
    pub data_dir: PathBuf,
    /// Address for the client listener (KV, admin, health, metrics).
    #[arg(long, env = "RSTORE_LISTEN_CLIENT", default_value = "127.0.0.1:7379")]
    pub listen_client: String,
    /// URL other members and clients use to reach the client listener [default: http://<listen-client>].
    #[arg(long, env = "RSTORE_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Address for the peer listener (Raft RPC only).
    #[arg(long, env = "RSTORE_LISTEN_PEER", default_value = "127.0.0.1:7380")]
    pub listen_peer: String,
    /// URL other members use to reach the peer listener [default: http://<listen-peer>].
    #[arg(long, env = "RSTORE_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Log format.
    #[arg(long, env = "RSTORE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Largest key, in bytes.
    #[arg(long, env = "RSTORE_MAX_KEY_BYTES", default_value_t = 4096)]
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    #[arg(long, env = "RSTORE_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,
    /// Raft heartbeat interval, in milliseconds (also the AppendEntries RPC deadline).
    #[arg(long, env = "RSTORE_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Smallest election timeout, in milliseconds.
    #[arg(long, env = "RSTORE_ELECTION_MIN_MS", default_value_t = 1000)]
    pub election_min_ms: u64,
    /// Largest election timeout, in milliseconds.
    #[arg(long, env = "RSTORE_ELECTION_MAX_MS", default_value_t = 2000)]
    pub election_max_ms: u64,
    /// Log entries between snapshots; the log is compacted after each snapshot.
    #[arg(long, env = "RSTORE_SNAPSHOT_LOGS", default_value_t = 10_000)]
    pub snapshot_logs: u64,
    /// Size of each write-ahead log segment file, in bytes. Segments are zero-filled ahead
    /// of use, one spare at a time.
    #[arg(long, env = "RSTORE_WAL_SEGMENT_BYTES", default_value_t = crate::store::SEGMENT_BYTES,
          value_parser = clap::value_parser!(u64).range(16 << 10..=1 << 30))]
    pub wal_segment_bytes: u64,
    /// How long a write may wait to commit before the client gets 503 outcome_unknown.
    #[arg(long, env = "RSTORE_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// In sync mode, how long a write waits for every voter before answering 503.
    #[arg(long, env = "RSTORE_SYNC_TIMEOUT_MS", default_value_t = 5_000)]
    pub sync_timeout_ms: u64,
    /// Write batches in the Raft pipeline at once (group commit depth).
    #[arg(long, env = "RSTORE_WRITE_PIPELINE", default_value_t = 2)]
    pub write_pipeline: usize,
    /// In async mode, the most log entries the leader may hold acknowledged but not yet
    /// committed; beyond it async writes wait for commit. Bounds what a leader crash loses.
    #[arg(long, env = "RSTORE_ASYNC_MAX_LAG", default_value_t = 64)]
    pub async_max_lag: u64,
    /// In async mode, how recently the leader must have heard from a quorum of voters to
    /// acknowledge a write before it commits; otherwise async writes wait for commit. Bounds
    /// what a leader cut off from the followers acknowledges, and so loses.
    /// [default: 3 heartbeat intervals]
    #[arg(long, env = "RSTORE_ASYNC_QUORUM_CONTACT_MS")]
    pub async_quorum_contact_ms: Option<u64>,
    /// Async runtime worker threads [default: the CPUs available to the process].
    #[arg(long, env = "RSTORE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Quota on the bytes of keys and values held. The data is kept in memory: size the
    /// memory limit at about 4 times this (building a snapshot copies and encodes it). At the
    /// quota, writes that add data answer 507 `quota_exceeded`; deletes still work.
    /// [default: a quarter of --memory-limit-bytes if given, else 1 GiB]
    #[arg(long, env = "RSTORE_MAX_DATA_BYTES")]
    pub max_data_bytes: Option<u64>,
    /// The memory this process may use (the operator passes the container's limit); sets
    /// the default data quota.
    #[arg(long, env = "RSTORE_MEMORY_LIMIT_BYTES")]
    pub memory_limit_bytes: Option<u64>,
    /// Revisions of change history kept for watches; older ones answer 410.
    #[arg(long, env = "RSTORE_WATCH_HISTORY", default_value_t = 100_000)]
    pub watch_history: u64,
    /// Bytes of keys and values of change history kept for watches (it is kept in memory);
    /// the oldest revisions go first once either bound is reached.
    #[arg(long, env = "RSTORE_WATCH_HISTORY_BYTES", default_value_t = 64 << 20)]
    pub watch_history_bytes: u64,
    /// How long adding a member waits for it to catch up before answering 504.
    #[arg(long, env = "RSTORE_CATCH_UP_TIMEOUT_MS", default_value_t = 60_000)]
    pub catch_up_timeout_ms: u64,
    /// The cluster CA certificate (PEM): peers' and clients' certificates must chain to it.
    #[arg(long, env = "RSTORE_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This member's certificate (PEM), signed by the cluster CA, with its peer URL as a URI
    /// name (see `node cert member`). Serves both ports; re-read when it changes.
    #[arg(long, env = "RSTORE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long, env = "RSTORE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Bearer tokens for the client port, stored hashed: lines of `NAME ROLE sha256:HEX`
    /// (see `node cert token`). Re-read when it changes.
    #[arg(long, env = "RSTORE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Run without TLS on either port. Anyone who can reach the peer port can then send
    /// Raft traffic, and without --token-file anyone who can reach the client port can read,
    /// write and reconfigure. For tests and trusted networks only.
    #[arg(long, env = "RSTORE_INSECURE_PLAINTEXT",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_plaintext: bool,
    /// Who may read /metrics: `open` (anyone who reaches the client port) or
    /// `authenticated` (the read role).
    #[arg(
        long,
        env = "RSTORE_METRICS_ACCESS",
        value_enum,
        default_value = "open"
    )]
    pub metrics_access: MetricsAccess,
    /// Open connections per listener; more are closed at once.
    #[arg(long, env = "RSTORE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a connection has for its TLS handshake and for each request head; a keep-alive
    /// connection idle this long is closed too.
    #[arg(long, env = "RSTORE_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub header_timeout_ms: u64,
    /// Time a request body has to arrive whole, on either port; slower ones answer 408.
    #[arg(long, env = "RSTORE_BODY_TIMEOUT_MS", default_value_t = DEFAULT_BODY_TIMEOUT_MS)]
    pub body_timeout_ms: u64,
    /// Concurrent watches on this member; more answer 429.
    #[arg(long, env = "RSTORE_MAX_WATCHES", default_value_t = 1024)]
    pub max_watches: usize,
    /// Bytes of events a watch may have waiting for its client; past it the watch waits,
    /// and a client that makes no room for 5 s is cut off (with an error naming the
    /// revision to resume from).
    #[arg(long, env = "RSTORE_WATCH_BUFFER_BYTES", default_value_t = 1 << 20)]
    pub watch_buffer_bytes: usize,
    /// A file in the format of /etc/hosts consulted before DNS when connecting to peers
    /// (re-read when it changes): for names no DNS knows, as on the local control plane.
    #[arg(long, env = "RSTORE_HOSTS_FILE")]
    pub hosts_file: Option<PathBuf>,
    /// Shut down when standard input reaches its end: `node dev` gives each member a pipe,
    /// so that no member outlives it, however it is stopped.
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
}

/// Default of `--body-timeout-ms`.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum MetricsAccess {
    Open,
    Authenticated,
}

impl ServeArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let tls = match (
            &self.tls_ca_file,
            &self.tls_cert_file,
            &self.tls_key_file,
            self.insecure_plaintext,
        ) {
            (Some(ca), Some(cert), Some(key), false) => Some(crate::tls::TlsPaths {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None, true) => None,
            (_, _, _, true) => {
                bail!("--insecure-plaintext cannot be combined with --tls-* files: choose one")
            }
            _ => bail!(
                "TLS is required: give --tls-ca-file, --tls-cert-file and --tls-key-file \
                 (`node cert` makes them; `node dev` does it all), or run with \
                 --insecure-plaintext on a trusted network"
            ),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise =
            |given: &Option<String>, listen: &str, flag: &str| -> anyhow::Result<String> {
                match given {
                    Some(u) => Ok(u.trim_end_matches('/').to_string()),
                    None if listen.starts_with("0.0.0.0") || listen.starts_with("[::]") => {
                        bail!("{flag} is required when listening on all interfaces ({listen})")
                    }
                    None => Ok(format!("{scheme}://{listen}")),
                }
            };

        if self.election_min_ms <= self.heartbeat_ms || self.election_max_ms <= self.election_min_ms
        {
            bail!("timeouts must satisfy heartbeat < election-min < election-max");
        }
        Ok(Settings {
            data_dir: self.data_dir.clone(),
            advertise_client: advertise(
                &self.advertise_client,
                &self.listen_client,
                "--advertise-client",
            )?,
            advertise_peer: advertise(&self.advertise_peer, &self.listen_peer, "--advertise-peer")?,
            listen_client: self.listen_client.clone(),
            listen_peer: self.listen_peer.clone(),
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            heartbeat_ms: self.heartbeat_ms,
            election_min_ms: self.election_min_ms,
            election_max_ms: self.election_max_ms,
            snapshot_logs: self.snapshot_logs.max(2),
            wal_segment_bytes: self.wal_segment_bytes,
            max_data_bytes: self
                .max_data_bytes
                .or(self.memory_limit_bytes.map(|m| m / 4))
                .unwrap_or(1 << 30),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            sync_timeout: Duration::from_millis(self.sync_timeout_ms),
            write_pipeline: self.write_pipeline.max(1),
            async_max_lag: self.async_max_lag.max(1),
            async_quorum_contact: Duration::from_millis(
                self.async_quorum_contact_ms
                    .unwrap_or(self.heartbeat_ms * 3)
                    .max(1),
            ),
            watch_history: crate::store::Retention {
                revisions: self.watch_history,
                bytes: self.watch_history_bytes,
            },
            catch_up_timeout: Duration::from_millis(self.catch_up_timeout_ms),
            tls,
            token_file: self.token_file.clone(),
            metrics_open: self.metrics_access == MetricsAccess::Open,
            max_connections: self.max_connections.max(1),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(100)),
            max_watches: self.max_watches,
            watch_buffer_bytes: self.watch_buffer_bytes.max(64 << 10),
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct Endpoint {
    /// Client URL of any member.
    #[arg(
        long,
        env = "RSTORE_ENDPOINT",
        default_value = "https://127.0.0.1:7379",
        global = true
    )]
    pub endpoint: String,
    /// The cluster CA certificate (PEM) to verify the member's certificate with.
    #[arg(long, env = "RSTORE_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) to authenticate with (its organization is its role).
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "RSTORE_CERT",
        global = true,
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        env = "RSTORE_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
    /// A bearer token to authenticate with.
    #[arg(long, env = "RSTORE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file in the format of /etc/hosts consulted before DNS (as the local control plane
    /// writes for its pods' names).
    #[arg(
        long = "hosts-file",
        id = "client_hosts_file",
        env = "RSTORE_HOSTS_FILE",
        global = true
    )]
    pub hosts_file: Option<PathBuf>,
}

impl Endpoint {
    /// An HTTP client with these credentials.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let ca = self.cacert.as_ref().map(read).transpose()?;
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let mut b = crate::tls::reqwest_client(
            ca.as_deref(),
            identity.as_ref().map(|(c, k)| (&c[..], &k[..])),
        )?;
        if let Some(hosts) = &self.hosts_file {
            crate::network::hosts::set_file(hosts.clone());
            b = b.dns_resolver(std::sync::Arc::new(crate::network::hosts::ReqwestResolver));
        }
        if let Some(t) = &self.token {
            let mut h = reqwest::header::HeaderMap::new();
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                .context("the token is not a valid header value")?;
            v.set_sensitive(true);
            h.insert(reqwest::header::AUTHORIZATION, v);
            b = b.default_headers(h);
        }
        Ok(b.build()?)
    }
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Write a value.
    Put {
        key: String,
        value: String,
        /// Only if the key is at this version (compare-and-set).
        #[arg(long, conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Read a value.
    Get {
        key: String,
        /// linearizable, leader or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Delete a key.
    Del {
        key: String,
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Run a transaction: JSON as in docs/api.md, from --file or standard input.
    Txn {
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Stream changes under a prefix (Ctrl-C to stop).
    Watch {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Replay kept history from this revision.
        #[arg(long)]
        start_revision: Option<u64>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// List keys by prefix.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        ep: Endpoint,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show members, leader, and replication progress.
    Status {
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Make the node at --endpoint a new one-member cluster.
    Init {
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Add a member (as a learner, promoted to voter once caught up unless --learner).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        peer_url: String,
        #[arg(long)]
        client_url: String,
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Show or change the replication mode and default read consistency.
    Config {
        /// quorum, sync or async.
        #[arg(long)]
        mode: Option<String>,
        /// linearizable, leader or stale.
        #[arg(long)]
        read_consistency: Option<String>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Remove a member.
    Remove {
        id: u64,
        #[command(flatten)]
        ep: Endpoint,
    },
}

fn encode_key(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message")?.as_str()?
            ))
        })
        .unwrap_or(body);
    bail!("{status}: {msg}")
}

/// One watch line as `REV  TYPE  KEY  VALUE`, or progress and errors as they are.
fn print_watch_line(line: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return;
    };
    let Some(events) = v["events"].as_array() else {
        if !v["error"].is_null() {
            eprintln!("{}", v["error"]);
        }
        return;
    };
    for e in events {
        let value = base64::engine::general_purpose::STANDARD
            .decode(e["value_base64"].as_str().unwrap_or(""))
            .unwrap_or_default();
        println!(
            "{}\t{}\t{}\t{}",
            v["revision"],
            e["type"].as_str().unwrap_or(""),
            e["key"].as_str().unwrap_or(""),
            String::from_utf8_lossy(&value)
        );
    }
}

/// Send a request, fail on an error answer, and decode the JSON body.
async fn send_json(req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let resp = req.send().await.context("cannot reach the endpoint")?;
    Ok(check(resp).await?.json().await?)
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

impl KvCommand {
    fn endpoint(&self) -> &Endpoint {
        match self {
            KvCommand::Put { ep, .. }
            | KvCommand::Get { ep, .. }
            | KvCommand::Del { ep, .. }
            | KvCommand::Txn { ep, .. }
            | KvCommand::Watch { ep, .. }
            | KvCommand::List { ep, .. } => ep,
        }
    }
}

impl ClusterCommand {
    fn endpoint(&self) -> &Endpoint {
        match self {
            ClusterCommand::Status { ep }
            | ClusterCommand::Init { ep }
            | ClusterCommand::Add { ep, .. }
            | ClusterCommand::Config { ep, .. }
            | ClusterCommand::Remove { ep, .. } => ep,
        }
    }
}

pub async fn run_kv(cmd: KvCommand) -> anyhow::Result<()> {
    let http = cmd.endpoint().client()?;
    match cmd {
        KvCommand::Put {
            key,
            value,
            if_version,
            if_absent,
            ep,
        } => {
            let mut req = http
                .put(format!("{}/v1/kv/{}", ep.endpoint, encode_key(&key)))
                .body(value);
            if let Some(v) = if_version {
                req = req.header("if-match", format!("\"{v}\""));
            }
            if if_absent {
                req = req.header("if-none-match", "*");
            }
            print_json(&send_json(req).await?);
        }
        KvCommand::Get {
            key,
            consistency,
            ep,
        } => {
            let resp = http
                .get(format!("{}/v1/kv/{}", ep.endpoint, encode_key(&key)))
                .query(&[("consistency", consistency)])
                .send()
                .await
                .context("cannot reach the endpoint")?;
            let resp = check(resp).await?;
            let version = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.bytes().await?;
            eprintln!("version {}", version.trim_matches('"'));
            println!("{}", String::from_utf8_lossy(&body));
        }
        KvCommand::Del {
            key,
            if_version,
            ep,
        } => {
            let mut req = http.delete(format!("{}/v1/kv/{}", ep.endpoint, encode_key(&key)));
            if let Some(v) = if_version {
                req = req.header("if-match", format!("\"{v}\""));
            }
            print_json(&send_json(req).await?);
        }
        KvCommand::Txn { file, ep } => {
            let body = match file {
                Some(f) => {
                    std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
                }
                None => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                }
            };
            let req = http
                .post(format!("{}/v1/txn", ep.endpoint))
                .header("content-type", "application/json")
                .body(body);
            print_json(&send_json(req).await?);
        }
        KvCommand::Watch {
            prefix,
            start_revision,
            ep,
        } => {
            let mut q = vec![("prefix", prefix)];
            if let Some(r) = start_revision {
                q.push(("start_revision", r.to_string()));
            }
            let mut resp = check(
                http.get(format!("{}/v1/watch", ep.endpoint))
                    .query(&q)
                    .send()
                    .await
                    .context("cannot reach the endpoint")?,
            )
            .await?;
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    print_watch_line(&line);
                }
            }
        }
        KvCommand::List { prefix, limit, ep } => {
            let mut start_after: Option<String> = None;
            let mut left = limit;
            loop {
                let mut q = vec![
                    ("prefix", prefix.clone()),
                    ("limit", left.min(1000).to_string()),
                ];
                if let Some(s) = &start_after {
                    q.push(("start_after", s.clone()));
                }
                let v = send_json(http.get(format!("{}/v1/kv", ep.endpoint)).query(&q)).await?;
                let items = v["items"].as_array().cloned().unwrap_or_default();
                for item in &items {
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(item["value_base64"].as_str().unwrap_or(""))
                        .unwrap_or_default();
                    println!(
                        "{}\t{}",
                        item["key"].as_str().unwrap_or(""),
                        String::from_utf8_lossy(&value)
                    );
                }
                left = left.saturating_sub(items.len());
                if left == 0 || !v["more"].as_bool().unwrap_or(false) || items.is_empty() {
                    break;
                }
                start_after = items
                    .last()
                    .and_then(|i| i["key"].as_str())
                    .map(String::from);
            }
        }
    }
    Ok(())
}

pub async fn run_cluster(cmd: ClusterCommand) -> anyhow::Result<()> {
    let http = cmd.endpoint().client()?;
    let v: serde_json::Value = match cmd {
        ClusterCommand::Status { ep } => {
            let c: serde_json::Value =
                send_json(http.get(format!("{}/v1/cluster", ep.endpoint))).await?;
            println!(
                "cluster {}  leader {}  term {}",
                c["cluster_id"].as_str().unwrap_or("-"),
                c["leader_id"],
                c["term"]
            );
            println!(
                "{:<18} {:<8} {:<28} {:>10} {:>8} {:>10}",
                "ID", "ROLE", "CLIENT URL", "MATCHED", "LAG", "CONTACT"
            );
            for m in c["members"].as_array().cloned().unwrap_or_default() {
                let leader = if m["id"] == c["leader_id"] { "*" } else { "" };
                println!(
                    "{:<18} {:<8} {:<28} {:>10} {:>8} {:>10}",
                    format!("{}{}", m["id"], leader),
                    m["role"].as_str().unwrap_or(""),
                    m["client_url"].as_str().unwrap_or(""),
                    m["matched_index"].to_string(),
                    m["lag"].to_string(),
                    m["last_contact_ms"]
                        .as_u64()
                        .map(|v| format!("{v}ms"))
                        .unwrap_or("-".into()),
                );
            }
            return Ok(());
        }
        ClusterCommand::Init { ep } => {
            send_json(http.post(format!("{}/v1/cluster/init", ep.endpoint))).await?
        }
        ClusterCommand::Add {
            id,
            peer_url,
            client_url,
            learner,
            ep,
        } => {
            let body = serde_json::json!({"id": id, "peer_url": peer_url, "client_url": client_url,
                "role": if learner { "learner" } else { "voter" }});
            send_json(
                http.post(format!("{}/v1/cluster/members", ep.endpoint))
                    .json(&body),
            )
            .await?
        }
        ClusterCommand::Config {
            mode,
            read_consistency,
            ep,
        } => {
            if mode.is_none() && read_consistency.is_none() {
                send_json(http.get(format!("{}/v1/cluster/config", ep.endpoint))).await?
            } else {
                let mut body = serde_json::Map::new();
                if let Some(m) = mode {
                    body.insert("replication_mode".into(), m.into());
                }
                if let Some(r) = read_consistency {
                    body.insert("read_consistency".into(), r.into());
                }
                send_json(
                    http.put(format!("{}/v1/cluster/config", ep.endpoint))
                        .json(&body),
                )
                .await?
            }
        }
        ClusterCommand::Remove { id, ep } => {
            send_json(http.delete(format!("{}/v1/cluster/members/{id}", ep.endpoint))).await?
        }
    };
    print_json(&v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serving_needs_tls_files_or_an_explicit_plaintext_flag() {
        let parse = |args: &[&str]| {
            let mut all = vec!["node", "serve"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).unwrap().command {
                Command::Serve(a) => a.settings(),
                _ => unreachable!(),
            }
        };
        let err = parse(&[]).unwrap_err().to_string();
        assert!(err.contains("TLS is required"), "{err}");
        let s = parse(&["--insecure-plaintext"]).unwrap();
        // RSTORE_INSECURE_PLAINTEXT takes the usual spellings of true (1, yes, on): the
        // harness sets it to 1 (tests/tests/operator_liar.rs).
        assert!(s.tls.is_none() && s.advertise_client.starts_with("http://"));
        let s = parse(&["--tls-ca-file=a", "--tls-cert-file=b", "--tls-key-file=c"]).unwrap();
        assert!(s.tls.is_some() && s.advertise_peer.starts_with("https://"));
        let err = parse(&["--tls-ca-file=a", "--insecure-plaintext"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be combined"), "{err}");
    }
}
