//! The operator's Prometheus metrics and its small HTTP server (`/metrics`, `/healthz`,
//! `/readyz`).
//!
//! Names (the Helm chart's alerts and the Grafana dashboard depend on them):
//! `rstore_operator_reconcile_total{result}`, `rstore_operator_reconcile_errors_total{reason}`,
//! `rstore_operator_reconcile_duration_seconds`, `rstore_operator_steps_total{step}`,
//! `rstore_operator_members{store_namespace,store,state}`, `rstore_operator_clusters{phase}` and
//! `rstore_operator_leader`; the backup controllers' in [`backup`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::crd::Phase;

pub mod backup;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    // Not `namespace`/`name`: Prometheus sets `namespace` to the operator pod's own. `store`
    // is also the label the chart's PodMonitor puts on every member's own metrics.
    store_namespace: String,
    store: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store_namespace: String,
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// Counts of members of one cluster by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCounts {
    /// Healthy, caught-up voters.
    pub healthy: i64,
    /// Voters or learners that are unreachable or lagging.
    pub unhealthy: i64,
    /// Healthy learners (read replicas).
    pub learner: i64,
}

/// All operator metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
    duration: Histogram,
    steps: Family<StepLabel, Counter>,
    members: Family<MemberLabels, Gauge>,
    clusters: Family<PhaseLabel, Gauge>,
    cert_expiry: Family<StoreLabels, Gauge>,
    leader: Gauge,
    /// The backup controllers' metrics.
    pub backup: backup::BackupMetrics,
    phases: Mutex<HashMap<(String, String), Phase>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rstore_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        let steps = Family::<StepLabel, Counter>::default();
        let members = Family::<MemberLabels, Gauge>::default();
        let clusters = Family::<PhaseLabel, Gauge>::default();
        let leader = Gauge::default();
        let cert_expiry = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "reconcile",
            "Reconciles by result (action, wait, done, refused, degraded, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile takes, observation and action included",
            duration.clone(),
        );
        registry.register("steps", "Steps taken, by kind", steps.clone());
        registry.register(
            "members",
            "Members of each cluster by state (healthy, unhealthy, learner)",
            members.clone(),
        );
        registry.register("clusters", "ReplicatedStores by phase", clusters.clone());
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the store's member certificate that expires first expires (Unix time)",
            cert_expiry.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader election lease",
            leader.clone(),
        );
        let backup = backup::BackupMetrics::register(&mut registry);
        Self {
            backup,
            registry,
            reconciles,
            errors,
            duration,
            steps,
            members,
            clusters,
            cert_expiry,
            leader,
            phases: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }

    /// One reconcile ended with `result` after `seconds`.
    pub fn reconciled(&self, result: &str, seconds: f64) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.duration.observe(seconds);
    }

    /// One reconcile failed for `reason`.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// A step was taken.
    pub fn step(&self, step: &str) {
        self.steps
            .get_or_create(&StepLabel { step: step.into() })
            .inc();
    }

    /// The members and phase of one cluster, as last observed.
    pub fn cluster(&self, namespace: &str, name: &str, counts: MemberCounts, phase: Option<Phase>) {
        for (state, value) in [
            ("healthy", counts.healthy),
            ("unhealthy", counts.unhealthy),
            ("learner", counts.learner),
        ] {
            self.members
                .get_or_create(&MemberLabels {
                    store_namespace: namespace.into(),
                    store: name.into(),
                    state: state.into(),
                })
                .set(value);
        }
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        match phase {
            Some(p) => phases.insert((namespace.into(), name.into()), p),
            None => phases.remove(&(namespace.into(), name.into())),
        };
        self.clusters.clear();
        for p in phases.values() {
            self.clusters
                .get_or_create(&PhaseLabel {
                    phase: format!("{p:?}"),
                })
                .inc();
        }
    }

    /// When the first of a store's member certificates expires (`None`: no TLS, or unknown).
    pub fn certificate_expiry(
        &self,
        namespace: &str,
        name: &str,
        at: Option<std::time::SystemTime>,
    ) {
        let labels = StoreLabels {
            store_namespace: namespace.into(),
            store: name.into(),
        };
        match at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            Some(d) => {
                self.cert_expiry
                    .get_or_create(&labels)
                    .set(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            }
            None => {
                self.cert_expiry.remove(&labels);
            }
        }
    }

    /// Whether this replica holds the lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Marks the process ready (the API server answered).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet",
        )
    }
}

/// The router of the metrics and health endpoints.
pub fn router(state: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves [`router`] on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_what_the_chart_and_dashboard_use() {
        let m = Metrics::new();
        m.reconciled("done", 0.01);
        m.error("kube");
        m.step("AddingMember");
        m.cluster(
            "ns",
            "db",
            MemberCounts {
                healthy: 3,
                unhealthy: 0,
                learner: 1,
            },
            Some(Phase::Available),
        );
        m.set_leader(true);
        m.certificate_expiry(
            "ns",
            "db",
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000)),
        );
        let text = m.encode();
        for needle in [
            "rstore_operator_reconcile_total{result=\"done\"} 1",
            "rstore_operator_reconcile_errors_total{reason=\"kube\"} 1",
            "rstore_operator_reconcile_duration_seconds_count 1",
            "rstore_operator_steps_total{step=\"AddingMember\"} 1",
            "rstore_operator_members{store_namespace=\"ns\",store=\"db\",state=\"healthy\"} 3",
            "rstore_operator_clusters{phase=\"Available\"} 1",
            "rstore_operator_leader 1",
            "rstore_operator_certificate_expiry_timestamp_seconds{store_namespace=\"ns\",store=\"db\"} 1900000000",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn the_backup_metrics_the_chart_alerts_on() {
        let m = Metrics::new();
        m.backup
            .schedule("ns", "db", "nightly", 86400.0, true, Some(3));
        m.backup.archiver("ns", "db", "nightly", Some(false));
        let text = m.encode();
        for needle in [
            "rstore_operator_backup_schedule_stale{store_namespace=\"ns\",store=\"db\",schedule=\"nightly\"} 1",
            "rstore_operator_backup_schedule_kept{store_namespace=\"ns\",store=\"db\",schedule=\"nightly\"} 3",
            "rstore_operator_backup_schedule_archiver_available{store_namespace=\"ns\",store=\"db\",schedule=\"nightly\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        // No archiver should run (archive removed, or waiting for a first backup): no
        // series, so the alert does not fire on a schedule that has nothing to archive yet.
        m.backup.archiver("ns", "db", "nightly", None);
        let text = m.encode();
        assert!(
            !text.contains("archiver_available{"),
            "a series left for an archiver that should not run:\n{text}"
        );
    }
}
