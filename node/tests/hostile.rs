//! Hostile input against real node processes: peer RPCs meant for another cluster or
//! node, malformed and oversized bodies on both ports, and damaged data directories at
//! start-up.
//!
//! What must hold: a refused RPC has no effect (no term change, the leader stays); a bad
//! body gets a 4xx and the cluster keeps serving; an oversized body gets 413 and its
//! connection is either still usable or closed cleanly; a damaged data directory either
//! stops the node with a message that says what is wrong and what to do, or the node
//! rejoins without ever serving data that disagrees with the cluster. It never comes back
//! as an empty member under its old id, or with a new id over old data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, SnapshotMeta, Vote};
use rstore_node::network::{Envelope, MAX_RPC_BYTES, REFUSED_STATUS};
use rstore_node::types::{NodeId, TypeConfig};
use rstore_tests::harness::{
    Cluster, Consistency, ELECTION, Expected, TestNode, wait_for, write_keys,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// This package's `node` binary, which cargo builds for the package's tests.
fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

/// A node id no member has (ids are below 2^53).
const STRANGER: NodeId = (1 << 60) + 7;

/// An envelope from `from`. Peer ports take RPCs only from members presenting their own
/// member certificate, so the tests that reach the envelope checks send as a real member
/// ([`member_http`]); RPCs from an unknown id are refused before (see security.rs).
fn envelope_from<T: Serialize>(
    from: NodeId,
    cluster_id: Option<&str>,
    target: NodeId,
    body: T,
) -> Vec<u8> {
    bincode::serialize(&Envelope {
        cluster_id: cluster_id.map(str::to_string),
        from,
        target,
        body,
    })
    .expect("encode envelope")
}

fn vote_request(term: u64) -> VoteRequest<NodeId> {
    VoteRequest::new(
        Vote::new(term, STRANGER),
        Some(LogId::new(CommittedLeaderId::new(term, STRANGER), 1 << 40)),
    )
}

fn append_request(term: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(term, STRANGER),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    }
}

/// A client presenting the member certificate of node `index`, for its peers' ports.
fn member_http(cluster: &Cluster, index: usize) -> reqwest::Client {
    cluster.creds().member_http(&cluster.nodes[index].peer_url)
}

/// Where a raw exchange goes, and with which credentials.
struct Dest {
    url: String,
    creds: Option<std::sync::Arc<rstore_tests::harness::Creds>>,
    identity: Option<rstore_node::pki::Pem>,
    token: Option<String>,
}

/// Node `index`'s client port, with the admin token.
fn client_dest(cluster: &Cluster, index: usize) -> Dest {
    Dest {
        url: cluster.nodes[index].direct_client_url.clone(),
        creds: cluster.creds.clone(),
        identity: None,
        token: cluster.creds.as_ref().map(|c| c.admin_token.clone()),
    }
}

/// Node `index`'s peer port, as member `as_member` (with its member certificate).
fn peer_dest(cluster: &Cluster, index: usize, as_member: usize) -> Dest {
    let creds = cluster.creds.clone();
    let identity = creds.as_ref().map(|c| {
        c.ca.member(
            &["127.0.0.1".to_string()],
            &cluster.nodes[as_member].peer_url,
        )
        .expect("member certificate")
    });
    Dest {
        url: cluster.nodes[index].peer_url.clone(),
        creds,
        identity,
        token: None,
    }
}

/// A vote or an append, to build either with one closure.
enum VoteOrAppend {
    Vote(VoteRequest<NodeId>),
    Append(AppendEntriesRequest<TypeConfig>),
}

/// POST raw bytes; transport errors fail the test.
async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, String) {
    let resp = http
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// (id, term, leader) of every running node, as `GET /v1/node` says.
async fn views(cluster: &mut Cluster) -> Vec<(u64, u64, Option<u64>)> {
    let mut out = Vec::new();
    for i in cluster.running() {
        let info = cluster.client(i).node_info().await;
        out.push((
            info["id"].as_u64().unwrap(),
            info["term"].as_u64().unwrap(),
            info["leader_id"].as_u64(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_rpcs_for_another_cluster_or_node_are_refused_and_have_no_effect() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let acked = write_keys(&cluster.client(leader), "a", 20, 4).await;
    let info = cluster.client(follower).node_info().await;
    let cluster_id = info["cluster_id"].as_str().unwrap().to_string();
    let term = info["term"].as_u64().unwrap();
    let before = views(&mut cluster).await;
    assert!(
        before
            .iter()
            .all(|&(_, t, l)| t == term && l == Some(cluster.nodes[leader].id))
    );

    let target = cluster.nodes[follower].id;
    let huge = term + (1 << 40);
    let other_cluster = format!("{cluster_id}-other");
    let peer = cluster.nodes[follower].peer_url.clone();
    // Sent as the leader (its id, a certificate naming its peer URL): what reaches the
    // envelope checks is a member's RPC meant for someone else.
    let me = cluster.nodes[leader].id;
    let as_leader = member_http(&cluster, leader);
    let envelope = |c: Option<&str>, target: NodeId, body: VoteOrAppend| match body {
        VoteOrAppend::Vote(v) => envelope_from(me, c, target, v),
        VoteOrAppend::Append(a) => envelope_from(me, c, target, a),
    };
    let vote_request = |t| VoteOrAppend::Vote(vote_request(t));
    let append_request = |t| VoteOrAppend::Append(append_request(t));
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "vote from another cluster",
            "/raft/vote",
            envelope(Some(&other_cluster), target, vote_request(huge)),
        ),
        (
            "vote without a cluster id",
            "/raft/vote",
            envelope(None, target, vote_request(huge)),
        ),
        (
            "vote for another node (the leader)",
            "/raft/vote",
            envelope(
                Some(&cluster_id),
                cluster.nodes[leader].id,
                vote_request(huge),
            ),
        ),
        (
            "vote for a node that does not exist",
            "/raft/vote",
            envelope(Some(&cluster_id), STRANGER, vote_request(huge)),
        ),
        (
            "append from another cluster",
            "/raft/append",
            envelope(Some(&other_cluster), target, append_request(huge)),
        ),
        (
            "append for another node",
            "/raft/append",
            envelope(Some(&cluster_id), STRANGER, append_request(huge)),
        ),
    ];
    for (what, path, body) in &cases {
        let (status, text) = post(&as_leader, &format!("{peer}{path}"), body.clone()).await;
        assert_eq!(status, REFUSED_STATUS, "{what}: {text}");
        assert!(
            text.contains("cluster") || text.contains("node"),
            "{what}: the refusal should say why: {text}"
        );
    }
    // The same envelopes to the forwarding endpoint on the peer port, as a follower.
    let forward = format!(
        "{}{}",
        cluster.nodes[leader].peer_url,
        rstore_node::forward::PATH
    );
    let (status, text) = post(
        &member_http(&cluster, follower),
        &forward,
        envelope_from(
            cluster.nodes[follower].id,
            Some(&other_cluster),
            cluster.nodes[leader].id,
            rstore_node::forward::ForwardRequest {
                writes: Vec::new(),
                read_index: true,
            },
        ),
    )
    .await;
    assert_eq!(
        status, REFUSED_STATUS,
        "forward from another cluster: {text}"
    );

    // No effect: a write goes through (several heartbeats later), and every node still has
    // the same term and leader.
    cluster.client(follower).put_acked("after", b"1").await;
    assert_eq!(
        views(&mut cluster).await,
        before,
        "a refused RPC changed the cluster"
    );
    let mut expected = acked.clone();
    expected.insert("after".into(), b"1".to_vec());
    cluster.assert_everywhere(&expected).await;

    // Control: a well-addressed append with a higher vote is acted on (a vote would be
    // ignored while the follower's leader lease runs), so the refusals above are what
    // protected the cluster, not broken requests.
    let (status, text) = post(
        &as_leader,
        &format!("{peer}/raft/append"),
        envelope(Some(&cluster_id), target, append_request(term + 1000)),
    )
    .await;
    assert_eq!(status, 200, "a well-addressed append: {text}");
    let seen = cluster.client(follower).node_info().await["term"]
        .as_u64()
        .unwrap();
    assert!(
        seen >= term + 1000,
        "the accepted append raised the term: {seen}"
    );
    // The cluster recovers with a new election, and lost nothing.
    cluster
        .client(leader)
        .put_acked("after-control", b"2")
        .await;
    expected.insert("after-control".into(), b"2".to_vec());
    cluster.assert_everywhere(&expected).await;
}

/// What came back on a raw HTTP/1.1 connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    body: String,
    /// Whether the answer said `Connection: close`.
    announced_close: bool,
    /// Whether the server closed the connection after the answer (EOF or reset).
    closed: bool,
}

/// Send `head` and then the body from `chunk`, `total` bytes of it (chunk-encoded if
/// `chunked`), reading the answer while writing: a server may answer 413 before the body
/// is complete. Then check the connection: either closed, or usable for `GET /healthz`.
async fn raw_exchange(dest: &Dest, head: String, total: usize, chunked: bool) -> RawAnswer {
    let addr = dest.url.as_str();
    let stream =
        rstore_tests::harness::raw_connect(addr, dest.creds.as_deref(), dest.identity.as_ref())
            .await
            .expect("connect");
    let head = match (&dest.token, head.split_once("\r\n")) {
        (Some(t), Some((line, rest))) => format!("{line}\r\nauthorization: Bearer {t}\r\n{rest}"),
        _ => head,
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    // The writer runs in this task, next to the reads, not in a task of its own: the two
    // halves of a TLS stream share one socket, whose readiness has one waker per direction,
    // and a read that also writes (TLS records) would take the write waker from another
    // task, which then never wakes (a stalled body the server waits for).
    let writer = async move {
        let chunk = vec![b'x'; 64 << 10];
        wr.write_all(head.as_bytes()).await?;
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            if chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                wr.write_all(&chunk[..n]).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&chunk[..n]).await?;
            }
            sent += n;
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        Ok::<_, std::io::Error>(wr)
    };
    tokio::pin!(writer);
    let mut written: Option<std::io::Result<_>> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 16 << 10];
    // Read the head and a body of Content-Length bytes.
    let (head_len, body_len) = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().expect("content-length"))
                .unwrap_or(0);
            if buf.len() >= pos + 4 + len {
                break (pos + 4, len);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::select! {
            w = &mut writer, if written.is_none() => {
                written = Some(w);
                continue;
            }
            r = tokio::time::timeout(left, rd.read(&mut tmp)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "connection to {addr} ended before a full answer: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => panic!("no answer from {addr} within 60 s"),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let body = String::from_utf8_lossy(&buf[head_len..head_len + body_len]).into_owned();
    let says_close = head.to_lowercase().contains("connection: close");
    let closed = if says_close {
        // It must really close, promptly: EOF or reset, not a hang.
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rd.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "{addr} said Connection: close but kept the socket open"
        );
        true
    } else {
        // Not announced: the connection must serve a next request, or be closed.
        let next_answer = async {
            let mut wr = match written.take() {
                Some(w) => w.ok()?,
                None => writer.await.ok()?,
            };
            wr.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .ok()?;
            let mut next = Vec::new();
            while !String::from_utf8_lossy(&next).contains("\r\n\r\n") {
                match rd.read(&mut tmp).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => next.extend_from_slice(&tmp[..n]),
                }
            }
            Some(String::from_utf8_lossy(&next).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(10), next_answer)
            .await
            .unwrap_or_else(|_| panic!("{addr}: the connection hangs after the answer"))
        {
            Some(text) => {
                assert!(
                    text.starts_with("HTTP/1.1 200"),
                    "{addr}: second answer on the connection: {text:?}"
                );
                false
            }
            None => true,
        }
    };
    RawAnswer {
        status,
        body,
        announced_close: says_close,
        closed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_data_quota_get_507_and_deletes_make_room() {
    // 1000-byte values with 3-byte keys count 1131 bytes each with the per-key bookkeeping
    // (128): 8 fit under 8192 bytes, the 9th is refused.
    let mut cluster =
        Cluster::start_with_env(node_bin(), 3, &[("RSTORE_MAX_DATA_BYTES", "8192")]).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let value = vec![b'q'; 1000];
    let mut acked = Expected::new();
    let mut refused = None;
    for i in 0..20 {
        // Through a follower: the leader checks the quota of the forwarded write.
        let key = format!("q/{i}");
        let resp = cluster.client(follower).put(&key, &value).await;
        if resp.status == 200 {
            acked.insert(key, value.clone());
        } else {
            refused = Some((i, resp));
            break;
        }
    }
    let (i, resp) = refused.expect("the quota refused a write");
    resp.assert_error(507, "quota_exceeded");
    let message = resp.json()["error"]["message"].to_string();
    assert!(
        message.contains("RSTORE_MAX_DATA_BYTES") && message.contains("delete keys"),
        "{message}"
    );
    assert_eq!(i, 8, "refused after {i} writes: {message}");
    let client = cluster.client(leader);
    // A transaction that may put is refused; one that only deletes and reads is not.
    client
        .txn(&serde_json::json!({
            "compare": [],
            "success": [{"op": "put", "key": "q/txn", "value": "x"}],
            "failure": [],
        }))
        .await
        .assert_error(507, "quota_exceeded");
    let freed = client
        .txn(&serde_json::json!({
            "compare": [],
            "success": [{"op": "delete", "key": "q/0"}, {"op": "get", "key": "q/1"}],
            "failure": [],
        }))
        .await
        .ok_json();
    assert_eq!(freed["succeeded"], true, "{freed}");
    acked.remove("q/0");
    client.delete("q/1").await.ok_json();
    acked.remove("q/1");
    // Room again.
    client.put_acked("q/again", &value).await;
    acked.insert("q/again".into(), value.clone());
    let view = client.get_path("/metrics").await.text();
    assert!(
        view.lines()
            .any(|l| l == format!("rstore_kv_data_bytes {}", 6 * 1131 + 7 + 1000 + 128)),
        "rstore_kv_data_bytes: {}",
        view.lines()
            .filter(|l| l.contains("data_bytes"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    cluster.assert_everywhere(&acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies_get_4xx_and_the_cluster_keeps_serving() {
    const MAX_VALUE: usize = 64 << 10;
    let mut cluster = Cluster::start_with_env(
        node_bin(),
        3,
        &[("RSTORE_MAX_VALUE_BYTES", &MAX_VALUE.to_string())],
    )
    .await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let mut acked = write_keys(&cluster.client(leader), "m", 20, 4).await;
    let info = cluster.client(follower).node_info().await;
    let cluster_id = info["cluster_id"].as_str().unwrap().to_string();
    let term = info["term"].as_u64().unwrap();

    // Malformed bodies to every RPC endpoint of a follower and of the leader.
    let mut rng_bytes = Vec::new();
    for i in 0..4096u32 {
        rng_bytes.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
    }
    for node in [follower, leader] {
        // Sent as the other member of the pair, with its certificate.
        let sender = if node == leader { follower } else { leader };
        let from = cluster.nodes[sender].id;
        let as_member = member_http(&cluster, sender);
        let target = cluster.nodes[node].id;
        let vote = envelope_from(from, Some(&cluster_id), target, vote_request(term));
        let append = envelope_from(from, Some(&cluster_id), target, append_request(term));
        let snapshot = envelope_from(
            from,
            Some(&cluster_id),
            target,
            InstallSnapshotRequest::<TypeConfig> {
                vote: Vote::new_committed(term, STRANGER),
                meta: SnapshotMeta::default(),
                offset: 0,
                data: vec![1, 2, 3],
                done: true,
            },
        );
        let mut trailing = vote.clone();
        trailing.extend_from_slice(b"trailing");
        let mut huge_len = append.clone();
        // The entries' length prefix (the last field, `leader_commit: None`, is one byte
        // after it), claiming 2^62 entries.
        let n = huge_len.len();
        huge_len[n - 9..n - 1].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let bodies: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("text", b"hello, raft".to_vec()),
            ("noise", rng_bytes.clone()),
            ("truncated vote", vote[..vote.len() / 2].to_vec()),
            ("truncated append", append[..append.len() - 1].to_vec()),
            (
                "truncated snapshot",
                snapshot[..snapshot.len() - 3].to_vec(),
            ),
            ("vote with trailing bytes", trailing),
            ("append claiming 2^62 entries", huge_len),
        ];
        for path in ["/raft/append", "/raft/vote", "/raft/snapshot"] {
            for (what, body) in &bodies {
                let url = format!("{}{path}", cluster.nodes[node].peer_url);
                let (status, text) = post(&as_member, &url, body.clone()).await;
                assert!(
                    (400..500).contains(&status),
                    "{what} to {url}: expected 4xx, got {status} {text}"
                );
            }
        }
        // A well-formed envelope for the wrong endpoint is malformed there.
        let url = format!("{}/raft/append", cluster.nodes[node].peer_url);
        let (status, text) = post(&as_member, &url, vote.clone()).await;
        assert_eq!(status, 400, "a vote sent to /raft/append: {text}");
        // The forwarding endpoint on the peer port.
        let forward = format!(
            "{}{}",
            cluster.nodes[node].peer_url,
            rstore_node::forward::PATH
        );
        for (what, body) in &bodies {
            let (status, text) = post(&as_member, &forward, body.clone()).await;
            assert!(
                (400..500).contains(&status),
                "{what} to {forward}: expected 4xx, got {status} {text}"
            );
        }
    }

    // Oversized RPC bodies: declared, and streamed without a length.
    let peer = peer_dest(&cluster, follower, leader);
    let over = MAX_RPC_BYTES + (1 << 20);
    for path in ["/raft/append", "/raft/vote", "/raft/snapshot"] {
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {over}\r\n\r\n");
        let a = raw_exchange(&peer, head, over, false).await;
        assert_eq!(a.status, 413, "{path} with {over} bytes declared: {a:?}");
        assert!(a.announced_close && a.closed, "{path}: {a:?}");
    }
    let head = "POST /raft/append HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let a = raw_exchange(&peer, head.to_string(), over, true).await;
    assert_eq!(
        a.status, 413,
        "/raft/append with {over} bytes chunked: {a:?}"
    );
    assert!(a.announced_close && a.closed, "{a:?}");
    let forward = peer_dest(&cluster, leader, follower);
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\ncontent-length: {over}\r\n\r\n",
        rstore_node::forward::PATH
    );
    let a = raw_exchange(&forward, head, over, false).await;
    assert_eq!(a.status, 413, "forward with {over} bytes declared: {a:?}");
    assert!(a.announced_close && a.closed, "{a:?}");

    // Oversized values: declared and chunked, to the leader and to a follower.
    for node in [leader, follower] {
        let addr = client_dest(&cluster, node);
        for chunked in [false, true] {
            let size = if chunked { 16 * MAX_VALUE } else { 100 << 20 };
            let framing = if chunked {
                "transfer-encoding: chunked".to_string()
            } else {
                format!("content-length: {size}")
            };
            let head = format!("PUT /v1/kv/big HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n");
            let a = raw_exchange(&addr, head, size, chunked).await;
            assert_eq!(
                a.status, 413,
                "PUT of {size} bytes (chunked: {chunked}): {a:?}"
            );
            assert!(
                a.body.contains("value_too_large") && a.body.contains(&MAX_VALUE.to_string()),
                "the 413 names the limit: {a:?}"
            );
            assert!(
                a.announced_close && a.closed,
                "an unread body must close the connection, and say so: {a:?}"
            );
        }
        // At the limit exactly: accepted, and the connection stays usable.
        let head = format!(
            "PUT /v1/kv/at-limit HTTP/1.1\r\nhost: x\r\ncontent-length: {MAX_VALUE}\r\n\r\n"
        );
        let a = raw_exchange(&addr, head, MAX_VALUE, false).await;
        assert_eq!(a.status, 200, "PUT at the limit: {a:?}");
        assert!(
            !a.closed,
            "a fully read request keeps its connection: {a:?}"
        );
        let head = "PUT /v1/kv/at-limit HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        let a = raw_exchange(&addr, head.to_string(), MAX_VALUE, true).await;
        assert_eq!(a.status, 200, "chunked PUT at the limit: {a:?}");
        assert!(!a.closed, "{a:?}");
    }
    acked.insert("at-limit".into(), vec![b'x'; MAX_VALUE]);

    // The cluster kept serving, with the same leader, and lost nothing.
    cluster.client(follower).put_acked("after", b"ok").await;
    acked.insert("after".into(), b"ok".to_vec());
    assert_eq!(
        cluster.leader().await,
        leader,
        "hostile input moved the leader"
    );
    cluster.assert_everywhere(&acked).await;
    for i in cluster.running() {
        assert_eq!(
            cluster.client(i).get_path("/healthz").await.status,
            200,
            "node {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Damaged data directories at start-up.

/// A `node serve` process started by hand on a stopped node's data dir and ports, to see
/// whether it starts at all. Killed when dropped.
struct Attempt {
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

enum Outcome {
    /// The process exited; its output.
    Refused { code: Option<i32>, output: String },
    /// It answered `GET /v1/node` as a member (follower, leader or learner).
    Serving(serde_json::Value),
}

fn port(url: &str) -> &str {
    url.rsplit(':').next().expect("port")
}

/// Start the binary on `node`'s data dir and ports and wait until it exits or serves as
/// a member. A node that answers but stays a non-member is also reported as refused
/// after a while (it must not stay up like that).
async fn try_start(node: &TestNode, env: &[(&str, &str)], attempt_no: usize) -> Outcome {
    let log = node
        .data_dir
        .parent()
        .expect("node dir")
        .join(format!("attempt-{attempt_no}.log"));
    let out = std::fs::File::create(&log).expect("attempt log");
    let child = Command::new(node_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args([
            "--listen-client",
            &format!("127.0.0.1:{}", port(&node.client_url)),
        ])
        .args(["--advertise-client", &node.client_url])
        .args([
            "--listen-peer",
            &format!("127.0.0.1:{}", port(&node.peer_url)),
        ])
        .args(["--advertise-peer", &node.peer_url])
        .args(node.tls_args())
        .env("RSTORE_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn node");
    let mut attempt = Attempt {
        child: Some(child),
        log,
    };
    let client = node.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let child = attempt.child.as_mut().expect("child");
        if let Some(status) = child.try_wait().expect("try_wait") {
            attempt.child = None;
            return Outcome::Refused {
                code: status.code(),
                output: std::fs::read_to_string(&attempt.log).unwrap_or_default(),
            };
        }
        if let Ok(r) = client.try_get("/v1/node").await
            && r.status == 200
        {
            let info = r.json();
            if matches!(
                info["role"].as_str(),
                Some("follower" | "leader" | "learner")
            ) {
                // Hand the data dir back to the harness: stop this process cleanly.
                let child = attempt.child.as_mut().expect("child");
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let _ = child.wait();
                attempt.child = None;
                return Outcome::Serving(info);
            }
        }
        assert!(
            Instant::now() < deadline,
            "node neither exited nor rejoined within 30 s: {}",
            std::fs::read_to_string(&attempt.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut the log's newest segment to half its records, as a lost file tail would.
    TruncateLogHalf,
    /// As a node that lost only its watermark file too.
    TruncateLogHalfWithoutWatermark,
    /// Overwrite a third of the way into the newest segment's records.
    GarbageInLog,
    /// Flip a byte inside a segment that was sealed (not the newest).
    FlipSealedSegment,
    DeleteIdentity,
    CorruptIdentity,
    FlipSnapshotBits,
    TruncateSnapshot,
    DeleteLog,
}

/// The log's segment files, oldest first.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut s: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    s.sort();
    s
}

/// Where a segment's records end (it is zero-filled beyond).
fn data_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// The newest segment that holds records.
fn newest_written(dir: &Path) -> (std::path::PathBuf, u64) {
    segments(dir)
        .into_iter()
        .rev()
        .map(|p| {
            let end = data_end(&p);
            (p, end)
        })
        .find(|(_, end)| *end > 0)
        .expect("a segment with records")
}

fn damage(dir: &Path, what: Damage) {
    use std::io::{Seek, SeekFrom, Write};
    let snapshot = dir.join("snapshot").join("current");
    match what {
        Damage::TruncateLogHalfWithoutWatermark => {
            std::fs::remove_file(dir.join("watermark")).unwrap();
            damage(dir, Damage::TruncateLogHalf);
        }
        Damage::TruncateLogHalf => {
            let (segment, end) = newest_written(dir);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap()
                .set_len(end / 2)
                .unwrap();
        }
        Damage::GarbageInLog => {
            let (segment, end) = newest_written(dir);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap();
            f.seek(SeekFrom::Start(end / 3)).unwrap();
            let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 131 + 7) as u8).collect();
            f.write_all(&garbage).unwrap();
            f.sync_all().unwrap();
        }
        Damage::FlipSealedSegment => {
            let all = segments(dir);
            assert!(all.len() >= 2, "several segments: {all:?}");
            let sealed = &all[0];
            let at = data_end(sealed) / 2;
            let mut bytes = std::fs::read(sealed).unwrap();
            bytes[at as usize] ^= 0x5a;
            std::fs::write(sealed, bytes).unwrap();
        }
        Damage::DeleteIdentity => std::fs::remove_file(dir.join("identity.json")).unwrap(),
        Damage::CorruptIdentity => {
            std::fs::write(dir.join("identity.json"), b"{\"node_id\": 12").unwrap()
        }
        Damage::FlipSnapshotBits => {
            let mut bytes = std::fs::read(&snapshot).expect("a snapshot file");
            let at = bytes.len() * 2 / 3;
            bytes[at] ^= 0x5a;
            std::fs::write(&snapshot, bytes).unwrap();
        }
        Damage::DeleteLog => std::fs::remove_dir_all(dir.join("wal")).unwrap(),
        Damage::TruncateSnapshot => {
            let bytes = std::fs::read(&snapshot).expect("a snapshot file");
            std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).unwrap();
        }
    }
}

/// Damage a stopped follower's data, restart it, and check the outcome: a clear refusal
/// containing every string of `refusal` (or, if `may_recover`, a rejoin that serves only
/// what the cluster acknowledged). What happened is printed (`--nocapture`).
async fn damaged_follower(what: Damage, snapshots: bool, refusal: &[&str], may_recover: bool) {
    let mut env: Vec<(&str, &str)> = Vec::new();
    if snapshots {
        env.push(("RSTORE_SNAPSHOT_LOGS", "20"));
    }
    if matches!(what, Damage::FlipSealedSegment) {
        // Small segments, so that the writes span several.
        env.push(("RSTORE_WAL_SEGMENT_BYTES", "16384"));
    }
    let env = env.as_slice();
    let mut cluster = Cluster::start_with_env(node_bin(), 3, env).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    // One write at a time: one log entry each, so that snapshots are taken.
    let acked: Expected = write_keys(&cluster.client(leader), "d", 120, 1).await;
    cluster.wait_stale_caught_up(follower, &acked).await;
    let dir = cluster.nodes[follower].data_dir.clone();
    if snapshots {
        let snapshot = dir.join("snapshot").join("current");
        wait_for(ELECTION, "the follower's first snapshot", async || {
            if snapshot.exists() {
                Ok(())
            } else {
                Err("no snapshot/current yet".to_string())
            }
        })
        .await;
    }
    // The watermark (a durable commit index kept outside the log) trails the log by
    // about a second; let it cover the writes, as it does on any node that ran a while.
    let applied = cluster.client(follower).node_info().await["applied_index"]
        .as_u64()
        .unwrap();
    let watermark = dir.join("watermark");
    wait_for(
        ELECTION,
        "the follower's watermark to cover the writes",
        async || {
            let w = std::fs::read_to_string(&watermark).unwrap_or_default();
            match w.trim().parse::<u64>() {
                Ok(w) if w + 5 >= applied => Ok(()),
                _ => Err(format!("watermark {w:?}, applied {applied}")),
            }
        },
    )
    .await;
    let old_id = cluster.nodes[follower].id;
    cluster.nodes[follower].stop().await;
    damage(&dir, what);

    match try_start(&cluster.nodes[follower], env, 1).await {
        Outcome::Refused { code, output } => {
            eprintln!("{what:?}: refused to start (exit {code:?}): {output}");
            assert_ne!(code, Some(0), "{what:?}: a refusal must exit non-zero");
            let error = output
                .lines()
                .find(|l| l.starts_with("Error: "))
                .unwrap_or_else(|| panic!("{what:?}: no `Error:` line in {output}"));
            for needle in refusal {
                assert!(
                    error.contains(needle),
                    "{what:?}: {needle:?} not in {error}"
                );
            }
            assert!(
                error.contains("backup") && error.contains("wipe"),
                "{what:?}: the message must say what to do: {error}"
            );
            assert!(!output.contains("panicked"), "{what:?}: {output}");
            // The damage is left for the operator: nothing was rewritten.
            assert!(
                !matches!(what, Damage::DeleteIdentity) || !dir.join("identity.json").exists(),
                "{what:?}: a new identity was written"
            );
        }
        Outcome::Serving(info) => {
            eprintln!("{what:?}: started and rejoined: {info}");
            assert!(
                may_recover,
                "{what:?}: the node started on damaged data: {info}"
            );
            assert_eq!(info["id"].as_u64(), Some(old_id), "{what:?}: {info}");
            // Back under the harness, it must catch up and agree with the cluster.
            cluster.nodes[follower].start().await;
            assert_eq!(cluster.nodes[follower].id, old_id);
            cluster.wait_stale_caught_up(follower, &acked).await;
        }
    }
    // Either way the cluster serves every acknowledged write, and keeps taking writes.
    let leader = cluster.leader().await;
    cluster.client(leader).put_acked("after", b"1").await;
    let mut expected = acked;
    expected.insert("after".into(), b"1".to_vec());
    cluster.assert_everywhere(&expected).await;
    for i in cluster.running() {
        rstore_tests::harness::assert_values(&cluster.client(i), &expected, Consistency::Stale)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_log_behind_its_snapshot_is_refused() {
    damaged_follower(
        Damage::TruncateLogHalfWithoutWatermark,
        true,
        &["lost writes", "snapshot"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_log_is_refused() {
    // It reads as a torn tail a third of the way in; the watermark says more was durable.
    damaged_follower(Damage::GarbageInLog, true, &["lost writes"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_log_without_snapshot_is_refused() {
    // No snapshot file to compare with: the watermark file (a durable commit index kept
    // outside the log) is what tells a cut log from a torn tail.
    damaged_follower(
        Damage::TruncateLogHalf,
        false,
        &["watermark", "lost writes"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_sealed_log_segment_is_refused() {
    damaged_follower(
        Damage::FlipSealedSegment,
        false,
        &["segment", "is damaged"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_log_of_a_member_is_refused() {
    damaged_follower(
        Damage::DeleteLog,
        false,
        &["write-ahead log", "is gone"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_identity_next_to_data_is_refused() {
    damaged_follower(
        Damage::DeleteIdentity,
        false,
        &["identity.json is missing"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_identity_is_refused() {
    damaged_follower(
        Damage::CorruptIdentity,
        false,
        &["identity.json is corrupt"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_refused() {
    damaged_follower(
        Damage::FlipSnapshotBits,
        true,
        &["snapshot file", "corrupt"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_snapshot_is_refused() {
    damaged_follower(
        Damage::TruncateSnapshot,
        true,
        &["snapshot file", "corrupt"],
        false,
    )
    .await;
}

/// A batch posted straight to the leader's forwarding endpoint skips the client API's
/// parsers. The batcher checks every command itself, so an empty key, an oversized key or
/// an oversized value is refused (nothing reaches the log), a body past the forwarding
/// bound is refused with 413 before it is read, and the cluster keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_past_the_client_api_are_checked_by_the_batcher() {
    use rstore_node::batcher::{Ack, WriteError};
    use rstore_node::forward::{ForwardRequest, ForwardResponse, MAX_BODY_BYTES, PATH};
    use rstore_node::types::{Command as Cmd, Condition};

    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    // Sent as a follower would (a compromised member): its id, its certificate.
    let from = cluster.nodes[follower].id;
    let client = cluster.client(leader);
    let info = client.node_info().await;
    let cluster_id = info["cluster_id"].as_str().unwrap().to_string();
    let before = info["revision"].as_u64();
    let put = |key: String, len: usize| Cmd::Put {
        key,
        value: vec![b'v'; len],
        cond: Condition::None,
    };
    let writes = vec![
        put(String::new(), 1),
        put("k".repeat(10_000), 1),
        put("big".into(), 3 << 20),
        Cmd::Delete {
            key: String::new(),
            cond: Condition::None,
        },
    ];
    let n = writes.len();
    let body = envelope_from(
        from,
        Some(&cluster_id),
        cluster.nodes[leader].id,
        ForwardRequest {
            writes,
            read_index: false,
        },
    );
    let http = member_http(&cluster, follower);
    let url = format!("{}{PATH}", cluster.nodes[leader].peer_url);
    let resp = http.post(&url).body(body).send().await.expect("forward");
    assert_eq!(resp.status().as_u16(), 200);
    let answer: ForwardResponse =
        bincode::deserialize(&resp.bytes().await.unwrap()).expect("forward response");
    assert_eq!(answer.writes.len(), n);
    let expected = [
        ("invalid_key", false),
        ("key_too_large", true),
        ("value_too_large", true),
        ("invalid_key", false),
    ];
    for (r, (code, too_large)) in answer.writes.iter().zip(expected) {
        match r {
            Err(WriteError::Invalid(inv)) => {
                assert_eq!(
                    (inv.code.as_str(), inv.too_large),
                    (code, too_large),
                    "{inv:?}"
                );
                assert!(!inv.message.is_empty());
            }
            other => panic!("expected {code}, got {other:?}"),
        }
    }
    // Nothing reached the log, and nothing is readable under those keys.
    let after = client.node_info().await["revision"].as_u64();
    assert_eq!(
        before, after,
        "a refused forwarded write changed the revision"
    );
    assert_eq!(
        client.get("big", Consistency::Linearizable).await.status,
        404
    );

    // A body past the forwarding bound is refused before it is read, declared or chunked.
    let addr = peer_dest(&cluster, leader, follower);
    let over = MAX_BODY_BYTES + 1;
    for chunked in [false, true] {
        let head = if chunked {
            format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        } else {
            format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {over}\r\n\r\n")
        };
        let a = raw_exchange(&addr, head, over, chunked).await;
        assert_eq!(
            a.status, 413,
            "forward, {over} bytes, chunked {chunked}: {a:?}"
        );
    }
    // The cluster still commits, and a legitimate forwarded write still works.
    assert_eq!(client.put("after", b"x").await.status, 200);
    let body = envelope_from(
        from,
        Some(&cluster_id),
        cluster.nodes[leader].id,
        ForwardRequest {
            writes: vec![put("fine".into(), 10)],
            read_index: false,
        },
    );
    let resp = http.post(&url).body(body).send().await.expect("forward");
    let answer: ForwardResponse = bincode::deserialize(&resp.bytes().await.unwrap()).unwrap();
    assert!(
        matches!(answer.writes[0], Ok(Ack::Applied(_))),
        "{:?}",
        answer.writes
    );
}

/// A 64 MiB write is refused with 413 on every route that takes writes (a put, a
/// transaction, a forwarded batch), on the leader and on a follower, declared or chunked,
/// and the cluster keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_write_gets_413_on_every_route_and_the_cluster_keeps_committing() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let size = 64 << 20;
    for node in [leader, follower] {
        let other = if node == leader { follower } else { leader };
        for (method, path) in [
            ("PUT", "/v1/kv/huge"),
            ("POST", "/v1/txn"),
            ("POST", rstore_node::forward::PATH),
        ] {
            for chunked in [false, true] {
                let framing = if chunked {
                    "transfer-encoding: chunked".to_string()
                } else {
                    format!("content-length: {size}")
                };
                let head = format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n");
                // Forwarded batches go to the peer port, from a member.
                let addr = if path.starts_with("/v1/") {
                    client_dest(&cluster, node)
                } else {
                    peer_dest(&cluster, node, other)
                };
                let a = raw_exchange(&addr, head, size, chunked).await;
                assert_eq!(
                    a.status, 413,
                    "node {node} {method} {path} chunked {chunked}: {a:?}"
                );
                assert!(a.body.contains("\"error\""), "{a:?}");
            }
        }
    }
    assert_eq!(
        cluster.client(follower).put("small", b"ok").await.status,
        200
    );
    assert_eq!(
        cluster
            .client(leader)
            .get("small", Consistency::Linearizable)
            .await
            .status,
        200
    );
}

/// Requests with made-up methods are counted under one `other` label: they cannot add
/// metrics series without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_methods_add_no_metrics_series() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let base = cluster.nodes[0].direct_client_url.clone();
    let http = cluster.http.clone();
    let scrape = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    };
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("rstore_http_request"))
            .count()
    };
    // One junk request first, so its `other` series exist before the count.
    let junk = |i: usize| reqwest::Method::from_bytes(format!("JUNK{i}").as_bytes()).unwrap();
    let r = http
        .request(junk(0), format!("{base}/v1/kv/a"))
        .send()
        .await;
    assert!(r.is_ok(), "{r:?}");
    // The first scrape records its own series, which the second then shows.
    scrape().await;
    let before = series(&scrape().await);
    for i in 1..=20 {
        let _ = http
            .request(junk(i), format!("{base}/v1/kv/a"))
            .send()
            .await;
    }
    let text = scrape().await;
    assert!(!text.contains("JUNK"), "a junk method became a label");
    assert!(text.contains("method=\"other\""), "no `other` series");
    assert_eq!(series(&text), before, "junk methods added series");
}
