//! `operator run`: the controller against the cluster of the current kubeconfig or service
//! account, with leader election, metrics and health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use futures::FutureExt;
use tracing::info;

use crate::cli::log::LogFormat;
use crate::controller::{self, Context, Settings};
use crate::leader::Election;
use crate::metrics::{self, Metrics};
use crate::{Error, Result};

/// `operator run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    #[arg(
        long,
        env = "RSTORE_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,
    /// Compete for a coordination Lease so that only one replica reconciles (the default).
    #[arg(long, overrides_with = "no_leader_election")]
    pub leader_election: bool,
    /// Reconcile without leader election: run exactly one replica.
    #[arg(
        long,
        env = "RSTORE_OPERATOR_NO_LEADER_ELECTION",
        overrides_with = "leader_election"
    )]
    pub no_leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "RSTORE_OPERATOR_LEASE_NAME",
        default_value = "rstore-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (default: `$POD_NAMESPACE`, else `default`).
    #[arg(long, env = "RSTORE_OPERATOR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "RSTORE_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// Log format.
    #[arg(
        long,
        env = "RSTORE_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the controller until a signal, or until the leader Lease is lost.
pub(crate) async fn run(args: &RunArgs) -> Result<()> {
    // Two crypto providers are compiled in (kube enables one, a dependency the other), so
    // rustls cannot pick one itself and would panic at the first TLS connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(metrics::serve(
        args.metrics_addr,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz and /readyz");
    let client = kube::Client::try_default().await?;
    // Ready once the API server answers: a standby replica is ready too.
    client.apiserver_version().await?;
    metrics.set_ready(true);
    let holder = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("operator-{}", std::process::id()));
    let election = (!args.no_leader_election).then(|| {
        let ns = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        Election::new(
            client.clone(),
            &ns,
            &args.lease_name,
            &holder,
            metrics.clone(),
        )
    });
    let signal = async {
        shutdown_signal().await;
        info!("shutting down");
    };
    tokio::pin!(signal);
    if let Some(e) = &election {
        info!(lease = %args.lease_name, holder = %holder, "waiting for the leader Lease");
        tokio::select! {
            () = e.acquire() => {},
            () = &mut signal => {
                let _ = stop_tx.send(true);
                let _ = server.await;
                return Ok(());
            }
        }
    } else {
        metrics.set_leader(true);
    }
    let ctx = Arc::new(Context::new(client, Settings::default(), metrics, &holder));
    let stores = controller::run(
        ctx.clone(),
        args.namespace.clone(),
        stopped(stop_rx.clone()),
    );
    let backups = crate::backup::run(ctx, args.namespace.clone(), {
        let rx = stop_rx.clone();
        async move { stopped(rx).await }.shared()
    });
    let controller = async {
        futures::join!(stores, backups);
    };
    let lost = async {
        match &election {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let mut lost_lease = false;
    tokio::select! {
        () = controller => {},
        () = &mut signal => {},
        () = lost => { lost_lease = true; },
    }
    let _ = stop_tx.send(true);
    if let Some(e) = &election
        && !lost_lease
    {
        e.release().await;
    }
    let _ = server.await;
    if lost_lease {
        // Exit non-zero so that the pod restarts as a standby: a replica that lost its Lease
        // must not go on reconciling.
        return Err(Error::LostLease);
    }
    Ok(())
}
