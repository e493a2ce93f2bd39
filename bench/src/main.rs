//! `rstore-bench`: measures a 3-node rstore cluster against a 3-member etcd 3.4
//! cluster on the same machine, in the same run, with the same load shape.
//!
//! It starts both clusters itself on free loopback ports with temporary data
//! directories, reports the idle memory of every process, then runs each phase
//! (closed-loop clients, 256-byte values, uniform keys out of 10,000) against both, in
//! alternating rounds (rstore, etcd, etcd, rstore, ...) so that drift in the machine's
//! speed weighs on both alike, and prints one table row per phase. All child processes are killed
//! when the bench ends, fails, panics or gets Ctrl-C / SIGTERM.
//!
//! System requirements:
//! - `/usr/bin/etcd` from Debian's `etcd-server` (3.4.23): `.ci/run` must
//!   `apt-get install -y etcd-server` before running the bench.
//! - No `protoc` is needed: `etcd-client` is pinned to 0.8.4, whose build script uses
//!   prost-build 0.9 with its bundled `protoc`. Moving to etcd-client 0.10 or later
//!   needs `protoc` at build time, i.e. `apt-get install -y protobuf-compiler` in
//!   `.ci/run` (and on every developer machine that builds the workspace).
//!
//! Layout: `cluster.rs` spawns and bootstraps both clusters and owns the child
//! processes; `load.rs` is the closed-loop driver and its two clients; this file holds
//! the command line, the orchestration and the report. `--backup` runs the backup and
//! restore benchmark of `backup.rs` instead (with the commands of `snapshot.rs`; it also
//! needs `/usr/bin/etcdctl` from Debian's `etcd-client`).
//!
//! Typical run (from the workspace root, after `cargo build --release`):
//! `target/release/rstore-bench --node-bin target/release/node --json bench.json`

mod backup;
mod cluster;
mod load;
mod security;
mod snapshot;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use tracing::{info, warn};

use cluster::{ChildGuard, EtcdCluster, ModeOutcome, ReplicationMode, RstoreCluster, RstoreConfig};
use load::{EtcdTarget, LoadShape, Measured, Phase, PhaseStats, Populated, RstoreTarget, Target};

/// Benchmark a 3-node rstore cluster against a 3-member etcd cluster on loopback.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Measured seconds per phase (after the warmup).
    #[arg(long, env = "RSTORE_BENCH_SECONDS", default_value_t = 10.0)]
    seconds: f64,

    /// Warmup seconds per round; requests started during the warmup are not counted.
    #[arg(long, env = "RSTORE_BENCH_WARMUP", default_value_t = 2.0)]
    warmup: f64,

    /// Rounds per phase. The measured seconds are split into this many slices per system,
    /// run alternately (rstore, etcd, etcd, rstore, ...), so that the machine's speed drifting
    /// during a run weighs on both systems alike.
    #[arg(long, env = "RSTORE_BENCH_ROUNDS", default_value_t = 2)]
    rounds: u32,

    /// Seconds to let both idle clusters settle before reading their memory use.
    #[arg(long, env = "RSTORE_BENCH_SETTLE", default_value_t = 3.0)]
    settle: f64,

    /// Phases to run, in order: put<N>, get-lin<N>, get-stale<N> (N = clients).
    #[arg(
        long,
        env = "RSTORE_BENCH_PHASES",
        value_delimiter = ',',
        default_value = Phase::DEFAULT_LIST
    )]
    phases: Vec<Phase>,

    /// Size of the key space; keys are chosen uniformly at random.
    #[arg(long, env = "RSTORE_BENCH_KEYS", default_value_t = 10_000)]
    keys: usize,

    /// Bytes per value written.
    #[arg(long, env = "RSTORE_BENCH_VALUE_BYTES", default_value_t = 256)]
    value_bytes: usize,

    /// The `node` binary [default: `node` next to this executable].
    #[arg(long, env = "RSTORE_BENCH_NODE_BIN")]
    node_bin: Option<PathBuf>,

    /// The etcd server binary (Debian's etcd-server 3.4).
    #[arg(long, env = "RSTORE_BENCH_ETCD_BIN", default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,

    /// Extra environment for every node process, e.g. `RSTORE_HEARTBEAT_MS=50`.
    /// Repeatable.
    #[arg(long = "rstore-env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    rstore_env: Vec<(String, String)>,

    /// After bootstrap, ask rstore to use this replication mode
    /// (`PUT /v1/cluster/config`); a node that does not support it yet is warned about.
    #[arg(long, env = "RSTORE_BENCH_MODE", value_enum)]
    mode: Option<ReplicationMode>,

    /// Do not start or measure etcd.
    #[arg(long)]
    skip_etcd: bool,

    /// Do not start or measure rstore (e.g. to try the etcd side alone).
    #[arg(long)]
    skip_rstore: bool,

    /// Also write the results as JSON to this file.
    #[arg(long, env = "RSTORE_BENCH_JSON")]
    json: Option<PathBuf>,

    /// Run both systems without TLS (and rstore without tokens), to measure what TLS
    /// costs. By default both run as deployed: TLS on client and peer ports with client
    /// certificates (etcd) or tokens (rstore).
    #[arg(long, env = "RSTORE_BENCH_PLAINTEXT",
          value_parser = clap::builder::BoolishValueParser::new())]
    plaintext: bool,

    /// Instead of the phases, benchmark backup and restore against etcd's snapshot save and
    /// restore on `--backup-keys` keys, and put64 (on `--keys`, `--value-bytes`, for
    /// `--seconds` over `--rounds`) with and without backups running. Always with TLS.
    #[arg(long)]
    backup: bool,

    /// Keys written before the backups (`--backup`).
    #[arg(long, env = "RSTORE_BENCH_BACKUP_KEYS", default_value_t = 1_000_000)]
    backup_keys: usize,

    /// Bytes per value written before the backups (`--backup`).
    #[arg(long, env = "RSTORE_BENCH_BACKUP_VALUE_BYTES", default_value_t = 1024)]
    backup_value_bytes: usize,

    /// Backups and restores per system (`--backup`), run alternately.
    #[arg(long, env = "RSTORE_BENCH_BACKUP_RUNS", default_value_t = 2)]
    backup_runs: u32,

    /// Pace rstore's backups (`node backup save --max-rate`, bytes per second such as
    /// `64MiB`) in `--backup`; etcdctl has no such setting. Unlimited when left out.
    #[arg(long, env = "RSTORE_BENCH_BACKUP_MAX_RATE")]
    backup_max_rate: Option<String>,

    /// How fast rstore's members stream a backup while they apply writes
    /// (`node backup save --rate-under-load`: `100MB`, `unlimited`) in `--backup`. The
    /// member's default (64MiB) when left out.
    #[arg(long, env = "RSTORE_BENCH_BACKUP_RATE_UNDER_LOAD")]
    backup_rate_under_load: Option<String>,

    /// etcd's command-line client (Debian's etcd-client 3.4), for `--backup`.
    #[arg(
        long,
        env = "RSTORE_BENCH_ETCDCTL_BIN",
        default_value = "/usr/bin/etcdctl"
    )]
    etcdctl_bin: PathBuf,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn seconds(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{what} must be a non-negative number of seconds"))
}

/// Memory use of one process when idle.
#[derive(Debug, Serialize)]
struct ProcessMemory {
    name: String,
    pid: u32,
    rss_mib: Option<f64>,
}

/// Idle memory of one system: every process and their mean.
#[derive(Debug, Serialize)]
struct SystemMemory {
    processes: Vec<ProcessMemory>,
    mean_rss_mib: Option<f64>,
}

impl SystemMemory {
    fn measure(processes: &[ChildGuard]) -> Self {
        let processes: Vec<ProcessMemory> = processes
            .iter()
            .map(|p| ProcessMemory {
                name: p.name().to_owned(),
                pid: p.pid(),
                rss_mib: cluster::rss_kib(p.pid()).map(|kib| kib as f64 / 1024.0),
            })
            .collect();
        let known: Vec<f64> = processes.iter().filter_map(|p| p.rss_mib).collect();
        let mean_rss_mib =
            (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
        Self {
            processes,
            mean_rss_mib,
        }
    }
}

#[derive(Debug, Serialize)]
struct MemoryReport {
    rstore: Option<SystemMemory>,
    etcd: Option<SystemMemory>,
    /// Mean rstore RSS divided by mean etcd RSS.
    ratio_rstore_etcd: Option<f64>,
}

/// One phase against both systems.
#[derive(Debug, Serialize)]
struct PhaseRow {
    phase: String,
    op: load::Op,
    clients: usize,
    rstore: Option<PhaseStats>,
    etcd: Option<PhaseStats>,
    /// rstore ops/s divided by etcd ops/s (higher is better for rstore).
    throughput_ratio: Option<f64>,
    /// rstore p99 divided by etcd p99 (lower is better for rstore).
    p99_ratio: Option<f64>,
}

impl PhaseRow {
    fn has_errors(&self) -> bool {
        [&self.rstore, &self.etcd]
            .into_iter()
            .flatten()
            .any(|s| s.errors > 0)
    }
}

#[derive(Debug, Serialize)]
struct RunConfig {
    seconds: f64,
    warmup_seconds: f64,
    rounds: u32,
    keys: usize,
    value_bytes: usize,
    phases: Vec<String>,
    node_bin: Option<PathBuf>,
    etcd_bin: Option<PathBuf>,
    etcd_version: Option<String>,
    rstore_env: Vec<String>,
    mode: Option<ReplicationMode>,
    mode_applied: Option<bool>,
    cpus: usize,
    /// TLS on both systems (false with `--plaintext`).
    tls: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    config: RunConfig,
    memory: MemoryReport,
    populate: PopulateReport,
    phases: Vec<PhaseRow>,
}

#[derive(Debug, Default, Serialize)]
struct PopulateReport {
    rstore: Option<Populated>,
    etcd: Option<Populated>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // Returning from `select!` drops `run`, and with it the cluster guards, which
    // kill every child process before we exit.
    tokio::select! {
        result = run(cli) => result.map(|()| ExitCode::SUCCESS),
        signal = shutdown_signal() => {
            signal?;
            warn!("interrupted: all clusters stopped");
            // The conventional status of a process ended by SIGINT.
            Ok(ExitCode::from(130))
        }
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install a SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.skip_rstore && cli.skip_etcd {
        bail!("--skip-rstore and --skip-etcd together leave nothing to measure");
    }
    if cli.phases.is_empty() {
        bail!("--phases is empty");
    }
    if cli.keys == 0 {
        bail!("--keys must be at least 1");
    }
    let measure = seconds("seconds", cli.seconds)?;
    if measure.is_zero() {
        bail!("--seconds must be positive");
    }
    if cli.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let measure = measure / cli.rounds;
    let shape = LoadShape::new(
        cli.keys,
        cli.value_bytes,
        seconds("warmup", cli.warmup)?,
        measure,
    );
    if cli.backup {
        if cli.plaintext || cli.skip_etcd || cli.skip_rstore || cli.mode.is_some() {
            bail!("--backup runs both systems with TLS in their default modes");
        }
        return backup::run(backup::Options {
            node_bin: node_bin(&cli)?,
            etcd_version: etcd_version(&cli.etcd_bin).await,
            etcd_bin: cli.etcd_bin,
            etcdctl_bin: cli.etcdctl_bin,
            rstore_env: cli.rstore_env,
            keys: cli.backup_keys,
            value_bytes: cli.backup_value_bytes,
            runs: cli.backup_runs,
            max_rate: cli.backup_max_rate,
            rate_under_load: cli.backup_rate_under_load,
            load: shape,
            rounds: cli.rounds,
            json: cli.json,
        })
        .await;
    }
    let settle = seconds("settle", cli.settle)?;
    let tls = if cli.plaintext {
        None
    } else {
        Some(security::BenchTls::new().context("make the benchmark's certificates")?)
    };
    let admin = match &tls {
        Some(t) => t.admin_client()?,
        None => reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("build the HTTP client")?,
    };

    let mut config = RunConfig {
        seconds: cli.seconds,
        warmup_seconds: cli.warmup,
        rounds: cli.rounds,
        keys: cli.keys,
        value_bytes: cli.value_bytes,
        phases: cli.phases.iter().map(ToString::to_string).collect(),
        node_bin: None,
        etcd_bin: None,
        etcd_version: None,
        rstore_env: cli
            .rstore_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        mode: cli.mode,
        mode_applied: None,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        tls: !cli.plaintext,
    };

    let rstore = if cli.skip_rstore {
        None
    } else {
        let node_bin = node_bin(&cli)?;
        info!(node_bin = %node_bin.display(), "starting 3 rstore nodes");
        let cfg = RstoreConfig {
            node_bin: node_bin.clone(),
            tls: tls.clone(),
            env: cli.rstore_env.clone(),
        };
        let cluster = RstoreCluster::start(&cfg, &admin)
            .await
            .context("start the rstore cluster")?;
        info!(urls = ?cluster.client_urls(), "rstore cluster ready");
        config.node_bin = Some(node_bin);
        if let Some(mode) = cli.mode {
            match cluster
                .set_mode(&admin, mode)
                .await
                .context("set the replication mode")?
            {
                ModeOutcome::Applied => {
                    info!(?mode, "replication mode set");
                    config.mode_applied = Some(true);
                }
                ModeOutcome::Unsupported => {
                    warn!(
                        ?mode,
                        "PUT /v1/cluster/config answered 404: node does not support --mode yet; continuing in its default mode"
                    );
                    config.mode_applied = Some(false);
                }
            }
        }
        Some(cluster)
    };

    let etcd = if cli.skip_etcd {
        None
    } else {
        if !cli.etcd_bin.is_file() {
            bail!(
                "etcd binary {} not found: apt-get install -y etcd-server, or pass --etcd-bin",
                cli.etcd_bin.display()
            );
        }
        config.etcd_version = etcd_version(&cli.etcd_bin).await;
        info!(etcd_bin = %cli.etcd_bin.display(), version = ?config.etcd_version, "starting 3 etcd members");
        let cluster = EtcdCluster::start(&cli.etcd_bin, &admin, tls.as_ref())
            .await
            .context("start the etcd cluster")?;
        info!(urls = ?cluster.client_urls(), "etcd cluster ready");
        config.etcd_bin = Some(cli.etcd_bin.clone());
        Some(cluster)
    };

    info!(
        seconds = settle.as_secs_f64(),
        "letting the idle clusters settle before reading memory"
    );
    tokio::time::sleep(settle).await;
    let memory = {
        let rstore_mem = rstore
            .as_ref()
            .map(|c| SystemMemory::measure(c.processes()));
        let etcd_mem = etcd.as_ref().map(|c| SystemMemory::measure(c.processes()));
        let ratio = ratio(
            rstore_mem.as_ref().and_then(|m| m.mean_rss_mib),
            etcd_mem.as_ref().and_then(|m| m.mean_rss_mib),
        );
        MemoryReport {
            rstore: rstore_mem,
            etcd: etcd_mem,
            ratio_rstore_etcd: ratio,
        }
    };
    print_memory(&memory);

    let rstore_target = match &rstore {
        Some(c) => Some(Arc::new(
            RstoreTarget::new(
                c.client_urls().to_vec(),
                match &tls {
                    Some(t) => Some(Arc::new(t.rstore_load_tls()?)),
                    None => None,
                },
            )
            .context("build the rstore client")?,
        )),
        None => None,
    };
    let etcd_target = etcd.as_ref().map(|c| {
        Arc::new(EtcdTarget::new(
            c.client_urls().to_vec(),
            tls.as_ref().map(|t| t.etcd_options()),
        ))
    });

    let mut populated = PopulateReport::default();
    let mut populated_done = false;
    let mut rows = Vec::with_capacity(cli.phases.len());
    for phase in &cli.phases {
        if phase.op.is_read() && !populated_done {
            if let Some(t) = &rstore_target {
                populated.rstore = Some(populate_one("rstore", t, &shape).await?);
            }
            if let Some(t) = &etcd_target {
                populated.etcd = Some(populate_one("etcd", t, &shape).await?);
            }
            populated_done = true;
        }
        let mut rstore_measured: Option<Measured> = None;
        let mut etcd_measured: Option<Measured> = None;
        for round in 0..cli.rounds {
            // rstore first in even rounds, etcd first in odd ones (ABBA): a linear drift of
            // the machine's speed cancels out over each pair of rounds.
            let order = if round % 2 == 0 {
                [System::Rstore, System::Etcd]
            } else {
                [System::Etcd, System::Rstore]
            };
            for system in order {
                match system {
                    System::Rstore => {
                        if let (Some(t), Some(cluster)) = (&rstore_target, &rstore) {
                            let m = run_rstore(t, cluster, &admin, phase, &shape, cli.mode, round)
                                .await?;
                            Measured::add(&mut rstore_measured, m);
                        }
                    }
                    System::Etcd => {
                        if let Some(t) = &etcd_target {
                            let m = run_one("etcd", t, phase, &shape, round).await?;
                            Measured::add(&mut etcd_measured, m);
                        }
                    }
                }
            }
        }
        let rstore_stats = rstore_measured.map(|m| summarize("rstore", phase, m.stats()));
        let etcd_stats = etcd_measured.map(|m| summarize("etcd", phase, m.stats()));
        rows.push(PhaseRow {
            phase: phase.to_string(),
            op: phase.op,
            clients: phase.clients,
            throughput_ratio: ratio(
                rstore_stats.as_ref().map(|s| s.ops_per_sec),
                etcd_stats.as_ref().map(|s| s.ops_per_sec),
            ),
            p99_ratio: ratio(
                rstore_stats.as_ref().map(|s| s.p99_ms),
                etcd_stats.as_ref().map(|s| s.p99_ms),
            ),
            rstore: rstore_stats,
            etcd: etcd_stats,
        });
    }

    print_table(&rows);

    let report = Report {
        config,
        memory,
        populate: populated,
        phases: rows,
    };
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report).context("encode the JSON report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        info!(path = %path.display(), "JSON report written");
    }
    // The clusters are dropped (and their processes killed) here.
    drop((rstore, etcd));
    Ok(())
}

/// `--node-bin`, or `node` next to this executable; it must exist.
fn node_bin(cli: &Cli) -> anyhow::Result<PathBuf> {
    let node_bin = match cli.node_bin.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locate this executable")?
            .parent()
            .context("this executable has no parent directory")?
            .join("node"),
    };
    if !node_bin.is_file() {
        bail!(
            "node binary {} not found: build it (cargo build --release -p node) or pass --node-bin",
            node_bin.display()
        );
    }
    Ok(node_bin)
}

/// `a / b` when both are known and `b` is not zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

async fn etcd_version(bin: &std::path::Path) -> Option<String> {
    let out = tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_owned())
}

async fn populate_one<T: Target>(
    system: &str,
    target: &Arc<T>,
    shape: &LoadShape,
) -> anyhow::Result<Populated> {
    info!(
        system,
        keys = shape.keys.len(),
        "writing every key before the read phases"
    );
    let p = load::populate(target, shape)
        .await
        .with_context(|| format!("populate {system}"))?;
    if p.errors > 0 {
        warn!(system, errors = p.errors, samples = ?p.error_samples, "some keys could not be written; reads of them will count as errors");
    } else {
        info!(
            system,
            seconds = format!("{:.1}", p.seconds),
            "keys written"
        );
    }
    Ok(p)
}

#[derive(Clone, Copy)]
enum System {
    Rstore,
    Etcd,
}

/// One round of a phase on rstore, in the phase's replication mode if it names one (switched
/// live, and back afterwards).
async fn run_rstore(
    target: &Arc<RstoreTarget>,
    cluster: &RstoreCluster,
    admin: &reqwest::Client,
    phase: &Phase,
    shape: &LoadShape,
    default_mode: Option<ReplicationMode>,
    round: u32,
) -> anyhow::Result<Measured> {
    if let Some(mode) = phase.mode {
        cluster
            .set_mode(admin, mode)
            .await
            .context("switch the replication mode for a phase")?;
    }
    let measured = run_one("rstore", target, phase, shape, round).await?;
    if phase.mode.is_some() {
        cluster
            .set_mode(admin, default_mode.unwrap_or(ReplicationMode::Quorum))
            .await
            .context("restore the replication mode")?;
    }
    Ok(measured)
}

/// One round of a phase on one system.
async fn run_one<T: Target>(
    system: &str,
    target: &Arc<T>,
    phase: &Phase,
    shape: &LoadShape,
    round: u32,
) -> anyhow::Result<Measured> {
    info!(system, %phase, round = round + 1, "running phase");
    load::run_phase(target, phase, shape)
        .await
        .with_context(|| format!("{system} phase {phase}"))
}

/// Log a phase's result over all its rounds.
fn summarize(system: &str, phase: &Phase, s: PhaseStats) -> PhaseStats {
    info!(
        system,
        %phase,
        ops_per_sec = format!("{:.0}", s.ops_per_sec),
        p50_ms = format!("{:.2}", s.p50_ms),
        p99_ms = format!("{:.2}", s.p99_ms),
        errors = s.errors,
        "phase done"
    );
    if s.errors > 0 {
        warn!(system, %phase, errors = s.errors, samples = ?s.error_samples, "phase had errors");
    }
    s
}

fn print_memory(m: &MemoryReport) {
    println!("Idle memory (VmRSS):");
    let mib = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.1} MiB"));
    for (system, mem) in [("rstore", &m.rstore), ("etcd", &m.etcd)] {
        let Some(mem) = mem else { continue };
        for p in &mem.processes {
            println!("  {:<10} pid {:<8} {}", p.name, p.pid, mib(p.rss_mib));
        }
        println!("  {system} mean: {}", mib(mem.mean_rss_mib));
    }
    if let Some(r) = m.ratio_rstore_etcd {
        println!("  ratio rstore/etcd (mean RSS): {r:.2}");
    }
    println!();
}

fn print_table(rows: &[PhaseRow]) {
    let num =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"));
    println!(
        "{:<12} {:>7} | {:>12} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>9} {:>9}",
        "phase",
        "clients",
        "rstore ops/s",
        "p50 ms",
        "p99 ms",
        "etcd ops/s",
        "p50 ms",
        "p99 ms",
        "ops r/e",
        "p99 r/e"
    );
    println!("{}", "-".repeat(112));
    for r in rows {
        let side = |s: &Option<PhaseStats>| {
            (
                num(s.as_ref().map(|s| s.ops_per_sec), 0),
                num(s.as_ref().map(|s| s.p50_ms), 2),
                num(s.as_ref().map(|s| s.p99_ms), 2),
            )
        };
        let (ro, r50, r99) = side(&r.rstore);
        let (eo, e50, e99) = side(&r.etcd);
        let flag = if r.has_errors() {
            let errs = |s: &Option<PhaseStats>| s.as_ref().map_or(0, |s| s.errors);
            format!(
                "  ! errors: rstore {}, etcd {}",
                errs(&r.rstore),
                errs(&r.etcd)
            )
        } else {
            String::new()
        };
        println!(
            "{:<12} {:>7} | {:>12} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>9} {:>9}{flag}",
            r.phase,
            r.clients,
            ro,
            r50,
            r99,
            eo,
            e50,
            e99,
            num(r.throughput_ratio, 2),
            num(r.p99_ratio, 2),
        );
    }
    let flagged: Vec<&PhaseRow> = rows.iter().filter(|r| r.has_errors()).collect();
    if !flagged.is_empty() {
        println!();
        println!("Phases with errors (their numbers are suspect):");
        for r in flagged {
            for (system, s) in [("rstore", &r.rstore), ("etcd", &r.etcd)] {
                if let Some(s) = s.as_ref().filter(|s| s.errors > 0) {
                    println!(
                        "  {} {system}: {} errors, e.g. {:?}",
                        r.phase, s.errors, s.error_samples
                    );
                }
            }
        }
    }
}
