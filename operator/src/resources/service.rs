//! The two Services: a headless one that gives every pod a stable DNS name for Raft peers
//! (publishing pods before they are ready, since a node must be reachable to become ready),
//! and a client one that load-balances over ready members.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CLIENT_PORT, CLIENT_PORT_NAME, Names, PEER_PORT, PEER_PORT_NAME, owned_meta};
use crate::crd::ReplicatedStore;

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(number),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The headless Service `<name>-peer`.
pub fn peer(rs: &ReplicatedStore) -> Service {
    let names = Names::of(rs);
    Service {
        metadata: owned_meta(rs, &names.peer_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(vec![
                port(CLIENT_PORT_NAME, CLIENT_PORT),
                port(PEER_PORT_NAME, PEER_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The client Service `<name>`: any ready member accepts any request and forwards writes and
/// linearizable reads to the leader.
pub fn client(rs: &ReplicatedStore) -> Service {
    let names = Names::of(rs);
    Service {
        metadata: owned_meta(rs, names.client_service()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port(CLIENT_PORT_NAME, CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ReplicatedStoreSpec;

    #[test]
    fn peer_service_is_headless_and_publishes_unready_pods() {
        let rs = ReplicatedStore::new("db", ReplicatedStoreSpec::default());
        let s = peer(&rs);
        assert_eq!(s.metadata.name.as_deref(), Some("db-peer"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.ports.unwrap().len(), 2);
        let c = client(&rs).spec.unwrap();
        assert_eq!(c.publish_not_ready_addresses, None);
        assert_eq!(c.ports.unwrap()[0].port, 7379);
    }
}
