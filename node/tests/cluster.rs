//! Clusters of real `node` processes on loopback: bootstrap, forwarding, compare-and-set,
//! crashes, full restarts, snapshot catch-up, membership changes and input validation.
//!
//! Each test owns its cluster (free ports, temp dirs), so tests run in parallel. Every
//! acknowledged write is read back at the end, from every node that should have it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rstore_tests::harness::{
    Cluster, Consistency, ELECTION, Expected, NodeClient, assert_values, members, metric_value,
    wait_for, wait_until, write_keys,
};
use serde_json::Value;

/// This package's `node` binary, which cargo builds for the package's tests.
fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_three_voters_one_leader_all_ready() {
    let cluster = Cluster::start(node_bin(), 3).await;
    let ids = cluster.ids();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        3,
        "ids are distinct: {ids:?}"
    );

    // Every node answers /v1/cluster with the same three voters and their URLs.
    for index in 0..3 {
        let view = cluster.client(index).cluster_view().await.ok_json();
        let mut want: Vec<(u64, String)> = ids.iter().map(|&id| (id, "voter".into())).collect();
        want.sort();
        assert_eq!(members(&view), want, "view from node {index}: {view}");
        for node in &cluster.nodes {
            let m = view["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == node.id)
                .unwrap();
            assert_eq!(m["client_url"], node.client_url.as_str(), "{view}");
            assert_eq!(m["peer_url"], node.peer_url.as_str(), "{view}");
        }
    }

    // Exactly one leader, and every node names it and the same cluster id.
    let clients: Vec<NodeClient> = (0..3).map(|i| cluster.client(i)).collect();
    wait_until(
        ELECTION,
        "exactly one leader named by all three nodes",
        async || {
            let infos: Vec<Value> = join_all(clients.iter().map(|c| c.node_info())).await;
            let leaders: Vec<&Value> = infos.iter().filter(|i| i["role"] == "leader").collect();
            let [leader] = leaders[..] else { return false };
            infos.iter().all(|info| {
                info["leader_id"] == leader["id"]
                    && info["cluster_id"] == leader["cluster_id"]
                    && (info["role"] == "leader" || info["role"] == "follower")
            })
        },
    )
    .await;
    for (node, client) in cluster.nodes.iter().zip(&clients) {
        let info = client.node_info().await;
        assert_eq!(info["id"], node.id, "{info}");
        assert_eq!(info["client_url"], node.client_url.as_str(), "{info}");
        assert_eq!(info["peer_url"], node.peer_url.as_str(), "{info}");
        assert!(info["cluster_id"].is_string(), "{info}");
    }

    wait_until(ELECTION, "/readyz 200 on all three nodes", async || {
        let answers = join_all(clients.iter().map(|c| c.try_get("/readyz"))).await;
        answers
            .iter()
            .all(|r| matches!(r, Ok(r) if r.status == 200))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_followers_are_readable_everywhere() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let leader = cluster.leader().await;
    let mut expected = Expected::new();
    let mut last_revision = 0;
    for follower in (0..3).filter(|&i| i != leader) {
        let client = cluster.client(follower);
        for j in 0..5 {
            let key = format!("via-follower/{follower}/{j}");
            let value = format!("written through node {follower}, #{j}").into_bytes();
            let ack = client.put(&key, &value).await.ok_json();
            assert_eq!(ack["version"], 1, "first write of {key}: {ack}");
            let revision = ack["revision"].as_u64().expect("numeric revision");
            assert!(
                revision > last_revision,
                "revisions grow: {ack} after {last_revision}"
            );
            last_revision = revision;

            let read = cluster
                .client(leader)
                .get(&key, Consistency::Linearizable)
                .await;
            assert_eq!(read.status, 200, "{}", read.text());
            assert_eq!(read.etag_version(), Some(1));
            assert_eq!(
                read.header("x-rstore-mod-revision"),
                Some(revision.to_string().as_str())
            );
            assert_eq!(
                read.header("x-rstore-create-revision"),
                Some(revision.to_string().as_str())
            );
            expected.insert(key, value);
        }
    }
    cluster.assert_everywhere(&expected).await;
}

/// One CAS incrementer: read the counter, write `n + 1` if its version is unchanged.
/// Returns the versions of its successful writes.
async fn cas_increments(client: NodeClient, attempts: usize) -> Vec<u64> {
    let mut won = Vec::new();
    for _ in 0..attempts {
        let read = client.get("cas/counter", Consistency::Linearizable).await;
        assert_eq!(
            read.status,
            200,
            "counter read via {}: {}",
            client.url,
            read.text()
        );
        let n: u64 = read.text().parse().expect("counter is a number");
        let version = read.etag_version().expect("ETag on a read");
        let if_match = format!("\"{version}\"");
        let write = client
            .put_with(
                "cas/counter",
                (n + 1).to_string().as_bytes(),
                &[("If-Match", &if_match)],
            )
            .await;
        match write.status {
            200 => won.push(write.json()["version"].as_u64().expect("numeric version")),
            412 => write.assert_error(412, "precondition_failed"),
            _ => panic!("CAS via {}: {} {}", client.url, write.status, write.text()),
        }
    }
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (_, follower) = cluster.leader_and_follower().await;
    let c = cluster.client(follower);

    let created = c
        .put_with("cas/k", b"v1", &[("If-None-Match", "*")])
        .await
        .ok_json();
    assert_eq!(created["version"], 1, "{created}");
    c.put_with("cas/k", b"again", &[("If-None-Match", "*")])
        .await
        .assert_error(412, "precondition_failed");
    let updated = c
        .put_with("cas/k", b"v2", &[("If-Match", "\"1\"")])
        .await
        .ok_json();
    assert_eq!(updated["version"], 2, "{updated}");
    c.put_with("cas/k", b"v3", &[("If-Match", "\"1\"")])
        .await
        .assert_error(412, "precondition_failed");
    c.put_with("cas/absent", b"x", &[("If-Match", "\"1\"")])
        .await
        .assert_error(412, "precondition_failed");
    c.delete_with("cas/k", &[("If-Match", "\"1\"")])
        .await
        .assert_error(412, "precondition_failed");
    let read = c.get("cas/k", Consistency::Linearizable).await;
    assert_eq!(
        (read.status, read.text(), read.etag_version()),
        (200, "v2".into(), Some(2))
    );
    c.get("cas/absent", Consistency::Linearizable)
        .await
        .assert_error(404, "key_not_found");

    // Eight concurrent incrementers spread over the three nodes.
    c.put_with("cas/counter", b"0", &[("If-None-Match", "*")])
        .await
        .ok_json();
    let tasks = (0..8).map(|t| tokio::spawn(cas_increments(cluster.client(t % 3), 15)));
    let mut versions: Vec<u64> = Vec::new();
    for task in join_all(tasks).await {
        versions.extend(task.expect("incrementer task"));
    }
    let wins = versions.len() as u64;
    assert!(wins > 0, "no CAS write succeeded");
    versions.sort();
    let want: Vec<u64> = (2..=wins + 1).collect();
    assert_eq!(
        versions, want,
        "each successful CAS made exactly one new version"
    );
    let mut expected = Expected::new();
    expected.insert("cas/k".into(), b"v2".to_vec());
    expected.insert("cas/counter".into(), wins.to_string().into_bytes());
    cluster.assert_everywhere(&expected).await;
    let read = c.get("cas/counter", Consistency::Linearizable).await;
    assert_eq!(read.etag_version(), Some(wins + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_elects_new_leader_and_keeps_writes() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (old_leader, follower) = cluster.leader_and_follower().await;
    let old_term = cluster.client(old_leader).node_info().await["term"]
        .as_u64()
        .expect("term");
    let mut expected = write_keys(&cluster.client(follower), "before-kill", 20, 4).await;

    cluster.nodes[old_leader].kill9();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let info = cluster.client(new_leader).node_info().await;
    assert!(
        info["term"].as_u64().expect("term") > old_term,
        "new term: {info}"
    );

    for survivor in cluster.running() {
        let prefix = format!("after-kill-via-{survivor}");
        expected.extend(write_keys(&cluster.client(survivor), &prefix, 20, 4).await);
    }
    cluster.assert_everywhere(&expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_all_and_restart_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let mut expected = Expected::new();
    for index in 0..3 {
        let prefix = format!("durable-via-{index}");
        expected.extend(write_keys(&cluster.client(index), &prefix, 40, 4).await);
    }
    let ids = cluster.ids();
    for node in &mut cluster.nodes {
        node.kill9();
    }
    for node in &mut cluster.nodes {
        node.start().await;
    }
    assert_eq!(cluster.ids(), ids, "ids survive a restart");
    cluster.wait_for_voters(&ids).await;
    cluster.assert_everywhere(&expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    let mut cluster =
        Cluster::start_with_env(node_bin(), 3, &[("RSTORE_SNAPSHOT_LOGS", "50")]).await;
    let (leader, lagging) = cluster.leader_and_follower().await;
    let leader_client = cluster.client(leader);
    let lagging_applied = applied_index(&cluster.client(lagging)).await;

    cluster.nodes[lagging].stop().await;
    let expected = write_keys(&leader_client, "snap", 500, 4).await;
    let applied_after = applied_index(&leader_client).await;
    assert!(
        applied_after > lagging_applied + 100,
        "the leader moved well past the stopped follower: {lagging_applied} -> {applied_after}"
    );
    // Logs are kept for 50 entries past a snapshot: beyond that, only a snapshot helps.
    let what = format!("a leader snapshot past index {}", lagging_applied + 50);
    wait_for(ELECTION, &what, async || {
        let metrics = leader_client.get_path("/metrics").await;
        match metric_value(&metrics.text(), "rstore_raft_snapshot_index") {
            Some(s) if s > (lagging_applied + 50) as f64 => Ok(()),
            other => Err(format!("rstore_raft_snapshot_index = {other:?}")),
        }
    })
    .await;

    cluster.nodes[lagging].start().await;
    cluster.wait_applied(lagging, applied_after).await;
    cluster.wait_stale_caught_up(lagging, &expected).await;
    // The leader purged the entries the follower lacked, so it must have been sent a
    // snapshot; the log line is openraft's own (pinned version) or the node's.
    let log = cluster.nodes[lagging].log();
    assert!(
        log.contains("install complete snapshot") || log.contains("installed snapshot"),
        "no snapshot install in the lagging node's log"
    );
    cluster.assert_everywhere(&expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_rejoins_under_a_new_id() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let old_id = cluster.nodes[follower].id;
    let mut expected = write_keys(&cluster.client(leader), "before-remove", 30, 4).await;

    let view = cluster.remove_member(old_id).await;
    assert_eq!(members(&view).len(), 2, "{view}");
    let node = &mut cluster.nodes[follower];
    node.stop().await;
    node.wipe_data();
    node.start().await;
    assert_new_uninitialized_identity(&cluster, follower, old_id).await;

    let leader = cluster.leader().await;
    cluster.add_member(leader, follower, "voter").await;
    cluster.wait_for_voters(&cluster.ids()).await;
    expected.extend(write_keys(&cluster.client(follower), "after-readd", 30, 4).await);
    cluster.assert_everywhere(&expected).await;
}

async fn applied_index(client: &NodeClient) -> u64 {
    let info = client.node_info().await;
    info["applied_index"]
        .as_u64()
        .unwrap_or_else(|| panic!("no applied_index from {}: {info}", client.url))
}

/// Node `index` came back from a wiped disk: a new id, no cluster.
async fn assert_new_uninitialized_identity(cluster: &Cluster, index: usize, old_id: u64) {
    let info = cluster.client(index).node_info().await;
    assert_ne!(
        info["id"], old_id,
        "a wiped node must not reuse its id: {info}"
    );
    assert_eq!(info["id"], cluster.nodes[index].id, "{info}");
    assert_eq!(info["role"], "uninitialized", "{info}");
    assert!(info["cluster_id"].is_null(), "{info}");
}

/// Writes through `client` until `stop`, without retries: every one must be acknowledged,
/// none may take longer than `max_latency`. Returns what was written.
async fn write_until(client: NodeClient, stop: Arc<AtomicBool>, max_latency: Duration) -> Expected {
    let mut acked = Expected::new();
    while !stop.load(Ordering::Relaxed) {
        let key = format!("during/{:05}", acked.len());
        let value = format!("value of {key}").into_bytes();
        let started = Instant::now();
        let resp = client.put(&key, &value).await;
        let took = started.elapsed();
        assert_eq!(
            resp.status,
            200,
            "write {key} during the change: {}",
            resp.text()
        );
        assert!(took < max_latency, "write {key} took {took:?}");
        acked.insert(key, value);
        // Pace the writer so that it does not starve the two shared cores.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_joins_as_new_member_while_cluster_stays_available() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, wiped) = cluster.leader_and_follower().await;
    let old_id = cluster.nodes[wiped].id;
    let mut expected = write_keys(&cluster.client(leader), "before-wipe", 20, 4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        cluster.client(leader),
        stop.clone(),
        Duration::from_secs(10),
    ));

    let node = &mut cluster.nodes[wiped];
    node.kill9();
    node.wipe_data();
    node.start().await;
    assert_new_uninitialized_identity(&cluster, wiped, old_id).await;
    cluster.add_member(leader, wiped, "voter").await;
    cluster.remove_member(old_id).await;
    cluster.wait_for_voters(&cluster.ids()).await;

    stop.store(true, Ordering::Relaxed);
    let during = writer.await.expect("writer task");
    assert!(!during.is_empty(), "the writer acknowledged nothing");
    expected.extend(during);
    cluster.assert_everywhere(&expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_is_invalid() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    c.put("", b"x").await.assert_error(400, "invalid_key");
    c.get("", Consistency::Stale)
        .await
        .assert_error(400, "invalid_key");
    c.delete("").await.assert_error(400, "invalid_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_keys_and_values_get_413() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    let longest_key = "k".repeat(4096);
    c.put(&longest_key, b"ok").await.ok_json();
    c.put(&"k".repeat(4097), b"x")
        .await
        .assert_error(413, "key_too_large");

    let largest = vec![b'v'; 1 << 20];
    c.put("largest", &largest).await.ok_json();
    let rejected = c.put("too-large", &vec![b'v'; (1 << 20) + 1]).await;
    rejected.assert_error(413, "value_too_large");
    // The body was refused unread and the server drops the connection after answering:
    // without `Connection: close`, a client pools that dead connection and its next
    // request fails with "connection closed before message completed".
    assert_eq!(
        rejected.header("connection"),
        Some("close"),
        "a 413 sent before reading the body must close the connection: {:?}",
        rejected.headers
    );
    c.get("too-large", Consistency::Linearizable)
        .await
        .assert_error(404, "key_not_found");

    let mut expected = Expected::new();
    expected.insert(longest_key, b"ok".to_vec());
    expected.insert("largest".into(), largest);
    assert_values(&c, &expected, Consistency::Linearizable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parameters_are_named() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    for (path, name) in [
        ("/v1/kv/k?consistncy=stale", "consistncy"),
        ("/v1/kv?prefx=a", "prefx"),
        ("/v1/cluster?verbose=1", "verbose"),
    ] {
        let resp = c.get_path(path).await;
        resp.assert_error(400, "unknown_parameter");
        let message = resp.json()["error"]["message"].to_string();
        assert!(
            message.contains(name),
            "{path}: message names {name}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_rejected() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    let malformed = c
        .post_raw("/v1/cluster/members", b"{\"id\": 1, ".to_vec())
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert!(
        malformed.error_code().is_some(),
        "JSON error: {}",
        malformed.text()
    );
    c.remove_member(12345)
        .await
        .assert_error(404, "member_not_found");
    let view = c.cluster_view().await.ok_json();
    assert_eq!(
        members(&view),
        vec![(cluster.nodes[0].id, "voter".to_string())]
    );
}

/// Read `/v1/cluster` from `client` until `done`, checking that every view is a whole
/// configuration: each member a voter or learner with URLs, and drawn from `known` ids.
/// Returns how many views were checked.
async fn watch_configs(client: &NodeClient, known: &[u64], done: &AtomicBool) -> usize {
    let mut checked = 0;
    while !done.load(Ordering::Relaxed) {
        let view = client.cluster_view().await.ok_json();
        for m in view["members"].as_array().expect("members array") {
            let role_ok = m["role"] == "voter" || m["role"] == "learner";
            let urls_ok = ["client_url", "peer_url"]
                .iter()
                .all(|k| m[k].as_str().is_some_and(|u| u.starts_with("https://")));
            let id_ok = m["id"].as_u64().is_some_and(|id| known.contains(&id));
            assert!(
                role_ok && urls_ok && id_ok,
                "half-applied member {m} in {view}"
            );
        }
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_membership_changes_get_409_never_half_applied() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let leader = cluster.leader().await;
    // Some data, so that catching up the new members is not instantaneous.
    let expected = write_keys(&cluster.client(leader), "members", 100, 4).await;
    let new_nodes = [cluster.spawn_node().await, cluster.spawn_node().await];
    let known = cluster.ids();

    let done = AtomicBool::new(false);
    let client = cluster.client(leader);
    let adds = async {
        let answers = join_all(new_nodes.map(|i| {
            let node = &cluster.nodes[i];
            client.add_member(node.id, &node.peer_url, &node.client_url, "voter")
        }))
        .await;
        done.store(true, Ordering::Relaxed);
        answers
    };
    let (answers, views) = tokio::join!(adds, watch_configs(&client, &known, &done));
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    eprintln!("concurrent adds answered {statuses:?}; {views} views checked meanwhile");
    assert!(views > 0, "no cluster view was read during the changes");
    for answer in &answers {
        if answer.status != 200 {
            answer.assert_error(409, "membership_change_in_progress");
        }
    }
    assert!(
        answers.iter().any(|a| a.status == 200),
        "one of the two changes succeeds"
    );

    for (index, answer) in new_nodes.iter().zip(&answers) {
        if answer.status == 409 {
            let leader = cluster.leader().await;
            cluster.add_member(leader, *index, "voter").await;
        }
    }
    cluster.wait_for_voters(&known).await;
    cluster.assert_everywhere(&expected).await;
}
