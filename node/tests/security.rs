//! The security findings of issue 13, each as a regression test against real node
//! processes with TLS on: forged Raft traffic, admin calls without the admin role, slow
//! and idle connections, the connection cap, the watch cap, and watchers that never read.
//!
//! Each test also checks the legitimate path (a member's own RPC, an admin's call, a
//! reading watcher), so that a refusal is shown to be what protected the cluster, not a
//! broken request.

use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{CommittedLeaderId, LogId, SnapshotMeta, Vote};
use rstore_node::network::Envelope;
use rstore_node::types::{Batch, Command as Cmd, Condition, NodeId, Request, TypeConfig};
use rstore_tests::harness::{
    Cluster, Consistency, ELECTION, metric_value, wait_for, wait_until, write_keys,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// This package's `node` binary, which cargo builds for the package's tests.
fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

/// A leader id no member has.
const FORGER: NodeId = (1 << 60) + 99;

fn envelope<T: serde::Serialize>(
    from: NodeId,
    cluster_id: &str,
    target: NodeId,
    body: T,
) -> Vec<u8> {
    bincode::serialize(&Envelope {
        cluster_id: Some(cluster_id.to_string()),
        from,
        target,
        body,
    })
    .unwrap()
}

/// An AppendEntries from `leader` at `term` carrying a put of `forged` = `evil`, placed
/// after the follower's last entry so that a follower that accepts it commits it.
fn forged_append(
    leader: NodeId,
    term: u64,
    prev: Option<LogId<NodeId>>,
) -> AppendEntriesRequest<TypeConfig> {
    let index = prev.map_or(0, |p| p.index) + 1;
    let log_id = LogId::new(CommittedLeaderId::new(term, leader), index);
    AppendEntriesRequest {
        vote: Vote::new_committed(term, leader),
        prev_log_id: prev,
        entries: vec![openraft::Entry {
            log_id,
            payload: openraft::EntryPayload::Normal(Request::Batch(Batch {
                id: 1,
                cmds: vec![Cmd::Put {
                    key: "forged".into(),
                    value: b"evil".to_vec(),
                    cond: Condition::None,
                }],
            })),
        }],
        leader_commit: Some(log_id),
    }
}

/// (term, leader) of every node.
async fn views(cluster: &Cluster) -> Vec<(u64, Option<u64>)> {
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        let info = cluster.client(i).node_info().await;
        out.push((info["term"].as_u64().unwrap(), info["leader_id"].as_u64()));
    }
    out
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(u16, String), String> {
    match http.post(url).body(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            Ok((status, r.text().await.unwrap_or_default()))
        }
        Err(e) => Err(format!("{e:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_traffic_changes_nothing_without_a_members_certificate() {
    let cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = {
        let l = cluster.leader().await;
        (l, (l + 1) % 3)
    };
    let acked = write_keys(&cluster.client(leader), "a", 10, 4).await;
    let info = cluster.client(follower).node_info().await;
    let cluster_id = info["cluster_id"].as_str().unwrap().to_string();
    let term = info["term"].as_u64().unwrap();
    let last = info["last_log_index"].as_u64().unwrap();
    let leader_id = cluster.nodes[leader].id;
    let target = cluster.nodes[follower].id;
    let prev = Some(LogId::new(CommittedLeaderId::new(term, leader_id), last));
    let before = views(&cluster).await;
    let creds = cluster.creds();
    let peer = &cluster.nodes[follower].peer_url;
    let append_url = format!("{peer}/raft/append");
    let forged = envelope(
        FORGER,
        &cluster_id,
        target,
        forged_append(FORGER, term + 5, prev),
    );

    // 1. No client certificate: the TLS handshake fails, nothing is read.
    let r = post(&creds.http(None), &append_url, forged.clone()).await;
    assert!(r.is_err(), "no certificate: {r:?}");

    // 2. A member certificate from another CA, naming the leader's peer URL.
    let other_ca = rstore_node::pki::Ca::generate("attacker").unwrap();
    let foreign = other_ca
        .member(&["127.0.0.1".into()], &cluster.nodes[leader].peer_url)
        .unwrap();
    let http = creds.http_builder(None, Some(&foreign)).build().unwrap();
    let as_leader = envelope(
        leader_id,
        &cluster_id,
        target,
        forged_append(leader_id, term + 5, prev),
    );
    let r = post(&http, &append_url, as_leader.clone()).await;
    assert!(r.is_err(), "another CA's certificate: {r:?}");

    // 3. A non-member's certificate from the cluster's own CA, sending as itself or as the
    //    leader; and the admin client certificate (not a member certificate).
    let outsider = creds.member_http("https://127.0.0.1:1");
    let admin_cert = creds.ca.client("ops", "admin").unwrap();
    let admin_http = creds.http_builder(None, Some(&admin_cert)).build().unwrap();
    let snapshot = envelope(
        FORGER,
        &cluster_id,
        target,
        InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(term + 5, FORGER),
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![1, 2, 3],
            done: true,
        },
    );
    let forward_url = format!(
        "{}{}",
        cluster.nodes[leader].peer_url,
        rstore_node::forward::PATH
    );
    let forward = envelope(
        FORGER,
        &cluster_id,
        leader_id,
        rstore_node::forward::ForwardRequest {
            writes: vec![Cmd::Put {
                key: "forged".into(),
                value: b"evil".to_vec(),
                cond: Condition::None,
            }],
            read_index: false,
        },
    );
    let cases = [
        (
            "non-member, as itself",
            &outsider,
            &append_url,
            forged.clone(),
        ),
        (
            "non-member, as the leader",
            &outsider,
            &append_url,
            as_leader.clone(),
        ),
        (
            "non-member snapshot",
            &outsider,
            &format!("{peer}/raft/snapshot"),
            snapshot,
        ),
        (
            "non-member forward",
            &outsider,
            &forward_url,
            forward.clone(),
        ),
        (
            "admin client certificate",
            &admin_http,
            &append_url,
            as_leader.clone(),
        ),
        (
            "admin client certificate, forward",
            &admin_http,
            &forward_url,
            forward,
        ),
    ];
    for (what, http, url, body) in cases {
        let (status, text) = post(http, url, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, 403, "{what}: {text}");
    }
    // 4. A real member's certificate (a follower's) sending as the made-up leader.
    let other_follower = 3 - leader - follower;
    let member = creds.member_http(&cluster.nodes[other_follower].peer_url);
    let (status, text) = post(&member, &append_url, forged.clone()).await.unwrap();
    assert_eq!(status, 403, "a member posing as a made-up leader: {text}");
    // ...or as the real leader: the certificate does not name the leader's URL.
    let (status, text) = post(&member, &append_url, as_leader.clone()).await.unwrap();
    assert_eq!(status, 403, "a member posing as the leader: {text}");

    // Nothing changed: same terms and leader, the forged key is nowhere, writes commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        views(&cluster).await,
        before,
        "a refused RPC changed the cluster"
    );
    for i in 0..3 {
        let r = cluster.client(i).get("forged", Consistency::Stale).await;
        assert_eq!(
            r.status,
            404,
            "node {i} serves the forged key: {}",
            r.text()
        );
    }
    cluster.client(follower).put_acked("after", b"1").await;
    let mut expected = acked;
    expected.insert("after".into(), b"1".to_vec());
    let mut cluster = cluster;
    cluster.assert_everywhere(&expected).await;

    // Control: the leader's own certificate gets its RPC through (a higher term, which
    // the follower adopts), so the refusals above were what protected the cluster.
    let leader_http = creds_member(&cluster, leader);
    let probe = envelope(
        leader_id,
        &cluster_id,
        target,
        AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term + 1000, leader_id),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        },
    );
    let (status, text) = post(&leader_http, &append_url, probe).await.unwrap();
    assert_eq!(status, 200, "the leader's own RPC: {text}");
    let seen = cluster.client(follower).node_info().await["term"]
        .as_u64()
        .unwrap();
    assert!(
        seen >= term + 1000,
        "the accepted RPC was acted on: term {seen}"
    );
}

fn creds_member(cluster: &Cluster, index: usize) -> reqwest::Client {
    cluster.creds().member_http(&cluster.nodes[index].peer_url)
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http.request(method.clone(), url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_needed_role_get_401_or_403_and_change_nothing() {
    use reqwest::Method;
    let cluster = Cluster::start(node_bin(), 3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let creds = cluster.creds();
    let admin = cluster.http.clone();
    let base = |i: usize| cluster.nodes[i].direct_client_url.clone();
    let config_of = async || {
        send(
            &admin,
            Method::GET,
            &format!("{}/v1/cluster/config", base(leader)),
            None,
            &[],
        )
        .await
        .1
    };
    let config_before = config_of().await;
    let members_before = rstore_tests::harness::members(
        &send(
            &admin,
            Method::GET,
            &format!("{}/v1/cluster", base(leader)),
            None,
            &[],
        )
        .await
        .1,
    );
    assert_eq!(members_before.len(), 3);

    let none = creds.http(None);
    let bad = creds.http(Some("not-a-token"));
    let read = creds.http(Some(&creds.read_token));
    let write = creds.http(Some(&creds.write_token));
    let read_cert = creds
        .http_builder(None, Some(&creds.ca.client("viewer", "read").unwrap()))
        .build()
        .unwrap();
    let member_cert = creds.member_http(&cluster.nodes[leader].peer_url);
    let victim = cluster.nodes[follower].id;
    let admin_calls: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::PUT,
            "/v1/cluster/config".into(),
            Some(json!({"replication_mode": "async", "read_consistency": "stale"})),
        ),
        (
            Method::DELETE,
            format!("/v1/cluster/members/{victim}"),
            None,
        ),
        (
            Method::POST,
            "/v1/cluster/members".into(),
            Some(
                json!({"id": 77, "peer_url": "https://127.0.0.1:27499", "client_url": "https://127.0.0.1:27498", "role": "voter"}),
            ),
        ),
        (Method::POST, "/v1/cluster/init".into(), None),
        (Method::GET, "/v1/cluster".into(), None),
        (Method::GET, "/v1/cluster/config".into(), None),
    ];
    for node in [leader, follower] {
        for (method, path, body) in &admin_calls {
            let url = format!("{}{path}", base(node));
            for (who, http, want, code) in [
                ("no credential", &none, 401, "unauthenticated"),
                ("a bad token", &bad, 401, "unauthenticated"),
                ("the read token", &read, 403, "permission_denied"),
                ("the write token", &write, 403, "permission_denied"),
                (
                    "a read client certificate",
                    &read_cert,
                    403,
                    "permission_denied",
                ),
                ("a member certificate", &member_cert, 401, "unauthenticated"),
            ] {
                let (status, v, headers) =
                    send(http, method.clone(), &url, body.clone(), &[]).await;
                let got = v["error"]["code"].as_str().unwrap_or("");
                // A member certificate grants no role on the client port: refused, 403.
                let want = if who == "a member certificate" {
                    (403, "permission_denied")
                } else {
                    (want, code)
                };
                assert_eq!(
                    (status, got),
                    want,
                    "{method} {path} on node {node} with {who}: {v}"
                );
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                );
                if status == 401 {
                    assert!(
                        headers.contains_key("www-authenticate"),
                        "{who}: no WWW-Authenticate"
                    );
                }
            }
            // The role header is the node's to set, not the client's.
            let (status, _, _) = send(
                &write,
                method.clone(),
                &url,
                body.clone(),
                &[("x-rstore-role", "admin")],
            )
            .await;
            assert_eq!(
                status, 403,
                "{method} {path}: a client-sent role header was believed"
            );
        }
    }
    // Nothing changed.
    let config_after = config_of().await;
    assert_eq!(config_after, config_before);
    let view = send(
        &admin,
        Method::GET,
        &format!("{}/v1/cluster", base(follower)),
        None,
        &[],
    )
    .await;
    assert_eq!(
        view.0, 200,
        "an admin's call relayed by a follower: {}",
        view.1
    );
    assert_eq!(rstore_tests::harness::members(&view.1), members_before);

    // The KV API: read may read, write may write, and neither may without a credential.
    let kv = |i: usize, key: &str| format!("{}/v1/kv/{key}", base(i));
    let put = |http: &reqwest::Client, url: String| {
        let http = http.clone();
        async move {
            http.put(url)
                .body("v")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(put(&none, kv(follower, "k")).await, 401);
    assert_eq!(put(&read, kv(follower, "k")).await, 403);
    assert_eq!(put(&read_cert, kv(leader, "k")).await, 403);
    assert_eq!(put(&write, kv(follower, "k")).await, 200);
    let get = |http: &reqwest::Client, url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(&none, kv(follower, "k")).await, 401);
    assert_eq!(get(&read, kv(follower, "k")).await, 200);
    assert_eq!(get(&read_cert, kv(leader, "k")).await, 200);
    let txn =
        json!({"compare": [], "success": [{"put": {"key": "t", "value": "x"}}], "failure": []});
    assert_eq!(
        send(
            &read,
            Method::POST,
            &format!("{}/v1/txn", base(follower)),
            Some(txn.clone()),
            &[]
        )
        .await
        .0,
        403
    );
    assert_eq!(get(&none, format!("{}/v1/watch", base(leader))).await, 401);
    assert_eq!(get(&none, format!("{}/v1/node", base(leader))).await, 401);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            get(&none, format!("{}{open}", base(follower))).await,
            200,
            "{open} stays open"
        );
    }
    assert_eq!(
        cluster
            .client(leader)
            .get("t", Consistency::Linearizable)
            .await
            .status,
        404,
        "the refused txn wrote nothing"
    );

    // The peer port relays only members' requests: an admin client certificate with the
    // relay headers gets nothing there.
    let admin_cert = creds
        .http_builder(None, Some(&creds.ca.client("ops", "admin").unwrap()))
        .build()
        .unwrap();
    let relay = format!("{}/v1/cluster/config", cluster.nodes[leader].peer_url);
    let from = cluster.nodes[follower].id.to_string();
    let (status, _, _) = send(
        &admin_cert,
        Method::PUT,
        &relay,
        Some(json!({"replication_mode": "async"})),
        &[("x-rstore-forwarded", &from), ("x-rstore-role", "admin")],
    )
    .await;
    assert_eq!(
        status, 403,
        "a client certificate relayed through the peer port"
    );
    let config_after = config_of().await;
    assert_eq!(config_after, config_before);
}

/// Read from `conn` until EOF or error; how long that took, or `None` if it stayed open
/// past `limit`.
async fn time_to_close(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_senders_and_idle_connections_are_cut_off() {
    let cluster =
        Cluster::start_with_env(node_bin(), 1, &[("RSTORE_HEADER_TIMEOUT_MS", "1000")]).await;
    let node = &cluster.nodes[0];
    let creds = cluster.creds.as_deref();
    let limit = Duration::from_secs(8);

    // A request head dribbled one byte every 100 ms never completes.
    let mut slow = rstore_tests::harness::raw_connect(&node.direct_client_url, creds, None)
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let dribble = async {
        let start = Instant::now();
        loop {
            if slow.write_all(b"x").await.is_err() {
                return Some(start.elapsed());
            }
            let mut b = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => panic!("a request with unfinished headers was answered"),
                Err(_) => {}
            }
            if start.elapsed() > limit {
                return None;
            }
        }
    };
    let cut = dribble.await;
    assert!(
        cut.is_some(),
        "a slow header sender was still connected after {limit:?}"
    );

    // A TCP connection that never starts its TLS handshake, on both ports.
    for url in [&node.direct_client_url, &node.peer_url] {
        let authority = url.split("://").nth(1).unwrap();
        let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
        assert!(
            time_to_close(&mut tcp, limit).await.is_some(),
            "{url}: a silent connection stayed open"
        );
    }

    // A keep-alive connection idle after a complete request.
    let mut idle = rstore_tests::harness::raw_connect(&node.direct_client_url, creds, None)
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 1024];
    let n = idle.read(&mut b).await.unwrap();
    assert!(
        String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&b[..n])
    );
    assert!(
        time_to_close(&mut idle, limit).await.is_some(),
        "an idle keep-alive connection stayed open"
    );

    // Prompt clients are unaffected.
    assert_eq!(cluster.client(0).put("k", b"v").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    let cluster = Cluster::start_with_env(node_bin(), 1, &[("RSTORE_MAX_CONNECTIONS", "16")]).await;
    let node = &cluster.nodes[0];
    let creds = cluster.creds.as_deref();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match rstore_tests::harness::raw_connect(&node.direct_client_url, creds, None).await {
            Ok(mut c) => {
                // A refused connection may finish the TCP handshake and then be closed.
                let mut b = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(50), c.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
                    _ => held.push(c),
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        held.len() <= 16,
        "{} connections held past a cap of 16",
        held.len()
    );
    assert!(refused > 0, "no connection was refused");
    drop(held);
    // Once they are gone, the node serves again, and counted what it refused.
    let client = cluster.client(0);
    wait_until(
        ELECTION,
        "the node to serve again",
        async || matches!(client.try_get("/healthz").await, Ok(r) if r.status == 200),
    )
    .await;
    let text = client.get_path("/metrics").await.text();
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("rstore_connections_refused_total{listener=\"client\"}"))
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 1.0, "refusals not counted: {counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_past_the_cap_get_429() {
    let cluster = Cluster::start_with_env(node_bin(), 1, &[("RSTORE_MAX_WATCHES", "2")]).await;
    let url = format!("{}/v1/watch?prefix=w", cluster.nodes[0].direct_client_url);
    let open = || {
        cluster
            .http
            .get(&url)
            .timeout(Duration::from_secs(3600))
            .send()
    };
    let a = open().await.unwrap();
    let b = open().await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = open().await.unwrap();
    assert_eq!(c.status().as_u16(), 429);
    let v: Value = c.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_watches", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("2"), "{v}");
    // A closed watch frees its place.
    drop(a);
    wait_until(
        ELECTION,
        "a watch slot to free up",
        async || matches!(open().await, Ok(r) if r.status() == 200),
    )
    .await;
    drop(b);
}

/// Read a watch stream to its end: (revision lines, last JSON line).
async fn read_watch(mut resp: reqwest::Response) -> (Vec<Value>, Option<Value>) {
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            lines.push(v);
        }
    }
    let last = lines.last().cloned();
    let revs = lines
        .into_iter()
        .filter(|l| l.get("revision").is_some() && l.get("events").is_some())
        .collect();
    (revs, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_is_cut_off_and_can_resume() {
    let cluster =
        Cluster::start_with_env(node_bin(), 1, &[("RSTORE_WATCH_BUFFER_BYTES", "262144")]).await;
    let base = cluster.nodes[0].direct_client_url.clone();
    let client = cluster.client(0);
    let start = client.node_info().await["revision"].as_u64().unwrap() + 1;
    let watch = |from: u64| {
        cluster
            .http
            .get(format!("{base}/v1/watch?prefix=w&start_revision={from}"))
            .timeout(Duration::from_secs(3600))
            .send()
    };
    // Two watchers that do not read: one will read later, one never.
    let later = watch(start).await.unwrap();
    let never = watch(start).await.unwrap();
    // 40 MB of changes, far past the 256 KiB bound and the sockets' buffers.
    let value = vec![b'v'; 100_000];
    let n = 400;
    let writes = futures::stream::iter(0..n).map(|i| {
        let client = client.clone();
        let value = value.clone();
        async move { client.put_acked(&format!("w-{i:04}"), &value).await }
    });
    use futures::StreamExt;
    writes.buffer_unordered(8).collect::<Vec<_>>().await;
    let metrics = || async { client.get_path("/metrics").await.text() };
    wait_until(ELECTION, "both watchers to be cut off", async || {
        metric_value(&metrics().await, "rstore_watches_cut_off_total").unwrap_or(0.0) >= 2.0
    })
    .await;
    // The one that reads now gets every revision up to the cut, then a resumable error...
    let (revs, last) = read_watch(later).await;
    let last = last.expect("some lines");
    assert_eq!(last["error"]["code"], "watch_too_slow", "{last}");
    let resume = last["resume_revision"].as_u64().expect("resume_revision");
    let got: Vec<u64> = revs
        .iter()
        .map(|l| l["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        (start..resume).collect::<Vec<_>>(),
        "revisions before the cut, without gaps"
    );
    // ...and resuming there delivers the rest, without gaps or repeats.
    let rest = watch(resume).await.unwrap();
    let end = start + n as u64;
    let mut seen = got;
    let mut body = rest;
    let mut buf = Vec::new();
    while seen.last().copied() != Some(end - 1) {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.chunk())
            .await
            .expect("the resumed watch delivers")
            .unwrap()
            .expect("the resumed watch stays open");
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            if let Some(r) = v.get("revision").and_then(Value::as_u64) {
                seen.push(r);
            }
        }
    }
    assert_eq!(seen, (start..end).collect::<Vec<_>>());
    drop(body);
    // The watcher that never reads is disconnected: no watch is left open.
    wait_for(
        Duration::from_secs(60),
        "the silent watcher to be disconnected",
        async || {
            let open = metric_value(&metrics().await, "rstore_watches").unwrap_or(-1.0);
            if open == 0.0 {
                Ok(())
            } else {
                Err(format!("{open} watches open"))
            }
        },
    )
    .await;
    drop(never);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_bounded_in_bytes_and_continue() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let client = cluster.client(0);
    let value = vec![b'x'; 1 << 20];
    for i in 0..12 {
        client.put_acked(&format!("big/{i:02}"), &value).await;
    }
    let mut seen = Vec::new();
    let mut start_after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/kv?prefix=big/&limit=1000".to_string();
        if let Some(s) = &start_after {
            path.push_str(&format!("&start_after={}", s.replace('/', "%2F")));
        }
        let page = client.get_path(&path).await;
        assert_eq!(page.status, 200, "{}", page.text());
        assert!(
            page.body.len() < 8 << 20,
            "a page of {} bytes",
            page.body.len()
        );
        let v = page.json();
        let items = v["items"].as_array().unwrap();
        assert!(!items.is_empty());
        for it in items {
            seen.push(it["key"].as_str().unwrap().to_string());
        }
        pages += 1;
        if !v["more"].as_bool().unwrap() {
            break;
        }
        start_after = seen.last().cloned();
    }
    let want: Vec<String> = (0..12).map(|i| format!("big/{i:02}")).collect();
    assert_eq!(seen, want, "every key once, in order");
    assert!(pages >= 3, "12 MiB came in {pages} pages");
}

/// Many writes at once near the quota: the quota counts the writes in flight, so together
/// they cannot take the data far past it (before, every write checked against the state
/// before any of them applied, and all passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_cannot_overshoot_the_quota() {
    const QUOTA: u64 = 256 << 10;
    const VALUE: usize = 16 << 10;
    let cluster = Cluster::start_with_env(
        node_bin(),
        1,
        &[("RSTORE_MAX_DATA_BYTES", &QUOTA.to_string())],
    )
    .await;
    let client = cluster.client(0);
    let value = vec![b'q'; VALUE];
    use futures::StreamExt;
    let answers: Vec<u16> = futures::stream::iter(0..128)
        .map(|i| {
            let client = client.clone();
            let value = value.clone();
            async move { client.put(&format!("q/{i:03}"), &value).await.status }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let ok = answers.iter().filter(|s| **s == 200).count();
    assert!(
        answers.iter().all(|s| *s == 200 || *s == 507),
        "{answers:?}"
    );
    let text = client.get_path("/metrics").await.text();
    let held = metric_value(&text, "rstore_kv_data_bytes").expect("rstore_kv_data_bytes");
    assert!(ok > 0 && ok < 128, "{ok} of 128 writes accepted");
    // At most one write's worth past the quota.
    assert!(
        held <= (QUOTA + VALUE as u64 + 256) as f64,
        "{ok} writes accepted: {held} bytes held against a quota of {QUOTA}"
    );
}

/// A member set up by hand with `node cert`, and the CLI's credential flags against it:
/// `--cacert` with `--token` or with `--cert`/`--key`, and the same through `RSTORE_*`
/// variables; a read credential cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cert_files_start_a_member_and_the_cli_authenticates() {
    use std::process::Command;
    let bin = node_bin();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(&bin)
            .args(args)
            .env_remove("RSTORE_ENDPOINT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client_port, peer_port) = (port(()), port(()));
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    let ep = format!("https://127.0.0.1:{client_port}");
    let p = |f: &str| d.join(f).display().to_string();
    assert!(run(&["cert", "ca", "--dir", &p("")], &[]).0);
    assert!(
        run(
            &[
                "cert",
                "member",
                "--ca-dir",
                &p(""),
                "--peer-url",
                &peer_url,
                "--out",
                &p("node")
            ],
            &[]
        )
        .0
    );
    assert!(
        run(
            &[
                "cert",
                "client",
                "--ca-dir",
                &p(""),
                "--name",
                "viewer",
                "--role",
                "read",
                "--out",
                &p("viewer")
            ],
            &[]
        )
        .0
    );
    let (ok, admin_token, _) = run(
        &[
            "cert",
            "token",
            "--name",
            "ops",
            "--role",
            "admin",
            "--token-file",
            &p("tokens"),
        ],
        &[],
    );
    assert!(ok);
    let admin_token = admin_token.trim().to_string();
    assert!(
        !std::fs::read_to_string(d.join("tokens"))
            .unwrap()
            .contains(&admin_token)
    );
    let mut child = tokio::process::Command::new(&bin)
        .args(["serve", "--data-dir", &p("data")])
        .args(["--listen-client", &format!("127.0.0.1:{client_port}")])
        .args(["--listen-peer", &format!("127.0.0.1:{peer_port}")])
        .args([
            "--tls-ca-file",
            &p("ca.crt"),
            "--tls-cert-file",
            &p("node.crt"),
            "--tls-key-file",
            &p("node.key"),
        ])
        .args(["--token-file", &p("tokens")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let with_token = [
        ("RSTORE_ENDPOINT", ep.as_str()),
        ("RSTORE_CACERT", &p("ca.crt")),
        ("RSTORE_TOKEN", &admin_token),
    ];
    wait_until(ELECTION, "the member to answer", async || {
        run(&["cluster", "status"], &with_token).0 || {
            // Not initialized yet: initialize it (idempotent).
            run(&["cluster", "init"], &with_token).0
        }
    })
    .await;
    wait_until(ELECTION, "a write through the CLI", async || {
        run(&["kv", "put", "hello", "world"], &with_token).0
    })
    .await;
    // Flags instead of variables, with the read client certificate: reads, cannot write.
    let cert_flags = [
        "--endpoint",
        &ep,
        "--cacert",
        &p("ca.crt"),
        "--cert",
        &p("viewer.crt"),
        "--key",
        &p("viewer.key"),
    ];
    let mut get = vec!["kv", "get", "hello"];
    get.extend_from_slice(&cert_flags);
    let (ok, out, err) = run(&get, &[]);
    assert!(ok && out.trim() == "world", "{out} {err}");
    let mut put = vec!["kv", "put", "hello", "changed"];
    put.extend_from_slice(&cert_flags);
    let (ok, _, err) = run(&put, &[]);
    assert!(
        !ok && err.contains("403") && err.contains("permission_denied"),
        "{err}"
    );
    // No credential: 401; no CA: the server's certificate is not trusted.
    let (ok, _, err) = run(
        &[
            "kv",
            "get",
            "hello",
            "--endpoint",
            &ep,
            "--cacert",
            &p("ca.crt"),
        ],
        &[],
    );
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, _) = run(
        &[
            "kv",
            "get",
            "hello",
            "--endpoint",
            &ep,
            "--token",
            &admin_token,
        ],
        &[],
    );
    assert!(!ok, "a client without the CA trusted the member");
    let _ = child.kill().await;
}

/// A body dribbled a byte at a time gets 408 once the body timeout passes, and the
/// connection is closed; the value is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_senders_get_408() {
    let cluster =
        Cluster::start_with_env(node_bin(), 1, &[("RSTORE_BODY_TIMEOUT_MS", "1000")]).await;
    let node = &cluster.nodes[0];
    let creds = cluster.creds();
    // One byte of body every 100 ms, reading the answer in between; the answer text.
    async fn trickle(mut conn: Box<dyn rstore_tests::harness::RawStream>, head: String) -> String {
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            let _ = conn.write_all(b"x").await;
            match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "still reading the body after 8 s"
            );
        }
        String::from_utf8_lossy(&answer).into_owned()
    }
    // The client port.
    let conn = rstore_tests::harness::raw_connect(&node.direct_client_url, Some(creds), None)
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/kv/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\n",
        creds.admin_token
    );
    let text = trickle(conn, head).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    // The peer port, sent as a member: forwarded batches have the same bound,
    let member = creds
        .ca
        .member(&["127.0.0.1".to_string()], &node.peer_url)
        .unwrap();
    // And the Raft RPCs: a member that stalls mid-body holds no handler past the timeout.
    for path in [
        rstore_node::forward::PATH,
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
    ] {
        let conn = rstore_tests::harness::raw_connect(&node.peer_url, Some(creds), Some(&member))
            .await
            .unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n");
        let text = trickle(conn, head).await;
        assert!(text.starts_with("HTTP/1.1 408"), "peer port {path}: {text}");
    }
    assert_eq!(
        cluster
            .client(0)
            .get("slow", Consistency::Linearizable)
            .await
            .status,
        404
    );
}

/// A transaction whose gets would answer more than 8 MiB is refused whole with 413
/// `response_too_large` (its writes not applied); a smaller one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_with_oversized_answers_are_refused_whole() {
    let cluster = Cluster::start(node_bin(), 3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let client = cluster.client(follower);
    let value = vec![b'x'; 1 << 20];
    for i in 0..12 {
        client.put_acked(&format!("tx/{i:02}"), &value).await;
    }
    let gets = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"op": "get", "key": format!("tx/{i:02}")}))
            .collect()
    };
    let mut ops = vec![json!({"op": "put", "key": "tx/marker", "value": "m"})];
    ops.extend(gets(12));
    // The leader applied every acknowledged put (a follower may still be applying the last).
    let leader_client = cluster.client(leader);
    let before = leader_client.node_info().await["revision"]
        .as_u64()
        .unwrap();
    let r = client
        .txn(&json!({"compare": [], "success": ops, "failure": []}))
        .await;
    r.assert_error(413, "response_too_large");
    assert!(r.text().contains("nothing was applied"), "{}", r.text());
    assert_eq!(
        cluster
            .client(leader)
            .get("tx/marker", Consistency::Linearizable)
            .await
            .status,
        404,
        "a refused transaction applied its put"
    );
    assert_eq!(
        leader_client.node_info().await["revision"]
            .as_u64()
            .unwrap(),
        before,
        "a refused transaction moved the revision"
    );
    // Within the bound: answered.
    let ok = client
        .txn(&json!({"compare": [], "success": gets(5), "failure": []}))
        .await
        .ok_json();
    assert_eq!(ok["results"].as_array().unwrap().len(), 5);
}

/// Plaintext HTTP sent to a TLS port gets a 400 that says to use https (and with what), on
/// both ports, rather than a TLS alert; it reaches no handler, and TLS clients are served
/// as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_to_a_tls_port_is_told_to_use_https() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let node = &cluster.nodes[0];
    for (url, says) in [
        (&node.direct_client_url, "--cacert"),
        (&node.peer_url, "member certificate"),
    ] {
        let plain = url.replacen("https://", "http://", 1);
        // A real HTTP client sees a JSON error it can show.
        let r = reqwest::Client::new()
            .put(format!("{plain}/v1/kv/plain"))
            .body("v")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{plain}: no HTTP answer: {e}"));
        assert_eq!(r.status(), 400, "{plain}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "tls_required", "{plain}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("https://") && message.contains(says),
            "{plain}: {message}"
        );
        // And a raw one sees the connection closed after the answer.
        let authority = plain.split("://").nth(1).unwrap();
        let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .expect("the connection was not closed after the 400")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{plain}: {answer}");
        assert!(answer.contains("connection: close"), "{plain}: {answer}");
    }
    // Nothing was written, and TLS clients are served.
    let client = cluster.client(0);
    assert_eq!(
        client.get("plain", Consistency::Linearizable).await.status,
        404
    );
    assert_eq!(client.put("plain", b"tls").await.status, 200);
}
