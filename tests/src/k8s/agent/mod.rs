//! The node agent: the kubelet's part of a cluster, against the real API server.
//!
//! It registers one or more Nodes and renews their Leases, runs every pod the real scheduler
//! binds to them as real processes ([`pods`]), provisions PersistentVolumes for the claims
//! of its StorageClasses ([`provision`]), and keeps the names of pods and Services resolvable
//! ([`names`]). Everything above it (the StatefulSet and Deployment controllers, the
//! scheduler, the garbage collector, the PV binder, EndpointSlices, evictions, RBAC and
//! admission) is Kubernetes's own.
//!
//! It watches what it needs (pods, claims, volumes, Secrets, ConfigMaps, Services and
//! EndpointSlices) through reflectors, so at idle it puts no polling load on the API server;
//! it writes only when what it reports changes, plus a Lease renewal per Node every 10 s.
//!
//! Where it differs from a kubelet, and why:
//! - an image is a local binary ([`ImageMap`]): `ghcr.io/rstore/node:*` runs the `node`
//!   binary and `ghcr.io/rstore/operator:*` the `operator` binary, with the image's
//!   entrypoint; any other image waits in `ErrImagePull`, saying so;
//! - containers run as root in the host's filesystem, with their own network namespace and
//!   a private mount namespace in which each volume is bind-mounted at its `mountPath` and
//!   the agent's hosts file at `/etc/hosts`; no cgroups, so resource limits are reported
//!   (downward API) but not enforced, and `runAsUser` and `readOnlyRootFilesystem` are not
//!   applied;
//! - Service cluster IPs are not routed (no kube-proxy): pods get `KUBERNETES_SERVICE_HOST`
//!   set to the API server's own address, and Service names resolve to an endpoint.

pub mod common;
pub mod events;
pub mod kubelet_api;
pub mod names;
pub mod pods;
pub mod provision;
pub mod quantity;
pub mod volumes;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::warn;

pub use common::{
    AgentOptions, ImageMap, PROVISIONER, Stores, format_time, labels_of, now_rfc3339, sigterm,
};

/// The kubelet version the Nodes report (the control plane's own).
pub const KUBELET_VERSION: &str = "v1.36.3";
/// Namespace of the Node Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often the Leases are renewed (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often Node status is reported (the kubelet reports every 5 minutes when nothing
/// changes; the Lease is the heartbeat).
const STATUS_REPORT: Duration = Duration::from_secs(60);

/// The name of Node `i`.
pub fn node_name(i: usize) -> String {
    format!("rstore-node-{i}")
}

/// Ready, and without the taints that keep new pods off it.
pub fn node_schedulable(n: &Node) -> bool {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key.starts_with("node.kubernetes.io/") && t.effect == "NoSchedule")
        });
    ready && !tainted
}

/// A running agent.
pub struct Agent {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    runtime: Arc<tokio::sync::Mutex<pods::Runtime>>,
    failure: Arc<Mutex<Option<String>>>,
    pids: pods::Pids,
}

/// A reflector of every `K` in the cluster, notifying `changed` on every event.
fn reflect<K>(client: &Client, changed: Arc<Notify>, tasks: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    tasks.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => warn!(kind = %K::kind(&Default::default()), error = %e, "watch"),
            }
        }
    }));
    reader
}

impl Agent {
    /// Registers the Nodes, starts the reflectors and the loops.
    pub async fn start(client: Client, opts: AgentOptions) -> Result<Agent> {
        let mut tasks = Vec::new();
        // The kubelet port first: the Nodes advertise it.
        let (kubelet_port, server) =
            kubelet_api::serve(&opts.api_host, &opts.kubelet_ca, opts.dir.join("pods")).await?;
        tasks.push(server);
        for (i, name) in opts.nodes.iter().enumerate() {
            register_node(&client, name, i, &opts, kubelet_port).await?;
        }
        let changed = Arc::new(Notify::new());
        let stores = Stores {
            pods: reflect(&client, changed.clone(), &mut tasks),
            claims: reflect(&client, changed.clone(), &mut tasks),
            volumes: reflect(&client, changed.clone(), &mut tasks),
            classes: reflect(&client, changed.clone(), &mut tasks),
            secrets: reflect(&client, changed.clone(), &mut tasks),
            config_maps: reflect(&client, changed.clone(), &mut tasks),
            services: reflect(&client, changed.clone(), &mut tasks),
            slices: reflect(&client, changed.clone(), &mut tasks),
        };
        for ready in [
            stores.pods.wait_until_ready().await,
            stores.claims.wait_until_ready().await,
            stores.volumes.wait_until_ready().await,
            stores.classes.wait_until_ready().await,
            stores.secrets.wait_until_ready().await,
            stores.config_maps.wait_until_ready().await,
            stores.services.wait_until_ready().await,
            stores.slices.wait_until_ready().await,
        ] {
            ready.context("a reflector stopped before its first list")?;
        }
        let (stop, stopped) = watch::channel(false);
        let failure = Arc::new(Mutex::new(None));
        let pids = pods::Pids::default();
        let runtime = Arc::new(tokio::sync::Mutex::new(pods::Runtime::new(
            client.clone(),
            &opts,
            stores.clone(),
            pids.clone(),
        )));
        // Leases and Node status.
        {
            let client = client.clone();
            let nodes = opts.nodes.clone();
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let mut last_status = tokio::time::Instant::now();
                loop {
                    for n in &nodes {
                        if let Err(e) = renew_lease(&client, n).await {
                            warn!(node = %n, error = %e, "cannot renew the Node Lease");
                        }
                    }
                    if last_status.elapsed() >= STATUS_REPORT {
                        last_status = tokio::time::Instant::now();
                        for n in &nodes {
                            if let Err(e) = report_node_status(&client, n).await {
                                warn!(node = %n, error = %e, "cannot report Node status");
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_RENEW) => {}
                        _ = stopped.changed() => return,
                    }
                }
            }));
        }
        // The sync loop: pods, volumes, names.
        {
            let runtime = runtime.clone();
            let failure = failure.clone();
            let mut stopped = stopped.clone();
            let provisioner = provision::Provisioner::new(client.clone(), &opts.dir);
            let mut hosts = names::HostsFile::new(opts.dir.join("hosts"));
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = provisioner.sync(&stores).await {
                        warn!(error = %e, "provisioner");
                    }
                    if let Err(e) = hosts.sync(&stores) {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("cannot write the hosts file: {e:#}"));
                    }
                    runtime.lock().await.sync().await;
                    tokio::select! {
                        _ = changed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stopped.changed() => return,
                    }
                }
            }));
        }
        Ok(Agent {
            stop,
            tasks,
            runtime,
            failure,
            pids,
        })
    }

    /// Why the agent cannot go on, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pid of a running container (`kill -9` in tests).
    pub fn pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        self.pids.get(namespace, pod, container)
    }

    /// Stops the loops, then every pod: SIGTERM, then SIGKILL after its grace period.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.runtime.lock().await.stop_all().await;
    }

    /// SIGKILLs every container at once (from `Drop`).
    pub fn kill_all(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.pids.kill_all();
    }
}

async fn register_node(
    client: &Client,
    name: &str,
    index: usize,
    opts: &AgentOptions,
    kubelet_port: u16,
) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                // Three zones, so that zone spreading has something to spread over.
                "topology.kubernetes.io/zone": format!("zone-{}", index % 3),
            }
        },
        "spec": {}
    }))?;
    if api.get_opt(name).await?.is_none() {
        api.create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("register Node {name}"))?;
    }
    let addr = json!([
        {"type": "InternalIP", "address": opts.api_host},
        {"type": "Hostname", "address": name},
    ]);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "addresses": addr,
            "capacity": capacity(),
            "allocatable": capacity(),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "machineID": name, "systemUUID": name, "bootID": name,
                "kernelVersion": "", "osImage": "rstore node agent",
                "containerRuntimeVersion": "rstore-agent://0.1.0",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }})),
    )
    .await
    .with_context(|| format!("report the status of Node {name}"))?;
    report_node_status(client, name).await?;
    renew_lease(client, name).await
}

/// What each Node offers: enough for the examples (5 members asking 2 CPUs and 4 GiB each,
/// spread one per Node) on one machine, since nothing is enforced.
fn capacity() -> serde_json::Value {
    json!({"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"})
}

async fn report_node_status(client: &Client, name: &str) -> Result<()> {
    let now = now_rfc3339();
    let cond = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let conditions = json!([
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "the rstore node agent is posting ready status"
        ),
    ]);
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": conditions}})),
        )
        .await?;
    Ok(())
}

/// Now with microseconds (`MicroTime`).
fn now_micro() -> serde_json::Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap_or_default()
}

async fn renew_lease(client: &Client, node: &str) -> Result<()> {
    let api = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = now_micro();
    match api.get_opt(node).await? {
        Some(_) => {
            api.patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"renewTime": now}})),
            )
            .await?;
        }
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {
                    "name": node,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [],
                },
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}
            }))?;
            api.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}
