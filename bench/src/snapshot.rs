//! The commands the backup benchmark (`--backup`, `backup.rs`) times, for both systems, as
//! an operator runs them: `node backup save | restore` and `etcdctl snapshot save | restore`
//! (etcd 3.4 has no `etcdutl`), each a child process with the clusters' TLS credentials;
//! starting a server on a restored data directory and timing its first answered read; a
//! loop of back-to-back backups to run under load; and a sampler of a process's peak RSS.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::cluster::{self, ChildGuard, EtcdMember, RstoreConfig};
use crate::security::BenchTls;

/// How long a restored server may take to answer its first read.
const SERVE_TIMEOUT: Duration = Duration::from_secs(300);
/// Interval between two reads of a starting server, and between two RSS samples.
const POLL: Duration = Duration::from_millis(20);

/// One of the two systems under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Rstore,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rstore => "rstore",
            Self::Etcd => "etcd",
        }
    }

    /// rstore first in even rounds, etcd first in odd ones (ABBA).
    pub fn order(round: u32) -> [System; 2] {
        if round.is_multiple_of(2) {
            [Self::Rstore, Self::Etcd]
        } else {
            [Self::Etcd, Self::Rstore]
        }
    }
}

/// Binaries and credentials for the backup and restore commands of both systems.
pub struct Tools {
    pub rstore: RstoreConfig,
    pub etcd_bin: PathBuf,
    pub etcdctl_bin: PathBuf,
    pub tls: Arc<BenchTls>,
    etcd_cert: PathBuf,
    etcd_key: PathBuf,
    /// An HTTP client with the CA and the rstore token, for reads of restored nodes.
    http: reqwest::Client,
    /// `--max-rate` of rstore's saves.
    max_rate: Option<String>,
    /// `--rate-under-load` of rstore's saves.
    rate_under_load: Option<String>,
}

impl Tools {
    /// rstore's saves paced to `max_rate` (`node backup save --max-rate`), and to
    /// `rate_under_load` while the member applies writes (`--rate-under-load`).
    pub fn with_rates(mut self, max_rate: Option<String>, rate_under_load: Option<String>) -> Self {
        self.max_rate = max_rate;
        self.rate_under_load = rate_under_load;
        self
    }

    pub fn new(
        rstore: RstoreConfig,
        etcd_bin: PathBuf,
        etcdctl_bin: PathBuf,
        tls: Arc<BenchTls>,
        http: reqwest::Client,
    ) -> anyhow::Result<Self> {
        let (etcd_cert, etcd_key) = tls.etcd_client_files()?;
        Ok(Self {
            rstore,
            etcd_bin,
            etcdctl_bin,
            tls,
            etcd_cert,
            etcd_key,
            http,
            max_rate: None,
            rate_under_load: None,
        })
    }

    fn node(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.rstore.node_bin);
        clean_env(&mut cmd, &["RSTORE_"]);
        cmd
    }

    fn etcdctl(&self, endpoint: Option<&str>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.etcdctl_bin);
        clean_env(&mut cmd, &["ETCDCTL_", "ETCD_"]);
        if let Some(endpoint) = endpoint {
            cmd.arg(format!("--endpoints={endpoint}"))
                .arg("--cacert")
                .arg(self.tls.ca_file())
                .arg("--cert")
                .arg(&self.etcd_cert)
                .arg("--key")
                .arg(&self.etcd_key);
        }
        cmd
    }

    /// Takes a backup from the member at `endpoint` into `out`: `node backup save` or
    /// `etcdctl snapshot save`. Returns the wall time of the command.
    pub async fn save(&self, system: System, endpoint: &str, out: &Path) -> anyhow::Result<f64> {
        let mut cmd = match system {
            System::Rstore => {
                let mut cmd = self.node();
                cmd.args(["backup", "save", "--out"])
                    .arg(out)
                    .arg("--endpoint")
                    .arg(endpoint)
                    .arg("--cacert")
                    .arg(self.tls.ca_file())
                    .arg("--token")
                    .arg(&self.tls.token);
                if let Some(rate) = &self.max_rate {
                    cmd.arg("--max-rate").arg(rate);
                }
                if let Some(rate) = &self.rate_under_load {
                    cmd.arg("--rate-under-load").arg(rate);
                }
                cmd
            }
            System::Etcd => {
                let mut cmd = self.etcdctl(Some(endpoint));
                cmd.args(["snapshot", "save"]).arg(out);
                cmd
            }
        };
        timed(&mut cmd, &format!("{} backup save", system.name())).await
    }

    /// Restores `file` into `data_dir` (which must not exist) for one new member with these
    /// URLs: `node backup restore` or `etcdctl snapshot restore`. Returns the wall time.
    pub async fn restore(
        &self,
        system: System,
        file: &Path,
        data_dir: &Path,
        member: &Restored,
    ) -> anyhow::Result<f64> {
        let mut cmd = match system {
            System::Rstore => {
                let mut cmd = self.node();
                cmd.args(["backup", "restore"])
                    .arg(file)
                    .arg("--data-dir")
                    .arg(data_dir)
                    .arg("--advertise-client")
                    .arg(&member.client_url)
                    .arg("--advertise-peer")
                    .arg(&member.peer_url);
                cmd
            }
            System::Etcd => {
                let mut cmd = self.etcdctl(None);
                cmd.args(["snapshot", "restore"])
                    .arg(file)
                    .arg("--data-dir")
                    .arg(data_dir)
                    .arg("--name")
                    .arg(Restored::ETCD_NAME)
                    .arg("--initial-cluster")
                    .arg(member.initial_cluster())
                    .arg("--initial-advertise-peer-urls")
                    .arg(&member.peer_url)
                    .arg("--initial-cluster-token")
                    .arg(Restored::ETCD_TOKEN);
                cmd
            }
        };
        timed(&mut cmd, &format!("{} restore", system.name())).await
    }

    /// Starts a server on the restored `dir` (its `data` directory) and waits until it answers
    /// a read of `key`. Returns the running server and the seconds from its start to that answer.
    pub async fn serve_restored(
        &self,
        system: System,
        dir: tempfile::TempDir,
        member: &Restored,
        key: &str,
    ) -> anyhow::Result<(ChildGuard, f64)> {
        let data_dir = dir.path().join("data");
        let cmd = match system {
            System::Rstore => cluster::rstore_serve_command(
                &self.rstore,
                &data_dir,
                "rstore-restored",
                member.client_port,
                member.peer_port,
            )?,
            System::Etcd => cluster::etcd_member_command(
                &self.etcd_bin,
                &EtcdMember {
                    name: Restored::ETCD_NAME,
                    data_dir: &data_dir,
                    client_url: &member.client_url,
                    peer_url: &member.peer_url,
                    initial_cluster: &member.initial_cluster(),
                    token: Restored::ETCD_TOKEN,
                },
                Some(&self.tls),
            )?,
        };
        let started = Instant::now();
        let mut child = ChildGuard::spawn(&format!("{}-restored", system.name()), cmd, dir)?;
        let mut last = String::from("no answer yet");
        while started.elapsed() < SERVE_TIMEOUT {
            child.check_alive()?;
            match self.read(system, &member.client_url, key).await {
                Ok(()) => return Ok((child, started.elapsed().as_secs_f64())),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(POLL).await;
        }
        bail!(
            "the restored {} answered no read of {key} within {SERVE_TIMEOUT:?}: {last}",
            system.name()
        )
    }

    /// One linearizable read of `key`, which must exist.
    async fn read(&self, system: System, url: &str, key: &str) -> anyhow::Result<()> {
        match system {
            System::Rstore => {
                let url = format!(
                    "{url}{}?consistency=linearizable",
                    rstore_api::client::kv_path(key)
                );
                let resp = self
                    .http
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                if !status.is_success() || body.is_empty() {
                    bail!("{status}: {}", String::from_utf8_lossy(&body));
                }
            }
            System::Etcd => {
                let read = async {
                    let mut client =
                        etcd_client::Client::connect([url], Some(self.tls.etcd_options())).await?;
                    client.get(key, None).await
                };
                let resp = tokio::time::timeout(Duration::from_secs(2), read)
                    .await
                    .context("no answer within 2 s")??;
                if resp.kvs().is_empty() {
                    bail!("{key} not found");
                }
            }
        }
        Ok(())
    }
}

/// The URLs a restored member is restored for and served at.
pub struct Restored {
    pub client_port: u16,
    pub peer_port: u16,
    pub client_url: String,
    pub peer_url: String,
}

impl Restored {
    const ETCD_NAME: &'static str = "bench-etcd-restored";
    const ETCD_TOKEN: &'static str = "rstore-bench-restored";

    /// Fresh loopback ports.
    pub fn new() -> anyhow::Result<Self> {
        let ports = cluster::free_ports(2)?;
        Ok(Self {
            client_port: ports[0],
            peer_port: ports[1],
            client_url: format!("https://127.0.0.1:{}", ports[0]),
            peer_url: format!("https://127.0.0.1:{}", ports[1]),
        })
    }

    fn initial_cluster(&self) -> String {
        format!("{}={}", Self::ETCD_NAME, self.peer_url)
    }
}

/// Drops inherited environment variables with these prefixes, so that our environment does
/// not reconfigure a tool behind its flags' back.
fn clean_env(cmd: &mut tokio::process::Command, prefixes: &[&str]) {
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if prefixes.iter().any(|p| key_str.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

/// Runs `cmd` to its end; its wall time in seconds, or its stderr if it failed.
async fn timed(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = cmd.output().await.with_context(|| format!("run {what}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(secs)
}

/// Samples a process's RSS until stopped; the highest seen.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut peak = cluster::rss_kib(pid);
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(POLL).await;
                peak = peak.max(cluster::rss_kib(pid));
            }
            peak
        });
        Self { stop, handle }
    }

    /// The peak RSS seen, in MiB.
    pub async fn stop(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .await
            .ok()
            .flatten()
            .map(|kib| kib as f64 / 1024.0)
    }
}

/// What a loop of back-to-back backups did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoopStats {
    pub completed: u32,
    pub failed: u32,
    /// Mean seconds of a completed backup.
    pub mean_seconds: Option<f64>,
    /// The first failure, if any.
    pub error: Option<String>,
}

/// Backups taken back to back from one member until stopped; the one under way when asked
/// to stop is finished, not killed.
pub struct BackupLoop {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<LoopStats>,
}

impl BackupLoop {
    pub fn start(tools: Arc<Tools>, system: System, endpoint: String, out: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut stats = LoopStats::default();
            let mut total = 0.0;
            while !flag.load(Ordering::Relaxed) {
                match tools.save(system, &endpoint, &out).await {
                    Ok(secs) => {
                        stats.completed += 1;
                        total += secs;
                    }
                    Err(e) => {
                        stats.failed += 1;
                        stats.error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                let _ = std::fs::remove_file(&out);
            }
            stats.mean_seconds = (stats.completed > 0).then(|| total / f64::from(stats.completed));
            stats
        });
        Self { stop, handle }
    }

    pub async fn stop(self) -> anyhow::Result<LoopStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.context("the backup loop failed")
    }
}
