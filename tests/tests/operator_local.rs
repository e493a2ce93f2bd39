//! End to end through the operator's local control plane: the real reconcile loop against the
//! in-memory API server, and the pod runner turning the StatefulSet into real `node`
//! processes on loopback. A background writer runs throughout, and every write it got an
//! acknowledgement for must read back at the end.
//!
//! One test walks a cluster through its life, as a user would: create 3 → Available, scale to
//! 5 and back to 3, add 2 read replicas, kill the leader's process, delete a pod's volume
//! (it comes back with a new id), change the image (a rolling restart, one pod at a time),
//! and switch the replication mode. It prints the time to Available and the heal times.
//!
//! Another, with short health timeouts, pauses nodes (SIGSTOP): two of three voters paused is
//! a lost quorum, reported as Degraded with recovery steps and never forced; one voter paused
//! beyond the replacement timeout is removed, and added back once it answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use rstore_operator::crd::{
    MemberRole, Phase, ReplicatedStore, ReplicatedStoreSpec, ReplicatedStoreStatus, ReplicationMode,
};
use rstore_operator::local::{Fault, LocalControlPlane, LocalOptions};
use rstore_operator::planner::Policy;
use rstore_tests::harness::{node_bin, wait_for};
use serde_json::Value;

const NS: &str = "default";
const NAME: &str = "db";
/// Generous: a membership change waits for catch-up, and two cores run everything.
const STEP: Duration = Duration::from_secs(90);

struct Harness {
    plane: LocalControlPlane,
    spec: ReplicatedStoreSpec,
}

impl Harness {
    /// A local control plane with a fast loop (and `policy`, when given). The log dumper is
    /// returned to be bound after the harness, so that it drops first: the node logs are
    /// printed on failure before the volumes are removed.
    async fn start(policy: Option<Policy>) -> (Harness, DumpLogsOnPanic) {
        let mut opts = LocalOptions::new(node_bin());
        opts.tick = Duration::from_millis(200);
        if let Some(p) = policy {
            opts.settings.policy = p;
        }
        let plane = LocalControlPlane::start(opts)
            .await
            .expect("local control plane");
        let dump = DumpLogsOnPanic(plane.root().to_owned());
        let h = Harness {
            plane,
            spec: ReplicatedStoreSpec::default(),
        };
        (h, dump)
    }

    async fn apply(&mut self, change: impl FnOnce(&mut ReplicatedStoreSpec)) {
        change(&mut self.spec);
        let mut rs = ReplicatedStore::new(NAME, self.spec.clone());
        rs.metadata.namespace = Some(NS.into());
        self.plane.apply(rs).await.expect("apply the spec");
    }

    async fn resource(&self) -> ReplicatedStore {
        self.plane.get(NS, NAME).await.expect("get the resource")
    }

    /// Waits until the status reports the shape asked for, for the current generation, with
    /// every member healthy; returns that status.
    async fn settled(&self, voters: usize, learners: usize, what: &str) -> ReplicatedStoreStatus {
        wait_for(STEP, what, async || {
            let rs = self.resource().await;
            let st = rs.status.clone().ok_or("no status yet")?;
            let summary = summary(&rs);
            let shape_ok = st.observed_generation == rs.metadata.generation
                && st.phase == Some(Phase::Available)
                && condition(&st, "Available") == Some("True")
                && st.leader.is_some()
                && st.members.len() == voters + learners
                && count(&st, MemberRole::Voter) == voters
                && count(&st, MemberRole::Learner) == learners
                && st.members.iter().all(|m| m.healthy && m.pod.is_some());
            if shape_ok { Ok(st) } else { Err(summary) }
        })
        .await
    }

    /// A client with the user credential the store's status names (the CA and a `write`
    /// token), as a user would build from the Secret.
    async fn user_http(&self) -> reqwest::Client {
        self.plane
            .user_client(NS, NAME)
            .await
            .expect("a client from the credentials Secret")
    }

    async fn client_url(&self, pod: &str) -> String {
        self.plane
            .runner
            .lock()
            .await
            .client_url(NS, pod)
            .unwrap_or_else(|| panic!("{pod} has no address"))
    }
}

fn count(st: &ReplicatedStoreStatus, role: MemberRole) -> usize {
    st.members.iter().filter(|m| m.role == role).count()
}

fn condition<'a>(st: &'a ReplicatedStoreStatus, type_: &str) -> Option<&'a str> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

fn summary(rs: &ReplicatedStore) -> String {
    match &rs.status {
        Some(st) => format!(
            "{} (generation {:?}, observed {:?}, conditions {:?})",
            rstore_operator::status::summary(rs, st),
            rs.metadata.generation,
            st.observed_generation,
            st.conditions
                .iter()
                .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                .collect::<Vec<_>>()
        ),
        None => "no status".into(),
    }
}

/// Writes `w-<n>` = `v-<n>` round-robin through the first three pods until stopped; records
/// every acknowledged write.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(String, String)>>,
    failures: Arc<AtomicU64>,
}

impl Writer {
    fn start(urls: Vec<String>, http: reqwest::Client) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let (stop2, failures2) = (stop.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let (key, value) = (format!("w-{n}"), format!("v-{n}"));
                let url = &urls[(n as usize) % urls.len()];
                let ok = matches!(
                    http.put(format!("{url}/v1/kv/{key}")).body(value.clone()).send().await,
                    Ok(r) if r.status().is_success()
                );
                if ok {
                    acked.push((key, value));
                } else {
                    failures2.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        });
        Self {
            stop,
            task,
            failures,
        }
    }

    async fn finish(self) -> (Vec<(String, String)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let acked = self.task.await.expect("writer task");
        (acked, self.failures.load(Ordering::Relaxed))
    }
}

/// Prints the tail of every node's log when the test fails (before the volumes go).
struct DumpLogsOnPanic(std::path::PathBuf);

impl Drop for DumpLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.0.join("logs")) else {
            return;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "==== {} (last {} lines)\n{}",
                e.path().display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_with_a_background_writer_loses_nothing() {
    let (mut h, _dump) = Harness::start(None).await;

    // Create 3 → Available.
    let t0 = Instant::now();
    h.apply(|s| s.replicas = 3).await;
    let st = h.settled(3, 0, "3 voters Available").await;
    let to_available = t0.elapsed();
    let cluster_id = st.cluster_id.clone().expect("cluster id in status");

    let urls = vec![
        h.client_url("db-0").await,
        h.client_url("db-1").await,
        h.client_url("db-2").await,
    ];
    assert!(
        urls.iter().all(|u| u.starts_with("https://")),
        "the operator runs its members with TLS: {urls:?}"
    );
    assert_eq!(
        st.credentials_secret.as_deref(),
        Some("db-credentials"),
        "status names the user credential"
    );
    // Without the credential, the store answers nothing but health.
    let no_token = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let addr = h.plane.runner.lock().await.client_addr(NS, "db-0").unwrap();
    let refused = no_token
        .get(format!("https://{addr}/v1/kv/anything"))
        .send()
        .await
        .expect("the member answers");
    assert_eq!(refused.status(), 401, "no credential: 401");
    let writer = Writer::start(urls.clone(), h.user_http().await);

    // Scale out to 5, then in to 3: members leave Raft before their pods go.
    let t_scale = Instant::now();
    h.apply(|s| s.replicas = 5).await;
    h.settled(5, 0, "5 voters").await;
    let scale_out = t_scale.elapsed();
    h.apply(|s| s.replicas = 3).await;
    h.settled(3, 0, "back to 3 voters").await;
    wait_for(STEP, "the StatefulSet's pods beyond 3 to go", async || {
        let pods = h.plane.pods(NS).await.map_err(|e| e.to_string())?;
        if pods.len() == 3 {
            Ok(())
        } else {
            Err(format!("{} pods", pods.len()))
        }
    })
    .await;

    // Two read replicas join as learners and stay learners.
    h.apply(|s| s.read_replicas = 2).await;
    let st = h.settled(3, 2, "3 voters and 2 learners").await;
    for pod in ["db-3", "db-4"] {
        let m = st
            .members
            .iter()
            .find(|m| m.pod.as_deref() == Some(pod))
            .unwrap();
        assert_eq!(m.role, MemberRole::Learner, "{pod} must be a read replica");
    }

    // Kill the leader's process: it restarts on its volume (kubelet-style) with the same id
    // and rejoins. (openraft lets a leader whose vote is committed restart as leader of the
    // same term when it is back before the followers' election timeout.)
    let leader = st.leader.clone().unwrap();
    let leader_id = st
        .members
        .iter()
        .find(|m| m.pod.as_deref() == Some(leader.as_str()))
        .unwrap()
        .node_id
        .clone();
    let leader_url = h.client_url(&leader).await;
    let t_kill = Instant::now();
    assert!(h.plane.runner.lock().await.inject(NS, &leader, Fault::Kill));
    let http = h.user_http().await;
    wait_for(
        STEP,
        "the killed leader back, ready, and every member healthy",
        async || {
            // The old process is dead (inject waits for it), so a ready answer is the new one.
            let ready = matches!(
                http.get(format!("{leader_url}/readyz")).send().await,
                Ok(r) if r.status().is_success()
            );
            let rs = h.resource().await;
            let st = rs.status.clone().ok_or("no status")?;
            let same_id = st
                .members
                .iter()
                .any(|m| m.pod.as_deref() == Some(leader.as_str()) && m.node_id == leader_id);
            if ready
                && same_id
                && st.leader.is_some()
                && st.members.len() == 5
                && st.members.iter().all(|m| m.healthy)
            {
                Ok(())
            } else {
                Err(format!("ready={ready} {}", summary(&rs)))
            }
        },
    )
    .await;
    let heal_kill = t_kill.elapsed();
    h.settled(3, 2, "healthy after the leader kill").await;

    // Delete a voter's volume: its pod comes back with a new id; the stale member is removed
    // and the new one added.
    let st = h.resource().await.status.unwrap();
    let victim = st
        .members
        .iter()
        .find(|m| m.role == MemberRole::Voter && st.leader != m.pod)
        .cloned()
        .unwrap();
    let victim_pod = victim.pod.clone().unwrap();
    let volume = h.plane.runner.lock().await.volume(NS, &victim_pod);
    let t_wipe = Instant::now();
    // The member is running and may create a file while the directory is removed (its
    // write-ahead log prepares the next segment ahead): remove until it is gone.
    let mut tries = 0;
    while let Err(e) = std::fs::remove_dir_all(&volume) {
        match e.kind() {
            std::io::ErrorKind::NotFound => break,
            std::io::ErrorKind::DirectoryNotEmpty if tries < 100 => tries += 1,
            _ => panic!("cannot wipe {}: {e}", volume.display()),
        }
    }
    wait_for(STEP, "the wiped pod back as a new member", async || {
        let rs = h.resource().await;
        let st = rs.status.clone().ok_or("no status")?;
        let back = st.members.iter().any(|m| {
            m.pod.as_deref() == Some(victim_pod.as_str())
                && m.node_id != victim.node_id
                && m.healthy
        });
        let stale_gone = st.members.iter().all(|m| m.node_id != victim.node_id);
        if back
            && stale_gone
            && count(&st, MemberRole::Voter) == 3
            && st.members.iter().all(|m| m.healthy)
        {
            Ok(())
        } else {
            Err(summary(&rs))
        }
    })
    .await;
    let heal_wipe = t_wipe.elapsed();
    h.settled(3, 2, "healthy after the volume loss").await;

    // A new image: every pod restarts once, one at a time, and the cluster stays available.
    let t_roll = Instant::now();
    h.apply(|s| s.image = "ghcr.io/rstore/node:0.1.1".into())
        .await;
    h.settled(3, 2, "rolled to the new image").await;
    let roll = t_roll.elapsed();
    for pod in h.plane.pods(NS).await.unwrap() {
        let image = &pod.spec.as_ref().unwrap().containers[0].image;
        assert_eq!(
            image.as_deref(),
            Some("ghcr.io/rstore/node:0.1.1"),
            "{}",
            pod.name_any()
        );
    }
    let mut restarts: Vec<(Option<k8s_openapi::jiff::Timestamp>, String, String)> = h
        .plane
        .events(NS)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RestartingPod"))
        .map(|e| {
            let repeats = e.series.as_ref().map_or(1, |s| s.count);
            assert_eq!(
                repeats, 1,
                "a pod was restarted more than once: {:?}",
                e.note
            );
            let at = e.event_time.as_ref().map(|t| t.0);
            (
                at,
                e.related.and_then(|r| r.name).unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect();
    restarts.sort();
    let mut restarted: Vec<&str> = restarts.iter().map(|(_, pod, _)| pod.as_str()).collect();
    restarted.sort();
    assert_eq!(
        restarted,
        ["db-0", "db-1", "db-2", "db-3", "db-4"],
        "each pod restarted once"
    );
    // The leader goes last: a restart of the pod that leads at that moment can only be the
    // final one (leadership may move to an already restarted pod before, so none at all is
    // fine too).
    let order: Vec<&str> = restarts.iter().map(|(_, _, note)| note.as_str()).collect();
    println!("rolling restart order: {order:?}");
    let leader_restarts: Vec<usize> = restarts
        .iter()
        .enumerate()
        .filter(|(_, (_, _, note))| note.contains("(the leader)"))
        .map(|(i, _)| i)
        .collect();
    assert!(
        leader_restarts.is_empty() || leader_restarts == [restarts.len() - 1],
        "the leader was restarted before other pods: {restarts:?}"
    );

    // Switch the mode live.
    h.apply(|s| s.replication.mode = ReplicationMode::Sync)
        .await;
    h.settled(3, 2, "sync mode").await;
    let admin = h.plane.admin_client(NS, NAME).await.expect("admin client");
    let forbidden = h
        .user_http()
        .await
        .get(format!("{}/v1/cluster/config", urls[0]))
        .send()
        .await
        .expect("answer");
    assert_eq!(forbidden.status(), 403, "the user token is not admin");
    wait_for(STEP, "the nodes to report sync mode", async || {
        let cfg: Value = admin
            .get(format!("{}/v1/cluster/config", urls[0]))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if cfg["replication_mode"] == "sync" {
            Ok(())
        } else {
            Err(cfg.to_string())
        }
    })
    .await;

    // Nothing acknowledged was lost, and the cluster is still the one it was.
    let (acked, failures) = writer.finish().await;
    assert!(
        acked.len() > 100,
        "the writer made progress: {} acked",
        acked.len()
    );
    for (key, value) in &acked {
        let url = format!("{}/v1/kv/{key}?consistency=linearizable", urls[0]);
        let body = wait_for(Duration::from_secs(30), "an acknowledged key", async || {
            let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if r.status().as_u16() == 404 {
                return Ok(None);
            }
            if !r.status().is_success() {
                return Err(format!("{}", r.status()));
            }
            Ok(Some(r.text().await.map_err(|e| e.to_string())?))
        })
        .await;
        assert_eq!(
            body.as_deref(),
            Some(value.as_str()),
            "acknowledged write of {key} lost"
        );
    }
    let st = h.resource().await.status.unwrap();
    assert_eq!(st.cluster_id.as_deref(), Some(cluster_id.as_str()));
    println!(
        "operator e2e: Available in {:.1}s; 3 -> 5 voters in {:.1}s; leader kill healed in \
         {:.1}s; volume loss healed in {:.1}s; rolling restart of 5 pods in {:.1}s; {} writes \
         acknowledged and read back, {} failed or unknown",
        to_available.as_secs_f64(),
        scale_out.as_secs_f64(),
        heal_kill.as_secs_f64(),
        heal_wipe.as_secs_f64(),
        roll.as_secs_f64(),
        acked.len(),
        failures
    );
    h.plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_loss_is_reported_never_forced_and_unreachable_members_are_replaced() {
    let (mut h, _dump) = Harness::start(Some(Policy {
        contact_timeout_ms: 2_000,
        replace_after_ms: 6_000,
        degraded_after_ms: 3_000,
        ..Policy::default()
    }))
    .await;
    let t = Instant::now();
    h.apply(|s| s.replicas = 3).await;
    let st = h.settled(3, 0, "3 voters Available").await;
    let leader = st.leader.clone().unwrap();
    let followers: Vec<String> = st
        .members
        .iter()
        .filter_map(|m| m.pod.clone())
        .filter(|p| *p != leader)
        .collect();
    let ids_before: Vec<String> = st.members.iter().map(|m| m.node_id.clone()).collect();

    // Two of three voters hang: quorum is lost. The operator says so, with what to do, and
    // changes nothing.
    for f in &followers {
        assert!(h.plane.runner.lock().await.inject(NS, f, Fault::Pause));
    }
    let degraded = wait_for(STEP, "Degraded after the quorum is lost", async || {
        let rs = h.resource().await;
        let st = rs.status.clone().ok_or("no status")?;
        let c = st.conditions.iter().find(|c| c.type_ == "Degraded");
        match c {
            Some(c) if st.phase == Some(Phase::Degraded) && c.status == "True" => {
                Ok((st.clone(), c.message.clone()))
            }
            _ => Err(summary(&rs)),
        }
    })
    .await;
    let (st, message) = degraded;
    println!("degraded reported after {:?}", t.elapsed());
    assert!(message.contains("Recovery:"), "{message}");
    assert!(message.contains("restore from a backup"), "{message}");
    assert_eq!(condition(&st, "Available"), Some("False"));
    let ids: Vec<String> = st.members.iter().map(|m| m.node_id.clone()).collect();
    assert_eq!(
        ids, ids_before,
        "no member may be removed while quorum is lost"
    );
    let warned = h.plane.events(NS).await.unwrap().into_iter().any(|e| {
        e.reason.as_deref() == Some("QuorumLost") && e.type_.as_deref() == Some("Warning")
    });
    assert!(warned, "a Warning Event reports the lost quorum");

    for f in &followers {
        assert!(h.plane.runner.lock().await.inject(NS, f, Fault::Resume));
    }
    let st = h
        .settled(3, 0, "Available again once the voters are back")
        .await;
    let ids: Vec<String> = st.members.iter().map(|m| m.node_id.clone()).collect();
    assert_eq!(ids.len(), 3);
    for id in &ids_before {
        assert!(ids.contains(id), "the same members, none forced out");
    }

    // One voter hangs beyond the replacement timeout: removed while a healthy quorum remains,
    // and added back (caught up, then promoted) when it answers again.
    let st = h.resource().await.status.unwrap();
    let leader = st.leader.clone().unwrap();
    let victim = st
        .members
        .iter()
        .find(|m| m.pod.as_deref() != Some(leader.as_str()))
        .cloned()
        .unwrap();
    let victim_pod = victim.pod.clone().unwrap();
    assert!(
        h.plane
            .runner
            .lock()
            .await
            .inject(NS, &victim_pod, Fault::Pause)
    );
    wait_for(STEP, "the unreachable member removed", async || {
        let rs = h.resource().await;
        let st = rs.status.clone().ok_or("no status")?;
        if st.members.len() == 2 && st.members.iter().all(|m| m.node_id != victim.node_id) {
            Ok(())
        } else {
            Err(summary(&rs))
        }
    })
    .await;
    println!("unreachable member removed after {:?}", t.elapsed());
    let removal = h.plane.events(NS).await.unwrap().into_iter().find(|e| {
        e.reason.as_deref() == Some("RemovingMember")
            && e.note.as_deref().is_some_and(|n| n.contains("unreachable"))
    });
    assert!(
        removal.is_some(),
        "an Event says why the member was removed"
    );
    assert!(
        h.plane
            .runner
            .lock()
            .await
            .inject(NS, &victim_pod, Fault::Resume)
    );
    let st = h
        .settled(3, 0, "the member back after it answers again")
        .await;
    assert!(
        st.members
            .iter()
            .any(|m| m.pod.as_deref() == Some(victim_pod.as_str())),
        "{victim_pod} is a member again"
    );
    h.plane.shutdown().await;
}

/// Kills the `operator local` process if the test fails before it stops it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            // Give it the chance to stop its nodes, then make sure.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_command_follows_edits_of_the_file_and_stops_cleanly() {
    use std::io::BufRead;
    let operator = node_bin().with_file_name("operator");
    assert!(operator.is_file(), "{} not built", operator.display());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.yaml");
    let yaml = |replicas: u32| {
        format!(
            "apiVersion: rstore.dev/v1alpha1\nkind: ReplicatedStore\nmetadata:\n  name: demo\n\
             spec:\n  replicas: {replicas}\n"
        )
    };
    std::fs::write(&file, yaml(1)).unwrap();
    let child = std::process::Command::new(&operator)
        .args(["local", "-f"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("plane"))
        .env("RSTORE_NODE_BIN", node_bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    let seen = |pred: &dyn Fn(&str) -> bool| lines.lock().unwrap().iter().any(|l| pred(l));
    wait_for(STEP, "one member Available", async || {
        if seen(&|l| l.contains("demo is Available. Endpoints:")) {
            Ok(())
        } else {
            Err(lines.lock().unwrap().join("\n"))
        }
    })
    .await;

    std::fs::write(&file, yaml(3)).unwrap();
    let three_voters = |l: &str| l.contains(" Available ") && l.matches(":V").count() == 3;
    wait_for(STEP, "the edit scaled it to 3 voters", async || {
        if seen(&three_voters) {
            Ok(())
        } else {
            Err(lines.lock().unwrap().join("\n"))
        }
    })
    .await;
    // `demo-0 https://demo-0.demo-peer.default.svc:7379 at 127.x.y.z`
    let address = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            let rest = l.split("Endpoints: ").nth(1)?;
            let demo0 = rest.split(", ").find(|e| e.starts_with("demo-0 "))?;
            Some(demo0.rsplit(" at ").next()?.to_owned())
        })
        .expect("address of demo-0");
    // The printed commands work as printed: the `node kv` line writes and reads back.
    let kv_line = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("try: ")
                .filter(|c| c.contains(" kv put "))
                .map(str::to_owned)
        })
        .expect("a node kv command");
    assert!(
        kv_line.contains("--cacert") && kv_line.contains("--token"),
        "{kv_line}"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &kv_line])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello"),
        "{kv_line}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = format!("https://{address}:7379");
    // By address, without verifying the certificate: any answer at all means it still runs.
    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let up = probe.get(format!("{endpoint}/healthz")).send().await;
    assert!(
        up.is_ok_and(|r| r.status().is_success()),
        "{endpoint} answers while running"
    );

    std::process::Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "operator local did not stop after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");
    // Let the reader thread drain the last lines.
    wait_for(Duration::from_secs(5), "the last line", async || {
        if seen(&|l| l == "stopped") {
            Ok(())
        } else {
            Err(lines.lock().unwrap().join("\n"))
        }
    })
    .await;
    let gone = probe
        .get(format!("{endpoint}/healthz"))
        .send()
        .await
        .is_err();
    assert!(
        gone,
        "the nodes were stopped with the control plane ({endpoint} still answers)"
    );
}

/// With `spec.tls.issuerRef` the operator asks cert-manager for one `Certificate` the members
/// share, and no member starts before cert-manager has issued it. Here the test plays
/// cert-manager: it issues that Certificate from a CA of its own, as the issuer would, into
/// the Secret it names; the store then forms on it and serves the user credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_issuer_ref_the_members_run_on_the_cert_manager_certificate() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use kube::api::PostParams;
    use rstore_operator::crd::IssuerRef;
    use rstore_operator::resources::certmanager::Certificate;

    let (mut h, _dump) = Harness::start(None).await;
    let issuer = IssuerRef {
        name: "corp-ca".into(),
        kind: "ClusterIssuer".into(),
        group: "cert-manager.io".into(),
    };
    h.apply(|s| {
        s.replicas = 3;
        s.tls.issuer_ref = Some(issuer.clone());
    })
    .await;
    let certs = Api::<Certificate>::namespaced(h.plane.client.clone(), NS);
    let cert = wait_for(STEP, "the operator's Certificate", async || {
        certs
            .get_opt("db-member")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    assert_eq!(cert.spec.issuer_ref, issuer);
    assert_eq!(cert.spec.secret_name, "db-member-tls");
    // Not issued yet: the status says what it waits for, and no pod is created.
    wait_for(STEP, "Progressing=False CredentialsPending", async || {
        let rs = h.resource().await;
        let pending = rs.status.as_ref().is_some_and(|st| {
            st.phase == Some(Phase::Pending)
                && st.conditions.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.reason == "CredentialsPending"
                        && c.message.contains("db-member-tls")
                })
        });
        if pending { Ok(()) } else { Err(summary(&rs)) }
    })
    .await;
    assert!(
        h.plane.pods(NS).await.unwrap().is_empty(),
        "no pod before its certificate"
    );

    // cert-manager's part: a certificate with what the Certificate asks for.
    let ca = rstore_api::pki::Ca::generate("corp").unwrap();
    let mut hosts = cert.spec.dns_names.clone();
    hosts.extend(cert.spec.ip_addresses.clone());
    let pem = ca.member_of(&hosts, &cert.spec.uris).unwrap();
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(cert.spec.secret_name.clone()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt", bytes(&pem.cert)),
                ("tls.key", bytes(&pem.key)),
                ("ca.crt", bytes(&ca.pem().cert)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(h.plane.client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let st = h.settled(3, 0, "3 voters on the issued certificate").await;
    assert_eq!(st.credentials_secret.as_deref(), Some("db-credentials"));
    let http = h.user_http().await;
    let url = h.client_url("db-1").await;
    assert!(url.starts_with("https://"), "{url}");
    let put = http
        .put(format!("{url}/v1/kv/issued"))
        .body("by-cert-manager")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let got = http
        .get(format!("{}/v1/kv/issued", h.client_url("db-2").await))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "by-cert-manager");
}

/// `spec.tls.insecurePlaintext` runs a store without TLS; and a store whose StatefulSet runs
/// plaintext (as an operator before TLS created them) stays plaintext when its spec no longer
/// says so: the operator never switches a running cluster's transport under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plaintext_store_is_never_switched_to_tls_under_its_members() {
    let (mut h, _dump) = Harness::start(None).await;
    h.apply(|s| {
        s.replicas = 1;
        s.tls.insecure_plaintext = true;
    })
    .await;
    let st = h.settled(1, 0, "1 plaintext voter").await;
    assert_eq!(st.credentials_secret, None, "no credentials in plaintext");
    let url = h.client_url("db-0").await;
    assert!(url.starts_with("http://"), "{url}");
    let http = h.user_http().await;
    let put = http
        .put(format!("{url}/v1/kv/k"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert!(
        put.status().is_success(),
        "no credential needed: {}",
        put.status()
    );
    let revision_of = async |plane: &LocalControlPlane| {
        plane.pods(NS).await.unwrap()[0]
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("rstore.dev/revision")
            .cloned()
    };
    let before = revision_of(&h.plane).await;

    // The spec without `tls`, as a store from before TLS reads.
    h.apply(|s| s.tls.insecure_plaintext = false).await;
    let generation = h.resource().await.metadata.generation;
    wait_for(STEP, "the edit observed", async || {
        let rs = h.resource().await;
        match &rs.status {
            Some(st) if st.observed_generation == generation => Ok(()),
            _ => Err(summary(&rs)),
        }
    })
    .await;
    // Several reconciles later: the same pod, same template, same transport, same data.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = h.settled(1, 0, "still 1 voter").await;
    assert_eq!(
        revision_of(&h.plane).await,
        before,
        "the pod was not rolled"
    );
    assert_eq!(st.credentials_secret, None);
    let got = h
        .user_http()
        .await
        .get(format!("{}/v1/kv/k", h.client_url("db-0").await))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "v");
    let events = h.plane.events(NS).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Plaintext")),
        "a Warning Event says why it stays plaintext"
    );
}

/// A member certificate that is due for renewal is reissued by the operator, written to the
/// Secret every pod mounts, and served by the running member within seconds: no restart, and
/// writes go on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_due_for_renewal_is_reissued_and_served_without_a_restart() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use kube::api::PostParams;
    use rstore_api::pki::{Ca, Pem};
    use rstore_operator::resources::Names;
    use rstore_operator::resources::credentials::member_hosts;

    let (mut h, _dump) = Harness::start(None).await;
    h.apply(|s| s.replicas = 3).await;
    h.settled(3, 0, "3 voters").await;
    let urls = vec![
        h.client_url("db-0").await,
        h.client_url("db-1").await,
        h.client_url("db-2").await,
    ];
    let writer = Writer::start(urls, h.user_http().await);
    let secrets = Api::<Secret>::namespaced(h.plane.client.clone(), NS);
    let text =
        |s: &Secret, k: &str| String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap();
    let ca_secret = secrets.get("db-ca").await.unwrap();
    let ca_pem = text(&ca_secret, "ca.crt");
    let addr = h.plane.runner.lock().await.client_addr(NS, "db-1").unwrap();
    // The certificate db-1 serves, as a client sees it.
    let served = async || -> Result<Vec<u8>, String> {
        let config = rstore_api::client::tls::client_config(ca_pem.as_bytes(), None)
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("db-1.db-peer.default.svc")
            .unwrap()
            .to_owned();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("no certificate")?;
        Ok(certs[0].to_vec())
    };
    let der = |pem: &str| {
        rstore_api::client::tls::certs_from_pem(pem.as_bytes(), "t").unwrap()[0].to_vec()
    };
    let original = text(&secrets.get("db-tls").await.unwrap(), "db-1.crt");
    assert_eq!(served().await.unwrap(), der(&original));
    let pod_uid = |pods: Vec<k8s_openapi::api::core::v1::Pod>| {
        pods.into_iter()
            .find(|p| p.metadata.name.as_deref() == Some("db-1"))
            .and_then(|p| {
                let restarts = p.status?.container_statuses?[0].restart_count;
                Some((p.metadata.uid, restarts))
            })
    };
    let before = pod_uid(h.plane.pods(NS).await.unwrap());

    // Make db-1's certificate one with ten minutes left: due (less than a third of its life).
    let ca = Ca::from_pem(Pem {
        cert: ca_pem.clone(),
        key: text(&ca_secret, "ca.key"),
    })
    .unwrap()
    .with_leaf_validity(Duration::from_secs(600));
    let names = Names::new(NAME, NS);
    let due = ca
        .member(&member_hosts(&names, 1), &names.peer_url(1))
        .unwrap();
    let mut tls = secrets.get("db-tls").await.unwrap();
    let data = tls.data.get_or_insert_default();
    data.insert("db-1.crt".into(), ByteString(due.cert.clone().into_bytes()));
    data.insert("db-1.key".into(), ByteString(due.key.clone().into_bytes()));
    secrets
        .replace("db-tls", &PostParams::default(), &tls)
        .await
        .unwrap();

    let renewed = wait_for(STEP, "a renewed certificate served by db-1", async || {
        let now = text(
            &secrets.get("db-tls").await.map_err(|e| e.to_string())?,
            "db-1.crt",
        );
        if now == original || now == due.cert {
            return Err("not renewed yet".into());
        }
        if served().await? == der(&now) {
            Ok(now)
        } else {
            Err("renewed in the Secret, not served yet".into())
        }
    })
    .await;
    let (not_after, _) = rstore_api::pki::validity_of(&renewed).unwrap();
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(80 * 86_400), "{left:?} left");
    assert_eq!(
        pod_uid(h.plane.pods(NS).await.unwrap()),
        before,
        "the same pod, never restarted"
    );
    let st = h.settled(3, 0, "healthy after the renewal").await;
    assert!(st.members.iter().all(|m| m.healthy));
    // The operator's metric says when the first certificate expires: 90 days out again.
    let metrics = h.plane.metrics.encode();
    let expiry: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "rstore_operator_certificate_expiry_timestamp_seconds{store_namespace=\"default\",store=\"db\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no expiry metric in:\n{metrics}"))
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now + 80 * 86_400,
        "first expiry {expiry}, now {now}"
    );
    let (acked, failures) = writer.finish().await;
    assert!(!acked.is_empty());
    assert_eq!(failures, 0, "no write failed during the renewal");
}

/// A Secret in the way (same name as one the store needs, not written by the operator) is
/// never overwritten: the store waits with a condition that names it, and forms once it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_secret_in_the_way_is_named_not_overwritten() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use kube::api::{DeleteParams, PostParams};

    let (mut h, _dump) = Harness::start(None).await;
    let secrets = Api::<Secret>::namespaced(h.plane.client.clone(), NS);
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("db-ca".into()),
            ..Default::default()
        },
        data: Some([("password".to_owned(), ByteString(b"hunter2".to_vec()))].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    h.apply(|s| s.replicas = 1).await;
    wait_for(
        STEP,
        "a condition naming the Secret in the way",
        async || {
            let rs = h.resource().await;
            let named = rs.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.reason == "CredentialsPending" && c.message.contains("Secret db-ca"))
            });
            if named { Ok(()) } else { Err(summary(&rs)) }
        },
    )
    .await;
    let kept = secrets.get("db-ca").await.unwrap();
    assert_eq!(kept.data, foreign.data, "the foreign Secret is untouched");
    assert!(h.plane.pods(NS).await.unwrap().is_empty());

    secrets
        .delete("db-ca", &DeleteParams::default())
        .await
        .unwrap();
    h.settled(1, 0, "formed once the Secret is gone").await;
}
