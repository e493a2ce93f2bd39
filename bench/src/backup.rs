//! `rstore-bench --backup`: backup and restore of rstore against etcd 3.4 on the same data.
//!
//! Both clusters are started as deployed (TLS; tokens for rstore, client certificates for
//! etcd) and filled with the same `--backup-keys` keys of `--backup-value-bytes` bytes. Then,
//! with every step run alternately (rstore, etcd, etcd, rstore, ...):
//! 1. backup: `node backup save` against member 1 vs `etcdctl snapshot save` against member
//!    1, `--backup-runs` times each: seconds, file bytes, MB/s of logical data (keys plus
//!    values) and of file bytes (MB = 10^6 bytes), and the serving member's peak RSS;
//! 2. restore: `node backup restore` vs `etcdctl snapshot restore` of the last backup into a
//!    fresh directory for one new member, and the seconds from starting a server on it
//!    (`node serve`, `etcd`) to its first answered linearizable read;
//! 3. load during backup: the bench's put phase with 64 clients (on `--keys` keys of
//!    `--value-bytes` bytes) for `--seconds` split over `--rounds` windows without a backup
//!    and as many while backups run back to back from member 1 (idle and busy windows
//!    alternate); the drop of throughput in %, the backups' rate under the load (the load
//!    goes on, unmeasured, until the last backup ends, so that each ran under it
//!    throughout), and the serving member's peak RSS.
//!
//! etcd runs with `--quota-backend-bytes` of 8 GiB and rstore with `RSTORE_MAX_DATA_BYTES`
//! of 8 GiB, so that 1 GB of data does not hit their defaults (2 GiB and 1 GiB).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tracing::info;

use crate::cluster::{EtcdCluster, RstoreCluster, RstoreConfig};
use crate::load::{self, EtcdTarget, LoadShape, Phase, Populated, RstoreTarget};
use crate::security::BenchTls;
use crate::snapshot::{BackupLoop, LoopStats, Restored, RssSampler, System, Tools};

mod report;
use report::{BackupRun, Config, LoadRun, Report, RestoreRun, SystemReport, print_report};

/// The etcd members' backend quota: the 2 GiB default is too small for 1 GB of data plus
/// its revisions.
const ETCD_QUOTA_BYTES: u64 = 8 << 30;
/// rstore's data quota (`RSTORE_MAX_DATA_BYTES`), like etcd's: the 1 GiB default is too
/// small for 1 GB of keys and values.
const RSTORE_QUOTA_BYTES: u64 = 8 << 30;
/// Seconds both idle clusters settle after populating, before the first backup.
const SETTLE: Duration = Duration::from_secs(3);

/// What `--backup` runs with (from the command line).
pub struct Options {
    pub node_bin: PathBuf,
    pub etcd_bin: PathBuf,
    pub etcdctl_bin: PathBuf,
    pub etcd_version: Option<String>,
    pub rstore_env: Vec<(String, String)>,
    pub keys: usize,
    pub value_bytes: usize,
    pub runs: u32,
    /// `node backup save --max-rate` for rstore's backups.
    pub max_rate: Option<String>,
    /// `node backup save --rate-under-load` for rstore's backups.
    pub rate_under_load: Option<String>,
    /// The load during backup: its shape (key space, value size, warmup, window).
    pub load: LoadShape,
    pub rounds: u32,
    pub json: Option<PathBuf>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.keys == 0 || opts.runs == 0 || opts.rounds == 0 {
        bail!("--backup-keys, --backup-runs and --rounds must be at least 1");
    }
    for (bin, what) in [
        (&opts.node_bin, "build it: cargo build --release -p node"),
        (&opts.etcd_bin, "apt-get install -y etcd-server"),
        (&opts.etcdctl_bin, "apt-get install -y etcd-client"),
    ] {
        if !bin.is_file() {
            bail!("{} not found: {what}", bin.display());
        }
    }
    let tls = BenchTls::new().context("make the benchmark's certificates")?;
    let admin = tls.admin_client()?;
    let mut env = opts.rstore_env.clone();
    if !env.iter().any(|(k, _)| k == "RSTORE_MAX_DATA_BYTES") {
        env.push((
            "RSTORE_MAX_DATA_BYTES".into(),
            RSTORE_QUOTA_BYTES.to_string(),
        ));
    }
    let rstore_cfg = RstoreConfig {
        node_bin: opts.node_bin.clone(),
        tls: Some(tls.clone()),
        env,
    };
    info!("starting 3 rstore nodes and 3 etcd members (TLS)");
    let rstore = RstoreCluster::start(&rstore_cfg, &admin)
        .await
        .context("start the rstore cluster")?;
    let quota = [format!("--quota-backend-bytes={ETCD_QUOTA_BYTES}")];
    let etcd = EtcdCluster::start_with(&opts.etcd_bin, &admin, Some(&tls), &quota)
        .await
        .context("start the etcd cluster")?;
    let tools = Arc::new(
        Tools::new(
            rstore_cfg,
            opts.etcd_bin.clone(),
            opts.etcdctl_bin.clone(),
            tls.clone(),
            admin.clone(),
        )?
        .with_rates(opts.max_rate.clone(), opts.rate_under_load.clone()),
    );
    let rstore_target = Arc::new(RstoreTarget::new(
        rstore.client_urls().to_vec(),
        Some(Arc::new(tls.rstore_load_tls()?)),
    )?);
    let etcd_target = Arc::new(EtcdTarget::new(
        etcd.client_urls().to_vec(),
        Some(tls.etcd_options()),
    ));

    let data = LoadShape::new(opts.keys, opts.value_bytes, Duration::ZERO, Duration::ZERO);
    let data_bytes: u64 = data
        .keys
        .iter()
        .map(|k| (k.len() + opts.value_bytes) as u64)
        .sum();
    let first_key = data.keys[0].clone();
    info!(
        keys = opts.keys,
        mb = format!("{:.1}", data_bytes as f64 / 1e6),
        "populating both clusters"
    );
    let rstore_pop = populate("rstore", &rstore_target, &data).await?;
    let etcd_pop = populate("etcd", &etcd_target, &data).await?;
    drop(data);
    tokio::time::sleep(SETTLE).await;

    let endpoint = |s: System| match s {
        System::Rstore => rstore.client_urls()[0].clone(),
        System::Etcd => etcd.client_urls()[0].clone(),
    };
    let pid = |s: System| match s {
        System::Rstore => rstore.processes()[0].pid(),
        System::Etcd => etcd.processes()[0].pid(),
    };
    let mut reports = [System::Rstore, System::Etcd].map(|s| SystemReport {
        populate: match s {
            System::Rstore => rstore_pop.clone(),
            System::Etcd => etcd_pop.clone(),
        },
        member: match s {
            System::Rstore => rstore.processes()[0].name().to_owned(),
            System::Etcd => etcd.processes()[0].name().to_owned(),
        },
        idle_rss_mib: crate::cluster::rss_kib(pid(s)).map(|k| k as f64 / 1024.0),
        backups: Vec::new(),
        restores: Vec::new(),
        load: None,
    });
    let idx = |s: System| s as usize;

    let work = tempfile::Builder::new()
        .prefix("rstore-bench-backup-")
        .tempdir()
        .context("create a directory for the backups")?;
    let file = |s: System| {
        work.path().join(match s {
            System::Rstore => "rstore.rsb",
            System::Etcd => "etcd.db",
        })
    };

    // 1. Backups.
    for run in 0..opts.runs {
        for s in System::order(run) {
            let out = file(s);
            let _ = std::fs::remove_file(&out);
            info!(system = s.name(), run = run + 1, "backup");
            let rss = RssSampler::start(pid(s));
            let seconds = tools.save(s, &endpoint(s), &out).await;
            let peak_rss_mib = rss.stop().await;
            let seconds = seconds?;
            let file_bytes = std::fs::metadata(&out)
                .with_context(|| format!("stat {}", out.display()))?
                .len();
            let r = BackupRun {
                seconds,
                file_bytes,
                data_mb_per_sec: data_bytes as f64 / 1e6 / seconds,
                file_mb_per_sec: file_bytes as f64 / 1e6 / seconds,
                peak_rss_mib,
            };
            info!(system = s.name(), ?r, "backup taken");
            reports[idx(s)].backups.push(r);
        }
    }

    // 2. Restores of the last backup of each.
    for run in 0..opts.runs {
        for s in System::order(run) {
            info!(system = s.name(), run = run + 1, "restore");
            let r = restore(&tools, s, &file(s), work.path(), &first_key).await?;
            info!(system = s.name(), ?r, "restored and serving");
            reports[idx(s)].restores.push(r);
        }
    }
    for s in [System::Rstore, System::Etcd] {
        let _ = std::fs::remove_file(file(s));
    }

    // 3. put64 without and with backups running back to back.
    let phase: Phase = "put64".parse().map_err(anyhow::Error::msg)?;
    let mut idle: [Option<load::Measured>; 2] = [None, None];
    let mut busy: [Option<load::Measured>; 2] = [None, None];
    let mut loops: [Vec<LoopStats>; 2] = [Vec::new(), Vec::new()];
    let mut load_rss: [Option<f64>; 2] = [None, None];
    for round in 0..opts.rounds {
        for s in System::order(round) {
            let with_backup_first = !round.is_multiple_of(2);
            for with_backup in [with_backup_first, !with_backup_first] {
                info!(system = s.name(), round = round + 1, with_backup, %phase, "load");
                let (measured, stats, peak) = if with_backup {
                    let rss = RssSampler::start(pid(s));
                    let bl = BackupLoop::start(
                        tools.clone(),
                        s,
                        endpoint(s),
                        work.path().join(format!("loop-{}", s.name())),
                    );
                    let m = match s {
                        System::Rstore => load::run_phase(&rstore_target, &phase, &opts.load).await,
                        System::Etcd => load::run_phase(&etcd_target, &phase, &opts.load).await,
                    };
                    let stats = match s {
                        System::Rstore => {
                            finish_under_load(bl, &rstore_target, &phase, &opts.load).await
                        }
                        System::Etcd => {
                            finish_under_load(bl, &etcd_target, &phase, &opts.load).await
                        }
                    }?;
                    (m, Some(stats), rss.stop().await)
                } else {
                    let m = match s {
                        System::Rstore => load::run_phase(&rstore_target, &phase, &opts.load).await,
                        System::Etcd => load::run_phase(&etcd_target, &phase, &opts.load).await,
                    };
                    (m, None, None)
                };
                let measured = measured.with_context(|| format!("{} {phase}", s.name()))?;
                // Each window on its own, with rstore's snapshot indexes after it: a member
                // rewriting a 1 GB snapshot costs the window it falls in (on 2 shared cores).
                let snapshots = match s {
                    System::Rstore => snapshot_indexes(&admin, rstore.client_urls()).await,
                    System::Etcd => Vec::new(),
                };
                info!(
                    system = s.name(),
                    round = round + 1,
                    with_backup,
                    ops_per_sec = format!("{:.0}", measured.ops_per_sec()),
                    ?snapshots,
                    "window measured"
                );
                if let Some(stats) = stats {
                    info!(system = s.name(), ?stats, "backups during the load");
                    loops[idx(s)].push(stats);
                    load_rss[idx(s)] = match (load_rss[idx(s)], peak) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    load::Measured::add(&mut busy[idx(s)], measured);
                } else {
                    load::Measured::add(&mut idle[idx(s)], measured);
                }
            }
        }
    }
    for s in [System::Rstore, System::Etcd] {
        let i = idx(s);
        let (Some(idle), Some(busy)) = (idle[i].take(), busy[i].take()) else {
            continue;
        };
        let (idle, during_backup) = (idle.stats(), busy.stats());
        let drop_percent = 100.0 * (1.0 - during_backup.ops_per_sec / idle.ops_per_sec);
        reports[i].load = Some(LoadRun {
            phase: phase.to_string(),
            idle,
            during_backup,
            drop_percent,
            backups: merge_loops(&loops[i]),
            peak_rss_mib: load_rss[i],
        });
    }

    let [rstore_report, etcd_report] = reports;
    let report = Report {
        config: Config {
            keys: opts.keys,
            value_bytes: opts.value_bytes,
            data_bytes,
            runs: opts.runs,
            load_keys: opts.load.keys.len(),
            load_value_bytes: opts.load.value.len(),
            load_window_seconds: opts.load.measure.as_secs_f64(),
            load_warmup_seconds: opts.load.warmup.as_secs_f64(),
            rounds: opts.rounds,
            node_bin: opts.node_bin.clone(),
            etcd_bin: opts.etcd_bin.clone(),
            etcdctl_bin: opts.etcdctl_bin.clone(),
            etcd_version: opts.etcd_version.clone(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            tls: true,
            rstore_max_rate: opts.max_rate.clone(),
            rstore_rate_under_load: opts.rate_under_load.clone(),
        },
        rstore: rstore_report,
        etcd: etcd_report,
    };
    print_report(&report);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).context("encode the JSON report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        info!(path = %path.display(), "JSON report written");
    }
    drop((rstore, etcd));
    Ok(())
}

/// Stops the backup loop, keeping the same load on (unmeasured) until the backup under way
/// ends, so that every backup counted ran under the load from start to end: a backup that
/// outlasted the measured window used to finish on an idle cluster, which flattered the
/// slower-paced system's rate under load.
async fn finish_under_load<T: load::Target>(
    backups: BackupLoop,
    target: &Arc<T>,
    phase: &Phase,
    shape: &LoadShape,
) -> anyhow::Result<LoopStats> {
    let tail = LoadShape {
        warmup: Duration::ZERO,
        measure: Duration::from_secs(24 * 3600),
        ..shape.clone()
    };
    // The load's tasks end when its future is dropped, as soon as the loop has stopped.
    tokio::select! {
        stats = backups.stop() => stats,
        done = load::run_phase(target, phase, &tail) => {
            bail!("the load under the last backup ended early: {:?}", done.err())
        }
    }
}

/// The last snapshot index of each rstore member (`rstore_raft_snapshot_index`), `None`
/// where it could not be read.
async fn snapshot_indexes(admin: &reqwest::Client, urls: &[String]) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for url in urls {
        let text = match admin.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        out.push(text.lines().find_map(|l| {
            l.strip_prefix("rstore_raft_snapshot_index ")?
                .trim()
                .parse::<f64>()
                .ok()
                .map(|v| v as u64)
        }));
    }
    out
}

async fn populate<T: load::Target>(
    system: &str,
    target: &Arc<T>,
    data: &LoadShape,
) -> anyhow::Result<Populated> {
    let p = load::populate(target, data)
        .await
        .with_context(|| format!("populate {system}"))?;
    if p.errors > 0 {
        bail!(
            "{system}: {} of {} keys could not be written, e.g. {:?}",
            p.errors,
            p.keys,
            p.error_samples
        );
    }
    info!(
        system,
        seconds = format!("{:.1}", p.seconds),
        keys_per_sec = format!("{:.0}", p.keys as f64 / p.seconds),
        "populated"
    );
    Ok(p)
}

/// Restores `file` into a fresh directory under `work`, starts a server on it, and times
/// both; the server is stopped and the directory removed afterwards.
async fn restore(
    tools: &Tools,
    s: System,
    file: &Path,
    work: &Path,
    key: &str,
) -> anyhow::Result<RestoreRun> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("restored-{}-", s.name()))
        .tempdir_in(work)
        .context("create a directory to restore into")?;
    let member = Restored::new()?;
    let seconds = tools
        .restore(s, file, &dir.path().join("data"), &member)
        .await?;
    let (server, serving_seconds) = tools.serve_restored(s, dir, &member, key).await?;
    drop(server);
    Ok(RestoreRun {
        seconds,
        serving_seconds,
    })
}

fn merge_loops(loops: &[LoopStats]) -> LoopStats {
    let completed: u32 = loops.iter().map(|l| l.completed).sum();
    let total: f64 = loops
        .iter()
        .filter_map(|l| Some(l.mean_seconds? * f64::from(l.completed)))
        .sum();
    LoopStats {
        completed,
        failed: loops.iter().map(|l| l.failed).sum(),
        mean_seconds: (completed > 0).then(|| total / f64::from(completed)),
        error: loops.iter().find_map(|l| l.error.clone()),
    }
}
