//! The shared typed client (`rstore_api::client`) against a real node: every call the
//! command line, `node dev`, the operator and the benchmark make, with the documented
//! answers decoded and refusals kept as status and code.

use rstore_api::admin::MemberRole;
use rstore_api::client::{
    Compare, ConfigChange, Precondition, RangeQuery, Txn, TxnOp, TxnResult, WatchLine,
};
use rstore_api::{ReadConsistency, ReplicationMode};
use rstore_tests::harness::Cluster;

/// This package's `node` binary, which cargo builds for the package's tests.
fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_speaks_the_whole_contract() {
    let cluster = Cluster::start(node_bin(), 1).await;
    let node = cluster.client(0).api();

    node.healthz().await.unwrap();
    let info = node.node().await.unwrap();
    assert_eq!(info.role, "leader");
    let view = node.cluster().await.unwrap();
    assert_eq!(view.leader_id, Some(info.id));
    assert_eq!(view.members[0].role, MemberRole::Voter);
    assert_eq!(node.cluster_local().await.unwrap().members.len(), 1);

    // Writes, conditions and their refusals.
    let w = node.put("a/1", "x", Precondition::Absent).await.unwrap();
    assert_eq!(w.version, Some(1));
    let refused = node
        .put("a/1", "y", Precondition::Absent)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(412));
    assert!(refused.api().unwrap().is(412, "precondition_failed"));
    assert!(!refused.is_transient());
    node.put("a/1", "y", Precondition::Version(1))
        .await
        .unwrap();
    node.put("a/2 é", vec![0u8, 1], Precondition::None)
        .await
        .unwrap();

    // Reads.
    let got = node
        .get("a/1", Some(ReadConsistency::Linearizable))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"y"[..], 2));
    assert!(got.revision.is_some() && got.mod_revision.is_some());
    assert_eq!(node.get("absent", None).await.unwrap(), None);
    let page = node
        .range(&RangeQuery {
            prefix: "a/".into(),
            limit: Some(1),
            ..RangeQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.more), (1, true));
    let rest = node
        .range(&RangeQuery {
            prefix: "a/".into(),
            start_after: Some(page.items[0].key.clone()),
            ..RangeQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.items[0].key, "a/2 é");
    assert_eq!(rest.items[0].value, vec![0, 1]);

    // A watch from the current revision sees what follows, in order.
    let start = rest.revision + 1;
    let mut watch = node.watch("a/", Some(start)).await.unwrap();

    // Transactions.
    let txn = Txn {
        compare: vec![Compare {
            key: "a/1".into(),
            target: "version".into(),
            op: None,
            value: 2.into(),
        }],
        success: vec![
            TxnOp::Put {
                key: "a/3".into(),
                value: b"z".to_vec(),
            },
            TxnOp::Get { key: "a/1".into() },
        ],
        failure: vec![],
    };
    let done = node.txn(&txn).await.unwrap();
    assert!(done.succeeded);
    assert!(
        matches!(&done.results[1], TxnResult::Get { found: true, value: Some(v), .. } if v == b"y")
    );
    let bad = node.txn_raw(b"{\"nope\":1}".to_vec()).await.unwrap_err();
    assert_eq!(bad.status(), Some(400));

    // Deletes.
    node.delete("a/3", Precondition::Version(1)).await.unwrap();
    assert_eq!(
        node.delete("a/3", Precondition::None)
            .await
            .unwrap_err()
            .api()
            .map(|e| e.code.as_str()),
        Some("key_not_found")
    );

    let mut seen = Vec::new();
    while seen.len() < 2 {
        match watch.next().await.unwrap().expect("the watch stays open") {
            WatchLine::Events { events, .. } => {
                seen.extend(events.into_iter().map(|e| (e.kind, e.key)))
            }
            WatchLine::Progress { .. } => {}
            WatchLine::Error { error } => panic!("watch ended: {error:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("put".to_string(), "a/3".to_string()),
            ("delete".to_string(), "a/3".to_string())
        ]
    );

    // Settings and metrics.
    let config = node
        .set_config(&ConfigChange {
            replication_mode: Some("sync".into()),
            read_consistency: None,
        })
        .await
        .unwrap();
    assert_eq!(config.replication_mode, ReplicationMode::Sync);
    assert_eq!(node.config().await.unwrap(), config);
    let wrong = node
        .set_config(&ConfigChange {
            replication_mode: Some("eventually".into()),
            read_consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.status(), Some(400));
    assert!(node.metrics().await.unwrap().contains("# TYPE"));
    node.readyz().await.unwrap();
    // init is idempotent on the same node.
    assert_eq!(node.init().await.unwrap().members.len(), 1);
}
