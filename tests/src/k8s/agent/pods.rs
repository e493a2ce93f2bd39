//! Running the pods bound to the agent's Nodes, as the kubelet does.
//!
//! For each pod: a network namespace with its own address (the pod IP), its volumes made
//! ready ([`super::volumes`]), then each container as a real process, started with `ip netns
//! exec` and a small `sh` prelude that bind-mounts the volumes at their `mountPath` (and the
//! hosts file at `/etc/hosts`) in the process's private mount namespace before `exec`ing the
//! image's binary. Its output goes to `pods/<ns>/<pod>/<container>.log`, its pid to
//! `<container>.pid` beside it.
//!
//! Then, as the kubelet:
//! - readiness, liveness and startup probes (`httpGet`, `tcpSocket`, `exec`) with their
//!   delays, periods, timeouts and thresholds; a failed liveness probe restarts the
//!   container;
//! - an exited container is restarted at once the first time, then after 10 s, 20 s, ... up
//!   to 5 minutes (`CrashLoopBackOff`), the back-off forgotten after 10 minutes of running;
//! - a pod with a `deletionTimestamp` gets SIGTERM, then SIGKILL when its grace period ends,
//!   and is then deleted from the API for good;
//! - Secret, ConfigMap and projected volumes are rewritten every `volume_refresh`;
//! - status (phase, podIP, conditions, containerStatuses with restart counts and last
//!   states) is patched whenever it changes, and only then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::common::{AgentOptions, ImageMap, Stores, now_rfc3339, sigterm};
use super::events::{Events, PodEvents};
use super::volumes::{self, Content, PodView, Tokens};
use crate::netns::NetnsNet;

/// The PATH containers get.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Back-off of restarts: the first delay after the immediate restart, and the cap.
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Running this long forgets the back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// A container: namespace, pod, container name.
type ContainerKey = (String, String, String);

/// The pids of running containers, shared with the agent's handle.
#[derive(Clone, Default)]
pub struct Pids(Arc<Mutex<HashMap<ContainerKey, u32>>>);

impl Pids {
    pub fn get(&self, ns: &str, pod: &str, container: &str) -> Option<u32> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.into(), pod.into(), container.into()))
            .copied()
    }

    fn set(&self, ns: &str, pod: &str, container: &str, pid: Option<u32>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_owned(), pod.to_owned(), container.to_owned());
        match pid {
            Some(p) => m.insert(key, p),
            None => m.remove(&key),
        };
    }

    /// SIGKILL every container (the `kill` command, as `unsafe` is forbidden here).
    pub fn kill_all(&self) {
        let pids: Vec<u32> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .copied()
            .collect();
        for p in pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What the probes of a running container found.
#[derive(Debug, Default)]
struct ProbeState {
    /// The startup probe passed (or there is none).
    started: bool,
    ready: bool,
    /// Liveness (or startup) failed its threshold: restart the container.
    failed: Option<String>,
}

struct Term {
    exit_code: i32,
    reason: String,
    /// The termination message ([`termination_message`]).
    message: String,
    started_at: String,
    finished_at: String,
}

/// Where a container writes its termination message (the kubelet's default without one).
fn message_path(spec: &Container) -> &str {
    spec.termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/dev/termination-log")
}

/// What the kubelet reports as a run's termination message: the file at its termination
/// message path (at most 4096 bytes), or, with `FallbackToLogsOnError` and a failed run that
/// wrote none, the end of its log (at most 80 lines and 2048 bytes).
fn termination_message(pod_dir: &Path, spec: &Container, exit_code: i32) -> String {
    let file = pod_dir.join(format!("{}.termination-log", spec.name));
    let mut message = fs::read(&file).unwrap_or_default();
    message.truncate(4096);
    let fallback = spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if message.iter().all(u8::is_ascii_whitespace) && fallback && exit_code != 0 {
        let log = fs::read(pod_dir.join(format!("{}.log", spec.name))).unwrap_or_default();
        let lines_from = log
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(80)
            .map_or(0, |(i, _)| i + 1);
        message = log[lines_from.max(log.len().saturating_sub(2048))..].to_vec();
    }
    String::from_utf8_lossy(&message).into_owned()
}

struct Ctr {
    spec: Container,
    child: Option<Child>,
    started_at: String,
    started: Option<Instant>,
    restarts: i32,
    last: Option<Term>,
    waiting: Option<(String, String)>,
    backoff: Duration,
    next_start: Instant,
    probes: Arc<Mutex<ProbeState>>,
    probe_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// SIGTERM sent (liveness failure or deletion): SIGKILL at this instant.
    kill_at: Option<Instant>,
    /// The last start failed before a process ran (image, configuration): `waiting` says why.
    start_failed: bool,
    /// Exited for good: the pod's `restartPolicy` (Never, or OnFailure after exit 0) says
    /// it is not started again.
    done: bool,
}

struct PodRt {
    uid: String,
    ns: String,
    name: String,
    slot: usize,
    ip: String,
    dir: PathBuf,
    ctrs: Vec<Ctr>,
    /// Each volume's directory, once ready.
    sources: Option<BTreeMap<String, PathBuf>>,
    volume_error: Option<String>,
    volumes_synced: Option<Instant>,
    start_time: String,
    /// Why the pod cannot start (image, config), shown in its containers' waiting state.
    terminating: Option<Instant>,
    last_status: Option<Value>,
    transitions: HashMap<String, (String, String)>,
}

/// The pods of the agent's Nodes.
pub struct Runtime {
    client: Client,
    nodes: BTreeSet<String>,
    dir: PathBuf,
    net: Arc<NetnsNet>,
    api_host: String,
    api_port: u16,
    images: ImageMap,
    refresh: Duration,
    stores: Stores,
    pods: HashMap<String, PodRt>,
    free: Vec<usize>,
    next_slot: usize,
    tokens: Tokens,
    pids: Pids,
    http: reqwest::Client,
    events: Events,
}

impl Runtime {
    pub fn new(client: Client, opts: &AgentOptions, stores: Stores, pids: Pids) -> Self {
        let client_for_events = client.clone();
        Self {
            client,
            nodes: opts.nodes.iter().cloned().collect(),
            dir: opts.dir.clone(),
            net: opts.net.clone(),
            api_host: opts.api_host.clone(),
            api_port: opts.api_port,
            images: opts.images.clone(),
            refresh: opts.volume_refresh,
            stores,
            pods: HashMap::new(),
            free: Vec::new(),
            next_slot: 0,
            tokens: Tokens::default(),
            pids,
            // The kubelet's probes: no proxy, no verification of HTTPS certificates.
            http: reqwest::Client::builder()
                .no_proxy()
                .danger_accept_invalid_certs(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            events: Events::new(client_for_events),
        }
    }

    /// One pass over every pod bound to the agent's Nodes.
    pub async fn sync(&mut self) {
        let mine: Vec<Arc<Pod>> = self
            .stores
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some_and(|n| self.nodes.contains(n))
            })
            .collect();
        let present: BTreeSet<String> =
            mine.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        // Pods deleted from the API without waiting for us (force deletion): kill now.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !present.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut rt) = self.pods.remove(&uid) {
                info!(pod = %format!("{}/{}", rt.ns, rt.name), "deleted from the API: killing");
                for c in &mut rt.ctrs {
                    self.kill(&rt.ns, &rt.name, c);
                }
                self.free.push(rt.slot);
            }
        }
        for pod in mine {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) && !self.pods.contains_key(&uid) {
                continue;
            }
            if !self.pods.contains_key(&uid) {
                if pod.metadata.deletion_timestamp.is_some() {
                    // Nothing of it runs here: let it go.
                    self.finish_delete(&pod).await;
                    continue;
                }
                let rt = self.admit(&pod);
                self.pods.insert(uid.clone(), rt);
            }
            let Some(mut rt) = self.pods.remove(&uid) else {
                continue;
            };
            let keep = if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&pod, &mut rt).await
            } else {
                self.run(&pod, &mut rt).await;
                true
            };
            if keep {
                self.report(&pod, &mut rt).await;
                self.pods.insert(uid, rt);
            } else {
                self.free.push(rt.slot);
            }
        }
    }

    /// A new pod: its slot in the pod network, its directory.
    fn admit(&mut self, pod: &Pod) -> PodRt {
        let slot = self.free.pop().unwrap_or_else(|| {
            let s = self.next_slot;
            self.next_slot += 1;
            s
        });
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let dir = self.dir.join("pods").join(&ns).join(&name);
        let ctrs = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|spec| Ctr {
                spec,
                child: None,
                started_at: String::new(),
                started: None,
                restarts: 0,
                last: None,
                waiting: Some(("ContainerCreating".into(), String::new())),
                backoff: Duration::ZERO,
                next_start: Instant::now(),
                probes: Arc::default(),
                probe_tasks: Vec::new(),
                kill_at: None,
                start_failed: false,
                done: false,
            })
            .collect();
        info!(pod = %format!("{ns}/{name}"), ip = %self.net.ip(slot), "admitted");
        PodRt {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ns,
            name,
            slot,
            ip: self.net.ip(slot),
            dir,
            ctrs,
            sources: None,
            volume_error: None,
            volumes_synced: None,
            start_time: now_rfc3339(),
            terminating: None,
            last_status: None,
            transitions: HashMap::new(),
        }
    }

    /// Volumes, then containers: start, watch, restart.
    async fn run(&mut self, pod: &Pod, rt: &mut PodRt) {
        let due = rt
            .volumes_synced
            .is_none_or(|t| t.elapsed() >= self.refresh || rt.sources.is_none());
        if due {
            match self.sync_volumes(pod, rt).await {
                Ok(sources) => {
                    rt.sources = Some(sources);
                    rt.volume_error = None;
                }
                Err(e) => {
                    if rt.volume_error.as_deref() != Some(&e) {
                        warn!(pod = %format!("{}/{}", rt.ns, rt.name), error = %e, "volumes not ready");
                    }
                    rt.volume_error = Some(e);
                }
            }
            rt.volumes_synced = Some(Instant::now());
        }
        let Some(sources) = rt.sources.clone() else {
            for c in &mut rt.ctrs {
                c.waiting = Some((
                    "ContainerCreating".into(),
                    rt.volume_error.clone().unwrap_or_default(),
                ));
            }
            return;
        };
        let (ns, name) = (rt.ns.clone(), rt.name.clone());
        for i in 0..rt.ctrs.len() {
            // Exited?
            let exited = match rt.ctrs[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                let c = &mut rt.ctrs[i];
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                let ran = c.started.map(|s| s.elapsed()).unwrap_or_default();
                info!(pod = %format!("{ns}/{name}"), container = %c.spec.name, exit_code = code, "container exited");
                c.last = Some(Term {
                    exit_code: code,
                    reason: if code == 0 { "Completed" } else { "Error" }.into(),
                    message: termination_message(&rt.dir, &c.spec, code),
                    started_at: c.started_at.clone(),
                    finished_at: now_rfc3339(),
                });
                c.child = None;
                let killed_by_us = c.kill_at.take().is_some();
                for t in c.probe_tasks.drain(..) {
                    t.abort();
                }
                *c.probes.lock().unwrap_or_else(|e| e.into_inner()) = ProbeState::default();
                self.pids.set(&ns, &name, &c.spec.name, None);
                let _ = fs::remove_file(rt.dir.join(format!("{}.pid", c.spec.name)));
                let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
                c.done = restart_ends(policy, code) && rt.terminating.is_none();
                if !c.done && code != 0 && !killed_by_us {
                    self.events.for_pod(pod).warning(
                        "BackOff",
                        format!("Back-off restarting failed container {} in pod {name} (exit code {code})", c.spec.name),
                    );
                }
                if !c.done {
                    if ran >= BACKOFF_RESET {
                        c.backoff = Duration::ZERO;
                    }
                    c.next_start = Instant::now() + c.backoff;
                    c.backoff = (c.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
                    c.restarts += 1;
                }
            }
            let c = &mut rt.ctrs[i];
            if c.done {
                continue;
            }
            // A failed liveness probe: SIGTERM now, SIGKILL after the grace period.
            if c.child.is_some() && c.kill_at.is_none() {
                let failed = c
                    .probes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failed
                    .take();
                if let Some(why) = failed {
                    info!(pod = %format!("{ns}/{name}"), container = %c.spec.name, reason = %why, "restarting: probe failed");
                    self.events.for_pod(pod).normal(
                        "Killing",
                        format!("Container {} {why}, will be restarted", c.spec.name),
                    );
                    if let Some(ch) = &c.child {
                        sigterm(ch.id());
                    }
                    c.kill_at = Some(Instant::now() + grace_of(pod));
                }
            }
            if let (Some(at), Some(ch)) = (c.kill_at, c.child.as_mut())
                && Instant::now() >= at
            {
                let _ = ch.kill();
            }
            if c.child.is_none() {
                if Instant::now() < c.next_start {
                    if c.start_failed {
                        continue;
                    }
                    let left = c.next_start - Instant::now();
                    c.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={} pod={name}",
                            left.as_secs() + 1,
                            c.spec.name
                        ),
                    ));
                    continue;
                }
                match self.start(pod, &rt.dir, &rt.ip, rt.slot, &sources, i, &mut rt.ctrs) {
                    Ok(()) => {
                        rt.ctrs[i].start_failed = false;
                        self.events.for_pod(pod).normal(
                            "Started",
                            format!("Started container {}", rt.ctrs[i].spec.name),
                        );
                    }
                    Err((reason, message)) => {
                        let c = &mut rt.ctrs[i];
                        c.start_failed = true;
                        if c.waiting.as_ref().map(|w| &w.1) != Some(&message) {
                            warn!(pod = %format!("{ns}/{name}"), container = %c.spec.name, %reason, %message, "cannot start");
                            self.events
                                .for_pod(pod)
                                .warning("Failed", format!("Error: {reason}: {message}"));
                        }
                        c.waiting = Some((reason, message));
                        c.next_start = Instant::now() + Duration::from_secs(2);
                    }
                }
            }
        }
    }

    async fn sync_volumes(
        &mut self,
        pod: &Pod,
        rt: &PodRt,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let view = PodView {
            pod,
            ip: &rt.ip,
            host_ip: &self.api_host,
            stores: &self.stores,
        };
        let base = rt.dir.join(&rt.uid);
        let mut out = BTreeMap::new();
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default()
        {
            match view
                .content(&v, &base, &self.client, &mut self.tokens)
                .await?
            {
                Content::Dir(d) => {
                    fs::create_dir_all(&d).map_err(|e| format!("volume {:?}: {e}", v.name))?;
                    out.insert(v.name.clone(), d);
                }
                Content::Files(files) => {
                    let d = base.join("volumes").join(&v.name);
                    volumes::write_files(&d, &files)
                        .map_err(|e| format!("volume {:?}: {e}", v.name))?;
                    out.insert(v.name.clone(), d);
                }
            }
        }
        Ok(out)
    }

    /// Starts container `i`: resolves its image, environment and mounts, spawns it.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        pod: &Pod,
        dir: &Path,
        ip: &str,
        slot: usize,
        sources: &BTreeMap<String, PathBuf>,
        i: usize,
        ctrs: &mut [Ctr],
    ) -> Result<(), (String, String)> {
        let c = &mut ctrs[i];
        let image = c.spec.image.clone().unwrap_or_default();
        let (bin, default_args) = self.images.resolve(&image).ok_or_else(|| {
            (
                "ErrImagePull".to_string(),
                format!(
                    "image {image:?} is not one this node agent runs (it runs {} from local binaries)",
                    self.images.known()
                ),
            )
        })?;
        let view = PodView {
            pod,
            ip,
            host_ip: &self.api_host,
            stores: &self.stores,
        };
        let env = view
            .env(&c.spec, &self.api_host, self.api_port)
            .map_err(|e| ("CreateContainerConfigError".to_string(), e))?;
        // `command` replaces the image's entrypoint (here always the mapped binary), `args`
        // its CMD.
        let mut argv: Vec<String> = match &c.spec.command {
            Some(cmd) if !cmd.is_empty() => cmd[1..].to_vec(),
            _ => Vec::new(),
        };
        match &c.spec.args {
            Some(a) => argv.extend(a.iter().cloned()),
            None if c.spec.command.is_none() => argv.extend(default_args),
            None => {}
        }
        let argv: Vec<String> = argv.iter().map(|a| volumes::expand(a, &env)).collect();
        let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut script = String::from("set -e\n");
        script += &format!(
            "mount --bind {} /etc/hosts\n",
            q(&self.dir.join("hosts").to_string_lossy())
        );
        for m in c.spec.volume_mounts.iter().flatten() {
            let src = sources.get(&m.name).ok_or_else(|| {
                (
                    "CreateContainerConfigError".to_string(),
                    format!("volumeMount {:?} names no volume of the pod", m.name),
                )
            })?;
            let mut src = src.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                src = src.join(volumes::expand(sub, &env));
            }
            let dst = q(&m.mount_path);
            script += &format!(
                "mkdir -p {dst}\nmount --bind {} {dst}\n",
                q(&src.to_string_lossy())
            );
            if m.read_only == Some(true) {
                script += &format!("mount -o remount,bind,ro {dst}\n");
            }
        }
        // As the kubelet: a file of the pod's own at the container's termination message path,
        // read when it exits. (On this machine /dev is the host's: an empty
        // /dev/termination-log is created there once, as the mount point.)
        let message_file = dir.join(format!("{}.termination-log", c.spec.name));
        let message_at = q(message_path(&c.spec));
        script += &format!(
            "[ -e {message_at} ] || touch {message_at}\nmount --bind {} {message_at}\n",
            q(&message_file.to_string_lossy())
        );
        script += &format!(
            "cd {}\nexec \"$@\"\n",
            q(c.spec.working_dir.as_deref().unwrap_or("/"))
        );
        let _ = fs::create_dir_all(dir);
        fs::write(&message_file, b"")
            .and_then(|()| fs::set_permissions(&message_file, fs::Permissions::from_mode(0o666)))
            .map_err(|e| {
                (
                    "RunContainerError".to_string(),
                    format!("{}: {e}", message_file.display()),
                )
            })?;
        let log_path = dir.join(format!("{}.log", c.spec.name));
        // As the kubelet: each run of a container has its own log, and the one before it is
        // kept for `kubectl logs --previous`. The log of an earlier pod of the same name
        // (StatefulSet pods reuse names) is kept aside, with the time it was set aside.
        if log_path.exists() {
            let aside = if c.restarts > 0 {
                dir.join(format!("{}.previous.log", c.spec.name))
            } else {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                dir.join(format!("{}.log.{secs}", c.spec.name))
            };
            let _ = fs::rename(&log_path, aside);
        }
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
        };
        let (out, err) = match (open(), open()) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return Err((
                    "RunContainerError".into(),
                    format!("{}: {e}", log_path.display()),
                ));
            }
        };
        let mut cmd = self.net.command(slot, "sh");
        cmd.arg("-c")
            .arg(&script)
            .arg(&c.spec.name)
            .arg(&bin)
            .args(&argv)
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().map_err(|e| {
            (
                "RunContainerError".to_string(),
                format!("cannot start {}: {e}", bin.display()),
            )
        })?;
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let pid = child.id();
        self.pids.set(&ns, &name, &c.spec.name, Some(pid));
        let _ = fs::write(dir.join(format!("{}.pid", c.spec.name)), format!("{pid}\n"));
        info!(pod = %format!("{ns}/{name}"), container = %c.spec.name, pid, restarts = c.restarts, "started");
        c.child = Some(child);
        c.started = Some(Instant::now());
        c.started_at = now_rfc3339();
        c.waiting = None;
        // Probes.
        let ports: HashMap<String, i32> = c
            .spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect();
        let state = c.probes.clone();
        {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            *s = ProbeState {
                started: c.spec.startup_probe.is_none(),
                ready: false,
                failed: None,
            };
        }
        let events = self.events.for_pod(pod);
        let target = Target {
            events,
            container: c.spec.name.clone(),
            ip: ip.to_owned(),
            ports,
            http: self.http.clone(),
            net: self.net.clone(),
            slot,
        };
        if c.spec.readiness_probe.is_none() {
            // No readiness probe: ready once started.
            let s = state.clone();
            let t = target.clone();
            let startup = c.spec.startup_probe.clone();
            c.probe_tasks.push(tokio::spawn(async move {
                if let Some(p) = startup {
                    probe_loop(Kind::Startup, p, t, s.clone()).await;
                }
                s.lock().unwrap_or_else(|e| e.into_inner()).ready = true;
            }));
        } else if let Some(p) = c.spec.startup_probe.clone() {
            c.probe_tasks.push(tokio::spawn(probe_loop(
                Kind::Startup,
                p,
                target.clone(),
                state.clone(),
            )));
        }
        if let Some(p) = c.spec.readiness_probe.clone() {
            c.probe_tasks.push(tokio::spawn(probe_loop(
                Kind::Readiness,
                p,
                target.clone(),
                state.clone(),
            )));
        }
        if let Some(p) = c.spec.liveness_probe.clone() {
            c.probe_tasks
                .push(tokio::spawn(probe_loop(Kind::Liveness, p, target, state)));
        }
        Ok(())
    }

    /// A pod being deleted: SIGTERM its containers, SIGKILL them when its grace period is
    /// over; once none runs, delete it from the API. False once it is gone.
    async fn terminate(&mut self, pod: &Pod, rt: &mut PodRt) -> bool {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or_else(|| grace_of(pod));
        if rt.terminating.is_none() {
            info!(pod = %format!("{}/{}", rt.ns, rt.name), grace_s = grace.as_secs(), "terminating");
            rt.terminating = Some(Instant::now() + grace);
            for c in &mut rt.ctrs {
                for t in c.probe_tasks.drain(..) {
                    t.abort();
                }
                if let Some(ch) = &c.child {
                    sigterm(ch.id());
                    self.events
                        .for_pod(pod)
                        .normal("Killing", format!("Stopping container {}", c.spec.name));
                }
            }
        }
        let overdue = rt.terminating.is_some_and(|t| Instant::now() >= t);
        let mut running = false;
        for c in &mut rt.ctrs {
            if let Some(ch) = c.child.as_mut() {
                match ch.try_wait() {
                    Ok(Some(_)) => {
                        c.child = None;
                        self.pids.set(&rt.ns, &rt.name, &c.spec.name, None);
                    }
                    _ if overdue => {
                        let _ = ch.kill();
                        let _ = ch.wait();
                        c.child = None;
                        self.pids.set(&rt.ns, &rt.name, &c.spec.name, None);
                    }
                    _ => running = true,
                }
            }
        }
        if running {
            return true;
        }
        for c in &rt.ctrs {
            let _ = fs::remove_file(rt.dir.join(format!("{}.pid", c.spec.name)));
        }
        let _ = fs::remove_dir_all(rt.dir.join(&rt.uid));
        self.finish_delete(pod).await;
        false
    }

    async fn finish_delete(&self, pod: &Pod) {
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {
                info!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "deleted")
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(pod = %pod.name_any(), error = %e, "cannot delete"),
        }
    }

    fn kill(&self, ns: &str, name: &str, c: &mut Ctr) {
        for t in c.probe_tasks.drain(..) {
            t.abort();
        }
        if let Some(mut ch) = c.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        self.pids.set(ns, name, &c.spec.name, None);
        let pod_dir = self.dir.join("pods").join(ns).join(name);
        let _ = fs::remove_file(pod_dir.join(format!("{}.pid", c.spec.name)));
    }

    /// Patches the pod's status when it differs from what was last reported.
    async fn report(&self, pod: &Pod, rt: &mut PodRt) {
        let status = self.status(pod, rt);
        if rt.last_status.as_ref() == Some(&status) {
            return;
        }
        let api = Api::<Pod>::namespaced(self.client.clone(), &rt.ns);
        match api
            .patch_status(
                &rt.name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": status})),
            )
            .await
        {
            Ok(_) => rt.last_status = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(pod = %format!("{}/{}", rt.ns, rt.name), error = %e, "cannot report status")
            }
        }
    }

    fn status(&self, pod: &Pod, rt: &mut PodRt) -> Value {
        let mut statuses = Vec::new();
        let mut all_ready = true;
        let mut all_started = true;
        for c in &rt.ctrs {
            let probes = c.probes.lock().unwrap_or_else(|e| e.into_inner());
            let running = c.child.is_some() && c.kill_at.is_none();
            let ready = running && probes.ready;
            all_ready &= ready;
            all_started &= c.child.is_some() || c.last.is_some();
            let state = if c.child.is_some() {
                json!({"running": {"startedAt": c.started_at}})
            } else if let (true, Some(t)) = (c.done, &c.last) {
                json!({"terminated": {
                    "exitCode": t.exit_code, "reason": t.reason, "message": t.message,
                    "startedAt": t.started_at, "finishedAt": t.finished_at,
                    "containerID": format!("rstore://{}-{}-{}", rt.uid, c.spec.name, c.restarts),
                }})
            } else {
                let (reason, message) = c.waiting.clone().unwrap_or_default();
                json!({"waiting": {"reason": reason, "message": message}})
            };
            let last = c.last.as_ref().filter(|_| !c.done).map_or(json!({}), |t| {
                json!({"terminated": {
                    "exitCode": t.exit_code, "reason": t.reason, "message": t.message,
                    "startedAt": t.started_at, "finishedAt": t.finished_at,
                    "containerID": format!("rstore://{}-{}-{}", rt.uid, c.spec.name, c.restarts - 1),
                }})
            });
            let image = c.spec.image.clone().unwrap_or_default();
            let mut s = json!({
                "name": c.spec.name,
                "image": image,
                "imageID": format!("rstore-agent://{image}"),
                "ready": ready,
                "started": running && probes.started,
                "restartCount": c.restarts,
                "state": state,
                "lastState": last,
            });
            if c.child.is_some() {
                s["containerID"] = json!(format!(
                    "rstore://{}-{}-{}",
                    rt.uid, c.spec.name, c.restarts
                ));
            }
            statuses.push(s);
        }
        let all_done = !rt.ctrs.is_empty() && rt.ctrs.iter().all(|c| c.done);
        let phase = if all_done {
            let failed = rt
                .ctrs
                .iter()
                .any(|c| c.last.as_ref().is_some_and(|t| t.exit_code != 0));
            if failed { "Failed" } else { "Succeeded" }
        } else if all_started && !rt.ctrs.is_empty() {
            "Running"
        } else {
            "Pending"
        };
        let now = now_rfc3339();
        let mut cond = |t: &str, ok: bool| {
            let status = if ok { "True" } else { "False" }.to_string();
            let entry = rt
                .transitions
                .entry(t.to_owned())
                .or_insert_with(|| (status.clone(), now.clone()));
            if entry.0 != status {
                *entry = (status.clone(), now.clone());
            }
            let mut c = json!({"type": t, "status": status, "lastTransitionTime": entry.1, "lastProbeTime": null});
            if !ok && (t == "Ready" || t == "ContainersReady") {
                let names: Vec<&str> = rt
                    .ctrs
                    .iter()
                    .filter(|c| {
                        !(c.child.is_some() && c.probes.lock().map(|p| p.ready).unwrap_or(false))
                    })
                    .map(|c| c.spec.name.as_str())
                    .collect();
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(format!(
                    "containers with unready status: [{}]",
                    names.join(" ")
                ));
            }
            c
        };
        let conditions = json!([
            cond("PodReadyToStartContainers", true),
            cond("Initialized", true),
            cond("ContainersReady", all_ready),
            cond("Ready", all_ready),
        ]);
        let _ = pod;
        json!({
            "phase": phase,
            "podIP": rt.ip,
            "podIPs": [{"ip": rt.ip}],
            "hostIP": self.api_host,
            "hostIPs": [{"ip": self.api_host}],
            "startTime": rt.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        })
    }

    /// Stops every pod: SIGTERM, then SIGKILL after at most 10 s.
    pub async fn stop_all(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for rt in self.pods.values() {
            for c in &rt.ctrs {
                for t in &c.probe_tasks {
                    t.abort();
                }
                if let Some(ch) = &c.child {
                    sigterm(ch.id());
                }
            }
        }
        for rt in self.pods.values_mut() {
            for c in &mut rt.ctrs {
                if let Some(ch) = c.child.as_mut() {
                    while Instant::now() < deadline && !matches!(ch.try_wait(), Ok(Some(_))) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
                c.child = None;
            }
        }
        self.pids
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

fn grace_of(pod: &Pod) -> Duration {
    let s = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(s).unwrap_or(30))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Startup,
    Readiness,
    Liveness,
}

/// Where probes go: the pod's address and its containers' named ports.
#[derive(Clone)]
struct Target {
    /// Where `Unhealthy` goes.
    events: PodEvents,
    container: String,
    ip: String,
    ports: HashMap<String, i32>,
    http: reqwest::Client,
    net: Arc<NetnsNet>,
    slot: usize,
}

impl Target {
    fn port(&self, p: &IntOrString) -> Result<i32, String> {
        match p {
            IntOrString::Int(n) => Ok(*n),
            IntOrString::String(s) => s
                .parse()
                .ok()
                .or_else(|| self.ports.get(s).copied())
                .ok_or_else(|| format!("no container port named {s:?}")),
        }
    }

    /// One probe: `Ok` on success, the reason otherwise.
    async fn once(&self, p: &Probe, timeout: Duration) -> Result<(), String> {
        if let Some(h) = &p.http_get {
            let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
            let host = h.host.clone().unwrap_or_else(|| self.ip.clone());
            let port = self.port(&h.port)?;
            let path = h.path.as_deref().unwrap_or("/");
            let url = format!("{scheme}://{host}:{port}{path}");
            let mut req = self.http.get(&url).timeout(timeout);
            for hd in h.http_headers.iter().flatten() {
                req = req.header(&hd.name, &hd.value);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("Get {url:?}: {}", innermost(&e)))?;
            let code = resp.status().as_u16();
            return if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            };
        }
        if let Some(t) = &p.tcp_socket {
            let port = self.port(&t.port)?;
            let host = t.host.clone().unwrap_or_else(|| self.ip.clone());
            let addr = format!("{host}:{port}");
            return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: timeout")),
            };
        }
        if let Some(e) = &p.exec {
            let cmd = e.command.clone().unwrap_or_default();
            let Some((prog, args)) = cmd.split_first() else {
                return Err("exec probe without a command".into());
            };
            let mut c = tokio::process::Command::from(self.net.command(self.slot, prog));
            c.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            return match tokio::time::timeout(timeout, c.status()).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(format!("command {cmd:?} exited with {s}")),
                Ok(Err(e)) => Err(format!("command {cmd:?}: {e}")),
                Err(_) => Err(format!("command {cmd:?} timed out")),
            };
        }
        Err("this agent supports httpGet, tcpSocket and exec probes".into())
    }
}

/// The root cause of an error ("connection refused", not "error sending request"), as the
/// kubelet's probe messages give it.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Whether a container that exited with `code` stays down under the pod's `restartPolicy`
/// (`Always` when unset).
fn restart_ends(policy: Option<&str>, code: i32) -> bool {
    match policy {
        Some("Never") => true,
        Some("OnFailure") => code == 0,
        _ => false,
    }
}

/// Runs a probe for as long as the container runs, as the kubelet's prober worker.
async fn probe_loop(kind: Kind, p: Probe, target: Target, state: Arc<Mutex<ProbeState>>) {
    let secs = |v: Option<i32>, d: i32| {
        Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
    };
    let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
    let success_needed = p.success_threshold.unwrap_or(1).max(1);
    let failure_needed = p.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
    // Readiness and liveness wait for the startup probe.
    while kind != Kind::Startup && !state.lock().map(|s| s.started).unwrap_or(true) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut ok_run, mut fail_run) = (0, 0);
    loop {
        let result = target.once(&p, timeout).await;
        {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => {
                    ok_run += 1;
                    fail_run = 0;
                    if ok_run >= success_needed {
                        match kind {
                            Kind::Startup => {
                                s.started = true;
                                return;
                            }
                            Kind::Readiness => s.ready = true,
                            Kind::Liveness => {}
                        }
                    }
                }
                Err(why) => {
                    fail_run += 1;
                    ok_run = 0;
                    target.events.warning(
                        "Unhealthy",
                        format!(
                            "{kind:?} probe of container {} failed: {why}",
                            target.container
                        ),
                    );
                    if fail_run >= failure_needed {
                        match kind {
                            Kind::Readiness => s.ready = false,
                            Kind::Startup | Kind::Liveness => {
                                s.failed = Some(format!("{kind:?} probe failed: {why}"));
                                return;
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::restart_ends;

    #[test]
    fn restart_policy_decides_who_stays_down() {
        assert!(!restart_ends(None, 1));
        assert!(!restart_ends(Some("Always"), 0));
        assert!(restart_ends(Some("Never"), 1));
        assert!(restart_ends(Some("OnFailure"), 0));
        assert!(!restart_ends(Some("OnFailure"), 2));
    }
}
