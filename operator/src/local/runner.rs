//! The pod runner of the local control plane: a small kubelet and StatefulSet controller that
//! turns each StatefulSet in the in-memory API into real `node` processes on loopback.
//!
//! What it does, as Kubernetes would:
//! - creates pods `<sts>-0..replicas` from the template (inheriting its labels and revision
//!   annotation), and deletes those beyond `replicas` (deleting their volume when the
//!   StatefulSet's `whenScaled` policy says `Delete`);
//! - runs one `node` process per pod with the container's args and environment, a data
//!   directory per pod as its PersistentVolumeClaim, and restarts it when it exits (a
//!   container restart keeps the volume);
//! - a pod deleted through the API is stopped (SIGTERM) and created again from the current
//!   template, as the StatefulSet controller does with `OnDelete`;
//! - a volume directory deleted from under a pod is a lost disk: the process is killed and
//!   the pod starts again on an empty volume;
//! - Secret volumes (plain and projected) are written to a directory per pod and volume and
//!   kept in step with the Secrets, as the kubelet does; a pod whose Secret does not exist yet
//!   waits for it, as in `ContainerCreating`;
//! - the pod's Ready condition follows the node's `/readyz`, as a readiness probe (over HTTPS
//!   without verifying the certificate when the probe says HTTPS, as the kubelet does).
//!
//! Networking: every pod gets its own loopback address (`127.x.y.n`, with `x.y` random per
//! runner so that parallel runs do not collide), so all nodes use the real ports 7379/7380.
//! The stable DNS name `<pod>.<service>.<ns>.svc` of each pod goes into a hosts file
//! ([`PodRunner::hosts_file`]) that every node is given (`RSTORE_HOSTS_FILE`), so the URLs
//! the nodes advertise, and the certificates that name them, stay as they are in Kubernetes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, KeyToPath, Pod, PodCondition, PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::nodeapi::HostTable;
use crate::resources::{CLIENT_PORT, CONTAINER, DATA_MOUNT, PEER_PORT};
use crate::{Error, Result};

/// How long a SIGTERM'd node may take before it is killed.
const GRACE: Duration = Duration::from_secs(10);

struct Proc {
    child: Child,
    restarts: i32,
}

/// What the runner can be asked to do to a pod from outside (tests, the local CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the process; the runner restarts it on the same volume.
    Kill,
    /// SIGSTOP the process: it stays, unresponsive (a hung node, a long GC pause).
    Pause,
    /// SIGCONT a paused process.
    Resume,
}

/// The pod runner.
pub struct PodRunner {
    client: Client,
    root: PathBuf,
    node_bin: PathBuf,
    net: (u8, u8),
    addresses: HashMap<(String, String), Ipv4Addr>,
    procs: HashMap<(String, String), Proc>,
    ready: HashMap<(String, String), bool>,
    /// Each pod's DNS name (`<hostname>.<subdomain>.<ns>.svc`).
    dns: BTreeMap<(String, String), String>,
    /// The same names with their addresses, for resolvers that must not wait on the runner.
    table: Arc<HostTable>,
    /// Each running pod's client URL, as it advertises it.
    advertised: HashMap<(String, String), String>,
    http: reqwest::Client,
}

impl PodRunner {
    /// A runner keeping volumes and logs under `root` and running `node_bin`.
    pub fn new(client: Client, root: &Path, node_bin: &Path) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = std::process::id() ^ nanos;
        let bytes = seed.to_le_bytes();
        Self {
            client,
            root: root.to_owned(),
            node_bin: node_bin.to_owned(),
            net: (bytes[0].max(1), bytes[1] ^ bytes[2]),
            addresses: HashMap::new(),
            procs: HashMap::new(),
            ready: HashMap::new(),
            dns: BTreeMap::new(),
            table: Arc::default(),
            advertised: HashMap::new(),
            // The kubelet's probes: no proxy, and no verification of an HTTPS certificate.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_millis(500))
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap_or_default(),
        }
    }

    /// The volume directory of a pod (its PVC `data-<pod>`).
    pub fn volume(&self, namespace: &str, pod: &str) -> PathBuf {
        self.root
            .join("volumes")
            .join(namespace)
            .join(format!("data-{pod}"))
    }

    /// The log file of a pod's node.
    pub fn log_path(&self, namespace: &str, pod: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{namespace}_{pod}.log"))
    }

    /// The loopback address of a pod, assigned once per pod name.
    pub fn address(&mut self, namespace: &str, pod: &str) -> Ipv4Addr {
        let n = self.addresses.len();
        let (a, b) = self.net;
        *self
            .addresses
            .entry((namespace.to_owned(), pod.to_owned()))
            .or_insert_with(|| {
                let n = u8::try_from(n % 250).unwrap_or(0) + 2;
                Ipv4Addr::new(127, a, b, n)
            })
    }

    /// The client URL a running pod advertises: `https://<pod>.<service>.<ns>.svc:7379` (its
    /// name resolves through [`PodRunner::hosts_file`]), or `http://...` in plaintext.
    pub fn client_url(&self, namespace: &str, pod: &str) -> Option<String> {
        self.advertised
            .get(&(namespace.to_owned(), pod.to_owned()))
            .cloned()
    }

    /// The pod's own address and client port, for a client that connects by address.
    pub fn client_addr(&self, namespace: &str, pod: &str) -> Option<std::net::SocketAddr> {
        let ip = self
            .addresses
            .get(&(namespace.to_owned(), pod.to_owned()))?;
        Some(std::net::SocketAddr::from((*ip, CLIENT_PORT)))
    }

    /// The hosts file (format of `/etc/hosts`) naming every pod's address: nodes, the node
    /// CLI (`RSTORE_HOSTS_FILE`) and tests resolve pod names with it.
    pub fn hosts_file(&self) -> PathBuf {
        self.root.join("hosts")
    }

    /// A resolver of the pods' names that never waits on the runner.
    pub fn dns_table(&self) -> Arc<HostTable> {
        self.table.clone()
    }

    /// Every pod's DNS name and address.
    pub fn hosts(&self) -> Vec<(String, Ipv4Addr)> {
        self.dns
            .iter()
            .filter_map(|(k, name)| Some((name.clone(), *self.addresses.get(k)?)))
            .collect()
    }

    /// Records the pod's DNS name and rewrites the hosts file when it is new.
    fn publish_dns(&mut self, obj: &Pod, ns: &str, pod: &str) -> Result<()> {
        let spec = obj.spec.as_ref();
        let (Some(host), Some(sub)) = (
            spec.and_then(|s| s.hostname.clone()),
            spec.and_then(|s| s.subdomain.clone()),
        ) else {
            return Ok(());
        };
        let key = (ns.to_owned(), pod.to_owned());
        let name = format!("{host}.{sub}.{ns}.svc");
        self.address(ns, pod);
        if self.dns.get(&key) == Some(&name) {
            return Ok(());
        }
        self.dns.insert(key, name);
        for (n, ip) in self.hosts() {
            self.table.set(&n, std::net::IpAddr::V4(ip));
        }
        let mut text = String::from("# rstore local control plane: one line per pod\n");
        for (name, ip) in self.hosts() {
            text.push_str(&format!("{ip} {name} {name}.cluster.local\n"));
        }
        let path = self.hosts_file();
        write_atomically(&path, text.as_bytes()).map_err(|source| Error::Io {
            what: format!("write {}", path.display()),
            source,
        })
    }

    /// Injects a fault into a running pod.
    pub fn inject(&mut self, namespace: &str, pod: &str, fault: Fault) -> bool {
        let key = (namespace.to_owned(), pod.to_owned());
        let Some(p) = self.procs.get_mut(&key) else {
            return false;
        };
        let signal = match fault {
            Fault::Kill => {
                let _ = p.child.kill();
                let _ = p.child.wait();
                return true;
            }
            Fault::Pause => "-STOP",
            Fault::Resume => "-CONT",
        };
        Command::new("kill")
            .args([signal, &p.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// One pass: bring processes and pod objects in line with the StatefulSets.
    pub async fn tick(&mut self) -> Result<()> {
        let sts_list = Api::<StatefulSet>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        let mut wanted: BTreeMap<(String, String), ()> = BTreeMap::new();
        for sts in &sts_list.items {
            let ns = sts.namespace().unwrap_or_else(|| "default".into());
            let name = sts.name_any();
            let Some(spec) = &sts.spec else { continue };
            let replicas = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
            let delete_on_scale = spec
                .persistent_volume_claim_retention_policy
                .as_ref()
                .and_then(|p| p.when_scaled.as_deref())
                == Some("Delete");
            let pods_api = Api::<Pod>::namespaced(self.client.clone(), &ns);
            let existing: HashMap<String, Pod> = pods_api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|p| owned_by(p, sts))
                .map(|p| (p.name_any(), p))
                .collect();
            for ordinal in 0..replicas {
                let pod = format!("{name}-{ordinal}");
                wanted.insert((ns.clone(), pod.clone()), ());
                self.keep_pod(sts, &ns, &pod, existing.get(&pod)).await?;
            }
            for (pod, obj) in &existing {
                let beyond = pod
                    .strip_prefix(&format!("{name}-"))
                    .and_then(|o| o.parse::<u32>().ok())
                    .is_some_and(|o| o >= replicas);
                if beyond {
                    info!(pod = %pod, "scale-in: deleting pod");
                    self.stop(&ns, pod).await;
                    let _ = pods_api
                        .delete(&obj.name_any(), &DeleteParams::default())
                        .await;
                    if delete_on_scale {
                        let _ = fs::remove_dir_all(self.volume(&ns, pod));
                    }
                }
            }
        }
        // Processes whose StatefulSet (or pod slot) is gone.
        let orphans: Vec<(String, String)> = self
            .procs
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for (ns, pod) in orphans {
            self.stop(&ns, &pod).await;
        }
        Ok(())
    }

    async fn keep_pod(
        &mut self,
        sts: &StatefulSet,
        ns: &str,
        pod: &str,
        existing: Option<&Pod>,
    ) -> Result<()> {
        let key = (ns.to_owned(), pod.to_owned());
        let pods_api = Api::<Pod>::namespaced(self.client.clone(), ns);
        let Some(obj) = existing else {
            // Deleted through the API (or never created): stop what ran, create it afresh.
            if self.procs.contains_key(&key) {
                info!(pod, "pod deleted: stopping its node");
                self.stop(ns, pod).await;
            }
            let obj = self.pod_object(sts, ns, pod);
            pods_api.create(&PostParams::default(), &obj).await?;
            self.ready.remove(&key);
            self.start(&obj, ns, pod).await?;
            return Ok(());
        };
        if obj.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        // The kubelet keeps Secret volumes in step with their Secrets.
        if self.procs.contains_key(&key) {
            self.secret_volumes(obj, ns, pod).await?;
        }
        let volume_gone = !self.volume(ns, pod).exists();
        match self.procs.get_mut(&key) {
            None => self.start(obj, ns, pod).await?,
            Some(_) if volume_gone => {
                warn!(pod, "volume deleted: the pod starts again on an empty one");
                if let Some(mut p) = self.procs.remove(&key) {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                }
                self.start(obj, ns, pod).await?;
            }
            Some(p) => {
                if let Ok(Some(exit)) = p.child.try_wait() {
                    let restarts = p.restarts + 1;
                    warn!(pod, %exit, restarts, "node exited: restarting it");
                    self.procs.remove(&key);
                    self.start(obj, ns, pod).await?;
                    if let Some(p) = self.procs.get_mut(&key) {
                        p.restarts = restarts;
                    }
                }
            }
        }
        self.probe(ns, pod, obj).await
    }

    /// The readiness probe: the node's `/readyz`, written to the pod's status on change.
    async fn probe(&mut self, ns: &str, pod: &str, obj: &Pod) -> Result<()> {
        let key = (ns.to_owned(), pod.to_owned());
        let Some(addr) = self.client_addr(ns, pod) else {
            return Ok(());
        };
        let https = node_container(obj)
            .and_then(|c| {
                c.readiness_probe
                    .as_ref()?
                    .http_get
                    .as_ref()?
                    .scheme
                    .clone()
            })
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let scheme = if https { "https" } else { "http" };
        let ready = matches!(
            self.http.get(format!("{scheme}://{addr}/readyz")).send().await,
            Ok(r) if r.status().is_success()
        );
        let restarts = self.procs.get(&key).map_or(0, |p| p.restarts);
        if self.ready.get(&key) == Some(&ready) {
            return Ok(());
        }
        self.ready.insert(key, ready);
        let status = self.pod_status(obj, ns, pod, ready, restarts);
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .patch_status(
                pod,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }

    fn pod_object(&mut self, sts: &StatefulSet, ns: &str, pod: &str) -> Pod {
        let template = sts
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let owner = sts.controller_owner_ref(&()).map(|mut r: OwnerReference| {
            r.block_owner_deletion = Some(true);
            r
        });
        // As the StatefulSet controller does: the pod's DNS name under the governing Service.
        let mut spec = template.spec;
        if let Some(spec) = spec.as_mut() {
            spec.hostname = Some(pod.to_owned());
            spec.subdomain = sts.spec.as_ref().and_then(|s| s.service_name.clone());
        }
        let mut obj = Pod {
            metadata: ObjectMeta {
                name: Some(pod.to_owned()),
                namespace: Some(ns.to_owned()),
                labels: meta.labels,
                annotations: meta.annotations,
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        };
        obj.status = Some(self.pod_status(&obj, ns, pod, false, 0));
        obj
    }

    fn pod_status(
        &mut self,
        obj: &Pod,
        ns: &str,
        pod: &str,
        ready: bool,
        restarts: i32,
    ) -> PodStatus {
        let ip = self.address(ns, pod).to_string();
        let image = node_container(obj)
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let condition = |type_: &str| PodCondition {
            type_: type_.into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        };
        PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.clone()),
            host_ip: Some(ip),
            conditions: Some(vec![condition("Ready"), condition("ContainersReady")]),
            container_statuses: Some(vec![ContainerStatus {
                name: CONTAINER.into(),
                image: image.clone(),
                image_id: image,
                ready,
                restart_count: restarts,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }
    }

    /// Starts the node of `pod` with its container's args and environment, once its Secret
    /// volumes can be written.
    async fn start(&mut self, obj: &Pod, ns: &str, pod: &str) -> Result<()> {
        let container = node_container(obj)
            .cloned()
            .ok_or_else(|| Error::Local(format!("pod {pod} has no `{CONTAINER}` container")))?;
        let Some(mounts) = self.secret_volumes(obj, ns, pod).await? else {
            return Ok(());
        };
        self.publish_dns(obj, ns, pod)?;
        let ip = self.address(ns, pod);
        let volume = self.volume(ns, pod);
        fs::create_dir_all(&volume).map_err(|source| Error::Io {
            what: format!("create volume {}", volume.display()),
            source,
        })?;
        let log_path = self.log_path(ns, pod);
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: format!("create {}", dir.display()),
                source,
            })?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| Error::Io {
                what: format!("open {}", log_path.display()),
                source,
            })?;
        let err_log = log.try_clone().map_err(|source| Error::Io {
            what: "clone log handle".into(),
            source,
        })?;
        let env = self.environment(&container, ns, pod, ip, &volume, &mounts);
        if let Some(url) = env.get("RSTORE_ADVERTISE_CLIENT") {
            self.advertised
                .insert((ns.to_owned(), pod.to_owned()), url.clone());
        }
        let mut cmd = Command::new(&self.node_bin);
        cmd.args(container.args.clone().unwrap_or_default())
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "RUST_LOG"))
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        let child = cmd.spawn().map_err(|source| Error::Io {
            what: format!("start {}", self.node_bin.display()),
            source,
        })?;
        info!(pod, address = %ip, image = container.image.as_deref().unwrap_or(""), pid = child.id(), "node started");
        self.procs
            .insert((ns.to_owned(), pod.to_owned()), Proc { child, restarts: 0 });
        Ok(())
    }

    /// The container environment with Kubernetes' `$(VAR)` expansion and downward API, and
    /// the pod's network and volume mapped onto this machine.
    fn environment(
        &mut self,
        container: &Container,
        ns: &str,
        pod: &str,
        ip: Ipv4Addr,
        volume: &Path,
        secret_mounts: &[(String, PathBuf)],
    ) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => expand(v, &env),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => pod.to_owned(),
                        Some("metadata.namespace") => ns.to_owned(),
                        Some("status.podIP") => ip.to_string(),
                        // Resource references (the memory limit) have no local meaning: the
                        // node falls back to its own default.
                        _ if from.resource_field_ref.is_some() => continue,
                        _ => String::new(),
                    }
                }
                (None, None) => String::new(),
            };
            env.insert(var.name.clone(), value);
        }
        let mount = volume.to_string_lossy().into_owned();
        for value in env.values_mut() {
            // The pod's own network namespace: listening on every address means on its own.
            if let Some(port) = value.strip_prefix("0.0.0.0:") {
                *value = format!("{ip}:{port}");
            }
            let mounts = std::iter::once((DATA_MOUNT, mount.clone())).chain(
                secret_mounts
                    .iter()
                    .map(|(at, dir)| (at.as_str(), dir.to_string_lossy().into_owned())),
            );
            for (at, local) in mounts {
                if let Some(rest) = value.strip_prefix(at)
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    *value = format!("{local}{rest}");
                    break;
                }
            }
        }
        env.insert(
            "RSTORE_HOSTS_FILE".into(),
            self.hosts_file().to_string_lossy().into_owned(),
        );
        env.entry("RSTORE_LISTEN_CLIENT".into())
            .or_insert_with(|| format!("{ip}:{CLIENT_PORT}"));
        env.entry("RSTORE_LISTEN_PEER".into())
            .or_insert_with(|| format!("{ip}:{PEER_PORT}"));
        env.insert("RSTORE_LOG_FORMAT".into(), "text".into());
        env
    }

    /// Writes the container's Secret volumes (plain and projected) under the runner's root,
    /// as the kubelet does, and returns each mount path with its local directory; `None`
    /// while a Secret it needs does not exist.
    async fn secret_volumes(
        &self,
        obj: &Pod,
        ns: &str,
        pod: &str,
    ) -> Result<Option<Vec<(String, PathBuf)>>> {
        let Some(container) = node_container(obj) else {
            return Ok(Some(Vec::new()));
        };
        let volumes = obj
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let api = Api::<Secret>::namespaced(self.client.clone(), ns);
        let mut out = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
                continue;
            };
            let mut sources: Vec<(String, Option<Vec<KeyToPath>>, bool)> = Vec::new();
            if let Some(sv) = &v.secret {
                sources.push((
                    sv.secret_name.clone().unwrap_or_default(),
                    sv.items.clone(),
                    sv.optional.unwrap_or(false),
                ));
            }
            for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(sp) = &p.secret {
                    sources.push((
                        sp.name.clone(),
                        sp.items.clone(),
                        sp.optional.unwrap_or(false),
                    ));
                }
            }
            if sources.is_empty() {
                continue;
            }
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (name, items, optional) in sources {
                let Some(secret) = api.get_opt(&name).await? else {
                    if optional {
                        continue;
                    }
                    return Ok(None);
                };
                let data = secret.data.unwrap_or_default();
                match items {
                    None => files.extend(data.into_iter().map(|(k, v)| (k, v.0))),
                    Some(items) => {
                        for it in items {
                            match data.get(&it.key) {
                                Some(v) => {
                                    files.insert(it.path.clone(), v.0.clone());
                                }
                                None if optional => {}
                                None => return Ok(None),
                            }
                        }
                    }
                }
            }
            let dir = self.root.join("secrets").join(ns).join(pod).join(&m.name);
            sync_dir(&dir, &files).map_err(|source| Error::Io {
                what: format!("write Secret volume {}", dir.display()),
                source,
            })?;
            out.push((m.mount_path.clone(), dir));
        }
        Ok(Some(out))
    }

    /// SIGTERM a pod's node, then SIGKILL it after the grace period.
    pub async fn stop(&mut self, ns: &str, pod: &str) {
        let key = (ns.to_owned(), pod.to_owned());
        self.ready.remove(&key);
        self.advertised.remove(&key);
        let Some(mut p) = self.procs.remove(&key) else {
            return;
        };
        // A paused node must run again to handle SIGTERM.
        let _ = Command::new("kill")
            .args(["-CONT", &p.child.id().to_string()])
            .status();
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if !matches!(p.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        warn!(pod, "node did not stop in time: killing it");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Stops every node.
    pub async fn shutdown(&mut self) {
        let keys: Vec<(String, String)> = self.procs.keys().cloned().collect();
        for (ns, pod) in keys {
            self.stop(&ns, &pod).await;
        }
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        // Never leak a node process, even when the control plane panics.
        for p in self.procs.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn node_container(pod: &Pod) -> Option<&Container> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)
}

fn owned_by(pod: &Pod, sts: &StatefulSet) -> bool {
    pod.owner_references()
        .iter()
        .any(|r| r.kind == "StatefulSet" && Some(&r.name) == sts.metadata.name.as_ref())
}

/// Writes a file whole, replacing it atomically (a node re-reading it never sees half).
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp~");
    {
        use std::io::Write;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
    }
    fs::rename(&tmp, path)
}

/// Makes `dir` hold exactly `files`, rewriting only what changed.
fn sync_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, contents) in files {
        // Keys are Secret keys: no path separators, as the API server enforces.
        if name.contains('/') || name.starts_with('.') {
            continue;
        }
        let path = dir.join(name);
        if fs::read(&path).ok().as_deref() != Some(contents.as_slice()) {
            write_atomically(&path, contents)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !files.contains_key(&name) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Kubernetes' `$(VAR)` expansion against the variables defined before; `$$` escapes.
pub fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some(v) = env.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
        assert_eq!(expand("$(A).y", &env), "x.y");
        assert_eq!(expand("$(B).y", &env), "$(B).y", "unknown stays as is");
        assert_eq!(expand("$$(A)", &env), "$(A)", "escaped");
        assert_eq!(expand("a$", &env), "a$");
    }
}
