//! The CRD against its generated files, its schema and its CEL rules.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

use super::*;

const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/replicatedstore.yaml");

#[test]
fn crd_reference_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/crd.md");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    let generated = reference_markdown();
    assert!(
        on_disk == generated,
        "docs/crd.md is out of date with operator/src/crd.rs; regenerate it with: \
         cargo run -p operator -- crd-reference > docs/crd.md"
    );
    for needle in [
        "`replicas`",
        "`replication.mode`",
        "*CEL:* replicas must be between 1 and 9",
        "`members[].nodeId`",
    ] {
        assert!(
            generated.contains(needle),
            "{needle} missing from the reference"
        );
    }
}

#[test]
fn crds_folder_matches_the_rust_types() {
    let generated = crd_yaml().unwrap();
    let on_disk = std::fs::read_to_string(CRD_PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "crds/replicatedstore.yaml is out of date with the Rust types in operator/src/crd.rs; \
         regenerate it with: cargo run -p operator -- crd > crds/replicatedstore.yaml"
    );
}

#[test]
fn every_crd_file_matches_the_rust_types() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for (file, crd) in all_crds() {
        let generated = serde_yaml::to_string(&crd).unwrap();
        for folder in ["crds", "charts/rstore-operator/crds"] {
            let on_disk =
                std::fs::read_to_string(format!("{dir}/{folder}/{file}")).unwrap_or_default();
            assert!(
                on_disk == generated,
                "{folder}/{file} is out of date with the Rust types in operator/src/crd/; \
                 regenerate it with: cargo run -p operator -- crd --out-dir {folder}"
            );
        }
    }
}

fn schema() -> Value {
    let crd = ReplicatedStore::crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "rstore.dev/v1alpha1",
        "kind": "ReplicatedStore",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": spec,
    })
}

/// The CEL rule messages that reject `spec` (creation), or that reject moving from `old`.
fn rejections(spec: Value, old: Option<Value>) -> Vec<String> {
    let old = old.map(object);
    match Validator::new().validate(&schema(), &object(spec), old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn names_subresources_and_columns() {
    let crd = ReplicatedStore::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("replicatedstores.rstore.dev")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["rstore".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().unwrap();
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.readyReplicas");
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Replicas", "Ready", "Leader", "Mode", "Phase", "Age"]
    );
}

#[test]
fn every_spec_and_status_field_is_documented() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, child, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let s = schema();
    let mut missing = Vec::new();
    walk("spec", &s["properties"]["spec"], &mut missing);
    walk("status", &s["properties"]["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:?}"
    );
}

#[test]
fn defaults_agree_between_serde_schema_and_default() {
    let from_empty: ReplicatedStoreSpec = serde_json::from_value(json!({})).unwrap();
    assert_eq!(from_empty, ReplicatedStoreSpec::default());
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], json!(DEFAULT_REPLICAS));
    assert_eq!(spec["readReplicas"]["default"], json!(0));
    assert_eq!(spec["image"]["default"], json!(DEFAULT_IMAGE));
    assert_eq!(spec["paused"]["default"], json!(false));
    assert_eq!(
        spec["replication"]["properties"]["mode"]["default"],
        json!("quorum")
    );
    let storage = &spec["storage"]["properties"];
    assert_eq!(storage["size"]["default"], json!(DEFAULT_STORAGE_SIZE));
    assert_eq!(
        storage["pvcPolicy"]["properties"]["whenScaled"]["default"],
        json!("Delete")
    );
    assert_eq!(
        storage["pvcPolicy"]["properties"]["whenDeleted"]["default"],
        json!("Retain")
    );
    let round_trip: ReplicatedStoreSpec =
        serde_json::from_value(serde_json::to_value(ReplicatedStoreSpec::default()).unwrap())
            .unwrap();
    assert_eq!(round_trip, ReplicatedStoreSpec::default());
}

#[test]
fn cel_accepts_sane_specs() {
    assert_eq!(rejections(json!({}), None), Vec::<String>::new());
    let full = json!({
        "replicas": 5, "readReplicas": 2, "image": "rstore/node:2",
        "replication": {"mode": "sync", "readConsistency": "stale"},
        "storage": {"size": "10Gi", "storageClassName": "fast"},
        "raft": {"heartbeatMs": 50, "electionMinMs": 500, "electionMaxMs": 900},
    });
    assert_eq!(rejections(full.clone(), None), Vec::<String>::new());
    assert_eq!(rejections(full.clone(), Some(full)), Vec::<String>::new());
    // Setting a class for the first time is allowed.
    let before = json!({"storage": {"size": "1Gi"}});
    let after = json!({"storage": {"size": "1Gi", "storageClassName": "fast"}});
    assert_eq!(rejections(after, Some(before)), Vec::<String>::new());
}

#[test]
fn cel_rejects_impossible_specs() {
    let cases = [
        (json!({"replicas": 0}), "replicas must be between 1 and 9"),
        (json!({"replicas": 10}), "replicas must be between 1 and 9"),
        (
            json!({"readReplicas": -1}),
            "readReplicas must be between 0 and 16",
        ),
        (
            json!({"readReplicas": 17}),
            "readReplicas must be between 0 and 16",
        ),
        (json!({"image": ""}), "image must not be empty"),
        (
            json!({"raft": {"heartbeatMs": 500, "electionMinMs": 400}}),
            "electionMinMs must be greater",
        ),
        // The node's default heartbeat (100) applies when it is left out.
        (
            json!({"raft": {"electionMinMs": 100, "electionMaxMs": 200}}),
            "electionMinMs must be greater",
        ),
        (
            json!({"raft": {"electionMinMs": 900, "electionMaxMs": 900}}),
            "electionMaxMs must be greater",
        ),
        (
            json!({"raft": {"electionMinMs": 3000}}),
            "electionMaxMs must be greater",
        ),
        (
            json!({"raft": {"heartbeatMs": 1}}),
            "heartbeatMs must be at least 10",
        ),
    ];
    for (spec, expected) in cases {
        let got = rejections(spec.clone(), None);
        assert!(
            got.iter().any(|m| m.contains(expected)),
            "{spec}: expected {expected:?}, got {got:?}"
        );
    }
}

/// The raft rules spell out the node's defaults; this ties them to the named constants.
#[test]
fn cel_raft_defaults_match_the_constants() {
    let (hb, min, max) = (
        DEFAULT_HEARTBEAT_MS,
        DEFAULT_ELECTION_MIN_MS,
        DEFAULT_ELECTION_MAX_MS,
    );
    let accepted = [
        json!({"electionMinMs": hb + 1}),
        json!({"heartbeatMs": min - 1}),
        json!({"electionMaxMs": min + 1}),
        json!({"electionMinMs": max - 1}),
    ];
    for raft in accepted {
        assert_eq!(
            rejections(json!({"raft": raft.clone()}), None),
            Vec::<String>::new(),
            "{raft}"
        );
    }
    let rejected = [
        json!({"electionMinMs": hb}),
        json!({"heartbeatMs": min}),
        json!({"electionMaxMs": min}),
        json!({"electionMinMs": max}),
    ];
    for raft in rejected {
        assert!(
            !rejections(json!({"raft": raft.clone()}), None).is_empty(),
            "{raft}"
        );
    }
}

#[test]
fn cel_makes_storage_class_immutable_once_set() {
    let fast = json!({"storage": {"size": "1Gi", "storageClassName": "fast"}});
    let slow = json!({"storage": {"size": "1Gi", "storageClassName": "slow"}});
    let unset = json!({"storage": {"size": "1Gi"}});
    let changed = rejections(slow, Some(fast.clone()));
    assert!(
        changed.iter().any(|m| m.contains("immutable")),
        "{changed:?}"
    );
    let removed = rejections(unset, Some(fast));
    assert!(
        removed.iter().any(|m| m.contains("cannot be removed")),
        "{removed:?}"
    );
    let bigger = json!({"storage": {"size": "2Gi", "storageClassName": "fast"}});
    let same = json!({"storage": {"size": "1Gi", "storageClassName": "fast"}});
    let resized = rejections(bigger, Some(same));
    assert!(
        resized
            .iter()
            .any(|m| m.contains("storage.size cannot change")),
        "{resized:?}"
    );
}

#[test]
fn cel_fixes_transport_security_at_creation() {
    let issuer = |name: &str| json!({"tls": {"issuerRef": {"name": name}}});
    let plaintext = json!({"tls": {"insecurePlaintext": true}});
    assert_eq!(rejections(issuer("corp"), None), Vec::<String>::new());
    assert_eq!(rejections(plaintext.clone(), None), Vec::<String>::new());
    assert_eq!(
        rejections(issuer("corp"), Some(issuer("corp"))),
        Vec::<String>::new()
    );
    for (after, before) in [
        (issuer("other"), issuer("corp")),
        (json!({"tls": {}}), plaintext.clone()),
        (json!({}), plaintext),
        (json!({}), issuer("corp")),
    ] {
        let got = rejections(after.clone(), Some(before.clone()));
        assert!(
            got.iter().any(|m| m.contains("spec.tls cannot")),
            "{before} -> {after}: {got:?}"
        );
    }
    let bad_kind = json!({"tls": {"issuerRef": {"name": "x", "kind": "Vault"}}});
    let got = rejections(bad_kind, None);
    assert!(
        got.iter().any(|m| m.contains("Issuer or ClusterIssuer")),
        "{got:?}"
    );
}

#[test]
fn schema_enums_reject_unknown_modes() {
    let s = schema();
    let replication = &s["properties"]["spec"]["properties"]["replication"]["properties"];
    assert_eq!(
        replication["mode"]["enum"],
        json!(["quorum", "sync", "async"])
    );
    assert_eq!(
        replication["readConsistency"]["enum"],
        json!(["linearizable", "leader", "stale"])
    );
}
