//! The archiver's Prometheus metrics, served at `/metrics` on `--metrics-addr`: how far the
//! archive is behind the cluster (in revisions and in seconds), what it uploaded, and what
//! failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `watch` (the stream could not be opened, broke off or was ended by the member),
    /// `upload`, `compacted`.
    pub kind: String,
}

pub struct ArchiveMetrics {
    registry: Registry,
    /// The newest revision archived (uploaded with its manifest).
    pub archived_revision: Gauge<u64, AtomicU64>,
    /// The newest revision the cluster reported (events and progress lines).
    pub cluster_revision: Gauge<u64, AtomicU64>,
    pub lag_revisions: Gauge<u64, AtomicU64>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub segments: Counter,
    pub bytes: Counter,
    pub failures: Family<FailureLabels, Counter>,
}

impl ArchiveMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rstore_archive");
        let m = Self {
            archived_revision: Gauge::default(),
            cluster_revision: Gauge::default(),
            lag_revisions: Gauge::default(),
            lag_seconds: Gauge::default(),
            segments: Counter::default(),
            bytes: Counter::default(),
            failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "archived_revision",
            "The newest revision archived: uploaded in a segment with its manifest",
            m.archived_revision.clone(),
        );
        registry.register(
            "cluster_revision",
            "The newest revision the watched member reported",
            m.cluster_revision.clone(),
        );
        registry.register(
            "lag_revisions",
            "Revisions the cluster made that are not archived yet",
            m.lag_revisions.clone(),
        );
        registry.register(
            "lag_seconds",
            "How long ago the oldest change not archived yet was received (0 when all are): what a loss of the cluster now would lose",
            m.lag_seconds.clone(),
        );
        registry.register("segments_uploaded", "Segments uploaded", m.segments.clone());
        registry.register(
            "bytes_uploaded",
            "Bytes of segments uploaded",
            m.bytes.clone(),
        );
        registry.register(
            "failures",
            "Failures by kind: watch (could not be opened, broke off or was ended by the member), upload, compacted",
            m.failures.clone(),
        );
        Self { registry, ..m }
    }

    pub fn fail(&self, kind: &str) {
        self.failures
            .get_or_create(&FailureLabels { kind: kind.into() })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

/// Serve `/metrics` on `addr`; the address bound (port 0 picks one).
pub async fn serve(addr: SocketAddr, metrics: Arc<ArchiveMetrics>) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}
