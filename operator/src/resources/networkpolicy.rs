//! The NetworkPolicy `<name>`: the members' peer port (Raft, forwarded writes) admits only
//! the store's own pods; the client port admits the peers `spec.clientAccess` lists (any
//! pod when it is left out) and always the operator's own namespace, which must reach every
//! member's admin API, and the store's archiver (a BackupSchedule's `spec.archive`), which
//! follows its change stream. Egress is not restricted.
//!
//! This is network-level defence in depth: the peer port also requires mutual TLS with
//! member certificates, and the client port credentials (README, Security).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ARCHIVER_NAME, CLIENT_PORT, LABEL_NAME, LABEL_STORE, Names, PEER_PORT, owned_meta};
use crate::crd::ReplicatedStore;

fn port(p: u16) -> Option<Vec<NetworkPolicyPort>> {
    Some(vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(p))),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }])
}

/// The policy for `rs`; `operator_namespace` is where the operator runs, when known.
pub fn build(rs: &ReplicatedStore, operator_namespace: Option<&str>) -> NetworkPolicy {
    let names = Names::of(rs);
    let own_pods = LabelSelector {
        match_labels: Some(names.selector_labels()),
        ..LabelSelector::default()
    };
    let client_from = rs.spec.client_access.as_ref().map(|peers| {
        let mut from = peers.clone();
        if let Some(ns) = operator_namespace {
            from.push(NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        ns.to_string(),
                    )])),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            });
        }
        // The store's archiver, whichever schedule runs it.
        from.push(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (LABEL_NAME.to_string(), ARCHIVER_NAME.to_string()),
                    (LABEL_STORE.to_string(), names.name.clone()),
                ])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        });
        // The members themselves (a follower relays nothing to the client port, but
        // probes and tools in the pod may).
        from.push(NetworkPolicyPeer {
            pod_selector: Some(own_pods.clone()),
            ..NetworkPolicyPeer::default()
        });
        from
    });
    NetworkPolicy {
        metadata: owned_meta(rs, names.statefulset()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own_pods.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(own_pods),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: port(PEER_PORT),
                },
                NetworkPolicyIngressRule {
                    // `None`: from anywhere.
                    from: client_from,
                    ports: port(CLIENT_PORT),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ReplicatedStoreSpec;

    #[test]
    fn the_peer_port_admits_only_the_stores_pods() {
        let rs = ReplicatedStore::new("db", ReplicatedStoreSpec::default());
        let spec = build(&rs, Some("ops")).spec.unwrap();
        let own = Names::of(&rs).selector_labels();
        assert_eq!(
            spec.pod_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&own)
        );
        let rules = spec.ingress.unwrap();
        let peer = &rules[0];
        assert_eq!(peer.ports, port(PEER_PORT));
        let from = peer.from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        assert_eq!(
            from[0].pod_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&own)
        );
        assert!(from[0].namespace_selector.is_none(), "same namespace only");
        // Without clientAccess the client port is open to all.
        assert_eq!(rules[1].ports, port(CLIENT_PORT));
        assert_eq!(rules[1].from, None);
    }

    #[test]
    fn client_access_limits_the_client_port_and_keeps_the_operator_in() {
        let mut spec = ReplicatedStoreSpec::default();
        let app = NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        spec.client_access = Some(vec![app.clone()]);
        let rs = ReplicatedStore::new("db", spec);
        let rules = build(&rs, Some("ops")).spec.unwrap().ingress.unwrap();
        let from = rules[1].from.as_ref().unwrap();
        assert_eq!(from[0], app);
        assert!(from.iter().any(|p| {
            p.namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|l| {
                    l.get("kubernetes.io/metadata.name").map(String::as_str) == Some("ops")
                })
        }));
        // The store's archiver, and no other store's.
        let archiver = from
            .iter()
            .filter_map(|p| p.pod_selector.as_ref()?.match_labels.as_ref())
            .find(|l| l.get(LABEL_NAME).map(String::as_str) == Some(ARCHIVER_NAME))
            .expect("the archiver is admitted");
        assert_eq!(archiver[LABEL_STORE], "db");
    }
}
