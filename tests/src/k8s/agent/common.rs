//! What the agent's parts share, below all of them: the options it runs with, the watch
//! caches it works from, the images it runs, how it writes times, and the signal it stops
//! processes with. The plane uses these too; nothing here uses the agent's other modules or
//! the plane, so the modules form no cycle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::Store;
use rstore_api::pki::Ca;

use crate::netns::NetnsNet;

/// The provisioner of the plane's StorageClasses that the agent provisions volumes for.
pub const PROVISIONER: &str = "rstore.dev/local-dir";

/// Sends SIGTERM (the `kill` command: this workspace forbids `unsafe`, and so `libc::kill`).
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Which local binary an image runs, and the image's default arguments (its `CMD`).
#[derive(Debug, Clone)]
pub struct ImageMap(Vec<(String, PathBuf, Vec<String>)>);

impl ImageMap {
    /// rstore's two images (any tag), as `docker/*.Dockerfile` builds them.
    pub fn rstore(node_bin: &Path, operator_bin: &Path) -> Self {
        Self(vec![
            (
                "ghcr.io/rstore/node".into(),
                node_bin.to_owned(),
                vec!["serve".into()],
            ),
            (
                "ghcr.io/rstore/operator".into(),
                operator_bin.to_owned(),
                vec!["run".into()],
            ),
        ])
    }

    /// The binary and default arguments of `image` (`repository[:tag][@digest]`).
    pub fn resolve(&self, image: &str) -> Option<(PathBuf, Vec<String>)> {
        let repo = image.split('@').next().unwrap_or(image);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        self.0
            .iter()
            .find(|(r, _, _)| r == repo)
            .map(|(_, bin, args)| (bin.clone(), args.clone()))
    }

    /// The repositories it knows, for messages.
    pub fn known(&self) -> String {
        self.0
            .iter()
            .map(|(r, _, _)| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the agent is started with.
pub struct AgentOptions {
    /// The Nodes it registers and runs pods for.
    pub nodes: Vec<String>,
    /// The plane's directory (`pods/`, `volumes/`, `hosts`).
    pub dir: PathBuf,
    /// The pod network.
    pub net: Arc<NetnsNet>,
    /// The API server's address as pods reach it.
    pub api_host: String,
    pub api_port: u16,
    pub images: ImageMap,
    /// How often Secret, ConfigMap and projected volumes are rewritten.
    pub volume_refresh: Duration,
    /// The cluster CA (the agent's serving certificate for `kubectl logs` comes from it).
    pub kubelet_ca: Ca,
}

/// The reflectors the agent works from.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
    pub secrets: Store<Secret>,
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

/// Now, as Kubernetes writes times (`Time`, whole seconds in UTC).
pub fn now_rfc3339() -> String {
    format_time(std::time::SystemTime::now())
}

/// A time as Kubernetes writes a `Time`.
pub fn format_time(t: std::time::SystemTime) -> String {
    let ts = k8s_openapi::jiff::Timestamp::try_from(t)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts);
    serde_json::to_value(time)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Labels as a map (empty when absent).
pub fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_resolve_by_repository_with_any_tag() {
        let m = ImageMap::rstore(Path::new("/b/node"), Path::new("/b/operator"));
        assert_eq!(
            m.resolve("ghcr.io/rstore/node:0.1.1").unwrap().0,
            PathBuf::from("/b/node")
        );
        assert_eq!(
            m.resolve("ghcr.io/rstore/operator@sha256:00").unwrap().1,
            vec!["run".to_string()]
        );
        assert!(m.resolve("ghcr.io/rstore/node").is_some());
        assert!(m.resolve("docker.io/library/busybox:1").is_none());
        assert!(m.resolve("localhost:5000/rstore/node").is_none());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_466_600);
        assert_eq!(format_time(t), "2026-12-05T10:30:00Z");
        assert_eq!(format_time(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
