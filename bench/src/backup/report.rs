//! The backup benchmark's results (`--backup`, `backup.rs`): what is measured per system,
//! the JSON report, and the printed tables.

use std::path::PathBuf;

use serde::Serialize;

use crate::load::{PhaseStats, Populated};
use crate::snapshot::LoopStats;

#[derive(Debug, Serialize)]
pub struct Config {
    pub keys: usize,
    pub value_bytes: usize,
    /// Keys plus values, in bytes.
    pub data_bytes: u64,
    pub runs: u32,
    pub load_keys: usize,
    pub load_value_bytes: usize,
    pub load_window_seconds: f64,
    pub load_warmup_seconds: f64,
    pub rounds: u32,
    pub node_bin: PathBuf,
    pub etcd_bin: PathBuf,
    pub etcdctl_bin: PathBuf,
    pub etcd_version: Option<String>,
    pub cpus: usize,
    pub tls: bool,
    /// rstore's backups paced to this (`--backup-max-rate`), or unlimited.
    pub rstore_max_rate: Option<String>,
    /// How fast rstore's members streamed backups while applying writes
    /// (`--backup-rate-under-load`); `None`: the member's default.
    pub rstore_rate_under_load: Option<String>,
}

/// One backup taken.
#[derive(Debug, Serialize)]
pub struct BackupRun {
    pub seconds: f64,
    pub file_bytes: u64,
    /// Logical data (keys plus values) per second, MB = 10^6 bytes.
    pub data_mb_per_sec: f64,
    pub file_mb_per_sec: f64,
    /// The serving member's peak RSS during this backup.
    pub peak_rss_mib: Option<f64>,
}

/// One restore.
#[derive(Debug, Serialize)]
pub struct RestoreRun {
    /// `node backup restore` / `etcdctl snapshot restore`.
    pub seconds: f64,
    /// From starting the server on the restored directory to its first answered read.
    pub serving_seconds: f64,
}

/// The put load without and with backups running.
#[derive(Debug, Serialize)]
pub struct LoadRun {
    pub phase: String,
    pub idle: PhaseStats,
    pub during_backup: PhaseStats,
    /// `100 * (1 - during / idle)` of the throughput; negative if it rose.
    pub drop_percent: f64,
    pub backups: LoopStats,
    /// The serving member's peak RSS while the load and the backups ran.
    pub peak_rss_mib: Option<f64>,
}

/// Everything measured on one system.
#[derive(Debug, Serialize)]
pub struct SystemReport {
    pub populate: Populated,
    /// The member backups are taken from, and its RSS just before the first backup.
    pub member: String,
    pub idle_rss_mib: Option<f64>,
    pub backups: Vec<BackupRun>,
    pub restores: Vec<RestoreRun>,
    pub load: Option<LoadRun>,
}

impl SystemReport {
    fn mean(&self, f: impl Fn(&BackupRun) -> f64) -> f64 {
        mean(self.backups.iter().map(f))
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub config: Config,
    pub rstore: SystemReport,
    pub etcd: SystemReport,
}

pub fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (n, sum) = v.fold((0u32, 0.0), |(n, s), x| (n + 1, s + x));
    if n == 0 { f64::NAN } else { sum / f64::from(n) }
}

pub fn print_report(r: &Report) {
    let c = &r.config;
    println!(
        "Backup benchmark: {} keys x {} B ({:.1} MB of keys and values), TLS, etcd {}",
        c.keys,
        c.value_bytes,
        c.data_bytes as f64 / 1e6,
        c.etcd_version.as_deref().unwrap_or("?")
    );
    if let Some(rate) = &c.rstore_max_rate {
        println!(
            "  rstore's backups paced to {rate}/s (node backup save --max-rate); etcd's unpaced"
        );
    }
    println!(
        "  rstore's rate under load: {} (a member paces a backup to it while it applies writes; --backup-rate-under-load)",
        c.rstore_rate_under_load
            .as_deref()
            .unwrap_or("64MiB, the members' default")
    );
    for (name, s) in [("rstore", &r.rstore), ("etcd", &r.etcd)] {
        println!(
            "  populate {name}: {:.1} s ({:.0} keys/s, 64 clients)",
            s.populate.seconds,
            s.populate.keys as f64 / s.populate.seconds
        );
    }
    println!();
    println!(
        "{:<8} {:>4} | {:>9} {:>10} {:>11} {:>11} {:>10} | {:>10} {:>10}",
        "system",
        "run",
        "backup s",
        "file MB",
        "data MB/s",
        "file MB/s",
        "peak MiB",
        "restore s",
        "serving s"
    );
    println!("{}", "-".repeat(104));
    for (name, s) in [("rstore", &r.rstore), ("etcd", &r.etcd)] {
        for (i, b) in s.backups.iter().enumerate() {
            let rest = s.restores.get(i);
            println!(
                "{name:<8} {:>4} | {:>9.2} {:>10.1} {:>11.1} {:>11.1} {:>10} | {:>10} {:>10}",
                i + 1,
                b.seconds,
                b.file_bytes as f64 / 1e6,
                b.data_mb_per_sec,
                b.file_mb_per_sec,
                opt(b.peak_rss_mib, 1),
                opt(rest.map(|x| x.seconds), 2),
                opt(rest.map(|x| x.serving_seconds), 2),
            );
        }
    }
    println!();
    let (rs, es) = (&r.rstore, &r.etcd);
    let restore_mean = |s: &SystemReport| mean(s.restores.iter().map(|x| x.seconds));
    let serving_mean = |s: &SystemReport| mean(s.restores.iter().map(|x| x.serving_seconds));
    let load = |s: &SystemReport, f: fn(&LoadRun) -> f64| s.load.as_ref().map(f);
    // The backups' data rate while the put load ran (the same state, taken back to back).
    let under_load = |secs: f64| c.data_bytes as f64 / 1e6 / secs;
    let backup_secs = |s: &SystemReport| s.load.as_ref().and_then(|l| l.backups.mean_seconds);
    let rows: Vec<(&str, Option<f64>, Option<f64>, usize)> = vec![
        (
            "backup s (mean)",
            Some(rs.mean(|b| b.seconds)),
            Some(es.mean(|b| b.seconds)),
            2,
        ),
        (
            "backup data MB/s (mean)",
            Some(rs.mean(|b| b.data_mb_per_sec)),
            Some(es.mean(|b| b.data_mb_per_sec)),
            1,
        ),
        (
            "backup file MB/s (mean)",
            Some(rs.mean(|b| b.file_mb_per_sec)),
            Some(es.mean(|b| b.file_mb_per_sec)),
            1,
        ),
        (
            "restore s (mean)",
            Some(restore_mean(rs)),
            Some(restore_mean(es)),
            2,
        ),
        (
            "start to first read s (mean)",
            Some(serving_mean(rs)),
            Some(serving_mean(es)),
            2,
        ),
        (
            "put64 ops/s, no backup",
            load(rs, |l| l.idle.ops_per_sec),
            load(es, |l| l.idle.ops_per_sec),
            0,
        ),
        (
            "put64 ops/s, during backups",
            load(rs, |l| l.during_backup.ops_per_sec),
            load(es, |l| l.during_backup.ops_per_sec),
            0,
        ),
        (
            "put64 drop %",
            load(rs, |l| l.drop_percent),
            load(es, |l| l.drop_percent),
            1,
        ),
        (
            "put64 p99 ms, no backup",
            load(rs, |l| l.idle.p99_ms),
            load(es, |l| l.idle.p99_ms),
            2,
        ),
        (
            "put64 p99 ms, during backups",
            load(rs, |l| l.during_backup.p99_ms),
            load(es, |l| l.during_backup.p99_ms),
            2,
        ),
        (
            "backups done during load",
            load(rs, |l| f64::from(l.backups.completed)),
            load(es, |l| f64::from(l.backups.completed)),
            0,
        ),
        (
            "backup s under load (mean)",
            backup_secs(rs),
            backup_secs(es),
            2,
        ),
        (
            "backup data MB/s under load",
            backup_secs(rs).map(under_load),
            backup_secs(es).map(under_load),
            1,
        ),
        (
            "RSS idle MiB (member 1)",
            rs.idle_rss_mib,
            es.idle_rss_mib,
            1,
        ),
        (
            "RSS peak during backup MiB",
            rs.backups
                .iter()
                .filter_map(|b| b.peak_rss_mib)
                .reduce(f64::max),
            es.backups
                .iter()
                .filter_map(|b| b.peak_rss_mib)
                .reduce(f64::max),
            1,
        ),
        (
            "RSS peak, load + backups MiB",
            rs.load.as_ref().and_then(|l| l.peak_rss_mib),
            es.load.as_ref().and_then(|l| l.peak_rss_mib),
            1,
        ),
    ];
    println!("{:<30} {:>12} {:>12} {:>8}", "", "rstore", "etcd", "r/e");
    println!("{}", "-".repeat(65));
    for (name, a, b, prec) in rows {
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
            _ => None,
        };
        println!(
            "{name:<30} {:>12} {:>12} {:>8}",
            opt(a, prec),
            opt(b, prec),
            opt(ratio, 2)
        );
    }
    for (name, s) in [("rstore", rs), ("etcd", es)] {
        if let Some(l) = &s.load
            && (l.backups.failed > 0 || l.idle.errors > 0 || l.during_backup.errors > 0)
        {
            println!(
                "  ! {name}: {} failed backups ({:?}), put errors {} / {} ({:?} {:?})",
                l.backups.failed,
                l.backups.error,
                l.idle.errors,
                l.during_backup.errors,
                l.idle.error_samples,
                l.during_backup.error_samples
            );
        }
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
}
