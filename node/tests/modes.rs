//! Replication modes (`quorum`, `sync`, `async`), the cluster-wide read consistency
//! default, and learners (read replicas), on clusters of real `node` processes.
//!
//! Each test owns its cluster. Settings are changed through `PUT /v1/cluster/config`, and
//! every acknowledged write is read back at the end with linearizable reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rstore_tests::harness::{
    CATCH_UP, Cluster, Consistency, ELECTION, Expected, NodeClient, assert_values, count_matches,
    kv_path, members, wait_for, wait_until, write_keys,
};
use serde_json::{Value, json};

/// This package's `node` binary, which cargo builds for the package's tests.
fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

/// `RSTORE_SYNC_TIMEOUT_MS` of the sync-mode cluster.
const SYNC_TIMEOUT: Duration = Duration::from_millis(1500);

/// Wait until every running node has applied the cluster setting `field` = `value`.
async fn wait_config_everywhere(cluster: &mut Cluster, field: &str, value: &str) {
    for index in cluster.running() {
        let client = cluster.client(index);
        let what = format!("node {index} to apply {field} = {value}");
        wait_for(ELECTION, &what, async || {
            let config = client.config().await;
            if config[field] == value {
                Ok(())
            } else {
                Err(config.to_string())
            }
        })
        .await;
    }
}

/// A write that must be acknowledged at once (no retries) with a revision and version.
async fn put_ok(client: &NodeClient, key: &str, value: &[u8]) {
    let ack = client.put(key, value).await.ok_json();
    assert!(
        ack["revision"].is_u64() && ack["version"].is_u64(),
        "PUT {key} via {}: {ack}",
        client.url
    );
}

/// The `/v1/cluster` member `id` as the leader sees it.
fn member(view: &Value, id: u64) -> &Value {
    view["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id))
        .unwrap_or_else(|| panic!("member {id} not in {view}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_fails_writes_while_a_voter_is_down() {
    let timeout_ms = SYNC_TIMEOUT.as_millis().to_string();
    let mut cluster = Cluster::start_with_env(
        node_bin(),
        3,
        &[("RSTORE_SYNC_TIMEOUT_MS", timeout_ms.as_str())],
    )
    .await;
    let (leader, stopped) = cluster.leader_and_follower().await;
    let survivor = 3 - leader - stopped;
    let stopped_id = cluster.nodes[stopped].id;

    // Set through a follower, so that the change is forwarded to the leader.
    cluster.client(survivor).set_mode("sync").await;
    wait_config_everywhere(&mut cluster, "replication_mode", "sync").await;

    let mut expected = Expected::new();
    for i in 0..9 {
        let key = format!("sync/all-up/{i:02}");
        let value = format!("written with every voter up, #{i}").into_bytes();
        put_ok(&cluster.client(i % 3), &key, &value).await;
        expected.insert(key, value);
    }

    cluster.nodes[stopped].kill9();
    // Through the leader and through the surviving follower, at the same time.
    let timed_put = async |index: usize| {
        let key = format!("sync/voter-down/via-{index}");
        let started = Instant::now();
        let resp = cluster.client(index).put(&key, key.as_bytes()).await;
        (key, resp, started.elapsed())
    };
    let (a, b) = tokio::join!(timed_put(leader), timed_put(survivor));
    let mut committed_on_quorum = Expected::new();
    for (key, resp, took) in [a, b] {
        resp.assert_error(503, "sync_replication_timeout");
        let message = resp.json()["error"]["message"].to_string();
        assert!(
            message.contains(&stopped_id.to_string()),
            "PUT {key}: the message names the stopped voter {stopped_id}: {message}"
        );
        assert!(
            took >= SYNC_TIMEOUT - Duration::from_millis(100) && took < Duration::from_secs(10),
            "PUT {key} failed after {took:?}; the sync timeout is {SYNC_TIMEOUT:?}"
        );
        // Documented: the write is committed on a quorum and stays.
        committed_on_quorum.insert(key.clone(), key.into_bytes());
    }

    cluster.nodes[stopped].start().await;
    assert_eq!(
        cluster.nodes[stopped].id, stopped_id,
        "same data dir, same id"
    );
    let leader = cluster.leader().await;
    let leader_client = cluster.client(leader);
    wait_for(CATCH_UP, "the restarted voter to catch up", async || {
        let view = leader_client.cluster_view().await.ok_json();
        match member(&view, stopped_id)["lag"].as_u64() {
            Some(0) => Ok(()),
            _ => Err(view.to_string()),
        }
    })
    .await;
    for i in 0..9 {
        let key = format!("sync/after-restart/{i:02}");
        let value = format!("written after the voter came back, #{i}").into_bytes();
        put_ok(&cluster.client(i % 3), &key, &value).await;
        expected.insert(key, value);
    }
    assert_eq!(
        cluster.client(leader).config().await["replication_mode"],
        "sync"
    );

    expected.extend(committed_on_quorum);
    for index in 0..3 {
        assert_values(&cluster.client(index), &expected, Consistency::Linearizable).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_keeps_writing_with_one_voter_down() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, stopped) = cluster.leader_and_follower().await;
    let survivor = 3 - leader - stopped;
    assert_eq!(
        cluster.client(leader).config().await["replication_mode"],
        "quorum",
        "quorum is the default mode"
    );

    cluster.nodes[stopped].stop().await;
    let mut expected = Expected::new();
    for i in 0..20 {
        let via = if i % 2 == 0 { leader } else { survivor };
        let key = format!("quorum/voter-down/{i:02}");
        let value = format!("written via node {via} with a voter down").into_bytes();
        put_ok(&cluster.client(via), &key, &value).await;
        expected.insert(key, value);
    }
    for index in [leader, survivor] {
        assert_values(&cluster.client(index), &expected, Consistency::Linearizable).await;
    }

    cluster.nodes[stopped].start().await;
    cluster.assert_everywhere(&expected).await;
}

/// What one background writer saw.
struct Written {
    /// The last acknowledged value of each key it wrote.
    acked: Expected,
    /// Acknowledgements with `"durability":"leader"` (async mode).
    async_acks: usize,
    last_ack_was_async: bool,
}

/// Overwrite eight keys of writer `task` in turn until `stop`; every write must answer
/// 200, in the shape of whatever mode the leader is in. `count` is bumped per ack.
async fn write_through_mode_changes(
    client: NodeClient,
    task: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Written {
    let mut written = Written {
        acked: Expected::new(),
        async_acks: 0,
        last_ack_was_async: false,
    };
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("switch/{task}/{}", seq % 8);
        let value = format!("writer {task}, write {seq}").into_bytes();
        let resp = client.put(&key, &value).await;
        assert_eq!(
            resp.status,
            200,
            "PUT {key} via {} while modes change: {}",
            client.url,
            resp.text()
        );
        let ack = resp.json();
        let is_async = ack["durability"] == "leader";
        if is_async {
            assert!(
                ack["revision"].is_null() && ack["version"].is_null(),
                "an async ack has no revision yet: {ack}"
            );
            written.async_acks += 1;
        } else {
            assert!(
                ack["revision"].is_u64() && ack["version"].is_u64(),
                "PUT {key}: {ack}"
            );
        }
        written.last_ack_was_async = is_async;
        written.acked.insert(key, value);
        count.fetch_add(1, Ordering::Relaxed);
        seq += 1;
        // Leave the two shared cores some room for the nodes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_under_load_loses_no_write() {
    let cluster = Cluster::start(node_bin(), 3).await;
    let leader = cluster.leader().await;
    assert_eq!(
        cluster.client(leader).config().await["replication_mode"],
        "quorum"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
    let writers: Vec<_> = (0..4)
        .map(|task| {
            tokio::spawn(write_through_mode_changes(
                cluster.client(task % 3),
                task,
                stop.clone(),
                counts[task].clone(),
            ))
        })
        .collect();
    // Every writer makes progress in every mode, including the final quorum phase long
    // enough that its last write was surely sent after the switch.
    let each_writer_acks = async |more: usize, mode: &str| {
        let from: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let what = format!("every writer to get {more} more acks in {mode} mode");
        wait_until(ELECTION, &what, async || {
            counts
                .iter()
                .zip(&from)
                .all(|(c, f)| c.load(Ordering::Relaxed) >= f + more)
        })
        .await;
    };
    each_writer_acks(10, "quorum").await;
    for (i, mode) in ["sync", "async", "quorum"].into_iter().enumerate() {
        cluster.client(i % 3).set_mode(mode).await;
        each_writer_acks(10, mode).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut expected = Expected::new();
    let mut async_acks = 0;
    for (task, writer) in writers.into_iter().enumerate() {
        let written = writer.await.expect("writer task");
        assert!(
            !written.last_ack_was_async,
            "writer {task}: its last write, sent in quorum mode, was acknowledged as async"
        );
        async_acks += written.async_acks;
        expected.extend(written.acked);
    }
    assert!(
        async_acks > 0,
        "no write was acknowledged as async in async mode"
    );
    eprintln!(
        "{} writes, {async_acks} of them acknowledged as async",
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<usize>()
    );

    // Async acks are durable on the leader and, with no failure, must all arrive.
    let leader_client = cluster.client(cluster.leader().await);
    let total = expected.len();
    wait_for(
        CATCH_UP,
        "every last acknowledged value to be readable",
        async || match count_matches(&leader_client, &expected, Consistency::Linearizable).await {
            n if n == total => Ok(()),
            n => Err(format!("{n} of {total} keys")),
        },
    )
    .await;
    for index in 0..3 {
        assert_values(&cluster.client(index), &expected, Consistency::Linearizable).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_read_consistency_default_serves_followers_locally() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    put_ok(&cluster.client(leader), "reads/k", b"written before").await;

    let config = cluster
        .client(follower)
        .set_config(&json!({"read_consistency": "stale"}))
        .await
        .ok_json();
    assert_eq!(
        config,
        json!({"replication_mode": "quorum", "read_consistency": "stale"})
    );
    wait_config_everywhere(&mut cluster, "read_consistency", "stale").await;
    for index in 0..3 {
        let view = cluster.client(index).cluster_view().await.ok_json();
        assert_eq!(view["read_consistency"], "stale", "node {index}: {view}");
        assert_eq!(view["replication_mode"], "quorum", "node {index}: {view}");
    }

    let f = cluster.client(follower);
    // The follower applied the key before the config entry that it reports.
    let read = f.get_path(&kv_path("reads/k")).await;
    assert_eq!((read.status, read.text()), (200, "written before".into()));
    let read = f.get("reads/k", Consistency::Linearizable).await;
    assert_eq!((read.status, read.text()), (200, "written before".into()));

    // Alone, the follower can still serve its default (stale) reads, and only those.
    for index in (0..3).filter(|&i| i != follower) {
        cluster.nodes[index].kill9();
    }
    let read = f.get_path(&kv_path("reads/k")).await;
    assert_eq!(
        (read.status, read.text()),
        (200, "written before".into()),
        "a default read on a follower without a leader"
    );
    let read = f.get("reads/k", Consistency::Linearizable).await;
    assert_eq!(
        read.status,
        503,
        "a linearizable read without a quorum: {}",
        read.text()
    );
    let code = read.error_code();
    assert!(
        matches!(code.as_deref(), Some("no_leader" | "no_quorum")),
        "{}",
        read.text()
    );
}

/// Poll `/v1/node` of every learner until `done`, failing if one ever reports another role.
async fn learners_stay_learners(clients: &[NodeClient], done: &AtomicBool) -> usize {
    let mut polls = 0;
    while !done.load(Ordering::Relaxed) {
        for client in clients {
            if let Ok(resp) = client.try_get("/v1/node").await {
                let info = resp.json();
                assert_eq!(info["role"], "learner", "{}: {info}", client.url);
                polls += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    polls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_replicate_serve_stale_reads_and_never_lead() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let voter_ids = cluster.ids();
    let learners = [
        cluster.add_node_as("learner").await,
        cluster.add_node_as("learner").await,
    ];
    let learner_ids: Vec<u64> = learners.iter().map(|&l| cluster.nodes[l].id).collect();
    let mut want: Vec<(u64, String)> = voter_ids
        .iter()
        .map(|&id| (id, "voter".to_string()))
        .chain(learner_ids.iter().map(|&id| (id, "learner".to_string())))
        .collect();
    want.sort();

    let leader = cluster.leader().await;
    let leader_client = cluster.client(leader);
    wait_for(ELECTION, "two learners with a lag", async || {
        let view = leader_client.cluster_view().await.ok_json();
        let lags_known = learner_ids
            .iter()
            .all(|&id| member(&view, id)["lag"].is_u64());
        if members(&view) == want && lags_known {
            Ok(())
        } else {
            Err(view.to_string())
        }
    })
    .await;
    for &l in &learners {
        let info = cluster.client(l).node_info().await;
        assert_eq!(info["role"], "learner", "{info}");
    }

    let mut expected = write_keys(&leader_client, "learners/before", 30, 4).await;
    let revision = leader_client.cluster_view().await.ok_json()["revision"]
        .as_u64()
        .expect("numeric revision");
    for &l in &learners {
        cluster.wait_stale_caught_up(l, &expected).await;
        let client = cluster.client(l);
        let what = format!("node {l} (learner) to serve stale reads at revision {revision}");
        wait_for(CATCH_UP, &what, async || {
            let read = client.get("learners/before-0000", Consistency::Stale).await;
            match read.header("x-rstore-revision").map(str::parse::<u64>) {
                Some(Ok(r)) if r == revision => Ok(()),
                other => Err(format!("{} {other:?}", read.status)),
            }
        })
        .await;
    }

    // A write sent to a learner is forwarded to the leader.
    let via_learner = cluster.client(learners[0]);
    put_ok(&via_learner, "learners/via-learner", b"forwarded").await;
    expected.insert("learners/via-learner".into(), b"forwarded".to_vec());
    let read = leader_client
        .get("learners/via-learner", Consistency::Linearizable)
        .await;
    assert_eq!((read.status, read.text()), (200, "forwarded".into()));

    let old_leader_id = cluster.nodes[leader].id;
    cluster.nodes[leader].kill9();
    let learner_clients: Vec<NodeClient> = learners.iter().map(|&l| cluster.client(l)).collect();
    let done = AtomicBool::new(false);
    let elect = async {
        let new_leader = cluster.leader().await;
        done.store(true, Ordering::Relaxed);
        new_leader
    };
    let (new_leader, polls) = tokio::join!(elect, learners_stay_learners(&learner_clients, &done));
    assert!(polls > 0, "no learner was polled during the election");
    let new_leader_id = cluster.nodes[new_leader].id;
    assert!(
        voter_ids.contains(&new_leader_id) && new_leader_id != old_leader_id,
        "the new leader {new_leader_id} is a surviving voter of {voter_ids:?}, not {old_leader_id}"
    );
    let view = cluster.client(new_leader).cluster_view().await.ok_json();
    assert_eq!(members(&view), want, "roles after the failover: {view}");
    for client in &learner_clients {
        wait_until(
            ELECTION,
            "the learner to follow the new leader",
            async || {
                let info = client.node_info().await;
                assert_eq!(info["role"], "learner", "{info}");
                info["leader_id"] == new_leader_id
            },
        )
        .await;
    }

    via_learner
        .put_acked("learners/after-failover", b"forwarded again")
        .await;
    expected.insert(
        "learners/after-failover".into(),
        b"forwarded again".to_vec(),
    );
    for &l in &learners {
        cluster.wait_stale_caught_up(l, &expected).await;
    }
    for index in cluster.running() {
        assert_values(&cluster.client(index), &expected, Consistency::Linearizable).await;
    }
}
