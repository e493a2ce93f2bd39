//! Names, as cluster DNS gives them, in a hosts file: the agent's stand-in for CoreDNS.
//!
//! - `<hostname>.<subdomain>.<ns>.svc` (and `.svc.cluster.local`) for every pod with a
//!   hostname and subdomain (a StatefulSet's pods under its headless Service);
//! - `<service>.<ns>.svc` (and `.svc.cluster.local`) for every Service with an endpoint,
//!   from Kubernetes's own EndpointSlices: the first ready endpoint, or the first endpoint
//!   of a Service that publishes not-ready addresses.
//!
//! The file is the `/etc/hosts` of every pod (bind-mounted, so it is rewritten in place,
//! never replaced) and the `--hosts-file` of the user's `node` commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use super::common::Stores;

pub struct HostsFile {
    path: PathBuf,
    last: Option<String>,
}

impl HostsFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, last: None }
    }

    /// Rewrites the file when the names changed.
    pub fn sync(&mut self, stores: &Stores) -> std::io::Result<()> {
        let text = render(stores);
        if self.last.as_ref() == Some(&text) && self.path.exists() {
            return Ok(());
        }
        // In place: pods have this very inode bind-mounted as /etc/hosts.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.path)?;
        f.write_all(text.as_bytes())?;
        self.last = Some(text);
        Ok(())
    }
}

fn render(stores: &Stores) -> String {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for pod in stores.pods.state() {
        let Some(spec) = &pod.spec else { continue };
        let (Some(host), Some(sub)) = (&spec.hostname, &spec.subdomain) else {
            continue;
        };
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        names.insert(format!("{host}.{sub}.{ns}.svc"), ip);
    }
    let mut slices: Vec<std::sync::Arc<EndpointSlice>> = stores.slices.state();
    slices.sort_by_key(|s| s.name_any());
    for svc in stores.services.state() {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let not_ready_too = svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let mut ips: Vec<String> = Vec::new();
        for s in slices.iter().filter(|s| {
            s.namespace().as_deref() == Some(ns.as_str())
                && s.labels().get("kubernetes.io/service-name") == Some(&name)
        }) {
            for e in &s.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if ready || not_ready_too {
                    ips.extend(e.addresses.iter().cloned());
                }
            }
        }
        ips.sort();
        if let Some(ip) = ips.first() {
            names.insert(format!("{name}.{ns}.svc"), ip.clone());
        }
    }
    let mut out = String::from(
        "# Written by the rstore node agent: pod and Service names (see tests/src/k8s/agent/names.rs).\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
    );
    for (name, ip) in names {
        out += &format!("{ip} {name} {name}.cluster.local\n");
    }
    out
}
