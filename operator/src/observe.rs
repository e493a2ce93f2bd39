//! Observe step: read the Kubernetes objects a `ReplicatedStore` owns and every member's own
//! view of Raft ([`observe`], an [`Observation`]); [`health`] reduces that to the planner's
//! input, with the health clocks.
//!
//! The operator asks each pod `GET /v1/node` on its pod IP (no DNS needed), then asks the
//! node that claims to lead for `GET /v1/cluster`. A member is mapped to its pod by the
//! stable host name its URL names (`<pod>.<name>-peer.<ns>.svc`), else by the pod IP it
//! names, else by the pod that answers with its id, else by what the last status recorded:
//! a member whose pod is gone for a moment is never mistaken for an orphan.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use crate::crd::ReplicatedStore;
use crate::nodeapi::{ClusterView, NodeApi, NodeInfo};
use crate::resources::statefulset::revision_of;
use crate::resources::{CLIENT_PORT, CONTAINER, Names};

pub mod health;

/// One pod of the StatefulSet, and what its node said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// StatefulSet ordinal.
    pub ordinal: u32,
    /// Pod IP, once assigned.
    pub ip: Option<String>,
    /// The pod's DNS name, when the store runs TLS: the operator calls it by this name (which
    /// its certificate carries) and connects to its IP.
    pub host: Option<String>,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Template revision the pod was created from.
    pub revision: Option<String>,
    /// The node's `GET /v1/node`, when it answered.
    pub node: Option<NodeInfo>,
    /// Why the node container last exited on an error, from its termination message
    /// ([`failed_start`]).
    pub failed_start: Option<String>,
}

/// Why the node container of `pod` last exited on an error: the termination message of its
/// current or previous run (the node writes why it could not start there, such as a backup
/// it refused to restore). `None` when it never failed, or failed without saying why.
pub fn failed_start(pod: &Pod) -> Option<String> {
    let node = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?;
    [node.state.as_ref(), node.last_state.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| s.terminated.as_ref())
        .find(|t| t.exit_code != 0)?
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}

impl PodState {
    /// Base URL of the node's client port.
    pub fn base_url(&self) -> Option<String> {
        let ip = self.ip.as_deref()?;
        if let Some(host) = &self.host {
            return Some(format!("https://{host}:{CLIENT_PORT}"));
        }
        Some(if ip.contains(':') {
            format!("http://[{ip}]:{CLIENT_PORT}")
        } else {
            format!("http://{ip}:{CLIENT_PORT}")
        })
    }
}

/// Everything observed in one reconcile.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The StatefulSet, if it exists.
    pub statefulset: Option<StatefulSet>,
    /// Pods that exist and are not terminating, by ordinal.
    pub pods: BTreeMap<u32, PodState>,
    /// The leader's view of the cluster.
    pub view: Option<ClusterView>,
    /// Base URL of the node that answered `view` (the leader, or a node that forwarded).
    pub view_from: Option<String>,
    /// Pod ordinal of each member in `view`.
    pub member_ordinals: BTreeMap<u64, Option<u32>>,
    /// Why `view` could not be confirmed (see [`confirm_view`]); no member is removed then.
    pub unconfirmed: Option<String>,
    /// The Secret with the user credential, when the store has one.
    pub credentials_secret: Option<String>,
}

impl Observation {
    /// The leader's id, when a view was obtained.
    pub fn leader_id(&self) -> Option<u64> {
        self.view.as_ref()?.leader_id
    }

    /// Pod name of the leader.
    pub fn leader_pod(&self, names: &Names) -> Option<String> {
        let leader = self.leader_id()?;
        let ordinal = (*self.member_ordinals.get(&leader)?)?;
        Some(names.pod(ordinal))
    }

    /// Base URL to send admin requests for member `id` to: its pod IP when a pod answers with
    /// that id, else the URL it advertises.
    pub fn member_base(&self, id: u64) -> Option<String> {
        if let Some(pod) = self
            .pods
            .values()
            .find(|p| p.node.as_ref().is_some_and(|n| n.id == id))
        {
            return pod.base_url();
        }
        let view = self.view.as_ref()?;
        Some(view.members.iter().find(|m| m.id == id)?.client_url.clone())
    }
}

/// The store's pods: from the controller's watch cache when there is one, else listed.
pub async fn pods_of(
    client: &Client,
    cache: Option<&Store<Pod>>,
    rs: &ReplicatedStore,
) -> Result<Vec<Pod>, kube::Error> {
    let names = Names::of(rs);
    if let Some(cache) = cache {
        let selector = names.selector_labels();
        return Ok(cache
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(names.namespace.as_str()))
            .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .map(|p| (**p).clone())
            .collect());
    }
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    Ok(pod_api
        .list(&ListParams::default().labels(&names.selector_string()))
        .await?
        .items)
}

/// Reads the store's pods ([`pods_of`]) and every node, next to the StatefulSet the caller
/// read; `credentials_secret` is the Secret with the user credential, when the store has one.
pub async fn observe(
    client: &Client,
    cached_pods: Option<&Store<Pod>>,
    nodes: &NodeApi,
    rs: &ReplicatedStore,
    statefulset: Option<StatefulSet>,
    credentials_secret: Option<String>,
) -> Result<Observation, kube::Error> {
    let pod_list = pods_of(client, cached_pods, rs).await?;
    let names = Names::of(rs);
    let mut pods: BTreeMap<u32, PodState> = pod_list
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = names.ordinal_of(&name)?;
            let status = p.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some((
                ordinal,
                PodState {
                    name,
                    ordinal,
                    ip: status.and_then(|s| s.pod_ip.clone()),
                    host: nodes.is_secure().then(|| names.pod_host(ordinal)),
                    ready,
                    revision: revision_of(Some(&p.metadata)),
                    node: None,
                    failed_start: failed_start(p),
                },
            ))
        })
        .collect();
    for p in pods.values() {
        if let (Some(host), Some(ip)) = (&p.host, p.ip.as_deref().and_then(|i| i.parse().ok())) {
            nodes.learn(host, ip);
        }
    }
    let answers = futures::future::join_all(pods.values().map(|p| {
        let base = p.base_url();
        async move {
            match base {
                Some(base) => nodes.node(&base).await.ok(),
                None => None,
            }
        }
    }))
    .await;
    for (pod, answer) in pods.values_mut().zip(answers) {
        pod.node = answer;
    }
    let answered: Vec<(String, NodeInfo)> = pods
        .values()
        .filter_map(|p| Some((p.base_url()?, p.node.clone()?)))
        .collect();
    let LeaderView {
        view,
        from: view_from,
        unconfirmed,
    } = leader_view(nodes, &answered).await;
    let previous: HashMap<u64, u32> = rs
        .status
        .iter()
        .flat_map(|s| &s.members)
        .filter_map(|m| {
            let id = m.node_id.parse().ok()?;
            Some((id, names.ordinal_of(m.pod.as_deref()?)?))
        })
        .collect();
    let member_ordinals = view
        .iter()
        .flat_map(|v| &v.members)
        .map(|m| {
            let ordinal = ordinal_of_member(&names, &pods, &previous, m.id, &m.client_url);
            (m.id, ordinal)
        })
        .collect();
    Ok(Observation {
        statefulset,
        pods,
        view,
        view_from,
        member_ordinals,
        unconfirmed,
        credentials_secret,
    })
}

/// The leader's view of the cluster, and whether it was confirmed.
#[derive(Debug, Default)]
pub struct LeaderView {
    pub view: Option<ClusterView>,
    /// Base URL of the node that answered `view`.
    pub from: Option<String>,
    /// Why `view` could not be confirmed, if it could not.
    pub unconfirmed: Option<String>,
}

/// Asks the nodes that claim to lead (highest term first), then the others (which forward),
/// for the cluster view, and confirms it against every node's own answers: the first
/// confirmed view wins; without one, the first view is returned with why it is not
/// confirmed. `answered` is each reachable node's base URL and `GET /v1/node`.
///
/// One pod answering with a made-up leader, term or member list must not make the operator
/// remove anyone, so a view is trusted only when [`confirm_view`] agrees.
pub async fn leader_view(nodes: &NodeApi, answered: &[(String, NodeInfo)]) -> LeaderView {
    let mut candidates: Vec<&(String, NodeInfo)> = answered
        .iter()
        .filter(|(_, n)| n.cluster_id.is_some())
        .collect();
    // The self-declared leader with the highest term first; then the others, which forward.
    candidates.sort_by_key(|(_, n)| std::cmp::Reverse((n.role == "leader", n.term)));
    // Each node's own member list, for the majority check.
    let locals: Vec<Option<Vec<u64>>> =
        futures::future::join_all(candidates.iter().map(|(base, _)| async move {
            let v = nodes.cluster_local(base).await.ok()?;
            let mut ids: Vec<u64> = v.members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            Some(ids)
        }))
        .await;
    let own: Vec<(&NodeInfo, Option<&Vec<u64>>)> = candidates
        .iter()
        .zip(&locals)
        .map(|((_, n), l)| (n, l.as_ref()))
        .collect();
    let mut first: Option<LeaderView> = None;
    for (base, info) in candidates.iter().take(3) {
        let Ok(view) = nodes.cluster(base).await else {
            continue;
        };
        if view.leader_id.is_none() || view.cluster_id.is_none() {
            continue;
        }
        let unconfirmed = confirm_view(&view, info.id, &own).err();
        let answer = LeaderView {
            view: Some(view),
            from: Some(base.clone()),
            unconfirmed,
        };
        if answer.unconfirmed.is_none() {
            return answer;
        }
        tracing::warn!(from = %base, reason = answer.unconfirmed.as_deref().unwrap_or(""), "cluster view not confirmed");
        first.get_or_insert(answer);
    }
    first.unwrap_or_default()
}

/// Whether `view`, answered by node `from`, may be trusted to remove members: it must be
/// the leader's own (`from` is its leader), that node must report itself leader at the
/// view's term, and a strict majority of the reachable nodes of that cluster (`own`: each
/// node's `GET /v1/node` and its own member list) must agree on the leader, the term and
/// the member list. `Err` says what did not hold.
pub fn confirm_view(
    view: &ClusterView,
    from: u64,
    own: &[(&NodeInfo, Option<&Vec<u64>>)],
) -> Result<(), String> {
    let (Some(leader), Some(cluster)) = (view.leader_id, view.cluster_id.as_deref()) else {
        return Err("the view names no leader or cluster".into());
    };
    if from != leader {
        return Err(format!(
            "the view came from node {from}, not from its leader {leader}"
        ));
    }
    let Some((claimed, _)) = own.iter().find(|(n, _)| n.id == leader) else {
        return Err(format!(
            "the claimed leader {leader} did not answer as itself"
        ));
    };
    if claimed.role != "leader" || claimed.term != view.term {
        return Err(format!(
            "node {leader} reports role {} at term {}, not leader at term {}",
            claimed.role, claimed.term, view.term
        ));
    }
    let mut members: Vec<u64> = view.members.iter().map(|m| m.id).collect();
    members.sort_unstable();
    let reachable: Vec<_> = own
        .iter()
        .filter(|(n, _)| n.cluster_id.as_deref() == Some(cluster))
        .collect();
    let agree = reachable
        .iter()
        .filter(|(n, local)| {
            n.leader_id == Some(leader) && n.term == view.term && *local == Some(&members)
        })
        .count();
    if agree * 2 <= reachable.len() {
        return Err(format!(
            "only {agree} of the {} reachable members agree that node {leader} leads at term {} with members {members:?}",
            reachable.len(),
            view.term
        ));
    }
    Ok(())
}

/// The pod ordinal a member runs on (see the module docs for the order of evidence).
pub fn ordinal_of_member(
    names: &Names,
    pods: &BTreeMap<u32, PodState>,
    previous: &HashMap<u64, u32>,
    id: u64,
    client_url: &str,
) -> Option<u32> {
    let host = host_of(client_url);
    if let Some(host) = host {
        let first = host.split('.').next().unwrap_or_default();
        // Only a full stable name of our headless Service counts, not a look-alike.
        if let Some(o) = names.ordinal_of(first)
            && host.starts_with(&names.pod_host(o))
        {
            return Some(o);
        }
        if let Some(p) = pods.values().find(|p| p.ip.as_deref() == Some(host)) {
            return Some(p.ordinal);
        }
    }
    if let Some(p) = pods
        .values()
        .find(|p| p.node.as_ref().is_some_and(|n| n.id == id))
    {
        return Some(p.ordinal);
    }
    previous.get(&id).copied()
}

fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

#[cfg(test)]
mod tests;
