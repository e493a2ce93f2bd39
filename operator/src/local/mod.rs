//! The local control plane: the real reconcile code against an in-memory API server
//! (kube-fake-client), with a [`runner::PodRunner`] that turns StatefulSets into real `node`
//! processes on loopback. `operator local -f examples/basic.yaml` runs it for newcomers, and
//! the end-to-end tests in `tests/` drive it.
//!
//! The in-memory API server has no watch, so two loops stand in for the informers: the
//! runner's (a kubelet and StatefulSet controller) and the reconcile loop, which reconciles
//! every `ReplicatedStore` on a short timer.

pub mod runner;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::controller::{Context, Settings, reconcile_once};
use crate::crd::ReplicatedStore;
use crate::metrics::Metrics;
use crate::{Error, Result};

pub use runner::{Fault, PodRunner};

/// Options of the local control plane.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where volumes and logs go; a temporary directory (removed at the end) when `None`.
    pub root: Option<PathBuf>,
    /// The `node` binary every pod runs.
    pub node_bin: PathBuf,
    /// Period of the runner and reconcile loops.
    pub tick: Duration,
    /// Reconcile tunables.
    pub settings: Settings,
}

impl LocalOptions {
    /// Defaults for `node_bin`.
    pub fn new(node_bin: PathBuf) -> Self {
        Self {
            root: None,
            node_bin,
            tick: Duration::from_millis(250),
            settings: Settings {
                // The in-memory API server has no load to spare: Secrets are read on every
                // reconcile, so that a rotation or an injected certificate shows at once.
                credentials_recheck: Duration::ZERO,
                ..Settings::default()
            },
        }
    }
}

/// A running local control plane.
pub struct LocalControlPlane {
    /// The in-memory API server's client: `kubectl` for tests.
    pub client: Client,
    /// The pod runner, shared with its loop.
    pub runner: Arc<Mutex<PodRunner>>,
    /// Metrics of the reconcile loop.
    pub metrics: Arc<Metrics>,
    root: PathBuf,
    dns: Arc<crate::nodeapi::HostTable>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// The in-memory API server with the `ReplicatedStore` CRD installed.
pub async fn fake_api() -> Result<Client> {
    kube_fake_client::ClientBuilder::new()
        .with_resource::<ReplicatedStore>()
        .with_resource::<crate::resources::certmanager::Certificate>()
        .with_status_subresource::<ReplicatedStore>()
        .build()
        .await
        .map_err(|e| Error::Local(format!("cannot start the in-memory API server: {e}")))
}

impl LocalControlPlane {
    /// Starts the API server, the runner loop and the reconcile loop.
    pub async fn start(opts: LocalOptions) -> Result<Self> {
        if !opts.node_bin.is_file() {
            return Err(Error::Local(format!(
                "node binary {} not found; build it with `cargo build -p node` or pass --node-bin",
                opts.node_bin.display()
            )));
        }
        let (tmp, root) = match &opts.root {
            Some(r) => (None, r.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("rstore-local-")
                    .tempdir()
                    .map_err(|source| Error::Io {
                        what: "create a temporary directory".into(),
                        source,
                    })?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        let client = fake_api().await?;
        let metrics = Arc::new(Metrics::new());
        metrics.set_ready(true);
        metrics.set_leader(true);
        let ctx = Arc::new(Context::new(
            client.clone(),
            opts.settings.clone(),
            metrics.clone(),
            "local",
        ));
        let pod_runner = PodRunner::new(client.clone(), &root, &opts.node_bin);
        let dns = pod_runner.dns_table();
        let runner = Arc::new(Mutex::new(pod_runner));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        {
            let runner = runner.clone();
            let mut stopped = stopped.clone();
            let tick = opts.tick;
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = runner.lock().await.tick().await {
                        warn!(error = %e, "pod runner");
                    }
                    if wait_or_stop(&mut stopped, tick).await {
                        return;
                    }
                }
            }));
        }
        {
            let client = client.clone();
            let mut stopped = stopped.clone();
            let tick = opts.tick;
            tasks.push(tokio::spawn(async move {
                loop {
                    let all = Api::<ReplicatedStore>::all(client.clone())
                        .list(&ListParams::default())
                        .await;
                    match all {
                        Ok(list) => {
                            for rs in list.items {
                                if let Err(e) = reconcile_once(&rs, &ctx).await {
                                    warn!(name = %rs.name_any(), error = %e, "reconcile failed; retrying");
                                }
                                if *stopped.borrow() {
                                    return;
                                }
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot list ReplicatedStores"),
                    }
                    if wait_or_stop(&mut stopped, tick).await {
                        return;
                    }
                }
            }));
        }
        Ok(Self {
            client,
            runner,
            metrics,
            root,
            dns,
            stop,
            tasks,
            _tmp: tmp,
        })
    }

    /// Creates the resource, or replaces the spec of the one with its name.
    pub async fn apply(&self, mut rs: ReplicatedStore) -> Result<ReplicatedStore> {
        let ns = rs.namespace().unwrap_or_else(|| "default".into());
        rs.metadata.namespace = Some(ns.clone());
        let api = Api::<ReplicatedStore>::namespaced(self.client.clone(), &ns);
        match api.get_opt(&rs.name_any()).await? {
            None => {
                rs.status = None;
                Ok(api.create(&PostParams::default(), &rs).await?)
            }
            Some(mut current) => {
                if current.spec == rs.spec {
                    return Ok(current);
                }
                current.spec = rs.spec;
                Ok(api
                    .replace(&current.name_any(), &PostParams::default(), &current)
                    .await?)
            }
        }
    }

    /// The resource as the API server holds it.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<ReplicatedStore> {
        Ok(
            Api::<ReplicatedStore>::namespaced(self.client.clone(), namespace)
                .get(name)
                .await?,
        )
    }

    /// Pods of a namespace.
    pub async fn pods(&self, namespace: &str) -> Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await?
            .items)
    }

    /// Events recorded in a namespace, oldest first.
    pub async fn events(&self, namespace: &str) -> Result<Vec<K8sEvent>> {
        Ok(Api::<K8sEvent>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await?
            .items)
    }

    /// Stops the loops, then every node (SIGTERM, then SIGKILL after a grace period).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.runner.lock().await.shutdown().await;
    }

    /// An HTTP client for store `namespace/name` as its user gets one: the CA and the
    /// `write` token of the Secret its status names, resolving the pods' names to their
    /// addresses. A plain client for a store that runs in plaintext.
    pub async fn user_client(&self, namespace: &str, name: &str) -> Result<reqwest::Client> {
        let rs = self.get(namespace, name).await?;
        let secret = rs
            .status
            .and_then(|s| s.credentials_secret)
            .filter(|_| !rs.spec.tls.insecure_plaintext);
        self.client_from(namespace, secret.as_deref()).await
    }

    /// An HTTP client with the operator's own `admin` token for store `namespace/name`.
    pub async fn admin_client(&self, namespace: &str, name: &str) -> Result<reqwest::Client> {
        let rs = self.get(namespace, name).await?;
        if rs.spec.tls.insecure_plaintext {
            return self.client_from(namespace, None).await;
        }
        let names = crate::resources::Names::of(&rs);
        let (_, token) = self
            .secret_files(namespace, &names.operator_secret())
            .await?;
        let (ca, _) = self
            .secret_files(namespace, &names.credentials_secret())
            .await?;
        self.build_client(Some((ca, token)))
    }

    /// `ca.crt` and `token` of a Secret (empty when absent).
    pub async fn secret_files(&self, namespace: &str, secret: &str) -> Result<(String, String)> {
        let s =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), namespace)
                .get(secret)
                .await?;
        let data = s.data.unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        Ok((text("ca.crt"), text("token")))
    }

    async fn client_from(&self, namespace: &str, secret: Option<&str>) -> Result<reqwest::Client> {
        let creds = match secret {
            Some(s) => Some(self.secret_files(namespace, s).await?),
            None => None,
        };
        self.build_client(creds)
    }

    fn build_client(&self, creds: Option<(String, String)>) -> Result<reqwest::Client> {
        let dns = self.dns.clone();
        let creds = match creds {
            Some((ca, token)) => rstore_api::client::Credentials::ca(ca).with_token(token),
            None => rstore_api::client::Credentials::none(),
        };
        creds
            .reqwest_builder()
            .map_err(|e| Error::Local(crate::nodeapi::credentials_error(e)))?
            .timeout(Duration::from_secs(5))
            .dns_resolver(dns)
            .build()
            .map_err(|e| Error::Local(format!("cannot build an HTTP client: {e}")))
    }

    /// Where volumes and logs are.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Sleeps one tick; true when asked to stop.
async fn wait_or_stop(stopped: &mut watch::Receiver<bool>, tick: Duration) -> bool {
    if *stopped.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(tick) => *stopped.borrow(),
        _ = stopped.changed() => true,
    }
}
