//! Starting, checking and stopping the control plane's processes.
//!
//! Layout of the plane's directory (`--dir`, default `/tmp/rstore-k8s`):
//! - `kubeconfig`: the cluster admin's (a client certificate in `system:masters`);
//! - `pki/`: the cluster CA, the API server's serving certificate, the service-account key,
//!   and one client certificate per component;
//! - `logs/<component>.log`: each component's output; `logs/audit.log`: every API request's
//!   metadata (user, verb, resource, code), for `tests/k8s/api-load.sh`;
//! - `etcd/`: etcd's data; `volumes/`: provisioned volumes; `pods/`: the agent's pods;
//! - `hosts`: every pod and Service name with its address (`/etc/hosts` format), for users'
//!   commands (`node kv --hosts-file`); pods see it as their `/etc/hosts`;
//! - `pids`: the processes of the current run, so that the next `up` on the same directory
//!   can stop what a killed run left behind.
//!
//! Networking: the API server listens on the address of the root namespace on the agent's
//! bridge (`10.X.Y.1`, see [`crate::netns`]), so that both the user's commands and the pods
//! (each in its own namespace on that bridge) reach it. Services get cluster IPs from
//! `10.96.0.0/16` as usual, but nothing routes them (there is no kube-proxy): pods reach the
//! API server at its own address (`KUBERNETES_SERVICE_HOST`), and Service names resolve to
//! their endpoints through the hosts file, as a headless Service does.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Node, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rstore_api::pki::{Ca, Pem, write_file};

use super::agent::{self, Agent, AgentOptions, PROVISIONER, sigterm};
use crate::netns::NetnsNet;

/// The Service cluster-IP range (never routed here; see the module docs).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The provisioner name of the agent's StorageClasses.
/// The default StorageClass, named as kind names its own.
pub const DEFAULT_STORAGE_CLASS: &str = "standard";

/// What to start.
#[derive(Debug, Clone)]
pub struct PlaneOptions {
    /// The plane's directory; emptied first.
    pub dir: PathBuf,
    /// Where `etcd`, `kube-apiserver`, ... are (the `bin` directory `build.sh` prints).
    pub bin_dir: PathBuf,
    /// How many Nodes the agent registers.
    pub nodes: usize,
    /// The binaries behind the `ghcr.io/rstore/node` and `ghcr.io/rstore/operator` images.
    pub node_bin: PathBuf,
    pub operator_bin: PathBuf,
    /// How often the agent rewrites Secret, ConfigMap and projected volumes (the kubelet's
    /// sync period plus its cache TTL make this up to about a minute in a real cluster).
    pub volume_refresh: Duration,
    /// [`prepare_dir`] was called already (the CLI does, to log into `logs/` from the start).
    pub prepared: bool,
}

impl PlaneOptions {
    /// Defaults: 3 Nodes, volumes refreshed every 10 s.
    pub fn new(dir: PathBuf, bin_dir: PathBuf, node_bin: PathBuf, operator_bin: PathBuf) -> Self {
        Self {
            dir,
            bin_dir,
            nodes: 3,
            node_bin,
            operator_bin,
            volume_refresh: Duration::from_secs(10),
            prepared: false,
        }
    }
}

/// One running component.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane. Dropping it without [`ControlPlane::shutdown`] still kills every
/// process it started.
pub struct ControlPlane {
    dir: PathBuf,
    /// `https://10.X.Y.1:PORT`.
    pub api_url: String,
    /// The admin's client.
    pub client: kube::Client,
    net: Arc<NetnsNet>,
    components: Vec<Component>,
    agent: Option<Agent>,
    /// When `up` began, and how long it took to be ready.
    pub ready_after: Duration,
}

fn free_port(ip: &str) -> Result<u16> {
    let l = TcpListener::bind(format!("{ip}:0")).with_context(|| format!("bind {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kubeconfig_yaml(server: &str, ca: &str, user: &str, cert: &Pem) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: rstore-k8s\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: rstore-k8s\n  context:\n    cluster: rstore-k8s\n    user: {user}\n    namespace: default\ncurrent-context: rstore-k8s\n",
        ca = b64(ca),
        cert = b64(&cert.cert),
        key = b64(&cert.key),
    )
}

/// Stops the processes a killed earlier run on `dir` left behind (their pids are in
/// `dir/pids`, checked against their command line so that a reused pid is left alone).
fn stop_leftovers(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join("pids")) else {
        return;
    };
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(pid), Some(name)) = (w.next(), w.next()) else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(name) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
            eprintln!("rstore-k8s: stopped {name} (pid {pid}) left by an earlier run");
        }
    }
}

/// Makes `dir` an empty plane directory: stops what a killed earlier run on it left behind,
/// removes its contents, creates the layout.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    stop_leftovers(dir);
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    for sub in ["pki", "logs", "etcd", "volumes", "pods"] {
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    Ok(())
}

impl ControlPlane {
    /// Starts everything and waits until the plane can run pods: etcd, the API server, the
    /// controller manager and scheduler healthy, every Node Ready, the default StorageClass
    /// and the `default` ServiceAccount there.
    pub async fn up(opts: PlaneOptions) -> Result<ControlPlane> {
        let started = Instant::now();
        let _ = rustls::crypto::ring::default_provider().install_default();
        for bin in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let p = opts.bin_dir.join(bin);
            if !p.exists() {
                bail!(
                    "{} is missing: build the control plane first with `bash tests/k8s/build.sh`",
                    p.display()
                );
            }
        }
        for (what, p) in [("node", &opts.node_bin), ("operator", &opts.operator_bin)] {
            if !p.is_file() {
                bail!(
                    "the {what} binary {} is missing: build it with `cargo build -p {what}`",
                    p.display()
                );
            }
        }
        let dir = opts.dir.clone();
        if !opts.prepared {
            prepare_dir(&dir)?;
        }
        let net =
            Arc::new(NetnsNet::new().map_err(|e| anyhow!("cannot create the pod network: {e}"))?);
        let ip = net.root_ip();

        // ---- PKI ----------------------------------------------------------------------------
        let pki = dir.join("pki");
        let ca = Ca::generate("kubernetes")?;
        ca.pem().write(&pki, "ca")?;
        let serving = ca.server(
            "kube-apiserver",
            &[
                ip.clone(),
                "127.0.0.1".into(),
                "10.96.0.1".into(),
                "localhost".into(),
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                "kubernetes.default.svc.cluster.local".into(),
            ],
        )?;
        serving.write(&pki, "apiserver")?;
        // The API server's client certificate towards kubelets (for `kubectl logs`).
        ca.client("kube-apiserver-kubelet-client", "system:masters")?
            .write(&pki, "apiserver-kubelet-client")?;
        let sa_key = rcgen::KeyPair::generate()?;
        write_file(&pki.join("sa.key"), &sa_key.serialize_pem(), true)?;
        write_file(&pki.join("sa.pub"), &sa_key.public_key_pem(), false)?;

        let api_port = free_port(&ip)?;
        let api_url = format!("https://{ip}:{api_port}");
        let ca_pem = ca.pem().cert.clone();
        let mut kubeconfigs = BTreeMap::new();
        for (file, user, group) in [
            ("kubeconfig", "kubernetes-admin", "system:masters"),
            (
                "controller-manager.kubeconfig",
                "system:kube-controller-manager",
                "",
            ),
            ("scheduler.kubeconfig", "system:kube-scheduler", ""),
            ("agent.kubeconfig", "rstore-node-agent", "system:masters"),
        ] {
            let cert = ca.client(user, group)?;
            let path = dir.join(file);
            write_file(
                &path,
                &kubeconfig_yaml(&api_url, &ca_pem, user, &cert),
                true,
            )?;
            kubeconfigs.insert(file, path);
        }

        let mut plane = ControlPlane {
            dir: dir.clone(),
            api_url: api_url.clone(),
            client: client_from(&kubeconfigs["kubeconfig"]).await?,
            net: net.clone(),
            components: Vec::new(),
            agent: None,
            ready_after: Duration::ZERO,
        };

        // ---- etcd ---------------------------------------------------------------------------
        let (etcd_client, etcd_peer) = (free_port("127.0.0.1")?, free_port("127.0.0.1")?);
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        plane.spawn(
            "etcd",
            &opts.bin_dir,
            &[
                "--name=plane".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=plane=http://127.0.0.1:{etcd_peer}"),
                "--log-level=warn".into(),
            ],
        )?;
        let plain = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        plane
            .wait_healthy("etcd", Duration::from_secs(30), || {
                let c = plain.clone();
                let url = format!("{etcd_url}/health");
                async move {
                    let body = c.get(url).send().await.ok()?.text().await.ok()?;
                    body.contains("\"health\":\"true\"").then_some(())
                }
            })
            .await?;

        // ---- kube-apiserver -----------------------------------------------------------------
        // Every request's metadata (who, verb, resource, code) goes to logs/audit.log: the
        // API load each client puts on the server (tests/k8s/api-load.sh) comes from it.
        write_file(
            &pki.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
            false,
        )?;
        let p = |f: &str| pki.join(f).display().to_string();
        plane.spawn(
            "kube-apiserver",
            &opts.bin_dir,
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={ip}"),
                format!("--advertise-address={ip}"),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--allow-privileged=true".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                format!(
                    "--kubelet-client-certificate={}",
                    p("apiserver-kubelet-client.crt")
                ),
                format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                format!("--kubelet-certificate-authority={}", p("ca.crt")),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", dir.join("logs/audit.log").display()),
                "--audit-log-maxsize=200".into(),
                "--audit-log-maxbackup=1".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )?;
        let admin = plane.client.clone();
        plane
            .wait_healthy("kube-apiserver", Duration::from_secs(90), || {
                let c = admin.clone();
                async move {
                    let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
                    (c.request_text(req).await.ok()?.trim() == "ok").then_some(())
                }
            })
            .await?;

        // ---- kube-controller-manager and kube-scheduler -------------------------------------
        let kcm_port = free_port("127.0.0.1")?;
        plane.spawn(
            "kube-controller-manager",
            &opts.bin_dir,
            &[
                format!(
                    "--kubeconfig={}",
                    kubeconfigs["controller-manager.kubeconfig"].display()
                ),
                format!(
                    "--authentication-kubeconfig={}",
                    kubeconfigs["controller-manager.kubeconfig"].display()
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    kubeconfigs["controller-manager.kubeconfig"].display()
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                format!("--cluster-signing-cert-file={}", p("ca.crt")),
                format!("--cluster-signing-key-file={}", p("ca.key")),
                "--allocate-node-cidrs=false".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )?;
        let sched_port = free_port("127.0.0.1")?;
        plane.spawn(
            "kube-scheduler",
            &opts.bin_dir,
            &[
                format!(
                    "--kubeconfig={}",
                    kubeconfigs["scheduler.kubeconfig"].display()
                ),
                format!(
                    "--authentication-kubeconfig={}",
                    kubeconfigs["scheduler.kubeconfig"].display()
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    kubeconfigs["scheduler.kubeconfig"].display()
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={sched_port}"),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )?;
        let insecure = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()?;
        for (name, port) in [
            ("kube-controller-manager", kcm_port),
            ("kube-scheduler", sched_port),
        ] {
            plane
                .wait_healthy(name, Duration::from_secs(60), || {
                    let c = insecure.clone();
                    async move {
                        let url = format!("https://127.0.0.1:{port}/healthz");
                        let body = c.get(url).send().await.ok()?.text().await.ok()?;
                        (body.trim() == "ok").then_some(())
                    }
                })
                .await?;
        }

        // ---- the default StorageClass, then the agent ---------------------------------------
        let sc: StorageClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": DEFAULT_STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": false
        }))?;
        Api::<StorageClass>::all(plane.client.clone())
            .create(&PostParams::default(), &sc)
            .await
            .context("create the default StorageClass")?;

        let agent_client = client_from(&kubeconfigs["agent.kubeconfig"]).await?;
        let agent = Agent::start(
            agent_client,
            AgentOptions {
                nodes: (0..opts.nodes.max(1)).map(agent::node_name).collect(),
                dir: dir.clone(),
                net: net.clone(),
                api_host: ip.clone(),
                api_port,
                images: agent::ImageMap::rstore(&opts.node_bin, &opts.operator_bin),
                volume_refresh: opts.volume_refresh,
                kubelet_ca: ca,
            },
        )
        .await?;
        plane.agent = Some(agent);
        plane.write_pids();

        // ---- ready: Nodes Ready and schedulable, the default ServiceAccount there -----------
        let client = plane.client.clone();
        let want = opts.nodes.max(1);
        plane
            .wait_healthy("the node agent", Duration::from_secs(90), || {
                let c = client.clone();
                async move {
                    let nodes = Api::<Node>::all(c.clone()).list(&Default::default()).await;
                    let ready = nodes
                        .ok()?
                        .items
                        .iter()
                        .filter(|n| agent::node_schedulable(n))
                        .count();
                    let sa = Api::<ServiceAccount>::namespaced(c.clone(), "default")
                        .get_opt("default")
                        .await
                        .ok()??;
                    let root_ca = Api::<ConfigMap>::namespaced(c, "default")
                        .get_opt("kube-root-ca.crt")
                        .await
                        .ok()??;
                    let _ = (sa, root_ca);
                    (ready >= want).then_some(())
                }
            })
            .await?;
        plane.ready_after = started.elapsed();
        Ok(plane)
    }

    /// The plane's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The hosts file naming every pod and Service.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// The pod network.
    pub fn net(&self) -> &NetnsNet {
        &self.net
    }

    /// The agent.
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// A component whose process has exited, with its status and log tail.
    pub fn check(&mut self) -> Result<()> {
        for c in &mut self.components {
            if let Ok(Some(status)) = c.child.try_wait() {
                bail!(
                    "{} exited ({status}); the end of its log {}:\n{}",
                    c.name,
                    c.log.display(),
                    tail(&c.log, 30)
                );
            }
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, bin_dir: &Path, args: &[String]) -> Result<()> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let out = fs::File::create(&log)?;
        let child = Command::new(bin_dir.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.components.push(Component { name, child, log });
        self.write_pids();
        Ok(())
    }

    fn write_pids(&self) {
        let mut s = String::new();
        for c in &self.components {
            s += &format!("{} {}\n", c.child.id(), c.name);
        }
        let _ = fs::write(self.dir.join("pids"), s);
    }

    /// Waits until `probe` answers, failing early (with the component's log) if a component
    /// exits, and with the log of `name` on timeout.
    async fn wait_healthy<F, Fut>(&mut self, name: &str, within: Duration, probe: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<()>>,
    {
        let deadline = Instant::now() + within;
        loop {
            self.check()?;
            if let Some(agent) = &self.agent
                && let Some(e) = agent.failure()
            {
                bail!("the node agent failed: {e}");
            }
            if probe().await.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self
                    .components
                    .iter()
                    .find(|c| c.name == name)
                    .map(|c| c.log.clone())
                    .unwrap_or_else(|| self.dir.join("logs").join("agent.log"));
                bail!(
                    "{name} did not become healthy within {within:?}; the end of its log {}:\n{}",
                    log.display(),
                    tail(&log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the pods (SIGTERM, then SIGKILL after their grace period), then the components
    /// in reverse order of start, then removes the pod network.
    pub async fn shutdown(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
        self.stop_components().await;
    }

    /// One at a time, last started first (the scheduler and controller manager before the API
    /// server, the API server before etcd), each SIGTERM then SIGKILL after 10 s.
    async fn stop_components(&mut self) {
        for c in self.components.iter_mut().rev() {
            sigterm(c.child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !matches!(c.child.try_wait(), Ok(Some(_))) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        self.components.clear();
        let _ = fs::remove_file(self.dir.join("pids"));
    }

    /// The address of the API server.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_url
            .trim_start_matches("https://")
            .parse()
            .expect("the API URL is an address")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.kill_all();
        }
        for c in &mut self.components {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("invalid kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}
