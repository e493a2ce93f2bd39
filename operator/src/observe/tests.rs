//! The observe step's tests: confirming a leader's view, mapping members to pods, URLs.

use super::*;

fn names() -> Names {
    Names::new("db", "prod")
}

fn info(id: u64, role: &str, term: u64, leader_id: Option<u64>) -> NodeInfo {
    NodeInfo {
        id,
        cluster_id: Some("c".into()),
        role: role.into(),
        term,
        leader_id,
        last_log_index: None,
        applied_index: None,
        committed_index: 0,
        snapshot_index: None,
        revision: 0,
        client_url: String::new(),
        peer_url: String::new(),
        version: String::new(),
        security: Default::default(),
    }
}

fn view(leader: u64, term: u64, members: &[u64]) -> ClusterView {
    ClusterView {
        cluster_id: Some("c".into()),
        leader_id: Some(leader),
        term,
        members: members
            .iter()
            .map(|&id| crate::nodeapi::MemberView {
                id,
                role: crate::crd::MemberRole::Voter,
                client_url: String::new(),
                peer_url: String::new(),
                matched_index: None,
                lag: Some(0),
                last_contact_ms: Some(0),
            })
            .collect(),
        membership_changing: false,
        replication_mode: Default::default(),
        read_consistency: Default::default(),
        oldest_revision: 1,
        revision: 0,
    }
}

#[test]
fn a_view_is_confirmed_only_by_its_leader_and_a_majority() {
    let members = vec![1, 2, 3];
    let leader = info(1, "leader", 5, Some(1));
    let f2 = info(2, "follower", 5, Some(1));
    let f3 = info(3, "follower", 5, Some(1));
    let own = |nodes: &[&NodeInfo], lists: &[&Vec<u64>]| -> Vec<(NodeInfo, Vec<u64>)> {
        nodes
            .iter()
            .zip(lists)
            .map(|(n, l)| ((*n).clone(), (*l).clone()))
            .collect()
    };
    let check = |v: &ClusterView, from: u64, o: &[(NodeInfo, Vec<u64>)]| {
        let refs: Vec<(&NodeInfo, Option<&Vec<u64>>)> =
            o.iter().map(|(n, l)| (n, Some(l))).collect();
        confirm_view(v, from, &refs)
    };
    let all = own(&[&leader, &f2, &f3], &[&members, &members, &members]);
    assert_eq!(check(&view(1, 5, &members), 1, &all), Ok(()));
    // A follower's forwarded view is not the leader's own word.
    assert!(check(&view(1, 5, &members), 2, &all).is_err());
    // A liar at term u64::MAX naming itself, with a made-up member list.
    let liar = info(9, "leader", u64::MAX, Some(9));
    let fake = vec![9, 10, 11];
    let with_liar = own(
        &[&liar, &leader, &f2, &f3],
        &[&fake, &members, &members, &members],
    );
    let e = check(&view(9, u64::MAX, &fake), 9, &with_liar).unwrap_err();
    assert!(e.contains("1 of the 4"), "{e}");
    // The honest view still holds with the liar among the answers (3 of 4 agree).
    assert_eq!(check(&view(1, 5, &members), 1, &with_liar), Ok(()));
    // A claimed leader that reports another term, or is no leader.
    assert!(check(&view(1, 6, &members), 1, &all).is_err());
    let demoted = own(
        &[&info(1, "follower", 5, Some(2)), &f2, &f3],
        &[&members, &members, &members],
    );
    assert!(check(&view(1, 5, &members), 1, &demoted).is_err());
    // Member lists that disagree with the view do not count.
    let other = vec![1, 2];
    let split = own(&[&leader, &f2, &f3], &[&members, &other, &other]);
    assert!(check(&view(1, 5, &members), 1, &split).is_err());
}

fn pod(ordinal: u32, ip: &str, id: Option<u64>) -> (u32, PodState) {
    (
        ordinal,
        PodState {
            name: names().pod(ordinal),
            ordinal,
            ip: Some(ip.into()),
            host: None,
            ready: true,
            revision: None,
            node: id.map(|id| info(id, "follower", 1, None)),
            failed_start: None,
        },
    )
}

#[test]
fn members_map_to_pods_by_name_then_ip_then_id_then_memory() {
    let n = names();
    let pods: BTreeMap<u32, PodState> =
        [pod(0, "10.0.0.5", Some(11)), pod(1, "10.0.0.6", None)].into();
    let previous = HashMap::from([(33, 2)]);
    let of = |id, url: &str| ordinal_of_member(&n, &pods, &previous, id, url);
    assert_eq!(of(1, "http://db-4.db-peer.prod.svc:7379"), Some(4));
    assert_eq!(
        of(1, "http://db-4.db-peer.prod.svc.cluster.local:7379"),
        Some(4)
    );
    // A look-alike host of another Service or namespace is not ours.
    assert_eq!(of(1, "http://db-4.other.prod.svc:7379"), None);
    assert_eq!(of(1, "http://db-4.db-peer.staging.svc:7379"), None);
    assert_eq!(of(1, "http://10.0.0.6:7379"), Some(1));
    assert_eq!(of(11, "http://somewhere:7379"), Some(0));
    assert_eq!(of(33, "http://gone:7379"), Some(2));
    assert_eq!(of(44, "http://gone:7379"), None);
}

#[test]
fn hosts_parse_from_urls() {
    assert_eq!(host_of("http://a.b:1/x"), Some("a.b"));
    assert_eq!(host_of("http://[::1]:7379"), Some("::1"));
    assert_eq!(host_of("a:1"), Some("a"));
    let p = pod(0, "fd00::1", None).1;
    assert_eq!(p.base_url().unwrap(), "http://[fd00::1]:7379");
}

fn pod_with_node_status(status: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-0", "namespace": "prod"},
        "status": {"containerStatuses": [status]},
    }))
    .unwrap()
}

#[test]
fn a_failed_start_is_the_node_containers_last_error_message() {
    let crashed = |exit: i32, message: &str| {
        serde_json::json!({
            "name": "node", "image": "rstore", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": exit, "message": message}},
        })
    };
    let why = "backup s3://b/x is not usable: truncated at byte 12";
    assert_eq!(
        failed_start(&pod_with_node_status(crashed(1, &format!("{why}\n")))).as_deref(),
        Some(why)
    );
    // A clean exit, an error without a message, or another container: nothing to say.
    assert_eq!(failed_start(&pod_with_node_status(crashed(0, why))), None);
    assert_eq!(failed_start(&pod_with_node_status(crashed(1, " "))), None);
    let mut sidecar = crashed(1, why);
    sidecar["name"] = "sidecar".into();
    assert_eq!(failed_start(&pod_with_node_status(sidecar)), None);
    // Still in its failed run (not restarted yet).
    let now = serde_json::json!({
        "name": "node", "image": "rstore", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "message": why}},
    });
    assert_eq!(
        failed_start(&pod_with_node_status(now)).as_deref(),
        Some(why)
    );
}
