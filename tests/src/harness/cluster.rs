//! Real node processes forming one cluster: bootstrap through the admin API, leader lookup,
//! membership changes retried through elections, and waiting for voters, applied indexes
//! and caught-up replicas. When a test panics, the cluster prints every node's log tail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::checks::{Expected, assert_values, count_stale_matches, members};
use super::client::{Consistency, NodeClient};
use super::creds::Creds;
use super::process::{Interposer, TestNode};
use super::wait::wait_for;
use super::wait::{CATCH_UP, ELECTION, LOG_TAIL_LINES};

/// Real node processes forming one cluster, with their temp dir and an HTTP client.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    /// The `node` binary every process runs.
    pub bin: PathBuf,
    pub tmp: TempDir,
    /// Trusts the cluster CA and sends the admin token.
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    interposer: Option<Arc<dyn Interposer>>,
    /// `None` when the nodes run in plaintext (`RSTORE_INSECURE_PLAINTEXT` in `env`).
    pub creds: Option<Arc<Creds>>,
}

impl Cluster {
    /// Start `n` processes of `bin` and make them one cluster of `n` voters.
    pub async fn start(bin: impl AsRef<Path>, n: usize) -> Cluster {
        Cluster::start_with_env(bin, n, &[]).await
    }

    /// As [`Cluster::start`], with extra environment for every node
    /// (e.g. `RSTORE_SNAPSHOT_LOGS=50` to force snapshots).
    pub async fn start_with_env(bin: impl AsRef<Path>, n: usize, env: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster::new(bin, env);
        cluster.bootstrap(n).await;
        cluster
    }

    /// Start `n` processes and make them one cluster of `n` voters.
    async fn bootstrap(&mut self, n: usize) {
        assert!(n >= 1);
        let cluster = self;
        for _ in 0..n {
            cluster.spawn_node().await;
        }
        let init = cluster
            .client(0)
            .post_raw("/v1/cluster/init", Vec::new())
            .await;
        init.ok_json();
        for i in 1..n {
            cluster.add_member(0, i, "voter").await;
        }
        cluster.wait_for_voters(&cluster.ids()).await;
    }

    /// A client builder for this cluster's client API: trusting its CA and sending the
    /// admin token (a plain builder for a plaintext cluster). Set the timeouts you need.
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        match &self.creds {
            Some(c) => c.http_builder(Some(&c.admin_token), None),
            None => reqwest::Client::builder(),
        }
    }

    /// The credentials; panics for a plaintext cluster.
    pub fn creds(&self) -> &Creds {
        self.creds.as_deref().expect("a TLS cluster")
    }

    /// An empty cluster of `bin` processes: no process yet.
    pub fn new(bin: impl AsRef<Path>, env: &[(&str, &str)]) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("rstore-test-")
            .tempdir()
            .expect("create temp dir");
        let plaintext = env.iter().any(|(k, _)| *k == "RSTORE_INSECURE_PLAINTEXT");
        let creds = (!plaintext).then(|| Arc::new(Creds::create(&tmp.path().join("creds"))));
        let http = match &creds {
            Some(c) => c.http(Some(&c.admin_token)),
            None => reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(20))
                .build()
                .expect("build HTTP client"),
        };
        Cluster {
            nodes: Vec::new(),
            bin: bin.as_ref().to_path_buf(),
            tmp,
            creds,
            http,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            interposer: None,
        }
    }

    /// As [`Cluster::start_with_env`], with `interposer` between the nodes.
    pub async fn start_interposed(
        bin: impl AsRef<Path>,
        n: usize,
        env: &[(&str, &str)],
        interposer: Arc<dyn Interposer>,
    ) -> Cluster {
        let mut cluster = Cluster::new(bin, env);
        cluster.interposer = Some(interposer);
        cluster.bootstrap(n).await;
        cluster
    }

    /// Start a fresh, uninitialized process; returns its index. It is not a member yet.
    pub async fn spawn_node(&mut self) -> usize {
        self.spawn_node_prepared(|_| {}).await
    }

    /// As [`Cluster::spawn_node`], calling `prepare` with the node (its empty data dir and
    /// the URLs it will advertise) before its process starts: e.g. to restore a backup
    /// into its data dir.
    pub async fn spawn_node_prepared(&mut self, prepare: impl FnOnce(&TestNode)) -> usize {
        let index = self.nodes.len();
        let dir = self.tmp.path().join(format!("node-{index}"));
        let mut node = TestNode::new(
            &self.bin,
            index,
            &dir,
            &self.env,
            self.http.clone(),
            self.interposer.clone(),
            self.creds.clone(),
        );
        prepare(&node);
        node.start().await;
        self.nodes.push(node);
        index
    }

    /// Start a fresh process and add it as a voter through the current leader.
    pub async fn add_node(&mut self) -> usize {
        self.add_node_as("voter").await
    }

    /// Start a fresh process and add it with `role` (`voter` or `learner`) through the
    /// current leader.
    pub async fn add_node_as(&mut self, role: &str) -> usize {
        let index = self.spawn_node().await;
        let leader = self.leader().await;
        self.add_member(leader, index, role).await;
        index
    }

    pub fn client(&self, index: usize) -> NodeClient {
        self.nodes[index].client()
    }

    /// Indexes of the nodes whose process is running.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// The current leader and one running follower.
    pub async fn leader_and_follower(&mut self) -> (usize, usize) {
        let leader = self.leader().await;
        let follower = self
            .running()
            .into_iter()
            .find(|&i| i != leader)
            .expect("a running follower");
        (leader, follower)
    }

    /// The ids the nodes reported at their last start.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    /// Add node `index` (by the id it reports) through node `via`, retrying while the
    /// cluster has no leader or another change is in progress. Returns the cluster view.
    pub async fn add_member(&self, via: usize, index: usize, role: &str) -> Value {
        let node = &self.nodes[index];
        let client = self.client(via);
        let what = format!(
            "adding node {index} (id {}) as {role} via node {via}",
            node.id
        );
        wait_for(ELECTION, &what, async || {
            let resp = client
                .add_member(node.id, &node.peer_url, &node.client_url, role)
                .await;
            match resp.status {
                200 => Ok(resp.json()),
                409 | 503 | 504 => Err(resp.text()),
                _ => panic!(
                    "{what}: unexpected answer {} {:?}",
                    resp.status,
                    resp.text()
                ),
            }
        })
        .await
    }

    /// Remove member `id` through the current leader (retrying like [`Cluster::add_member`])
    /// and check that the returned view no longer lists it.
    pub async fn remove_member(&self, id: u64) -> Value {
        let leader = self.leader().await;
        let client = self.client(leader);
        let what = format!("removing member {id} via node {leader}");
        let view = wait_for(ELECTION, &what, async || {
            let resp = client.remove_member(id).await;
            match resp.status {
                200 => Ok(resp.json()),
                409 | 503 => Err(resp.text()),
                _ => panic!(
                    "{what}: unexpected answer {} {:?}",
                    resp.status,
                    resp.text()
                ),
            }
        })
        .await;
        assert!(
            !members(&view).iter().any(|(m, _)| *m == id),
            "member {id} still listed after removal: {view}"
        );
        view
    }

    /// Index of the running node that says it is the leader (the one with the highest
    /// term, should a deposed leader not know yet), waiting for an election.
    pub async fn leader(&self) -> usize {
        let clients: Vec<(usize, NodeClient)> = self
            .nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| (n.index, n.client()))
            .collect();
        wait_for(ELECTION, "a leader", async || {
            let mut leader: Option<(u64, usize)> = None;
            let mut seen = Vec::new();
            for (index, client) in &clients {
                let Ok(resp) = client.try_get("/v1/node").await else {
                    continue;
                };
                let info: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                let term = info["term"].as_u64().unwrap_or(0);
                if info["role"] == "leader" && leader.is_none_or(|(t, _)| term > t) {
                    leader = Some((term, *index));
                }
                seen.push(format!("node {index}: {info}"));
            }
            leader
                .map(|(_, index)| index)
                .ok_or_else(|| seen.join("; "))
        })
        .await
    }

    /// Wait until `/v1/cluster` (asked of the leader) lists exactly `ids` as voters and a
    /// leader among them.
    pub async fn wait_for_voters(&self, ids: &[u64]) -> Value {
        let mut want: Vec<(u64, String)> =
            ids.iter().map(|&id| (id, "voter".to_string())).collect();
        want.sort();
        let what = format!("voters {ids:?} with a leader");
        wait_for(ELECTION, &what, async || {
            let leader = self.leader().await;
            let view = self.client(leader).cluster_view().await;
            if view.status != 200 {
                return Err(view.text());
            }
            let view = view.json();
            let leader_ok = view["leader_id"].as_u64().is_some_and(|l| ids.contains(&l));
            if leader_ok && members(&view) == want {
                Ok(view)
            } else {
                Err(view.to_string())
            }
        })
        .await
    }

    /// Wait until node `index` has applied at least up to `index_at_least`.
    pub async fn wait_applied(&self, index: usize, index_at_least: u64) {
        let client = self.client(index);
        let what = format!("node {index} to apply index {index_at_least}");
        wait_for(CATCH_UP, &what, async || {
            let info = client.try_get("/v1/node").await?.json();
            match info["applied_index"].as_u64() {
                Some(applied) if applied >= index_at_least => Ok(()),
                _ => Err(info.to_string()),
            }
        })
        .await
    }

    /// Wait until node `index` serves every expected key under `stale` reads, then check
    /// the values one last time.
    pub async fn wait_stale_caught_up(&self, index: usize, expected: &Expected) {
        let client = self.client(index);
        let total = expected.len();
        let what = format!("node {index} to serve all {total} keys with stale reads");
        wait_for(CATCH_UP, &what, async || {
            match count_stale_matches(&client, expected).await {
                n if n == total => Ok(()),
                n => Err(format!("{n} of {total} keys")),
            }
        })
        .await;
        assert_values(&client, expected, Consistency::Stale).await;
    }

    /// Check every expected key on every running node: linearizable reads at once, stale
    /// reads once each node has caught up.
    pub async fn assert_everywhere(&mut self, expected: &Expected) {
        for index in self.running() {
            assert_values(&self.client(index), expected, Consistency::Linearizable).await;
            self.wait_stale_caught_up(index, expected).await;
        }
    }

    /// Print the tail of every node's log to stderr.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            eprintln!("{}", node.log_tail(LOG_TAIL_LINES));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if std::env::var_os("RSTORE_TEST_KEEP").is_some() {
            self.tmp.disable_cleanup(true);
            eprintln!("RSTORE_TEST_KEEP: kept {}", self.tmp.path().display());
        }
        // The nodes are killed next, when `nodes` is dropped, before `tmp` is removed.
    }
}
