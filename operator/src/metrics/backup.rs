//! The backup controllers' metrics, in the operator's registry:
//! `rstore_operator_backups_total{store_namespace,store,outcome}` (succeeded, failed,
//! attempt_failed), the last successful backup of each store
//! (`rstore_operator_backup_last_success_timestamp_seconds`, `..._last_revision`,
//! `..._last_size_bytes`, `..._last_duration_seconds`), and per schedule
//! `rstore_operator_backup_schedule_stale` (1: no success for twice the period; the chart's
//! alert), `..._period_seconds`, `..._kept` (good backups in the destination) and, while a
//! schedule's archiver should be running, `..._archiver_available` (1 when its pod is
//! available; the chart's alert when it stays 0).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    store_namespace: String,
    store: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store_namespace: String,
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    store_namespace: String,
    store: String,
    schedule: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The backup metrics.
#[derive(Debug, Default)]
pub struct BackupMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    last_success: Family<StoreLabels, Gauge>,
    last_revision: Family<StoreLabels, Gauge>,
    last_size: Family<StoreLabels, Gauge>,
    last_duration: Family<StoreLabels, FloatGauge>,
    stale: Family<ScheduleLabels, Gauge>,
    period: Family<ScheduleLabels, FloatGauge>,
    kept: Family<ScheduleLabels, Gauge>,
    archiver_available: Family<ScheduleLabels, Gauge>,
}

impl BackupMetrics {
    /// Registers every backup metric in `registry` (prefixed `rstore_operator`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "backups",
            "Backups of each store by outcome (succeeded, failed, attempt_failed)",
            m.outcomes.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the newest successful backup of the store completed (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "backup_last_revision",
            "The revision the newest successful backup of the store holds",
            m.last_revision.clone(),
        );
        registry.register(
            "backup_last_size_bytes",
            "Size of the newest successful backup object of the store",
            m.last_size.clone(),
        );
        registry.register(
            "backup_last_duration_seconds",
            "How long the newest successful backup of the store took",
            m.last_duration.clone(),
        );
        registry.register(
            "backup_schedule_stale",
            "1 when no backup of the schedule succeeded for twice its period",
            m.stale.clone(),
        );
        registry.register(
            "backup_schedule_period_seconds",
            "The schedule's period (the gap between its next two occurrences)",
            m.period.clone(),
        );
        registry.register(
            "backup_schedule_kept",
            "Successful backups of the schedule's store kept in its destination",
            m.kept.clone(),
        );
        registry.register(
            "backup_schedule_archiver_available",
            "1 when the schedule's archiver pod is available, 0 when it should run and is \
             not; absent when the schedule has no archive or its archive has not started",
            m.archiver_available.clone(),
        );
        m
    }

    /// A backup attempt of `store` ended with `outcome`.
    pub fn outcome(&self, namespace: &str, store: &str, outcome: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                store_namespace: namespace.into(),
                store: store.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A backup of `store` was saved.
    pub fn saved(
        &self,
        namespace: &str,
        store: &str,
        revision: u64,
        bytes: u64,
        seconds: f64,
        finished_unix_ms: u64,
    ) {
        let l = StoreLabels {
            store_namespace: namespace.into(),
            store: store.into(),
        };
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.last_success
            .get_or_create(&l)
            .set(int(finished_unix_ms / 1000));
        self.last_revision.get_or_create(&l).set(int(revision));
        self.last_size.get_or_create(&l).set(int(bytes));
        self.last_duration.get_or_create(&l).set(seconds);
    }

    /// How schedule `schedule` of `store` stands.
    pub fn schedule(
        &self,
        namespace: &str,
        store: &str,
        schedule: &str,
        period_seconds: f64,
        stale: bool,
        kept: Option<u32>,
    ) {
        let l = ScheduleLabels {
            store_namespace: namespace.into(),
            store: store.into(),
            schedule: schedule.into(),
        };
        self.stale.get_or_create(&l).set(i64::from(stale));
        self.period.get_or_create(&l).set(period_seconds);
        if let Some(k) = kept {
            self.kept.get_or_create(&l).set(i64::from(k));
        }
    }

    /// Whether the archiver of schedule `schedule` is available: `None` when none should
    /// run yet (no `spec.archive`, or it waits for the store or a first backup).
    pub fn archiver(&self, namespace: &str, store: &str, schedule: &str, available: Option<bool>) {
        let l = ScheduleLabels {
            store_namespace: namespace.into(),
            store: store.into(),
            schedule: schedule.into(),
        };
        match available {
            Some(a) => {
                self.archiver_available.get_or_create(&l).set(i64::from(a));
            }
            None => {
                self.archiver_available.remove(&l);
            }
        }
    }
}
