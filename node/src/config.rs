//! The server's configuration: the `node serve` flags (each with its environment variable,
//! the names the operator and the docs rely on) and the [`Settings`] they become. It sits
//! low in the node, beside TLS and the credential model, so that every server module reads
//! its limits and timeouts from one place and none of them reaches up into the client CLI.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use rstore_api::rate::RateUnderLoad;

use crate::store;
use crate::tls::TlsPaths;

/// Everything a node needs to start. Built from the command line by `node serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen_client: String,
    pub advertise_client: String,
    pub listen_peer: String,
    pub advertise_peer: String,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_logs: u64,
    /// Size of each write-ahead log segment.
    pub wal_segment_bytes: u64,
    pub write_timeout: Duration,
    pub sync_timeout: Duration,
    /// Write batches in the Raft pipeline at once.
    pub write_pipeline: usize,
    /// `async` mode: most acknowledged-but-uncommitted log entries on the leader.
    pub async_max_lag: u64,
    /// `async` mode: how recently the leader must have heard from a quorum to acknowledge
    /// before commit.
    pub async_quorum_contact: Duration,
    pub catch_up_timeout: Duration,
    /// Writes that add data are refused (507) while the keys and values hold this many bytes.
    pub max_data_bytes: u64,
    /// Change history kept for watches.
    pub watch_history: store::Retention,
    /// TLS on both ports; `None` only with `--insecure-plaintext`.
    pub tls: Option<TlsPaths>,
    /// Bearer tokens (hashed) for the client port.
    pub token_file: Option<PathBuf>,
    /// `/metrics` answers without credentials.
    pub metrics_open: bool,
    /// Open connections per listener; more are closed at once.
    pub max_connections: usize,
    /// Time a connection has to finish its TLS handshake and each request head; also how
    /// long a keep-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Time a request body has to arrive whole (408 after).
    pub body_timeout: Duration,
    /// Concurrent watches on this member; more answer 429.
    pub max_watches: usize,
    /// Bytes a watch may have waiting to be sent before the watcher is cut off.
    pub watch_buffer_bytes: usize,
    /// How fast a backup streams while writes arrive, unless the request says.
    pub backup_rate_under_load: RateUnderLoad,
}

impl Settings {
    /// Whether the client port checks credentials: always with TLS, and in plaintext mode
    /// when a token file is given.
    pub fn authentication(&self) -> bool {
        self.tls.is_some() || self.token_file.is_some()
    }

    /// The URL scheme members speak.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn write_limits(&self) -> crate::types::WriteLimits {
        crate::types::WriteLimits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
        }
    }
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
    /// Log entries between snapshots, at least; the log is compacted after each snapshot.
    /// A large state also waits until the commands logged since the last snapshot hold a
    /// quarter of its bytes (up to ten times as many entries, or 1 GiB of log), each member
    /// stretching both by up to half, by its id, so that members snapshot at different times.
    #[arg(long, env = "RSTORE_SNAPSHOT_LOGS", default_value_t = 10_000)]
    pub snapshot_logs: u64,
    /// Size of each write-ahead log segment file, in bytes. Segments are zero-filled ahead
    /// of use, one spare at a time.
    #[arg(long, env = "RSTORE_WAL_SEGMENT_BYTES", default_value_t = store::SEGMENT_BYTES,
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
    /// How fast a backup streams from this member while it is applying writes (`100MB`,
    /// `64MiB`, or `unlimited`), unless the backup request sets `rate_under_load`. On an
    /// idle member a backup streams as fast as it can; while writes arrive it is paced to
    /// this, so that it takes less of the CPU and disk the writes need.
    #[arg(long, env = "RSTORE_BACKUP_RATE_UNDER_LOAD", default_value = "64MiB")]
    pub backup_rate_under_load: RateUnderLoad,
    /// A file in the format of /etc/hosts consulted before DNS when connecting to peers
    /// (re-read when it changes): for names no DNS knows, as on the local control plane.
    #[arg(long, env = "RSTORE_HOSTS_FILE")]
    pub hosts_file: Option<PathBuf>,
    /// Where to write why the node could not start or stopped on an error (Kubernetes reads
    /// a container's `terminationMessagePath`, `/dev/termination-log`, into the pod's status,
    /// where the operator and `kubectl describe pod` find it). Unset: nowhere.
    #[arg(long, env = "RSTORE_TERMINATION_MESSAGE_PATH")]
    pub termination_message_path: Option<PathBuf>,
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
            (Some(ca), Some(cert), Some(key), false) => Some(TlsPaths {
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
            watch_history: store::Retention {
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
            backup_rate_under_load: self.backup_rate_under_load,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `node serve`'s flags alone, as the command line parses them.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn serving_needs_tls_files_or_an_explicit_plaintext_flag() {
        let parse = |args: &[&str]| {
            let mut all = vec!["serve"];
            all.extend_from_slice(args);
            Serve::try_parse_from(all).unwrap().args.settings()
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
