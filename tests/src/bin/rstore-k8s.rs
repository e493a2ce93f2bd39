//! `rstore-k8s up`: the real Kubernetes control plane on this machine (see
//! `rstore_tests::k8s`). `tests/k8s/up.sh` builds what it needs and runs it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rstore_tests::k8s::{ControlPlane, PlaneOptions};

/// A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler) with the rstore node agent as its kubelet.
#[derive(Parser)]
#[command(name = "rstore-k8s", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the control plane and run until Ctrl-C or SIGTERM, which stop everything.
    Up {
        /// The plane's directory: kubeconfig, logs, volumes, the hosts file. Emptied first.
        #[arg(long, env = "RSTORE_K8S_DIR", default_value = "/tmp/rstore-k8s")]
        dir: PathBuf,
        /// Where the Kubernetes binaries are (the directory `tests/k8s/build.sh` prints).
        #[arg(long, env = "RSTORE_K8S_BIN")]
        bin_dir: PathBuf,
        /// How many Nodes the agent registers.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The binary behind the `ghcr.io/rstore/node` image (default: `node` beside this one).
        #[arg(long, env = "RSTORE_NODE_BIN")]
        node_bin: Option<PathBuf>,
        /// The binary behind `ghcr.io/rstore/operator` (default: `operator` beside this one).
        #[arg(long, env = "RSTORE_OPERATOR_BIN")]
        operator_bin: Option<PathBuf>,
        /// Seconds between rewrites of Secret, ConfigMap and projected volumes.
        #[arg(long, default_value_t = 10)]
        volume_refresh_s: u64,
    },
}

fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

#[tokio::main]
async fn main() -> Result<()> {
    let Cli {
        command:
            Cmd::Up {
                dir,
                bin_dir,
                nodes,
                node_bin,
                operator_bin,
                volume_refresh_s,
            },
    } = Cli::parse();
    rstore_tests::k8s::plane::prepare_dir(&dir)?;
    let log = std::fs::File::create(dir.join("logs/agent.log"))
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let bin = bin_dir.canonicalize().unwrap_or_else(|_| bin_dir.clone());
    let mut opts = PlaneOptions::new(
        dir.clone(),
        bin_dir,
        node_bin.unwrap_or_else(|| beside_me("node")),
        operator_bin.unwrap_or_else(|| beside_me("operator")),
    );
    opts.nodes = nodes;
    opts.prepared = true;
    opts.volume_refresh = Duration::from_secs(volume_refresh_s);
    println!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and {nodes} Nodes in {}",
        dir.display()
    );
    let mut plane = match ControlPlane::up(opts).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rstore-k8s: {e:#}");
            std::process::exit(1);
        }
    };
    println!(
        "ready in {:.1} s: {} (logs in {})",
        plane.ready_after.as_secs_f64(),
        plane.api_url,
        dir.join("logs").display()
    );
    println!("in another shell:");
    println!("  export KUBECONFIG={}", plane.kubeconfig().display());
    println!("  export PATH={}:$PATH   # kubectl and helm", bin.display());
    println!("  kubectl get nodes");
    println!(
        "pod and Service names resolve through {} (node kv --hosts-file)",
        plane.hosts_file().display()
    );
    println!("Ctrl-C stops everything");
    let signal = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("SIGHUP handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    };
    tokio::pin!(signal);
    let failed = loop {
        tokio::select! {
            () = &mut signal => break None,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = plane.check() {
            break Some(e);
        }
    };
    println!("stopping: pods get SIGTERM, then the control plane");
    plane.shutdown().await;
    println!("stopped");
    if let Some(e) = failed {
        eprintln!("rstore-k8s: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
