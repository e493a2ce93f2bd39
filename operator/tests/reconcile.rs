//! Reconcile against the in-memory API server (kube-fake-client), without node processes:
//! owned objects are created with owner references and applied idempotently, status and
//! Events are written, a second pass changes nothing, and impossible or paused specs change
//! nothing at all.
//!
//! The flows that need real nodes (bootstrap, scaling, healing, rolling) are covered by
//! `tests/tests/operator_local.rs` through the local control plane.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use rstore_operator::controller::{Context, Settings, reconcile_once};
use rstore_operator::crd::{Phase, ReplicatedStore, ReplicatedStoreSpec};
use rstore_operator::local::fake_api;
use rstore_operator::metrics::Metrics;
use rstore_operator::planner::Step;
use serde_json::Value;

const NS: &str = "prod";

async fn setup(spec: ReplicatedStoreSpec) -> (Client, Arc<Context>, Api<ReplicatedStore>) {
    let client = fake_api().await.unwrap();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        Arc::new(Metrics::new()),
        "test",
    ));
    let api = Api::<ReplicatedStore>::namespaced(client.clone(), NS);
    let mut rs = ReplicatedStore::new("db", spec);
    rs.metadata.namespace = Some(NS.into());
    api.create(&PostParams::default(), &rs).await.unwrap();
    (client, ctx, api)
}

/// The object's content without what the API server changes on every write.
fn content<K: serde::Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    let meta = v["metadata"].as_object_mut().unwrap();
    for volatile in ["resourceVersion", "generation", "managedFields"] {
        meta.remove(volatile);
    }
    v
}

async fn children(client: &Client) -> Vec<Value> {
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NS);
    let svc = Api::<Service>::namespaced(client.clone(), NS);
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), NS);
    let mut out: Vec<Value> = sts
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(content)
        .collect();
    out.extend(
        svc.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(content),
    );
    out.extend(
        pdb.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(content),
    );
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), NS);
    out.extend(
        np.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(content),
    );
    out
}

async fn events(client: &Client) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

fn condition(rs: &ReplicatedStore, type_: &str) -> (String, String, String) {
    let c = rs
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn creates_owned_objects_writes_status_and_events_then_settles() {
    let (client, ctx, api) = setup(ReplicatedStoreSpec::default()).await;

    let rs = api.get("db").await.unwrap();
    let first = reconcile_once(&rs, &ctx).await.unwrap();
    assert!(
        matches!(first.step, Step::CreateStatefulSet { replicas: 3, .. }),
        "{first:?}"
    );
    assert!(first.status_written);

    let objects = children(&client).await;
    let names: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    for want in [
        ("StatefulSet", "db"),
        ("Service", "db"),
        ("Service", "db-peer"),
        ("PodDisruptionBudget", "db"),
        ("NetworkPolicy", "db"),
    ] {
        assert!(names.contains(&want), "{want:?} missing from {names:?}");
    }
    let uid = rs.metadata.uid.clone().unwrap();
    for o in &objects {
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], Value::String(uid.clone()), "{o}");
        assert_eq!(owner["controller"], Value::Bool(true));
    }

    let rs = api.get("db").await.unwrap();
    let status = rs.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.observed_generation, rs.metadata.generation);
    assert_eq!(condition(&rs, "Available").0, "False");
    assert_eq!(condition(&rs, "Progressing").0, "True");
    assert_eq!(condition(&rs, "Progressing").1, "CreatingStatefulSet");
    let evs = events(&client).await;
    assert!(
        evs.iter()
            .any(|(reason, note)| reason == "CreatingStatefulSet" && note.contains("3 pods")),
        "{evs:?}"
    );

    // No pods answer (no runner here): the operator waits for pod 0 and says so.
    let second = reconcile_once(&rs, &ctx).await.unwrap();
    assert!(matches!(second.step, Step::Wait { .. }), "{second:?}");
    let rs = api.get("db").await.unwrap();
    assert_eq!(
        rs.status.as_ref().unwrap().phase,
        Some(Phase::Bootstrapping)
    );
    let (_, reason, message) = condition(&rs, "Progressing");
    assert_eq!(reason, "Waiting");
    assert!(message.contains("pod 0"), "{message}");

    // Nothing changes on another pass: same objects, no status write, no new Event.
    let before = children(&client).await;
    let events_before = events(&client).await.len();
    let third = reconcile_once(&rs, &ctx).await.unwrap();
    assert!(
        !third.status_written,
        "an unchanged cluster must not rewrite status"
    );
    assert_eq!(children(&client).await, before);
    assert_eq!(events(&client).await.len(), events_before);
    assert_eq!(api.get("db").await.unwrap().status, rs.status);
}

#[tokio::test]
async fn an_impossible_spec_changes_nothing_and_says_why() {
    // The CRD's CEL rules reject this at admission; a CRD installed without them must not
    // make the operator act on it either.
    let (client, ctx, api) = setup(ReplicatedStoreSpec {
        replicas: 0,
        ..ReplicatedStoreSpec::default()
    })
    .await;
    let rs = api.get("db").await.unwrap();
    let outcome = reconcile_once(&rs, &ctx).await.unwrap();
    assert!(matches!(outcome.step, Step::Refuse { .. }));
    assert!(children(&client).await.is_empty(), "nothing may be created");
    let rs = api.get("db").await.unwrap();
    assert_eq!(rs.status.as_ref().unwrap().phase, Some(Phase::Degraded));
    let (status, reason, message) = condition(&rs, "Progressing");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("replicas is 0"), "{message}");
    assert!(
        events(&client)
            .await
            .iter()
            .any(|(r, _)| r == "InvalidSpec")
    );
    // Once: the refusal is not repeated on every requeue.
    let again = reconcile_once(&rs, &ctx).await.unwrap();
    assert!(!again.status_written);
    assert_eq!(
        events(&client)
            .await
            .iter()
            .filter(|(r, _)| r == "InvalidSpec")
            .count(),
        1
    );
}

#[tokio::test]
async fn paused_observes_but_takes_no_action() {
    let (client, ctx, api) = setup(ReplicatedStoreSpec {
        paused: true,
        ..ReplicatedStoreSpec::default()
    })
    .await;
    let rs = api.get("db").await.unwrap();
    let outcome = reconcile_once(&rs, &ctx).await.unwrap();
    let Step::Wait { reason } = &outcome.step else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("paused") && reason.contains("create the StatefulSet"),
        "{reason}"
    );
    let objects = children(&client).await;
    assert!(
        objects.iter().all(|o| o["kind"] != "StatefulSet"),
        "no StatefulSet while paused"
    );
    let rs = api.get("db").await.unwrap();
    assert_eq!(rs.status.as_ref().unwrap().phase, Some(Phase::Paused));
    assert_eq!(condition(&rs, "Progressing").1, "Paused");
}
