//! What every reconcile shares: the clients, the Event recorder, metrics, the tunables
//! ([`Settings`]), and the per-store memory that keeps a steady-state reconcile from writing
//! (health clocks, what was last applied, the credentials last ensured).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::metrics::Metrics;
use crate::nodeapi::NodeApi;
use crate::observe::health::Clocks;
use crate::planner::Policy;
use crate::resources::credentials::Credentials;

/// Tunables of the reconcile loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Judgement thresholds of the planner.
    pub policy: Policy,
    /// Requeue after an action or while waiting for one.
    pub requeue_busy: Duration,
    /// Requeue when the cluster matches the spec (node health changes without API events).
    pub requeue_idle: Duration,
    /// Timeout of `GET /v1/node` and `GET /v1/cluster`.
    pub node_read_timeout: Duration,
    /// Timeout of membership changes (the node bounds a learner's catch-up itself).
    pub node_change_timeout: Duration,
    /// The owned objects that change only with the spec (the Services, the PDB and the
    /// NetworkPolicy) are applied when what they should be differs from what was last applied,
    /// and also after this long, to repair edits and deletions made by hand.
    pub reapply_every: Duration,
    /// The store's Secrets are read again (and certificates renewed, pruned, issued for new
    /// pods) after this long, or at once when the number of pods they must cover changes.
    /// Deleting a Secret to rotate it takes effect within this time.
    pub credentials_recheck: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            requeue_busy: Duration::from_secs(1),
            requeue_idle: Duration::from_secs(10),
            node_read_timeout: Duration::from_secs(2),
            node_change_timeout: Duration::from_secs(75),
            // Measured on the real control plane (README, "On a real control plane"): without
            // these, every 1-10 s reconcile re-applied 4 objects and read 4-6 Secrets.
            reapply_every: Duration::from_secs(300),
            credentials_recheck: Duration::from_secs(60),
        }
    }
}

/// Credentials last ensured for a store: them, the pods they covered, and when.
pub(crate) type Ensured = (Option<Credentials>, u32, Instant);

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client (a real API server, or the in-memory one).
    pub client: Client,
    /// The node admin API client for stores that run in plaintext.
    pub nodes: NodeApi,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Tunables.
    pub settings: Settings,
    /// Per store: how long each member has been unhealthy, and the leader unknown.
    pub(crate) clocks: Clocks,
    /// Per store: the credentials its client was built with, and the client.
    secure: Mutex<HashMap<String, (Credentials, NodeApi)>>,
    /// Stores already warned about running in plaintext.
    pub(crate) warned: Mutex<HashSet<String>>,
    /// Per store: a digest of the spec-only children last applied, and when.
    pub(crate) applied: Mutex<HashMap<String, (u32, Instant)>>,
    /// Per store: the credentials last ensured, for how many pods, and when.
    pub(crate) ensured: Mutex<HashMap<String, Ensured>>,
    /// Stores created from a backup whose restore ConfigMap was deleted (the cluster is up).
    pub(crate) bootstrapped: Mutex<HashSet<String>>,
    /// The controller's watch caches, when it runs against a real API server ([`run`]):
    /// reconcile reads the StatefulSet and the pods from them. Without them (the in-memory
    /// API server has no watch) it reads from the API.
    ///
    /// [`run`]: crate::controller::run
    pub(crate) caches: std::sync::OnceLock<Caches>,
}

/// The watch caches of the StatefulSets and of the rstore pods.
#[derive(Clone)]
pub struct Caches {
    pub statefulsets: Store<StatefulSet>,
    pub pods: Store<Pod>,
}

impl Context {
    /// A context reporting Events as `reporter`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, reporter: &str) -> Self {
        Self {
            nodes: NodeApi::new(settings.node_read_timeout, settings.node_change_timeout),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "rstore-operator".into(),
                    instance: Some(reporter.into()),
                },
            ),
            client,
            metrics,
            settings,
            clocks: Clocks::default(),
            secure: Mutex::default(),
            warned: Mutex::default(),
            applied: Mutex::default(),
            ensured: Mutex::default(),
            bootstrapped: Mutex::default(),
            caches: std::sync::OnceLock::new(),
        }
    }

    /// The client the store's last reconcile made with its credentials, if it made one.
    pub(crate) fn cached_node_api(&self, key: &str) -> Option<NodeApi> {
        let secure = self.secure.lock().unwrap_or_else(|e| e.into_inner());
        secure.get(key).map(|(_, api)| api.clone())
    }

    /// The node client for store `key`: the plaintext one, or one with the store's CA and the
    /// operator's token (kept while those stay the same, for its connection pool). The error
    /// is [`NodeApi::secure`]'s message (that interface is kept as it is).
    pub(crate) fn node_api(
        &self,
        key: &str,
        creds: Option<&Credentials>,
    ) -> Result<NodeApi, String> {
        let Some(creds) = creds else {
            return Ok(self.nodes.clone());
        };
        let mut secure = self.secure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, api)) = secure.get(key)
            && (&c.ca_pem, &c.token) == (&creds.ca_pem, &creds.token)
        {
            return Ok(api.clone());
        }
        let api = NodeApi::secure(
            self.settings.node_read_timeout,
            self.settings.node_change_timeout,
            &creds.ca_pem,
            &creds.token,
        )?;
        secure.insert(key.to_owned(), (creds.clone(), api.clone()));
        Ok(api)
    }
}
