//! What is generated from the Rust types: the published CRD (`crds/`, `operator crd`) and
//! its Markdown reference (`docs/crd.md`, `operator crd-reference`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::crd::backup::{Backup, BackupSchedule};
use crate::crd::spec::ReplicatedStore;

/// The CRD as YAML, exactly as `crds/replicatedstore.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}

/// Every CRD the operator serves, with the file under `crds/` that holds each.
pub fn all_crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("replicatedstore.yaml", crd()),
        ("backup.yaml", published::<Backup>()),
        ("backupschedule.yaml", published::<BackupSchedule>()),
    ]
}

/// Every CRD as one YAML stream (`operator crd --all`), in the order of [`all_crds`].
pub fn all_crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (i, (_, crd)) in all_crds().into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// The CRD as it is published: the derived one, without the integer formats JSON Schema
/// generators emit for unsigned Rust types (`uint32`, `uint64`). Kubernetes knows only
/// `int32` and `int64` and warns on every apply of a CRD with others ("unrecognized format");
/// the `minimum: 0` next to them keeps the meaning.
pub fn crd() -> CustomResourceDefinition {
    published::<ReplicatedStore>()
}

fn published<K: kube::CustomResourceExt>() -> CustomResourceDefinition {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                let unsigned = map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"));
                if unsigned {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let crd = K::crd();
    let mut v = serde_json::to_value(&crd).unwrap_or_default();
    strip(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

/// Fields whose type is a Kubernetes API type: the reference names it rather than repeating
/// the Kubernetes documentation.
const KUBERNETES_TYPES: &[(&str, &str)] = &[
    ("spec.resources", "ResourceRequirements"),
    ("spec.affinity", "Affinity"),
    ("spec.tolerations", "[]Toleration"),
    ("spec.nodeSelector", "map[string]string"),
    (
        "spec.topologySpreadConstraints",
        "[]TopologySpreadConstraint",
    ),
    ("spec.storage.size", "Quantity"),
    ("status.conditions", "[]Condition"),
];

/// The CRD reference as Markdown (`docs/crd.md`), generated from the same schema as the CRD,
/// so that it says exactly what `kubectl explain` says.
pub fn reference_markdown() -> String {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let mut out = String::from(
        "# ReplicatedStore reference\n\n\
         Generated from the Rust types by `operator crd-reference` (a test fails when this file \
         is out of date). `apiVersion: rstore.dev/v1alpha1`, `kind: ReplicatedStore`, short name \
         `rstore`, namespaced. Rules marked *CEL* are enforced by the API server at admission.\n",
    );
    for (section, title) in [
        ("spec", "Spec"),
        ("status", "Status (written by the operator)"),
    ] {
        out.push_str(&format!(
            "\n## {title}\n\n| field | type | default | description |\n|---|---|---|---|\n"
        ));
        if let Some(node) = schema["properties"].get(section) {
            walk(section, node, &mut out);
        }
    }
    out
}

fn walk(path: &str, node: &serde_json::Value, out: &mut String) {
    let Some(props) = node["properties"].as_object() else {
        return;
    };
    for (name, field) in props {
        let full = format!("{path}.{name}");
        let k8s = KUBERNETES_TYPES
            .iter()
            .find(|(p, _)| *p == full)
            .map(|(_, t)| *t);
        let ty = match k8s {
            Some(t) => format!("Kubernetes `{t}`"),
            None => type_name(field),
        };
        let default = field
            .get("default")
            .map_or(String::new(), |d| format!("`{d}`"));
        let mut description = field["description"]
            .as_str()
            .unwrap_or_default()
            .replace('\n', " ");
        if let Some(values) = field["enum"].as_array() {
            let v: Vec<String> = values
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                .collect();
            description.push_str(&format!(" One of {}.", v.join(", ")));
        }
        for rule in field["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            description.push_str(&format!(
                " *CEL:* {}.",
                rule["message"].as_str().unwrap_or_default()
            ));
        }
        let required = node["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == name));
        let marker = if required { " (required)" } else { "" };
        out.push_str(&format!(
            "| `{}`{marker} | {ty} | {default} | {} |\n",
            full.split_once('.').map_or(full.as_str(), |(_, rest)| rest),
            description.replace('|', "\\|").trim()
        ));
        if k8s.is_some() {
            continue;
        }
        if field["properties"].is_object() {
            walk(&full, field, out);
        } else if field["items"]["properties"].is_object() {
            walk(&format!("{full}[]"), &field["items"], out);
        }
    }
}

fn type_name(field: &serde_json::Value) -> String {
    match field["type"].as_str() {
        Some("array") => format!("[]{}", type_name(&field["items"])),
        Some("object") if field["properties"].is_object() => "object".into(),
        Some("object") => "map".into(),
        Some(t) => t.into(),
        None => "any".into(),
    }
}
