//! Point-in-time recovery with real processes: a cluster under a load of puts, overwrites,
//! deletes and transactions, a full backup part-way, `node backup archive` following it
//! (through a restart of the member it watches), then `node backup restore --at-revision`
//! at several revisions and `--at-time`, each restored member started and compared key by
//! key (value, version, create and mod revision) with a model built from the acknowledged
//! writes: every write up to the target, none after it. A damaged archive (a corrupt
//! segment, a missing one, one from another cluster) and a target beyond the archive are
//! refused, naming the object, and leave nothing behind.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use rstore_backup::segment::SegmentReader;
use rstore_tests::harness::{CATCH_UP, Cluster, ELECTION, metric_value, wait_until};
use serde_json::{Value, json};

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

fn node(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(node_bin())
        .args(args)
        .output()
        .expect("run node");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The admin flags to reach member `index` of `cluster`.
fn endpoint(cluster: &Cluster, index: usize) -> Vec<String> {
    let creds = cluster.creds();
    vec![
        "--endpoint".into(),
        cluster.nodes[index].direct_client_url.clone(),
        "--cacert".into(),
        creds.ca_file().display().to_string(),
        "--token".into(),
        creds.admin_token.clone(),
    ]
}

/// `node backup save --out STORE` from member `index`; the revision saved.
async fn full_backup(cluster: &Cluster, index: usize, store: &str) -> u64 {
    full_backup_with(cluster, index, store, &[]).await
}

/// As [`full_backup`], with extra flags.
async fn full_backup_with(cluster: &Cluster, index: usize, store: &str, extra: &[&str]) -> u64 {
    let mut args: Vec<String> = vec!["backup".into(), "save".into(), "--out".into(), store.into()];
    args.extend(endpoint(cluster, index));
    args.extend(extra.iter().map(|a| a.to_string()));
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        node(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(ok, "backup save failed: {out}{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    v["revision"].as_u64().unwrap()
}

/// A running `node backup archive`, killed when dropped.
struct Archiver {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its first line: what it archives, from which revision.
    first: Value,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    metrics: String,
}

impl Archiver {
    fn start(cluster: &Cluster, index: usize, store: &str, max_bytes: usize) -> Archiver {
        Self::start_with(cluster, index, store, max_bytes, &[])
    }

    fn start_with(
        cluster: &Cluster,
        index: usize,
        store: &str,
        max_bytes: usize,
        extra: &[&str],
    ) -> Archiver {
        let mut child = Command::new(node_bin())
            .args([
                "backup",
                "archive",
                "--to",
                store,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            // Short segments, unless the test says otherwise.
            .args(match extra.contains(&"--segment-max-seconds") {
                true => &[][..],
                false => &["--segment-max-seconds", "0.3"][..],
            })
            .args(["--segment-max-bytes", &max_bytes.to_string()])
            // The admin token, unless `extra` gives another.
            .args(
                endpoint(cluster, index)
                    .into_iter()
                    .take(match extra.contains(&"--token") {
                        true => 4,
                        false => 6,
                    }),
            )
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the archiver");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err, errors) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                eprintln!("archiver: {line}");
                let mut all = errors.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the archiver's first line");
        let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first}: {e}"));
        let metrics = v["metrics"].as_str().expect("a metrics URL").to_string();
        Archiver {
            child,
            lines,
            first: v,
            stderr,
            metrics,
        }
    }

    /// Wait for it to exit: its success and what it printed on stderr.
    async fn exit_quietly(&mut self) -> (bool, String) {
        let mut status = None;
        wait_until(CATCH_UP, "the archiver to exit", async || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        })
        .await;
        (
            status.unwrap().success(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    /// Wait for it to exit on its own: its success and what it printed on stderr.
    async fn exit(&mut self) -> (bool, String) {
        let mut status = None;
        wait_until(CATCH_UP, "the archiver to exit", async || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        })
        .await;
        // Its stderr reaches the end with the process.
        let mut text = String::new();
        wait_until(ELECTION, "the archiver's stderr", async || {
            text = self.stderr.lock().unwrap().clone();
            text.contains("rror")
        })
        .await;
        (status.unwrap().success(), text)
    }

    /// The segments it reported uploading so far (one JSON line each).
    fn segments_printed(&self) -> Vec<Value> {
        self.lines
            .try_iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| v.get("segment").is_some())
            .collect()
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        metric_value(&text, name)
    }

    /// Wait until every revision up to `revision` is archived.
    async fn wait_archived(&self, revision: u64) {
        wait_until(
            CATCH_UP,
            &format!("revision {revision} archived"),
            async || self.metric("rstore_archive_archived_revision").await >= Some(revision as f64),
        )
        .await;
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key's state as the model computes it: value, create revision, mod revision, version.
type Kv = (Vec<u8>, u64, u64, u64);

/// The acknowledged writes: (revision, key, value or `None` for a delete), in order.
#[derive(Default)]
struct Model(Vec<(u64, String, Option<Vec<u8>>)>);

impl Model {
    fn at(&self, revision: u64) -> BTreeMap<String, Kv> {
        let mut state: BTreeMap<String, Kv> = BTreeMap::new();
        for (rev, key, value) in self.0.iter().filter(|w| w.0 <= revision) {
            match value {
                Some(v) => {
                    let (create, version) = match state.get(key) {
                        Some(cur) => (cur.1, cur.3 + 1),
                        None => (*rev, 1),
                    };
                    state.insert(key.clone(), (v.clone(), create, *rev, version));
                }
                None => {
                    state.remove(key);
                }
            }
        }
        state
    }
}

/// Every key of a member, read from its own state.
async fn everything(cluster: &Cluster, index: usize) -> (u64, BTreeMap<String, Kv>) {
    let c = cluster.client(index);
    let (mut out, mut after, mut revision) = (BTreeMap::new(), String::new(), 0);
    loop {
        let page = c
            .get_path(&format!(
                "/v1/kv?prefix=&limit=10000&consistency=stale&start_after={after}"
            ))
            .await
            .ok_json();
        revision = revision.max(page["revision"].as_u64().unwrap());
        for item in page["items"].as_array().unwrap() {
            let key = item["key"].as_str().unwrap().to_string();
            let value = base64::engine::general_purpose::STANDARD
                .decode(item["value_base64"].as_str().unwrap())
                .unwrap();
            let n = |f: &str| item[f].as_u64().unwrap();
            out.insert(
                key.clone(),
                (value, n("create_revision"), n("mod_revision"), n("version")),
            );
            after = key;
        }
        if page["more"] != true {
            return (revision, out);
        }
    }
}

/// `node backup restore STORE --data-dir DIR ...EXTRA` for a member that will serve at the
/// given URLs.
fn restore(
    store: &str,
    dir: &Path,
    client: &str,
    peer: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        "backup",
        "restore",
        store,
        "--data-dir",
        dir.to_str().unwrap(),
        "--advertise-client",
        client,
        "--advertise-peer",
        peer,
    ];
    args.extend_from_slice(extra);
    node(&args)
}

/// One write of the load through `c`, recorded in the model: its revision.
async fn write(c: &rstore_tests::harness::NodeClient, model: &mut Model, i: usize) -> u64 {
    let key = |n: usize| format!("k/{:03}", n % 40);
    match i % 7 {
        // A transaction: two keys, and one of them twice, at one revision.
        3 => {
            let (a, b) = (key(i), key(i + 11));
            let body = json!({"compare": [], "success": [
                {"op": "put", "key": a, "value": format!("t{i}-1")},
                {"op": "put", "key": b, "value": format!("t{i}")},
                {"op": "put", "key": a, "value": format!("t{i}-2")},
            ]});
            let r = c.txn(&body).await.ok_json();
            let rev = r["revision"].as_u64().unwrap();
            model
                .0
                .push((rev, a.clone(), Some(format!("t{i}-1").into_bytes())));
            model.0.push((rev, b, Some(format!("t{i}").into_bytes())));
            model.0.push((rev, a, Some(format!("t{i}-2").into_bytes())));
            rev
        }
        // A delete, of a key the model holds.
        5 => {
            let state = model.at(u64::MAX);
            match state.keys().nth(i % state.len().max(1)) {
                Some(k) => {
                    let r = c.delete(k).await.ok_json();
                    let rev = r["revision"].as_u64().unwrap();
                    model.0.push((rev, k.clone(), None));
                    rev
                }
                None => Box::pin(write(c, model, i + 1)).await,
            }
        }
        // Puts: new keys and overwrites.
        _ => {
            let (k, v) = (key(i * 3), format!("v{i}").into_bytes());
            let rev = c.put_acked(&k, &v).await["revision"].as_u64().unwrap();
            model.0.push((rev, k, Some(v)));
            rev
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_restores_exactly_up_to_the_target_revision() {
    let mut source = Cluster::start(node_bin(), 3).await;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let (leader, follower) = source.leader_and_follower().await;
    let c = source.client(leader);

    // Without a full backup the archiver has nothing to start from, and says so.
    let mut args = vec!["backup", "archive", "--to", &store];
    let ep = endpoint(&source, follower);
    args.extend(ep.iter().map(String::as_str));
    let (ok, _, err) = node(&args);
    assert!(!ok && err.contains("take a full backup first"), "{err}");

    let mut model = Model::default();
    let mut i = 0;
    while i < 60 {
        write(&c, &mut model, i).await;
        i += 1;
    }
    let base = full_backup(&source, follower, &store).await;
    assert_eq!(
        base,
        model.0.last().unwrap().0,
        "the backup holds every write so far"
    );

    let archiver = Archiver::start(&source, follower, &store, 4096);
    let mut revs = Vec::new();
    let mut c = c;
    while i < 300 {
        revs.push(write(&c, &mut model, i).await);
        i += 1;
        match i {
            // The watched member goes away: the archiver carries on through another one.
            120 => source.nodes[follower].stop().await,
            160 => source.nodes[follower].start().await,
            // Then the leader: writes go on through the new one.
            200 => {
                source.nodes[leader].stop().await;
                let new = source.leader().await;
                assert_ne!(new, leader);
                c = source.client(new);
            }
            240 => source.nodes[leader].start().await,
            _ => {}
        }
    }
    let newest = *revs.last().unwrap();
    archiver.wait_archived(newest).await;
    let uploaded = archiver
        .metric("rstore_archive_segments_uploaded_total")
        .await;
    let printed = archiver.segments_printed();
    assert!(printed.len() > 3, "{printed:?}");
    assert_eq!(uploaded, Some(printed.len() as f64));
    // They chain: each starts where the one before ended, from the revision after the backup.
    let mut next = base + 1;
    for seg in &printed {
        assert_eq!(seg["first_revision"], next, "{printed:?}");
        next = seg["last_revision"].as_u64().unwrap() + 1;
    }
    assert_eq!(next, newest + 1);
    assert_eq!(
        archiver.metric("rstore_archive_lag_revisions").await,
        Some(0.0)
    );
    assert!(
        archiver
            .metric("rstore_archive_lag_seconds")
            .await
            .is_some()
    );
    let failures = archiver
        .metric("rstore_archive_failures_total{kind=\"watch\"}")
        .await;
    assert!(
        failures >= Some(1.0),
        "the member's restart counted: {failures:?}"
    );

    // A revision inside a transaction, one made by a lone put, the one right after the
    // backup, the newest archived, the backup's own, and one from the clock.
    let txn_rev = model
        .0
        .windows(2)
        .find(|w| w[0].0 == w[1].0 && w[0].0 > base)
        .unwrap()[0]
        .0;
    let put_rev = model
        .0
        .iter()
        .rev()
        .find(|w| w.2.is_some() && w.1.starts_with("k/") && w.0 > base + 20)
        .unwrap()
        .0;
    // Three from the clock, printed so that a failure can be repeated with PITR_SEED.
    let seed: u64 = std::env::var("PITR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("PITR_SEED={seed}");
    let random = |k: u64| {
        base + 1
            + seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(k * 1442695040888963407)
                % (newest - base)
    };
    let targets = [
        base + 1,
        txn_rev,
        put_rev,
        random(1),
        random(2),
        random(3),
        newest,
        base,
    ];
    let mut restored = Cluster::new(node_bin(), &[]);
    for (n, target) in targets.iter().enumerate() {
        let mut said = String::new();
        restored
            .spawn_node_prepared(|node| {
                let (ok, out, err) = restore(
                    &store,
                    &node.data_dir,
                    &node.client_url,
                    &node.peer_url,
                    &["--at-revision", &target.to_string()],
                );
                assert!(ok, "restore at {target}: {out}{err}");
                said = out;
            })
            .await;
        assert!(
            said.contains(&format!("restored revision {target} ")),
            "{said}"
        );
        let client = restored.client(n);
        wait_until(ELECTION, "the restored member to lead", async || {
            client.node_info().await["role"] == "leader"
        })
        .await;
        let (revision, state) = everything(&restored, n).await;
        assert_eq!(revision, *target, "the restored member's revision");
        let want = model.at(*target);
        assert!(!want.is_empty());
        for (k, v) in &want {
            assert_eq!(state.get(k), Some(v), "{k} at revision {target}");
        }
        assert_eq!(
            state.len(),
            want.len(),
            "keys beyond the model at revision {target}"
        );
        if *target < newest {
            assert_ne!(
                model.at(target + 1),
                want,
                "{target} and the next revision differ"
            );
        }
    }

    // At a time: the newest revision the archiver had received by then.
    let mut received: Vec<(u64, u64)> = Vec::new();
    for f in walk(&store_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rsw"))
    {
        let (_, rs) = SegmentReader::open(std::fs::File::open(&f).unwrap())
            .and_then(SegmentReader::read_all)
            .unwrap();
        received.extend(rs.iter().map(|r| (r.received_unix_ms, r.revision)));
    }
    received.sort();
    // A second that ends before the newest segment was closed (the archive covers it).
    let closed = received.last().unwrap().0;
    let inside: Vec<_> = received
        .iter()
        .filter(|(ms, _)| ms / 1000 * 1000 + 999 < closed)
        .collect();
    assert!(!inside.is_empty(), "the load spans more than a second");
    let (mid_ms, _) = *inside[inside.len() / 2];
    let secs = mid_ms / 1000;
    let at = chrono_utc(secs);
    let want = received
        .iter()
        .filter(|(ms, _)| *ms <= secs * 1000 + 999)
        .map(|r| r.1)
        .max()
        .unwrap();
    let dir = tmp.path().join("at-time");
    let (ok, out, err) = restore(
        &store,
        &dir,
        "https://127.0.0.1:1",
        "https://127.0.0.1:2",
        &["--at-time", &at],
    );
    assert!(ok, "restore at {at}: {out}{err}");
    assert!(
        out.contains(&format!("restored revision {want} ")),
        "at {at}: {out}"
    );

    // After the newest segment, once the idle archiver confirmed nothing changed since.
    let cluster_id = c.node_info().await["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let position = store_dir
        .join(&cluster_id)
        .join("wal")
        .join("position.json");
    let last_ms = received.last().unwrap().0;
    let mut confirmed = 0;
    wait_until(CATCH_UP, "the archiver to confirm it is idle", async || {
        let Ok(bytes) = std::fs::read(&position) else {
            return false;
        };
        let p: Value = serde_json::from_slice(&bytes).unwrap();
        confirmed = p["confirmed_unix_ms"].as_u64().unwrap();
        p["revision"] == newest && confirmed / 1000 > last_ms / 1000 + 2
    })
    .await;
    let at = chrono_utc(confirmed / 1000 - 1);
    let dir = tmp.path().join("idle");
    let (ok, out, err) = restore(
        &store,
        &dir,
        "https://127.0.0.1:1",
        "https://127.0.0.1:2",
        &["--at-time", &at],
    );
    assert!(
        ok && out.contains(&format!("restored revision {newest} ")),
        "at {at}: {out}{err}"
    );
    let dir = tmp.path().join("future");
    let (ok, _, err) = restore(
        &store,
        &dir,
        "https://127.0.0.1:1",
        "https://127.0.0.1:2",
        &["--at-time", "2099-01-01T00:00:00Z"],
    );
    assert!(!ok && err.contains("beyond the archive"), "{err}");
    assert!(!dir.exists());

    // Beyond the archive, and before the oldest full backup: refused, nothing made.
    let dir = tmp.path().join("beyond");
    let beyond = (newest + 1000).to_string();
    let (ok, _, err) = restore(
        &store,
        &dir,
        "https://127.0.0.1:1",
        "https://127.0.0.1:2",
        &["--at-revision", &beyond],
    );
    assert!(!ok && err.contains("beyond the archive"), "{err}");
    assert!(
        err.contains(&format!("newest archived revision is {newest}")),
        "{err}"
    );
    assert!(!dir.exists());
    let (ok, _, err) = restore(
        &store,
        &dir,
        "https://127.0.0.1:1",
        "https://127.0.0.1:2",
        &["--at-revision", &(base - 1).to_string()],
    );
    assert!(
        !ok && err.contains("before the oldest full backup"),
        "{err}"
    );
    assert!(!dir.exists());
    drop(archiver);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
fn chrono_utc(secs: u64) -> String {
    let s = rstore_backup::manifest::format_utc(secs);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

fn copy_dir(from: &Path, to: &Path) {
    for f in walk(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// A segment's manifest rewritten to match its (replaced) bytes, as an attacker or a
/// careless copy would leave it: so that the segment's own checks are what refuse it.
fn rewrite_manifest(object: &Path, segment_header: Option<Value>) {
    let manifest = PathBuf::from(format!("{}.manifest.json", object.display()));
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let bytes = std::fs::read(object).unwrap();
    let mut sha = rstore_backup::manifest::Sha256::default();
    sha.update(&bytes);
    m["object_size"] = json!(bytes.len());
    m["sha256"] = json!(sha.finish_hex());
    if let Some(h) = segment_header {
        m["segment"] = h;
    }
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_missing_or_foreign_segment_is_refused_naming_it() {
    let a = Cluster::start(node_bin(), 1).await;
    let b = Cluster::start(node_bin(), 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&dir_a).unwrap();
    std::fs::create_dir(&dir_b).unwrap();
    let (store_a, store_b) = (
        format!("file://{}", dir_a.display()),
        format!("file://{}", dir_b.display()),
    );
    let mut newest = 0;
    for (cluster, store) in [(&a, &store_a), (&b, &store_b)] {
        let c = cluster.client(0);
        for i in 0..20 {
            c.put_acked(&format!("k/{i:03}"), b"before").await;
        }
        full_backup(cluster, 0, store).await;
        // Small segments: several of them.
        let archiver = Archiver::start(cluster, 0, store, 600);
        for i in 0..150 {
            newest = c.put_acked(&format!("k/{:03}", i % 30), &[b'x'; 100]).await["revision"]
                .as_u64()
                .unwrap();
        }
        archiver.wait_archived(newest).await;
        drop(archiver);
    }
    let cluster_a = a.client(0).node_info().await["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let segments: Vec<PathBuf> = walk(&dir_a.join(&cluster_a).join("wal"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rsw"))
        .collect();
    assert!(segments.len() >= 4, "{segments:?}");
    let victim = segments[segments.len() / 2]
        .strip_prefix(&dir_a)
        .unwrap()
        .to_path_buf();
    let foreign = walk(&dir_b)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "rsw"))
        .unwrap();
    let target = newest.to_string();
    let args = ["--at-revision", target.as_str()];

    // The intact archive restores: each damage below is what fails.
    let (ok, out, err) = restore(
        &store_a,
        &tmp.path().join("good"),
        "https://127.0.0.1:1",
        "https://127.0.0.1:2",
        &args,
    );
    assert!(
        ok && out.contains(&format!("restored revision {newest} ")),
        "{out}{err}"
    );

    type Damage = Box<dyn Fn(&Path)>;
    let victim2 = victim.clone();
    let cases: Vec<(&str, Damage, Vec<&str>)> = vec![
        (
            "flipped",
            Box::new(move |s: &Path| {
                let p = s.join(&victim2);
                let mut bytes = std::fs::read(&p).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x20;
                std::fs::write(&p, bytes).unwrap();
            }),
            vec!["SHA-256"],
        ),
        (
            "flipped-manifest-too",
            Box::new({
                let v = victim.clone();
                move |s: &Path| {
                    let p = s.join(&v);
                    let mut bytes = std::fs::read(&p).unwrap();
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0x20;
                    std::fs::write(&p, bytes).unwrap();
                    rewrite_manifest(&p, None);
                }
            }),
            vec!["corrupt at byte"],
        ),
        (
            "truncated",
            Box::new({
                let v = victim.clone();
                move |s: &Path| {
                    let p = s.join(&v);
                    let bytes = std::fs::read(&p).unwrap();
                    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
                    rewrite_manifest(&p, None);
                }
            }),
            vec!["truncated at byte"],
        ),
        (
            "missing",
            Box::new({
                let v = victim.clone();
                move |s: &Path| {
                    let p = s.join(&v);
                    std::fs::remove_file(&p).unwrap();
                    std::fs::remove_file(format!("{}.manifest.json", p.display())).unwrap();
                }
            }),
            vec!["gap"],
        ),
        (
            "manifest-garbled",
            Box::new({
                let v = victim.clone();
                move |s: &Path| {
                    let m = format!("{}.manifest.json", s.join(&v).display());
                    std::fs::write(m, b"{\"manifest_version\": 1, \"obj").unwrap();
                }
            }),
            vec!["gap", "cannot be used"],
        ),
        (
            "object-gone",
            Box::new({
                let v = victim.clone();
                move |s: &Path| std::fs::remove_file(s.join(&v)).unwrap()
            }),
            vec!["gap", "is missing; only its manifest is there"],
        ),
        (
            "foreign",
            Box::new({
                let v = victim.clone();
                let foreign = foreign.clone();
                move |s: &Path| {
                    // Another cluster's segment under this one's name, with a manifest that
                    // matches its bytes.
                    let p = s.join(&v);
                    std::fs::copy(&foreign, &p).unwrap();
                    let (h, _) = SegmentReader::open(std::fs::File::open(&p).unwrap())
                        .and_then(SegmentReader::read_all)
                        .unwrap();
                    let h = json!({
                        "format": h.format, "cluster_id": h.cluster_id,
                        "first_revision": h.first_revision, "last_revision": h.last_revision,
                        "revisions": h.revisions, "changes": h.changes,
                        "first_received_unix_ms": h.first_received_unix_ms,
                        "last_received_unix_ms": h.last_received_unix_ms,
                        "closed_unix_ms": h.closed_unix_ms,
                    });
                    rewrite_manifest(&p, Some(h));
                }
            }),
            vec!["cluster"],
        ),
    ];
    let victim_name = victim.file_name().unwrap().to_str().unwrap().to_string();
    for (name, damage, wants) in cases {
        let copy = tmp.path().join(format!("store-{name}"));
        copy_dir(&dir_a, &copy);
        damage(&copy);
        let url = format!("file://{}", copy.display());
        let dir = tmp.path().join(format!("restore-{name}"));
        let (ok, out, err) = restore(
            &url,
            &dir,
            "https://127.0.0.1:1",
            "https://127.0.0.1:2",
            &args,
        );
        assert!(!ok, "{name}: restored: {out}");
        for want in wants {
            assert!(err.contains(want), "{name}: {err}");
        }
        // Named: the damaged segment, or for a gap the segment before it.
        let named = if name == "missing" {
            segments[segments.len() / 2 - 1]
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        } else {
            victim_name.clone()
        };
        assert!(err.contains(&named), "{name}: does not name {named}: {err}");
        assert!(!dir.exists(), "{name}: {} was made", dir.display());
        // A target before the damage still restores.
        let first = segments[0].file_name().unwrap().to_str().unwrap();
        let last_of_first: u64 = first[25..45].parse().unwrap();
        let (ok, out, err) = restore(
            &url,
            &tmp.path().join(format!("early-{name}")),
            "https://127.0.0.1:1",
            "https://127.0.0.1:2",
            &["--at-revision", &last_of_first.to_string()],
        );
        assert!(ok, "{name}: a target before the damage: {out}{err}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring") || n.contains(".download"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_gap_stops_the_archiver_naming_it_until_a_full_backup_covers_it() {
    // A member that keeps 20 revisions of history for watches.
    let cluster = Cluster::start_with_env(node_bin(), 1, &[("RSTORE_WATCH_HISTORY", "20")]).await;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let c = cluster.client(0);
    let mut rev = 0;
    let put = async |n: usize, rev: &mut u64| {
        for i in 0..n {
            *rev = c
                .put_acked(&format!("k/{:03}", i % 25), format!("{rev}").as_bytes())
                .await["revision"]
                .as_u64()
                .unwrap();
        }
    };
    put(5, &mut rev).await;
    assert_eq!(full_backup(&cluster, 0, &store).await, 5);
    let archiver = Archiver::start(&cluster, 0, &store, 1 << 20);
    put(10, &mut rev).await;
    archiver.wait_archived(15).await;
    drop(archiver);
    // The archiver is away while the member forgets revisions 16 to 45.
    put(50, &mut rev).await;
    assert_eq!(rev, 65);
    let mut archiver = Archiver::start(&cluster, 0, &store, 1 << 20);
    let (ok, err) = archiver.exit().await;
    assert!(!ok, "{err}");
    assert!(err.contains("no longer keeps revision 16"), "{err}");
    assert!(err.contains("revisions 16 to 45 are lost"), "{err}");
    assert!(err.contains("Take a full backup now"), "{err}");

    // A full backup covers the gap: the archiver continues after it.
    assert_eq!(full_backup(&cluster, 0, &store).await, 65);
    let archiver = Archiver::start(&cluster, 0, &store, 1 << 20);
    put(10, &mut rev).await;
    archiver.wait_archived(75).await;
    let failures = archiver
        .metric("rstore_archive_failures_total{kind=\"compacted\"}")
        .await;
    assert_eq!(failures, Some(1.0));
    drop(archiver);
    let at = |r: u64, name: &str| {
        restore(
            &store,
            &tmp.path().join(name),
            "https://127.0.0.1:1",
            "https://127.0.0.1:2",
            &["--at-revision", &r.to_string()],
        )
    };
    let (ok, out, err) = at(70, "after");
    assert!(ok && out.contains("restored revision 70 "), "{out}{err}");
    let (ok, out, err) = at(12, "before");
    assert!(ok && out.contains("restored revision 12 "), "{out}{err}");
    let (ok, _, err) = at(30, "lost");
    assert!(
        !ok && err.contains("gap") && err.contains("revision 16"),
        "{err}"
    );
    assert!(!tmp.path().join("lost").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_through_s3() {
    let Some(moto) = rstore_tests::moto::Moto::start("PITR through S3", false) else {
        return;
    };
    assert_eq!(moto.create_bucket("archive"), 200);
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("s3-credentials");
    moto.write_credentials(&creds);
    let creds = ["--credentials-dir", creds.to_str().unwrap()];
    let store = "s3://archive/prod";
    let source = Cluster::start(node_bin(), 1).await;
    let c = source.client(0);
    let mut model = Model::default();
    for i in 0..30 {
        write(&c, &mut model, i).await;
    }
    let base = full_backup_with(&source, 0, store, &creds).await;
    let archiver = Archiver::start_with(&source, 0, store, 2048, &creds);
    let mut last = 0;
    for i in 30..130 {
        last = write(&c, &mut model, i).await;
    }
    archiver.wait_archived(last).await;
    assert!(archiver.segments_printed().len() >= 2);
    drop(archiver);
    let target = base + (last - base) / 2;
    let at = target.to_string();
    let mut extra = vec!["--at-revision", &at];
    extra.extend(creds);
    let mut restored = Cluster::new(node_bin(), &[]);
    restored
        .spawn_node_prepared(|n| {
            let (ok, out, err) = restore(store, &n.data_dir, &n.client_url, &n.peer_url, &extra);
            assert!(
                ok && out.contains(&format!("restored revision {target} ")),
                "{out}{err}"
            );
        })
        .await;
    let client = restored.client(0);
    wait_until(ELECTION, "the restored member to lead", async || {
        client.node_info().await["role"] == "leader"
    })
    .await;
    let (revision, state) = everything(&restored, 0).await;
    assert_eq!(revision, target);
    assert_eq!(state, model.at(target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_uploads_what_is_pending_and_a_restart_resumes_after_it() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let c = cluster.client(0);
    c.put_acked("first", b"1").await;
    full_backup(&cluster, 0, &store).await;
    // Segments would not be cut for an hour, nor by size.
    let start = |cluster: &Cluster| {
        Archiver::start_with(
            cluster,
            0,
            &store,
            1 << 30,
            &["--segment-max-seconds", "3600"],
        )
    };
    let mut archiver = start(&cluster);
    let mut last = 0;
    for i in 0..25 {
        last = c.put_acked(&format!("k{i}"), b"v").await["revision"]
            .as_u64()
            .unwrap();
    }
    wait_until(
        CATCH_UP,
        "the archiver to receive every write",
        async || archiver.metric("rstore_archive_cluster_revision").await >= Some(last as f64),
    )
    .await;
    assert_eq!(
        archiver.metric("rstore_archive_archived_revision").await,
        Some(1.0),
        "nothing cut yet"
    );
    assert!(archiver.metric("rstore_archive_lag_revisions").await >= Some(25.0));
    let term = Command::new("kill")
        .args(["-TERM", &archiver.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let (ok, err) = archiver.exit_quietly().await;
    assert!(ok, "{err}");
    let printed = archiver.segments_printed();
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(
        (
            printed[0]["first_revision"].as_u64(),
            printed[0]["last_revision"].as_u64()
        ),
        (Some(2), Some(last))
    );
    drop(archiver);
    // A new archiver starts after it.
    let archiver = start(&cluster);
    let from = archiver.first["from_revision"].as_u64();
    assert_eq!(from, Some(last + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_archiver_fails_over_to_its_fallback_endpoints() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let (leader, follower) = cluster.leader_and_follower().await;
    let other = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    let c = cluster.client(leader);
    c.put_acked("first", b"1").await;
    let base = full_backup(&cluster, leader, &store).await;
    // A read token cannot list the members (GET /v1/cluster is admin): they are given.
    let read = cluster.creds().read_token.clone();
    let (l, o) = (
        cluster.nodes[leader].direct_client_url.clone(),
        cluster.nodes[other].direct_client_url.clone(),
    );
    let archiver = Archiver::start_with(
        &cluster,
        follower,
        &store,
        1 << 20,
        &[
            "--token",
            &read,
            "--fallback-endpoint",
            &o,
            "--fallback-endpoint",
            &l,
        ],
    );
    let mut model = Model::default();
    let mut last = base;
    for i in 0..40 {
        last = write(&c, &mut model, i).await;
        if i == 20 {
            cluster.nodes[follower].stop().await;
        }
    }
    archiver.wait_archived(last).await;
    let failures = archiver
        .metric("rstore_archive_failures_total{kind=\"watch\"}")
        .await;
    assert!(failures >= Some(1.0), "{failures:?}");
    drop(archiver);
    let dir = tmp.path().join("restored");
    let (ok, out, err) = restore(
        &store,
        &dir,
        "https://127.0.0.1:1",
        "https://127.0.0.1:2",
        &["--at-revision", &last.to_string()],
    );
    assert!(
        ok && out.contains(&format!("restored revision {last} ")),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_serve_restore_from_reaches_the_exact_revision_through_the_archive() {
    // What the operator's spec.bootstrap.fromBackup runs: node serve --restore-from.
    let cluster = Cluster::start(node_bin(), 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let c = cluster.client(0);
    let mut model = Model::default();
    for i in 0..20 {
        write(&c, &mut model, i).await;
    }
    let base = full_backup(&cluster, 0, &store).await;
    let archiver = Archiver::start(&cluster, 0, &store, 1 << 20);
    let mut last = base;
    for i in 20..80 {
        last = write(&c, &mut model, i).await;
    }
    archiver.wait_archived(last).await;
    drop(archiver);
    let target = (base + last) / 2;
    let at = target.to_string();
    let mut restored = Cluster::new(
        node_bin(),
        &[
            ("RSTORE_RESTORE_FROM", &store),
            ("RSTORE_RESTORE_AT_REVISION", &at),
        ],
    );
    restored.spawn_node().await;
    let client = restored.client(0);
    wait_until(ELECTION, "the restored member to lead", async || {
        client.node_info().await["role"] == "leader"
    })
    .await;
    let (revision, state) = everything(&restored, 0).await;
    assert_eq!(revision, target);
    assert_eq!(state, model.at(target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_serve_that_cannot_restore_exits_and_leaves_why_in_its_termination_message() {
    // On Kubernetes the message reaches the pod's status, and the operator's RestoreFailed.
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-store");
    std::fs::create_dir(&empty).unwrap();
    let store = format!("file://{}", empty.display());
    let message = tmp.path().join("termination-log");
    let data = tmp.path().join("data");
    let mut child = tokio::process::Command::new(node_bin())
        .args([
            "serve",
            "--insecure-plaintext",
            "--listen-client",
            "127.0.0.1:0",
            "--listen-peer",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("RSTORE_RESTORE_FROM", &store)
        .env("RSTORE_TERMINATION_MESSAGE_PATH", &message)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("node serve kept running after a restore it could not do")
        .unwrap();
    assert!(!status.success(), "{status}");
    let why = std::fs::read_to_string(&message).expect("a termination message");
    assert!(
        why.contains(&store) && why.contains("no complete backup"),
        "{why}"
    );
    assert!(
        std::fs::read_dir(&data).map_or(true, |mut d| d.next().is_none()),
        "a failed restore left data behind"
    );
}
