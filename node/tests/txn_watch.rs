//! Transactions (`POST /v1/txn`) and watches (`GET /v1/watch`) on clusters of real `node`
//! processes: compare-and-set under contention, multi-key invariants, input validation,
//! ordered and gap-free change streams, resumption, compacted history and progress lines.
//!
//! Watch streams are read with reqwest's `chunk()` and split into NDJSON lines here. The
//! writes a watch must report are recorded by [`Changes`] as the exact lines expected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rstore_tests::harness::{
    CATCH_UP, Cluster, Consistency, ELECTION, Expected, NodeClient, Resp, assert_values, kv_path,
    wait_for, write_keys,
};
use serde_json::{Value, json};

/// This package's `node` binary, which cargo builds for the package's tests.
fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

/// A watch stream that lives longer than the harness client's 20 s request timeout.
const WATCH_REQUEST_TIMEOUT: Duration = CATCH_UP;

/// An open `GET /v1/watch` stream, read one NDJSON line at a time.
struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
    url: String,
}

impl Watch {
    /// Open a watch with `query`; any answer but 200 is returned whole.
    async fn open(client: &NodeClient, query: &str) -> Result<Watch, Resp> {
        let url = format!("{}/v1/watch?{query}", client.url);
        let resp = client
            .http
            .get(&url)
            .timeout(WATCH_REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        if resp.status() != 200 {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap_or_default().to_vec();
            return Err(Resp {
                status,
                headers,
                body,
            });
        }
        let content_type = resp.headers().get("content-type");
        assert_eq!(
            content_type.and_then(|v| v.to_str().ok()),
            Some("application/x-ndjson"),
            "GET {url}"
        );
        Ok(Watch {
            resp,
            buf: Vec::new(),
            url,
        })
    }

    /// Open a watch that must be accepted.
    async fn open_ok(client: &NodeClient, query: &str) -> Watch {
        Watch::open(client, query).await.unwrap_or_else(|r| {
            panic!(
                "GET {}/v1/watch?{query}: {} {}",
                client.url,
                r.status,
                r.text()
            )
        })
    }

    /// The next line as JSON; panics if the stream ends or stays silent for [`ELECTION`].
    async fn next_line(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + ELECTION;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line).unwrap_or_else(|e| {
                    panic!(
                        "{}: not a JSON line ({e}): {:?}",
                        self.url,
                        String::from_utf8_lossy(line)
                    )
                });
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => panic!(
                    "{} ended; unterminated rest: {:?}",
                    self.url,
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(Err(e)) => panic!("{}: reading the stream: {e}", self.url),
                Err(_) => panic!(
                    "{}: no complete line within {ELECTION:?}; partial: {:?}",
                    self.url,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// The next line that is not a progress line.
    async fn next_event_line(&mut self) -> Value {
        loop {
            let line = self.next_line().await;
            if line.get("progress").is_none() {
                return line;
            }
        }
    }

    /// Event lines until one at revision `last` or later (progress lines are skipped).
    async fn event_lines_through(&mut self, last: u64) -> Vec<Value> {
        let mut lines = Vec::new();
        loop {
            let line = self.next_event_line().await;
            let revision = line_revision(&line);
            lines.push(line);
            if revision >= last {
                return lines;
            }
        }
    }
}

fn line_revision(line: &Value) -> u64 {
    line["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("a watch line without a revision: {line}"))
}

/// A line with its events sorted by key: the order of events within one revision is
/// not part of the contract.
fn normalized(line: &Value) -> Value {
    let mut line = line.clone();
    if let Some(events) = line["events"].as_array_mut() {
        events.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    }
    line
}

/// Assert that `seen` is exactly `expected`: revisions strictly increasing, no gap, no
/// duplicate, no key outside the prefix, every event as written.
fn assert_lines(seen: &[Value], expected: &[Value]) {
    for pair in seen.windows(2) {
        assert!(
            line_revision(&pair[0]) < line_revision(&pair[1]),
            "revisions must strictly increase: {} then {}",
            pair[0],
            pair[1]
        );
    }
    let revisions = |lines: &[Value]| lines.iter().map(line_revision).collect::<Vec<_>>();
    assert_eq!(
        revisions(seen),
        revisions(expected),
        "the watch's revisions against the writes' revisions"
    );
    for (got, want) in seen.iter().zip(expected) {
        assert_eq!(normalized(got), normalized(want), "watch line");
    }
}

/// Writes made through one node, and the watch lines they must produce under `prefix`.
struct Changes {
    client: NodeClient,
    prefix: String,
    /// The expected lines, in revision order.
    lines: Vec<Value>,
    /// Create revision of each live key under the prefix.
    created: BTreeMap<String, u64>,
    /// The revision of the last write, inside the prefix or not.
    last_revision: u64,
}

impl Changes {
    fn new(client: NodeClient, prefix: &str) -> Changes {
        Changes {
            client,
            prefix: prefix.to_string(),
            lines: Vec::new(),
            created: BTreeMap::new(),
            last_revision: 0,
        }
    }

    fn put_event(&mut self, key: &str, value: &str, version: u64, revision: u64) -> Value {
        let create_revision = *self.created.entry(key.to_string()).or_insert(revision);
        json!({"type": "put", "key": key, "value_base64": BASE64.encode(value),
               "version": version, "create_revision": create_revision, "mod_revision": revision})
    }

    fn delete_event(&mut self, key: &str, revision: u64) -> Value {
        self.created.remove(key);
        json!({"type": "delete", "key": key, "mod_revision": revision})
    }

    fn record(&mut self, revision: u64, events: Vec<Value>) {
        assert!(
            revision > self.last_revision,
            "write revisions grow: {revision} after {}",
            self.last_revision
        );
        self.last_revision = revision;
        if !events.is_empty() {
            self.lines
                .push(json!({"revision": revision, "events": events}));
        }
    }

    async fn put(&mut self, key: &str, value: &str) {
        let ack = self.client.put(key, value.as_bytes()).await.ok_json();
        let revision = ack["revision"].as_u64().expect("numeric revision");
        let version = ack["version"].as_u64().expect("numeric version");
        let mut events = Vec::new();
        if key.starts_with(&self.prefix) {
            events.push(self.put_event(key, value, version, revision));
        }
        self.record(revision, events);
    }

    async fn delete(&mut self, key: &str) {
        let ack = self.client.delete(key).await.ok_json();
        let revision = ack["revision"].as_u64().expect("numeric revision");
        let mut events = Vec::new();
        if key.starts_with(&self.prefix) {
            events.push(self.delete_event(key, revision));
        }
        self.record(revision, events);
    }

    /// One unconditional transaction: a put for `(key, Some(value))`, a delete of an
    /// existing key for `(key, None)`. Returns its revision.
    async fn txn(&mut self, ops: &[(&str, Option<&str>)]) -> u64 {
        let success: Vec<Value> = ops
            .iter()
            .map(|(key, value)| match value {
                Some(v) => json!({"op": "put", "key": key, "value": v}),
                None => json!({"op": "delete", "key": key}),
            })
            .collect();
        let ack = self
            .client
            .txn(&json!({"success": success}))
            .await
            .ok_json();
        assert_eq!(ack["succeeded"], true, "{ack}");
        let revision = ack["revision"].as_u64().expect("numeric revision");
        let mut events = Vec::new();
        for ((key, value), result) in ops.iter().zip(ack["results"].as_array().expect("results")) {
            match value {
                Some(v) => {
                    let version = result["version"].as_u64().expect("put version");
                    if key.starts_with(&self.prefix) {
                        events.push(self.put_event(key, v, version, revision));
                    }
                }
                None => {
                    assert_eq!(result["deleted"], true, "{ack}");
                    if key.starts_with(&self.prefix) {
                        events.push(self.delete_event(key, revision));
                    }
                }
            }
        }
        self.record(revision, events);
        revision
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_receives_every_change_in_revision_order() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    // Served from the follower's applied state; written through the leader.
    let mut watch = Watch::open_ok(&cluster.client(follower), "prefix=w%2F&start_revision=1").await;

    let mut changes = Changes::new(cluster.client(leader), "w/");
    changes.put("w/a", "a1").await;
    changes.put("w/b", "b1").await;
    changes.put("x/outside", "not watched").await;
    changes.put("w/a", "a2").await;
    changes.delete("w/b").await;
    changes
        .put("w", "shares the prefix's first byte only")
        .await;
    let txn_revision = changes
        .txn(&[
            ("w/c", Some("c1")),
            ("w/a", None),
            ("x/outside", Some("changed in the txn")),
        ])
        .await;
    changes.put("w/b", "b2, recreated").await;
    for i in 0..10 {
        changes.put(&format!("w/n/{i:02}"), &format!("n{i}")).await;
    }
    changes.delete("w/n/03").await;
    changes
        .put("x/last", "outside, between watched writes")
        .await;
    changes.put("w/z", "the last watched write").await;

    let last = line_revision(changes.lines.last().expect("watched writes"));
    let seen = watch.event_lines_through(last).await;
    let txn_lines: Vec<&Value> = seen
        .iter()
        .filter(|l| line_revision(l) == txn_revision)
        .collect();
    assert!(
        matches!(txn_lines[..], [line] if line["events"].as_array().map(Vec::len) == Some(2)),
        "the txn's two watched events on one line: {txn_lines:?}"
    );
    for line in &seen {
        for event in line["events"].as_array().expect("events") {
            let key = event["key"].as_str().expect("key");
            assert!(key.starts_with("w/"), "event outside the prefix: {line}");
        }
    }
    assert_lines(&seen, &changes.lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_disconnect_without_gaps_or_duplicates() {
    let mut cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let watcher = cluster.client(follower);
    let mut changes = Changes::new(cluster.client(leader), "r/");

    let mut first = Watch::open_ok(&watcher, "prefix=r%2F&start_revision=1").await;
    for i in 0..10 {
        changes
            .put(&format!("r/{}", i % 4), &format!("first batch #{i}"))
            .await;
    }
    changes.delete("r/1").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first.next_event_line().await);
    }
    drop(first);

    changes.txn(&[("r/txn", Some("t")), ("r/0", None)]).await;
    for i in 0..10 {
        changes
            .put(&format!("r/{}", i % 5), &format!("second batch #{i}"))
            .await;
    }
    changes.delete("r/2").await;

    let resume_from = line_revision(seen.last().expect("lines before the disconnect")) + 1;
    let mut second = Watch::open_ok(
        &watcher,
        &format!("prefix=r%2F&start_revision={resume_from}"),
    )
    .await;
    let last = line_revision(changes.lines.last().expect("watched writes"));
    seen.extend(second.event_lines_through(last).await);
    assert_lines(&seen, &changes.lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_revision_is_gone() {
    let mut cluster =
        Cluster::start_with_env(node_bin(), 3, &[("RSTORE_WATCH_HISTORY", "10")]).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    // Compaction runs once history is 1024 revisions over the retention.
    write_keys(&cluster.client(leader), "c/k", 1100, 16).await;
    let revision = cluster.client(leader).cluster_view().await.ok_json()["revision"]
        .as_u64()
        .expect("numeric revision");

    // Each member compacts its own history as it applies: ask each for its own view, the
    // leader directly and the follower with `stale` (else it would forward to the leader).
    for (index, view_path) in [
        (leader, "/v1/cluster"),
        (follower, "/v1/cluster?consistency=stale"),
    ] {
        let watcher = cluster.client(index);
        let what = format!("node {index} to apply revision {revision} and compact");
        let oldest = wait_for(ELECTION, &what, async || {
            let view = watcher.get_path(view_path).await.ok_json();
            match (view["revision"].as_u64(), view["oldest_revision"].as_u64()) {
                (Some(r), Some(oldest)) if r == revision && oldest > 1 => Ok(oldest),
                _ => Err(view.to_string()),
            }
        })
        .await;
        eprintln!("node {index}: revision {revision}, oldest revision kept {oldest}");
        assert!(
            oldest + 9 <= revision,
            "node {index} keeps at least the 10 retained revisions: oldest {oldest}"
        );

        for start in [1, oldest - 1] {
            let query = format!("prefix=c%2F&start_revision={start}");
            let gone = Watch::open(&watcher, &query)
                .await
                .err()
                .unwrap_or_else(|| {
                    panic!("node {index} accepted a watch from compacted revision {start}")
                });
            gone.assert_error(410, "compacted");
            let message = gone.json()["error"]["message"].to_string();
            assert!(
                message.contains(&oldest.to_string()),
                "the message names the oldest revision kept, {oldest}: {message}"
            );
        }

        let query = format!("prefix=c%2F&start_revision={oldest}");
        let lines = Watch::open_ok(&watcher, &query)
            .await
            .event_lines_through(revision)
            .await;
        let revisions: Vec<u64> = lines.iter().map(line_revision).collect();
        let want: Vec<u64> = (oldest..=revision).collect();
        assert_eq!(
            revisions, want,
            "node {index} replays every kept revision (each was a put under c/)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_progress_lines_when_idle() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    let ack = c.put("p/a", b"1").await.ok_json();
    let revision = ack["revision"].as_u64().expect("numeric revision");

    let opened = Instant::now();
    let mut watch = Watch::open_ok(&c, "prefix=p%2F&progress_ms=200").await;
    for _ in 0..2 {
        let line = watch.next_line().await;
        assert_eq!(line, json!({"progress": {"revision": revision}}));
    }
    // The default interval is 5 s: two lines this soon come from progress_ms.
    let took = opened.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "two progress lines took {took:?}"
    );

    let ack = c.put("p/b", b"2").await.ok_json();
    let revision = ack["revision"].as_u64().expect("numeric revision");
    let line = watch.next_event_line().await;
    assert_eq!(line_revision(&line), revision, "{line}");
    let line = watch.next_line().await;
    assert_eq!(line, json!({"progress": {"revision": revision}}));
}

/// The counter's value and version, read linearizably.
async fn read_counter(client: &NodeClient, key: &str) -> (u64, u64) {
    let read = client.get(key, Consistency::Linearizable).await;
    assert_eq!(
        read.status,
        200,
        "{key} via {}: {}",
        client.url,
        read.text()
    );
    let value = read.text().parse().expect("counter is a number");
    (value, read.etag_version().expect("ETag on a read"))
}

/// One incrementer: read the counter, then a txn that writes `n + 1` if the version is
/// unchanged. Returns the versions its successful transactions wrote.
async fn txn_increments(client: NodeClient, attempts: usize) -> Vec<u64> {
    let key = "txn/counter";
    let mut won = Vec::new();
    for _ in 0..attempts {
        let (n, version) = read_counter(&client, key).await;
        let txn = json!({
            "compare": [{"key": key, "target": "version", "op": "=", "value": version}],
            "success": [{"op": "put", "key": key, "value": (n + 1).to_string()}],
            "failure": [{"op": "get", "key": key}],
        });
        let ack = client.txn(&txn).await.ok_json();
        let result = &ack["results"][0];
        if ack["succeeded"] == true {
            assert_eq!(result["version"], version + 1, "{ack}");
            won.push(version + 1);
        } else {
            assert_eq!(ack["succeeded"], false, "{ack}");
            assert!(
                result["found"] == true && result["version"].as_u64() > Some(version),
                "a failed compare means the counter moved past version {version}: {ack}"
            );
        }
    }
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_and_set_counter_counts_every_success() {
    let cluster = Cluster::start(node_bin(), 3).await;
    let key = "txn/counter";
    let created = cluster
        .client(0)
        .put_with(key, b"0", &[("If-None-Match", "*")])
        .await
        .ok_json();
    assert_eq!(created["version"], 1, "{created}");

    let tasks = (0..16).map(|t| tokio::spawn(txn_increments(cluster.client(t % 3), 25)));
    let mut versions: Vec<u64> = Vec::new();
    for task in join_all(tasks).await {
        versions.extend(task.expect("incrementer task"));
    }
    let wins = versions.len() as u64;
    eprintln!("{wins} of {} increments succeeded", 16 * 25);
    assert!(wins > 0, "no transaction succeeded");
    versions.sort();
    let want: Vec<u64> = (2..=wins + 1).collect();
    assert_eq!(
        versions, want,
        "each successful transaction made exactly one new version"
    );
    for index in 0..3 {
        let (n, version) = read_counter(&cluster.client(index), key).await;
        assert_eq!(
            (n, version),
            (wins, wins + 1),
            "counter (value, version) via node {index} after {wins} successful increments"
        );
    }
}

const ACCOUNTS: usize = 5;
const INITIAL_BALANCE: i64 = 100;

fn account(i: usize) -> String {
    format!("bank/{i}")
}

/// All balances from one transaction of gets: a consistent snapshot.
async fn snapshot_balances(client: &NodeClient) -> Vec<i64> {
    let gets: Vec<Value> = (0..ACCOUNTS)
        .map(|i| json!({"op": "get", "key": account(i)}))
        .collect();
    let ack = client.txn(&json!({"success": gets})).await.ok_json();
    assert_eq!(ack["succeeded"], true, "{ack}");
    let results = ack["results"].as_array().expect("results");
    assert_eq!(results.len(), ACCOUNTS, "{ack}");
    results
        .iter()
        .map(|r| {
            assert_eq!(r["found"], true, "{ack}");
            let raw = BASE64
                .decode(r["value_base64"].as_str().expect("value_base64"))
                .expect("base64");
            String::from_utf8(raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("balance is a number: {ack}"))
        })
        .collect()
}

fn assert_conserved(balances: &[i64], context: &str) {
    assert_eq!(
        balances.iter().sum::<i64>(),
        INITIAL_BALANCE * ACCOUNTS as i64,
        "{context}: {balances:?}"
    );
    assert!(balances.iter().all(|&b| b >= 0), "{context}: {balances:?}");
}

/// A balance and its mod revision, read linearizably.
async fn read_balance(client: &NodeClient, i: usize) -> (i64, u64) {
    let read = client.get(&account(i), Consistency::Linearizable).await;
    assert_eq!(read.status, 200, "{}", read.text());
    let revision = read
        .header("x-rstore-mod-revision")
        .and_then(|r| r.parse().ok())
        .expect("X-Rstore-Mod-Revision");
    (read.text().parse().expect("balance is a number"), revision)
}

/// Random transfers guarded by both accounts' mod revisions. Returns the net change of
/// each account made by this client's successful transfers, and how many succeeded.
async fn transfer(client: NodeClient, seed: u64, attempts: usize) -> (Vec<i64>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut delta = vec![0; ACCOUNTS];
    let mut succeeded = 0;
    for _ in 0..attempts {
        let from = rng.gen_range(0..ACCOUNTS);
        let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
        let (from_balance, from_rev) = read_balance(&client, from).await;
        let (to_balance, to_rev) = read_balance(&client, to).await;
        if from_balance == 0 {
            continue;
        }
        let amount = rng.gen_range(1..=from_balance);
        let txn = json!({
            "compare": [
                {"key": account(from), "target": "mod_revision", "value": from_rev},
                {"key": account(to), "target": "mod_revision", "value": to_rev},
            ],
            "success": [
                {"op": "put", "key": account(from), "value": (from_balance - amount).to_string()},
                {"op": "put", "key": account(to), "value": (to_balance + amount).to_string()},
            ],
        });
        let ack = client.txn(&txn).await.ok_json();
        if ack["succeeded"] == true {
            delta[from] -= amount;
            delta[to] += amount;
            succeeded += 1;
        } else {
            assert_eq!(ack["succeeded"], false, "{ack}");
        }
    }
    (delta, succeeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_transfers_keep_the_total() {
    let cluster = Cluster::start(node_bin(), 3).await;
    let (leader, follower) = {
        let leader = cluster.leader().await;
        (leader, (leader + 1) % 3)
    };
    let compare: Vec<Value> = (0..ACCOUNTS)
        .map(|i| json!({"key": account(i), "target": "exists", "value": false}))
        .collect();
    let puts: Vec<Value> = (0..ACCOUNTS)
        .map(|i| json!({"op": "put", "key": account(i), "value": INITIAL_BALANCE.to_string()}))
        .collect();
    let opened = cluster
        .client(leader)
        .txn(&json!({"compare": compare, "success": puts}))
        .await
        .ok_json();
    assert_eq!(opened["succeeded"], true, "{opened}");

    let done = AtomicBool::new(false);
    let reader = async {
        let client = cluster.client(follower);
        let mut snapshots = 0;
        while !done.load(Ordering::Relaxed) {
            assert_conserved(&snapshot_balances(&client).await, "a concurrent snapshot");
            snapshots += 1;
        }
        snapshots
    };
    let transfers = async {
        let tasks = (0..8).map(|t| tokio::spawn(transfer(cluster.client(t % 3), t as u64, 20)));
        let results = join_all(tasks).await;
        done.store(true, Ordering::Relaxed);
        results
    };
    let (snapshots, results) = tokio::join!(reader, transfers);
    assert!(snapshots > 0, "no snapshot was read during the transfers");

    let mut want = vec![INITIAL_BALANCE; ACCOUNTS];
    let mut succeeded = 0;
    for result in results {
        let (delta, n) = result.expect("transfer task");
        succeeded += n;
        for (balance, d) in want.iter_mut().zip(delta) {
            *balance += d;
        }
    }
    eprintln!("{succeeded} transfers succeeded; {snapshots} snapshots checked");
    assert!(succeeded > 0, "no transfer succeeded");
    let balances = snapshot_balances(&cluster.client(leader)).await;
    assert_conserved(&balances, "the final balances");
    assert_eq!(
        balances, want,
        "final balances = initial + every successful transfer"
    );
    let expected: Expected = want
        .iter()
        .enumerate()
        .map(|(i, b)| (account(i), b.to_string().into_bytes()))
        .collect();
    for index in 0..3 {
        assert_values(&cluster.client(index), &expected, Consistency::Linearizable).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_rejects_bad_input_and_applies_nothing() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    let first_put = json!({"op": "put", "key": "bad/first", "value": "must not be written"});

    let assert_rejected = async |body: Vec<u8>, status: u16, code: &str, names: &[&str]| {
        let resp = c.post_raw("/v1/txn", body.clone()).await;
        resp.assert_error(status, code);
        let message = resp.json()["error"]["message"].to_string();
        for name in names {
            assert!(
                message.contains(name),
                "the message names {name:?}: {message}"
            );
        }
    };
    let json_body = |v: Value| serde_json::to_vec(&v).expect("encode JSON");

    let unknown_target = json!({
        "compare": [{"key": "bad/first", "target": "colour", "value": "red"}],
        "success": [first_put],
    });
    assert_rejected(
        json_body(unknown_target),
        400,
        "invalid_request",
        &["colour"],
    )
    .await;
    let unknown_compare_op = json!({
        "compare": [{"key": "bad/first", "target": "version", "op": ">=", "value": 1}],
        "success": [first_put],
    });
    assert_rejected(
        json_body(unknown_compare_op),
        400,
        "invalid_request",
        &[">="],
    )
    .await;
    let unknown_op = json!({"success": [first_put, {"op": "increment", "key": "bad/n"}]});
    assert_rejected(
        json_body(unknown_op),
        400,
        "invalid_request",
        &["increment"],
    )
    .await;
    let both_values = json!({"success": [
        first_put,
        {"op": "put", "key": "bad/both", "value": "x", "value_base64": "eA=="},
    ]});
    assert_rejected(
        json_body(both_values),
        400,
        "invalid_request",
        &["value_base64"],
    )
    .await;
    let puts = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"op": "put", "key": format!("bad/many/{i:03}"), "value": "x"}))
            .collect()
    };
    assert_rejected(
        json_body(json!({"success": puts(129)})),
        400,
        "invalid_request",
        &["success", "128"],
    )
    .await;
    let compares: Vec<Value> = (0..129)
        .map(|i| json!({"key": format!("bad/c/{i}"), "target": "exists", "value": false}))
        .collect();
    assert_rejected(
        json_body(json!({"compare": compares, "success": [first_put]})),
        400,
        "invalid_request",
        &["compare", "128"],
    )
    .await;
    assert_rejected(
        b"{\"success\": [{\"op\": \"put\", ".to_vec(),
        400,
        "invalid_request",
        &["JSON"],
    )
    .await;
    let too_large = json!({"success": [
        first_put,
        {"op": "put", "key": "bad/large", "value": "v".repeat((1 << 20) + 1)},
    ]});
    assert_rejected(json_body(too_large), 413, "value_too_large", &[]).await;

    for key in ["bad/first", "bad/large", "bad/many/000", "bad/both"] {
        c.get(key, Consistency::Linearizable)
            .await
            .assert_error(404, "key_not_found");
    }

    // The limits are inclusive: 128 operations and a value of exactly 1 MiB are fine.
    let ack = c.txn(&json!({"success": puts(128)})).await.ok_json();
    assert_eq!(
        (&ack["succeeded"], ack["results"].as_array().map(Vec::len)),
        (&json!(true), Some(128)),
        "{ack}"
    );
    let largest = "v".repeat(1 << 20);
    let ack = c
        .txn(&json!({"success": [{"op": "put", "key": "bad/largest", "value": largest}]}))
        .await
        .ok_json();
    assert_eq!(ack["succeeded"], true, "{ack}");
    let read = c.get_path(&kv_path("bad/largest")).await;
    assert_eq!((read.status, read.body.len()), (200, 1 << 20));
}
