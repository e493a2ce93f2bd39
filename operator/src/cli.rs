//! Command line of the `operator` binary (clap derive), kept in the library so that tests can
//! parse and run commands without spawning a process.
//!
//! - `operator crd`: print the CRD;
//! - `operator run`: the controller against the cluster of the current kubeconfig or service
//!   account, with leader election, metrics and health endpoints;
//! - `operator local -f FILE`: the local control plane (see [`crate::local`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::ResourceExt;
use tracing::info;

use crate::controller::{self, Context, Settings};
use crate::crd::{self, ReplicatedStore};
use crate::leader::Election;
use crate::local::{LocalControlPlane, LocalOptions};
use crate::metrics::{self, Metrics};
use crate::status;
use crate::{Error, Result};

/// Kubernetes operator for rstore clusters.
#[derive(Debug, Parser)]
#[command(name = "operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `operator`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the ReplicatedStore CustomResourceDefinition as YAML on stdout.
    Crd,
    /// Print the ReplicatedStore field reference as Markdown (docs/crd.md).
    CrdReference,
    /// Run the controller against a Kubernetes cluster.
    Run(RunArgs),
    /// Run a local control plane: the real reconcile loop against an in-memory API server,
    /// with real node processes on loopback. Edit the file to scale or change the mode.
    Local(LocalArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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

/// `operator local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// YAML file with one or more ReplicatedStore resources; watched for edits.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Where pod volumes and node logs go (default: a temporary directory, removed at exit).
    #[arg(long, env = "RSTORE_LOCAL_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The `node` binary pods run (default: `node` next to this binary).
    #[arg(long, env = "RSTORE_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Cli {
    /// The log format the command asks for (`crd` logs nothing).
    pub fn log_format(&self) -> Option<LogFormat> {
        match &self.command {
            Command::Crd | Command::CrdReference => None,
            Command::Run(a) => Some(a.log_format),
            Command::Local(a) => Some(a.log_format),
        }
    }

    /// Run the command, writing its output to `out`.
    pub fn execute(&self, out: &mut impl Write) -> Result<()> {
        match &self.command {
            Command::Crd => {
                out.write_all(crd::crd_yaml().map_err(Error::CrdSerialize)?.as_bytes())
                    .map_err(Error::WriteOutput)?;
                Ok(())
            }
            Command::CrdReference => out
                .write_all(crd::reference_markdown().as_bytes())
                .map_err(Error::WriteOutput),
            Command::Run(args) => runtime()?.block_on(run(args)),
            Command::Local(args) => runtime()?.block_on(local(args, out)),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the async runtime".into(),
            source,
        })
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

async fn run(args: &RunArgs) -> Result<()> {
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
    let controller = controller::run(ctx, args.namespace.clone(), stopped(stop_rx.clone()));
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

/// Reads every ReplicatedStore of a YAML file (documents separated by `---`).
pub fn read_resources(path: &Path) -> Result<Vec<ReplicatedStore>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| Error::InvalidSpec(format!("{}: YAML: {e}", path.display())))?;
        if value.is_null() {
            continue;
        }
        let rs: ReplicatedStore = serde_yaml::from_value(value).map_err(|e| {
            Error::InvalidSpec(format!("{}: not a ReplicatedStore: {e}", path.display()))
        })?;
        out.push(rs);
    }
    if out.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "{} holds no ReplicatedStore",
            path.display()
        )));
    }
    Ok(out)
}

fn default_node_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("node")))
        .unwrap_or_else(|| PathBuf::from("node"))
}

async fn local(args: &LocalArgs, out: &mut impl Write) -> Result<()> {
    let resources = read_resources(&args.file)?;
    let node_bin = args.node_bin.clone().unwrap_or_else(default_node_bin);
    let node_bin = std::fs::canonicalize(&node_bin).unwrap_or(node_bin);
    let mut opts = LocalOptions::new(node_bin.clone());
    opts.root = args.data_dir.clone();
    let plane = LocalControlPlane::start(opts).await?;
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say(
        out,
        format!(
            "rstore local control plane: volumes and node logs in {}",
            plane.root().display()
        ),
    );
    say(
        out,
        format!(
            "edit {} to scale or change the mode; Ctrl-C stops everything",
            args.file.display()
        ),
    );
    for rs in resources {
        plane.apply(rs).await?;
    }
    let mut modified = mtime(&args.file);
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut endpoints_shown: BTreeMap<String, bool> = BTreeMap::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
        let now = mtime(&args.file);
        if now != modified {
            modified = now;
            match read_resources(&args.file) {
                Ok(list) => {
                    for rs in list {
                        let name = rs.name_any();
                        match plane.apply(rs).await {
                            Ok(_) => say(out, format!("applied the edit of {name}")),
                            Err(e) => say(out, format!("cannot apply {name}: {e}")),
                        }
                    }
                }
                Err(e) => say(out, format!("ignoring the edit: {e}")),
            }
        }
        let list = kube::Api::<ReplicatedStore>::all(plane.client.clone())
            .list(&Default::default())
            .await?;
        for rs in list.items {
            let key = format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any());
            let Some(st) = &rs.status else { continue };
            let line = status::summary(&rs, st);
            if last.get(&key) != Some(&line) {
                say(out, line.clone());
                last.insert(key.clone(), line);
            }
            let available = st
                .conditions
                .iter()
                .any(|c| c.type_ == status::AVAILABLE && c.status == "True");
            if available && !endpoints_shown.get(&key).copied().unwrap_or(false) {
                endpoints_shown.insert(key, true);
                for line in endpoint_lines(&plane, &rs, st, &node_bin).await {
                    say(out, line);
                }
            }
        }
    }
    say(out, "stopping: every node gets SIGTERM".into());
    plane.shutdown().await;
    say(out, "stopped".into());
    Ok(())
}

/// What `operator local` prints once a store is Available: its endpoints, where its user
/// credential is, and commands that work as printed.
async fn endpoint_lines(
    plane: &LocalControlPlane,
    rs: &ReplicatedStore,
    st: &crate::crd::ReplicatedStoreStatus,
    node_bin: &Path,
) -> Vec<String> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let (urls, hosts_file) = {
        let runner = plane.runner.lock().await;
        let urls: Vec<(String, String, String)> = st
            .members
            .iter()
            .filter_map(|m| {
                let pod = m.pod.clone()?;
                let url = runner.client_url(&ns, &pod)?;
                let addr = runner.client_addr(&ns, &pod)?;
                Some((pod, url, addr.ip().to_string()))
            })
            .collect();
        (urls, runner.hosts_file())
    };
    let mut lines = vec![format!(
        "{name} is Available. Endpoints: {}",
        urls.iter()
            .map(|(pod, url, ip)| format!("{pod} {url} at {ip}"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    let Some((_, first, ip)) = urls.first() else {
        return lines;
    };
    let node = node_bin.display();
    let Some(secret) = st.credentials_secret.as_deref() else {
        lines.push(format!(
            "{name} runs in plaintext (spec.tls.insecurePlaintext): no credentials needed"
        ));
        lines.push(format!(
            "try: {node} kv put greeting hello --hosts-file {hosts} --endpoint {first} && {node} kv get greeting --hosts-file {hosts} --endpoint {first}",
            hosts = hosts_file.display()
        ));
        return lines;
    };
    // The user credential, as `kubectl get secret` would give it, in files.
    let dir = plane.root().join("credentials").join(&ns).join(&name);
    let written = async {
        let (ca, token) = plane.secret_files(&ns, secret).await.ok()?;
        std::fs::create_dir_all(&dir).ok()?;
        write_private(&dir.join("ca.crt"), &ca).ok()?;
        write_private(&dir.join("token"), &token).ok()?;
        Some(())
    }
    .await;
    if written.is_none() {
        lines.push(format!("cannot read Secret {ns}/{secret} yet"));
        return lines;
    }
    let (ca, token) = (dir.join("ca.crt"), dir.join("token"));
    let host = first
        .split("://")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_default();
    lines.push(format!(
        "credentials (Secret {ns}/{secret}, role write): {} and {}",
        ca.display(),
        token.display()
    ));
    lines.push(format!(
        "try: curl --cacert {ca} -H \"Authorization: Bearer $(cat {token})\" --resolve {host}:{port}:{ip} -X PUT --data-binary hello {first}/v1/kv/greeting",
        port = crate::resources::CLIENT_PORT,
        ca = ca.display(),
        token = token.display(),
    ));
    let flags = format!(
        "--hosts-file {hosts} --endpoint {first} --cacert {ca} --token \"$(cat {token})\"",
        hosts = hosts_file.display(),
        ca = ca.display(),
        token = token.display(),
    );
    lines.push(format!(
        "try: {node} kv put greeting hello {flags} && {node} kv get greeting {flags}"
    ));
    lines
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Result<()>, String) {
        let cli = Cli::try_parse_from(args).unwrap();
        let mut out = Vec::new();
        let result = cli.execute(&mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn crd_prints_the_generated_yaml() {
        let (result, out) = run(&["operator", "crd"]);
        result.unwrap();
        assert_eq!(out, crd::crd_yaml().unwrap());
        assert!(out.starts_with("apiVersion: apiextensions.k8s.io/v1\n"));
    }

    #[test]
    fn run_flags_have_defaults_and_env_names() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Run(a) => a,
            _ => panic!("not run"),
        };
        let a = parse(&["operator", "run"]);
        assert!(!a.no_leader_election, "leader election is on by default");
        assert_eq!(a.metrics_addr.port(), 8080);
        assert_eq!(a.lease_name, "rstore-operator");
        assert!(parse(&["operator", "run", "--no-leader-election"]).no_leader_election);
        // The last of the pair wins, as the Helm chart may pass either.
        let a = parse(&[
            "operator",
            "run",
            "--no-leader-election",
            "--leader-election",
        ]);
        assert!(!a.no_leader_election);
    }

    #[test]
    fn local_reads_every_resource_and_rejects_other_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "apiVersion: rstore.dev/v1alpha1\nkind: ReplicatedStore\nmetadata:\n  name: a\nspec:\n  replicas: 3\n---\napiVersion: rstore.dev/v1alpha1\nkind: ReplicatedStore\nmetadata:\n  name: b\nspec: {}\n",
        )
        .unwrap();
        let list = read_resources(&good).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].spec.replicas, 3, "defaults apply");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
        )
        .unwrap();
        let err = read_resources(&bad).unwrap_err().to_string();
        assert!(err.contains("not a ReplicatedStore"), "{err}");
        let missing = run(&["operator", "local", "-f", "/nonexistent/rstore.yaml"]).0;
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/rstore.yaml")
        );
    }
}
