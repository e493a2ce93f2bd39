//! The Backup and BackupSchedule CRDs, and `spec.bootstrap` of ReplicatedStore: names,
//! columns, documentation, and their CEL rules evaluated as the API server would.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

use super::{Backup, BackupSchedule};
use crate::crd::ReplicatedStore;

fn schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// The CEL messages that reject `spec` of `kind` (created, or changed from `old`).
fn rejections<K: CustomResourceExt>(kind: &str, spec: Value, old: Option<Value>) -> Vec<String> {
    let object = |spec: Value| {
        json!({
            "apiVersion": "rstore.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "x", "namespace": "default"},
            "spec": spec,
        })
    };
    let old = old.map(object);
    match Validator::new().validate(&schema::<K>(), &object(spec), old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn columns<K: CustomResourceExt>() -> Vec<String> {
    K::crd().spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn names_and_columns_say_what_is_going_on() {
    let b = Backup::crd();
    assert_eq!(b.metadata.name.as_deref(), Some("backups.rstore.dev"));
    assert_eq!(b.spec.names.short_names, Some(vec!["rsbackup".to_owned()]));
    assert_eq!(
        columns::<Backup>(),
        [
            "Store", "Phase", "Revision", "Size", "Duration", "Message", "Age"
        ]
    );
    let s = BackupSchedule::crd();
    assert_eq!(
        s.metadata.name.as_deref(),
        Some("backupschedules.rstore.dev")
    );
    assert_eq!(
        columns::<BackupSchedule>(),
        [
            "Store",
            "Schedule",
            "Last Success",
            "Revision",
            "Kept",
            "Stale",
            "Next",
            "Age"
        ]
    );
}

#[test]
fn every_field_is_documented() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        for (name, child) in node["properties"].as_object().into_iter().flatten() {
            let p = format!("{path}.{name}");
            // Kubernetes's own types (conditions) document themselves.
            if child.get("description").is_none() && !p.contains("conditions[]") {
                missing.push(p.clone());
            }
            walk(&p, child, missing);
        }
        if node.get("items").is_some() {
            walk(&format!("{path}[]"), &node["items"], missing);
        }
    }
    let mut missing = Vec::new();
    for s in [schema::<Backup>(), schema::<BackupSchedule>()] {
        walk("", &s["properties"]["spec"], &mut missing);
        walk("", &s["properties"]["status"], &mut missing);
    }
    walk(
        "",
        &schema::<ReplicatedStore>()["properties"]["spec"]["properties"]["bootstrap"],
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn backup_specs_are_checked_and_fixed() {
    let ok = json!({"store": "db", "destination": {"url": "s3://bucket/prefix"}});
    assert!(rejections::<Backup>("Backup", ok.clone(), None).is_empty());
    let bad_url = json!({"store": "db", "destination": {"url": "http://bucket"}});
    let msgs = rejections::<Backup>("Backup", bad_url, None);
    assert!(
        msgs.iter()
            .any(|m| m.contains("s3://, gs://, az:// or file://")),
        "{msgs:?}"
    );
    let moved = json!({"store": "other", "destination": {"url": "s3://bucket/prefix"}});
    let msgs = rejections::<Backup>("Backup", moved, Some(ok));
    assert!(msgs.iter().any(|m| m.contains("cannot change")), "{msgs:?}");
}

#[test]
fn schedules_need_five_cron_fields_and_a_real_age() {
    let spec = |schedule: &str, age: &str| {
        json!({
            "store": "db",
            "schedule": schedule,
            "destination": {"url": "file:///backups"},
            "retention": {"keepLast": 3, "maxAge": age},
        })
    };
    assert!(
        rejections::<BackupSchedule>("BackupSchedule", spec("0 */6 * * *", "30d"), None).is_empty()
    );
    let msgs = rejections::<BackupSchedule>("BackupSchedule", spec("@hourly", "30d"), None);
    assert!(msgs.iter().any(|m| m.contains("five fields")), "{msgs:?}");
    let msgs = rejections::<BackupSchedule>("BackupSchedule", spec("0 * * * *", "1 week"), None);
    assert!(msgs.iter().any(|m| m.contains("maxAge")), "{msgs:?}");
}

#[test]
fn bootstrap_takes_one_source_and_is_fixed_at_creation() {
    let store = |bootstrap: Option<Value>| match bootstrap {
        Some(b) => json!({"replicas": 3, "bootstrap": b}),
        None => json!({"replicas": 3}),
    };
    let rs = |spec, old| rejections::<ReplicatedStore>("ReplicatedStore", spec, old);
    let by_url = json!({"fromBackup": {"url": "s3://b/p", "atRevision": 42}});
    assert!(rs(store(Some(by_url.clone())), None).is_empty());
    let both = json!({"fromBackup": {"url": "s3://b/p", "backup": "nightly-1"}});
    assert!(
        rs(store(Some(both)), None)
            .iter()
            .any(|m| m.contains("exactly one"))
    );
    let neither = json!({"fromBackup": {"atTime": "2026-12-05T10:00:00Z"}});
    assert!(
        rs(store(Some(neither)), None)
            .iter()
            .any(|m| m.contains("exactly one"))
    );
    let target_with_backup = json!({"fromBackup": {"backup": "nightly-1", "atRevision": 4}});
    assert!(
        rs(store(Some(target_with_backup)), None)
            .iter()
            .any(|m| m.contains("atRevision"))
    );
    // Added to, or removed from, an existing store: refused.
    let msgs = rs(store(Some(by_url.clone())), Some(store(None)));
    assert!(
        msgs.iter()
            .any(|m| m.contains("cannot be added or removed")),
        "{msgs:?}"
    );
    let msgs = rs(store(None), Some(store(Some(by_url))));
    assert!(
        msgs.iter()
            .any(|m| m.contains("cannot be added or removed")),
        "{msgs:?}"
    );
}
