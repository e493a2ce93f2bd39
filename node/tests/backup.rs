//! Backups of real clusters: `node backup save` under write load holds exactly the writes
//! acknowledged up to its revision; `node backup restore` makes a new cluster (new ids) that
//! serves them and grows by Raft; corrupt, truncated, spliced and mismatched backups are
//! refused, naming what is wrong, and leave nothing behind; a second backup while one
//! streams gets 409 and the member keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rstore_backup::format::{Entry, Reader};
use rstore_tests::harness::{Cluster, Consistency, ELECTION, TestNode, metric_value, wait_until};

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

/// Run `node ARGS...`; its exit status, stdout and stderr.
fn node(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(node_bin())
        .args(args)
        .output()
        .expect("run node");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `node backup save --out OUT` from member `index` of `cluster`, as an admin, on a thread.
fn save_task(
    cluster: &Cluster,
    index: usize,
    out: &str,
) -> tokio::task::JoinHandle<(bool, String, String)> {
    save_task_with(cluster, index, out, &[])
}

/// [`save_task`] with `extra` arguments.
fn save_task_with(
    cluster: &Cluster,
    index: usize,
    out: &str,
    extra: &[&str],
) -> tokio::task::JoinHandle<(bool, String, String)> {
    let creds = cluster.creds();
    let mut args: Vec<String> = vec![
        "backup".into(),
        "save".into(),
        "--out".into(),
        out.to_string(),
        "--endpoint".into(),
        cluster.nodes[index].direct_client_url.clone(),
        "--cacert".into(),
        creds.ca_file().display().to_string(),
        "--token".into(),
        creds.admin_token.clone(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node(&args)
    })
}

/// `node backup save` from member `index` of `cluster` into `out`, as an admin.
async fn save(cluster: &Cluster, index: usize, out: &Path) -> (bool, String, String) {
    save_task(cluster, index, out.to_str().unwrap())
        .await
        .unwrap()
}

fn read_backup(path: &Path) -> (rstore_backup::format::Header, BTreeMap<String, Entry>) {
    let mut r = Reader::open(std::fs::File::open(path).unwrap()).unwrap();
    let mut entries = BTreeMap::new();
    while let Some(e) = r.next_entry().unwrap() {
        entries.insert(e.key.clone(), e);
    }
    (r.header().clone(), entries)
}

/// Restore `backup` into `n`'s empty data dir, with the URLs it will advertise.
fn restore_into(backup: &Path, n: &TestNode, extra: &[&str]) -> (bool, String, String) {
    let dir = n.data_dir.display().to_string();
    let file = backup.display().to_string();
    let mut args = vec![
        "backup",
        "restore",
        &file,
        "--data-dir",
        &dir,
        "--advertise-client",
        &n.client_url,
        "--advertise-peer",
        &n.peer_url,
    ];
    args.extend_from_slice(extra);
    node(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_exactly_the_writes_up_to_its_revision() {
    let source = Cluster::start(node_bin(), 3).await;
    // Writers on every member (followers forward), each key written once, so that a key's
    // presence says whether its write is in the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = source.client(w);
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut unsure) = (BTreeMap::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}/{i:06}");
                let value = format!("value of {key}");
                let r = client.put(&key, value.as_bytes()).await;
                if r.status == 200 {
                    acked.insert(key, r.json()["revision"].as_u64().unwrap());
                } else {
                    unsure.push(key);
                }
                i += 1;
            }
            (acked, unsure)
        }));
    }
    wait_until(ELECTION, "writes to start", async || {
        source.client(0).node_info().await["revision"].as_u64() > Some(200)
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("load.rsb");
    // From a follower: it passes the read barrier through the leader.
    let leader = source.leader().await;
    let follower = (leader + 1) % 3;
    let (ok, out, err) = save(&source, follower, &file).await;
    assert!(ok, "backup save failed: {out}{err}");
    // Writes go on after the backup, so some are sure to come after its revision.
    let after = source.client(0).node_info().await["revision"]
        .as_u64()
        .unwrap();
    wait_until(ELECTION, "writes after the backup", async || {
        source.client(0).node_info().await["revision"].as_u64() > Some(after + 100)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut unsure) = (BTreeMap::new(), Vec::new());
    for w in writers {
        let (a, u) = w.await.unwrap();
        acked.extend(a);
        unsure.extend(u);
    }

    let (header, entries) = read_backup(&file);
    let rev = header.revision;
    let saved: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(saved["revision"], rev, "{out}");
    assert_eq!(
        header.cluster_id,
        source.client(0).node_info().await["cluster_id"]
    );
    let (before, after): (Vec<_>, Vec<_>) = acked.iter().partition(|(_, r)| **r <= rev);
    assert!(
        before.len() > 100 && after.len() > 100,
        "{} writes before and {} after revision {rev}",
        before.len(),
        after.len()
    );
    for (key, r) in &before {
        let e = entries
            .get(*key)
            .unwrap_or_else(|| panic!("{key} (revision {r}) acknowledged before {rev} is missing"));
        assert_eq!(e.mod_revision, **r, "{key}");
        assert_eq!(e.value, format!("value of {key}").into_bytes());
    }
    for (key, r) in &after {
        assert!(
            !entries.contains_key(*key),
            "{key} written at revision {r} is in a backup at {rev}"
        );
    }
    for key in entries.keys() {
        assert!(
            acked.contains_key(key) || unsure.contains(key),
            "{key} in the backup was never written"
        );
    }

    // Restore into a new cluster: one member from the backup, two more join it.
    let mut restored = Cluster::new(node_bin(), &[]);
    let mut restore_out = String::new();
    restored
        .spawn_node_prepared(|n| {
            let (ok, out, err) = restore_into(&file, n, &[]);
            assert!(ok, "restore failed: {out}{err}");
            restore_out = out;
        })
        .await;
    assert!(
        restore_out.contains(&format!("restored revision {rev}")),
        "{restore_out}"
    );
    let first = restored.client(0);
    wait_until(ELECTION, "the restored member to lead", async || {
        first.node_info().await["role"] == "leader"
    })
    .await;
    for i in 1..3 {
        restored.spawn_node().await;
        restored.add_member(0, i, "voter").await;
    }
    restored.wait_for_voters(&restored.ids()).await;
    let info = first.node_info().await;
    assert_ne!(
        info["cluster_id"],
        header.cluster_id.as_str(),
        "a new cluster id"
    );
    for id in restored.ids() {
        assert!(!source.ids().contains(&id), "member id {id} reused");
    }
    assert_eq!(info["revision"], rev, "the revision is kept");
    // Every member has exactly the backup's keys, read linearizably through a new member.
    let reader = restored.client(2);
    for (key, r) in &before {
        let got = reader.get(key, Consistency::Linearizable).await;
        assert_eq!(got.status, 200, "{key} (revision {r}) after restore");
        assert_eq!(got.body, format!("value of {key}").into_bytes());
        assert_eq!(got.header("x-rstore-mod-revision"), Some(&*r.to_string()));
    }
    for (key, _) in after.iter().take(200) {
        assert_eq!(
            reader.get(key, Consistency::Linearizable).await.status,
            404,
            "{key}"
        );
    }
    // The next write continues from the backup's revision.
    let w = restored.client(1).put_acked("after/restore", b"x").await;
    assert_eq!(w["revision"].as_u64(), Some(rev + 1), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_spliced_and_mismatched_backups_are_refused_and_leave_nothing() {
    let source = Cluster::start(node_bin(), 1).await;
    let c = source.client(0);
    for i in 0..300 {
        c.put_acked(&format!("k/{i:04}"), &vec![b'a' + (i % 26) as u8; 700])
            .await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.rsb"), tmp.path().join("b.rsb"));
    assert!(save(&source, 0, &a).await.0);
    // The same keys and revisions' shape, one value changed: frames valid on their own.
    c.put_acked("k/0150", &[b'Z'; 700]).await;
    c.delete("k/0299").await;
    assert!(save(&source, 0, &b).await.0);
    let good = std::fs::read(&a).unwrap();
    let other = std::fs::read(&b).unwrap();

    let case = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let mut spliced = good.clone();
    spliced[..other.len().min(good.len()) / 2]
        .copy_from_slice(&other[..other.len().min(good.len()) / 2]);
    let cases = [
        (
            case("truncated.rsb", &good[..good.len() * 2 / 3]),
            vec![],
            "truncated at byte",
        ),
        (case("flipped.rsb", &flipped), vec![], "fails its checksum"),
        (case("spliced.rsb", &spliced), vec![], "corrupt at byte"),
        (case("empty.rsb", b""), vec![], "not an rstore backup"),
        (
            a.clone(),
            vec!["--expect-revision", "1"],
            "not the expected 1",
        ),
        (
            a.clone(),
            vec!["--expect-cluster-id", "nope"],
            "not the expected nope",
        ),
    ];
    let mut target = Cluster::new(node_bin(), &[]);
    for (i, (file, extra, want)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("restore-{i}"));
        let (ok, _, err) = node(
            &[
                "backup",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--advertise-client",
                "https://127.0.0.1:1",
                "--advertise-peer",
                "https://127.0.0.1:2",
            ]
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        assert!(!ok, "{} was restored", file.display());
        assert!(err.contains(want), "{}: {err}", file.display());
        assert!(
            err.contains(file.to_str().unwrap()),
            "names the file: {err}"
        );
        assert!(!dir.exists(), "{} was created", dir.display());
        let (ok, _, err) = node(&["backup", "inspect", file.to_str().unwrap()]);
        if extra.is_empty() {
            assert!(
                !ok && err.contains(want),
                "inspect {}: {err}",
                file.display()
            );
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    // A directory that holds anything is refused too, and kept as it was.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let (ok, _, err) = node(&[
        "backup",
        "restore",
        a.to_str().unwrap(),
        "--data-dir",
        busy.to_str().unwrap(),
        "--advertise-client",
        "https://127.0.0.1:1",
        "--advertise-peer",
        "https://127.0.0.1:2",
    ]);
    assert!(!ok && err.contains("is not empty"), "{err}");
    assert_eq!(std::fs::read(busy.join("keep")).unwrap(), b"x");

    // The good one restores, with its 300 keys.
    target
        .spawn_node_prepared(|n| assert!(restore_into(&a, n, &[]).0))
        .await;
    let t = target.client(0);
    let page = t.get_path("/v1/kv?limit=1000").await.ok_json();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(300), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backup_while_one_streams_gets_409_and_writes_go_on() {
    let source = Cluster::start(node_bin(), 1).await;
    let c = source.client(0);
    // Enough state that the stream outlasts the queue and the socket buffers.
    let value = vec![7u8; 200 << 10];
    for i in 0..100 {
        c.put_acked(&format!("big/{i:03}"), &value).await;
    }
    let url = format!("{}/v1/cluster/backup", source.nodes[0].direct_client_url);
    let http = source.http_builder().build().unwrap();
    let first = http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-rstore-keys"], "100");
    // The first is not read: it holds the member's one backup slot.
    let second = http.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 409);
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backup_in_progress", "{body}");
    // Writes and reads go on meanwhile.
    let w = c.put_acked("during", b"backup").await;
    assert!(w["revision"].as_u64() > Some(100));
    // A reader may not take a backup.
    let reader = source.creds().http(Some(&source.creds().read_token));
    assert_eq!(reader.get(&url).send().await.unwrap().status(), 403);
    // Once the first client goes away, the slot frees.
    drop(first);
    wait_until(Duration::from_secs(10), "the slot to free", async || {
        http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_paces_a_backup_only_while_it_applies_writes() {
    let source = Cluster::start(node_bin(), 3).await;
    let c = source.client(0);
    let value = vec![5u8; 256 << 10];
    for i in 0..24 {
        c.put_acked(&format!("big/{i:03}"), &value).await;
    }
    // From a follower: it applies the writes it did not take in itself.
    let leader = source.leader().await;
    let follower = (leader + 1) % 3;
    let f = source.client(follower);
    let paced = async || {
        let text = f.get_path("/metrics").await.text();
        metric_value(&text, "rstore_backup_paced_seconds_total")
            .unwrap_or_else(|| panic!("no rstore_backup_paced_seconds_total in {text}"))
    };
    let tmp = tempfile::tempdir().unwrap();
    let save_at = async |name: &str, rate: &str| {
        let out = tmp.path().join(name);
        let args = ["--rate-under-load", rate];
        let (ok, stdout, err) = save_task_with(&source, follower, out.to_str().unwrap(), &args)
            .await
            .unwrap();
        assert!(ok, "backup save failed: {stdout}{err}");
        read_backup(&out)
    };

    // Idle: a low rate under load does not slow it.
    let (header, _) = save_at("idle.rsb", "1MB").await;
    assert_eq!(header.keys, 24);
    assert_eq!(paced().await, 0.0);

    // Under writes, the stream (about 6 MB) is paced to 2 MB/s: it waits for seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, client) = (stop.clone(), source.client(leader));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("small/{i:06}");
                let value = b"v".to_vec();
                assert_eq!(client.put(&key, &value).await.status, 200);
                i += 1;
            }
            i
        })
    };
    wait_until(ELECTION, "writes to reach the follower", async || {
        f.node_info().await["revision"].as_u64() > Some(header.revision + 20)
    })
    .await;
    let (loaded, entries) = save_at("loaded.rsb", "2MB").await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let waited = paced().await;
    assert!(
        waited >= 1.0,
        "a 6 MB backup paced to 2 MB/s under writes waited only {waited} s"
    );
    assert!(loaded.revision > header.revision && written > 20);
    assert_eq!(entries.keys().filter(|k| k.starts_with("big/")).count(), 24);

    // A rate the member cannot use is refused, naming what it takes.
    let url = format!(
        "{}/v1/cluster/backup?rate_under_load=fast",
        source.nodes[follower].direct_client_url
    );
    let resp = source
        .http_builder()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("rate_under_load") && message.contains("unlimited"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_mid_backup_spoils_nothing_and_a_killed_source_leaves_no_file() {
    let mut source = Cluster::start(node_bin(), 3).await;
    let value = vec![3u8; 256 << 10];
    let c = source.client(0);
    for i in 0..200 {
        c.put_acked(&format!("big/{i:03}"), &value).await;
    }
    let leader = source.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let url = format!(
        "{}/v1/cluster/backup",
        source.nodes[follower].direct_client_url
    );
    let http = source.http_builder().build().unwrap();

    // A backup from a follower, whose leader dies after the stream began: the copy was
    // taken, so the stream goes on to a good end.
    let mut resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.chunk().await.unwrap().unwrap().to_vec();
    source.nodes[leader].kill9();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let mut r = Reader::open(&body[..]).unwrap();
    assert_eq!(r.verify_rest().unwrap(), 200);

    // The member streaming a backup is stopped and then killed mid-stream: the save fails,
    // saying the stream broke off, and leaves neither the backup nor its partial file.
    // The survivors elect a leader, through which the next backup passes its barrier (a
    // write through the follower shows it is in touch with it).
    source.leader().await;
    source.client(follower).put_acked("before/cut", b"x").await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cut.rsb");
    let partial = out.with_extension("partial");
    let saving = save_task(&source, follower, out.to_str().unwrap());
    wait_until(
        Duration::from_secs(60),
        "the save to start writing",
        async || partial.exists() || out.exists() || saving.is_finished(),
    )
    .await;
    assert!(
        !saving.is_finished(),
        "the save ended early: {:?}",
        saving.await
    );
    source.nodes[follower].pause();
    assert!(
        !out.exists(),
        "the save finished before the member was stopped"
    );
    source.nodes[follower].kill9();
    let (ok, stdout, err) = saving.await.unwrap();
    assert!(!ok, "a cut backup was saved: {stdout}");
    assert!(err.contains("no backup was saved"), "{err}");
    assert!(!out.exists() && !partial.exists(), "files left behind");

    // The survivors serve, and a backup from them is whole.
    source.nodes[leader].start().await;
    let w = source.client(other).put_acked("after/faults", b"x").await;
    let (ok, stdout, err) = save(&source, other, &out).await;
    assert!(ok, "{stdout}{err}");
    let (header, entries) = read_backup(&out);
    assert!(header.revision >= w["revision"].as_u64().unwrap());
    assert_eq!(entries.len(), 202);
}

/// `node backup restore SOURCE` into `dir` with `extra` flags.
fn restore_to(source: &str, dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "backup",
        "restore",
        source,
        "--data-dir",
        dir.to_str().unwrap(),
        "--advertise-client",
        "https://127.0.0.1:1",
        "--advertise-peer",
        "https://127.0.0.1:2",
    ];
    args.extend_from_slice(extra);
    node(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_in_a_store_restore_by_object_revision_and_time_and_a_damaged_one_is_refused() {
    let mut source = Cluster::start(node_bin(), 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let c = source.client(0);
    for i in 0..5 {
        c.put_acked(&format!("first/{i}"), b"1").await;
    }
    let saved = |out: &(bool, String, String)| -> serde_json::Value {
        assert!(out.0, "save failed: {}{}", out.1, out.2);
        serde_json::from_str(out.1.trim()).unwrap()
    };
    let save_url = async |source: &Cluster| save_task(source, 0, &store).await.unwrap();
    let first = saved(&save_url(&source).await);
    for i in 0..5 {
        c.put_acked(&format!("second/{i}"), b"2").await;
    }
    let second = saved(&save_url(&source).await);
    let (r1, r2) = (
        first["revision"].as_u64().unwrap(),
        second["revision"].as_u64().unwrap(),
    );
    assert!(r1 < r2);
    let object = |v: &serde_json::Value| v["object"].as_str().unwrap().to_string();
    for v in [&first, &second] {
        let o = object(v);
        assert!(store_dir.join(&o).is_file(), "{o}");
        let manifest = rstore_backup::manifest::manifest_name(&o);
        assert!(store_dir.join(&manifest).is_file(), "{manifest} beside {o}");
    }

    // The newest, the newest at or before a revision, and one named by its URL.
    let restored = |out: (bool, String, String), rev: u64| {
        assert!(out.0, "restore failed: {}{}", out.1, out.2);
        assert!(
            out.1.contains(&format!("restored revision {rev} ")),
            "{}",
            out.1
        );
    };
    restored(restore_to(&store, &tmp.path().join("latest"), &[]), r2);
    restored(
        restore_to(
            &store,
            &tmp.path().join("by-rev"),
            &["--at-revision", &(r2 - 1).to_string()],
        ),
        r1,
    );
    let by_url = format!("{store}/{}", object(&first));
    restored(restore_to(&by_url, &tmp.path().join("by-url"), &[]), r1);
    // A time before any backup finds none, and says so.
    let (ok, _, err) = restore_to(
        &store,
        &tmp.path().join("too-early"),
        &["--at-time", "2001-01-01T00:00:00Z"],
    );
    assert!(!ok && err.contains("holds no complete backup"), "{err}");
    assert!(!tmp.path().join("too-early").exists());

    // The restored newest one serves the second set of keys.
    let mut target = Cluster::new(node_bin(), &[]);
    target
        .spawn_node_prepared(|n| {
            let (ok, out, err) = restore_into_url(&store, n);
            assert!(ok, "{out}{err}");
        })
        .await;
    let got = target
        .client(0)
        .get("second/4", Consistency::Linearizable)
        .await;
    assert_eq!((got.status, got.body), (200, b"2".to_vec()));

    // An object altered in the store no longer matches its manifest: refused, nothing made.
    let path = store_dir.join(object(&second));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let url2 = format!("{store}/{}", object(&second));
    let (ok, _, err) = restore_to(&url2, &tmp.path().join("damaged"), &[]);
    assert!(!ok, "a damaged backup was restored");
    assert!(err.contains(&url2) && err.contains("SHA-256"), "{err}");
    assert!(!tmp.path().join("damaged").exists());
    source.nodes[0].stop().await;
}

fn restore_into_url(store: &str, n: &TestNode) -> (bool, String, String) {
    let dir = n.data_dir.display().to_string();
    node(&[
        "backup",
        "restore",
        store,
        "--data-dir",
        &dir,
        "--advertise-client",
        &n.client_url,
        "--advertise-peer",
        &n.peer_url,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_s3_with_credentials_from_files_restores_and_a_missing_bucket_is_named() {
    let Some(moto) = rstore_tests::moto::Moto::start("node backup to S3", false) else {
        return;
    };
    assert_eq!(moto.create_bucket("backups"), 200);
    let source = Cluster::start(node_bin(), 1).await;
    let c = source.client(0);
    for i in 0..20 {
        c.put_acked(&format!("s3/{i:02}"), format!("v{i}").as_bytes())
            .await;
    }
    // Credentials as a Kubernetes Secret mounted as files: one file per variable.
    let tmp = tempfile::tempdir().unwrap();
    let creds_dir = tmp.path().join("s3-credentials");
    moto.write_credentials(&creds_dir);
    let creds = source.creds();
    let (ca, token) = (
        creds.ca_file().display().to_string(),
        creds.admin_token.clone(),
    );
    let endpoint = source.nodes[0].direct_client_url.clone();
    let dir = creds_dir.display().to_string();
    let save_to = |url: &str| {
        node(&[
            "backup",
            "save",
            "--out",
            url,
            "--credentials-dir",
            &dir,
            "--endpoint",
            &endpoint,
            "--cacert",
            &ca,
            "--token",
            &token,
        ])
    };
    let (ok, out, err) = tokio::task::block_in_place(|| save_to("s3://backups/team-a"));
    assert!(ok, "{out}{err}");
    let saved: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rev = saved["revision"].as_u64().unwrap();
    assert!(
        saved["url"]
            .as_str()
            .unwrap()
            .starts_with("s3://backups/team-a/"),
        "{saved}"
    );

    // A bucket that does not exist is named before the cluster streams anything.
    let before = c.get_path("/metrics").await.text();
    let (ok, _, err) = tokio::task::block_in_place(|| save_to("s3://no-such-bucket/x"));
    assert!(!ok && err.contains("no-such-bucket"), "{err}");
    let after = c.get_path("/metrics").await.text();
    let complete = |m: &str| {
        rstore_tests::harness::metric_value(m, "rstore_backups_total{outcome=\"complete\"}")
    };
    assert_eq!(complete(&before), Some(1.0), "{before}");
    assert_eq!(
        complete(&after),
        Some(1.0),
        "a backup was streamed for nothing"
    );

    // Restore the newest backup of the prefix into a new member.
    let restored_dir = tmp.path().join("restored");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        node(&[
            "backup",
            "restore",
            "s3://backups/team-a",
            "--credentials-dir",
            &dir,
            "--data-dir",
            restored_dir.to_str().unwrap(),
            "--advertise-client",
            "https://127.0.0.1:1",
            "--advertise-peer",
            "https://127.0.0.1:2",
        ])
    });
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("restored revision {rev} (20 keys)")),
        "{out}"
    );
    assert!(restored_dir.join("snapshot/current").is_file());
}
