//! What a container sees: its environment (values, the downward API's `fieldRef` and
//! `resourceFieldRef`, Secret and ConfigMap keys, `$(VAR)` expansion) and the contents of
//! its pod's volumes (Secret, ConfigMap, downward API, projected with service-account
//! tokens, claims, `emptyDir`, `hostPath`), as the kubelet builds them.
//!
//! Errors are strings for the pod's status (`CreateContainerConfigError` and the like): they
//! say which object or key is missing, as the kubelet's messages do.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod,
    ResourceFieldSelector, Secret, Volume,
};
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::common::Stores;
use super::quantity;

/// Files of a volume: relative path to (contents, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// What a volume is on this machine.
#[derive(Debug)]
pub enum Content {
    /// A directory that lives on its own (a claim's volume, `emptyDir`, `hostPath`).
    Dir(PathBuf),
    /// Files the agent writes and keeps in step.
    Files(Files),
}

/// A token's request: namespace, service account, pod uid, audience, lifetime in seconds.
type TokenKey = (String, String, String, String, i64);

/// Service-account tokens, reused until 80% of their lifetime has passed (as the kubelet):
/// the token, when it was issued, and its lifetime.
#[derive(Default)]
pub struct Tokens(HashMap<TokenKey, (String, Instant, Duration)>);

/// The pod a volume or variable belongs to, with what the downward API needs.
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub ip: &'a str,
    pub host_ip: &'a str,
    pub stores: &'a Stores,
}

impl PodView<'_> {
    fn ns(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    fn secret(&self, name: &str) -> Option<std::sync::Arc<Secret>> {
        self.stores
            .secrets
            .get(&ObjectRef::new(name).within(&self.ns()))
    }

    fn config_map(&self, name: &str) -> Option<std::sync::Arc<ConfigMap>> {
        self.stores
            .config_maps
            .get(&ObjectRef::new(name).within(&self.ns()))
    }

    /// `metadata.name`, `status.podIP`, `metadata.labels['x']`, ...
    pub fn field(&self, f: &ObjectFieldSelector) -> Result<String, String> {
        let m = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let path = f.field_path.as_str();
        let map_key = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?.to_owned();
            Some(
                map.as_ref()
                    .and_then(|m| m.get(&key))
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        let v = match path {
            "metadata.name" => m.name.clone().unwrap_or_default(),
            "metadata.namespace" => self.ns(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.podIP" | "status.podIPs" => self.ip.to_owned(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_owned(),
            "metadata.labels" | "metadata.annotations" => {
                let map = if path == "metadata.labels" {
                    &m.labels
                } else {
                    &m.annotations
                };
                map.clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}\n"))
                    .collect()
            }
            _ => map_key("metadata.labels['", &m.labels)
                .or_else(|| map_key("metadata.annotations['", &m.annotations))
                .ok_or_else(|| format!("unsupported fieldRef {path:?}"))?,
        };
        Ok(v)
    }

    /// `limits.memory` and the like of a container, divided as the downward API does. A
    /// limit that is not set is the Node's allocatable amount, as in the kubelet.
    pub fn resource(&self, container: &str, r: &ResourceFieldSelector) -> Result<String, String> {
        let name = r.container_name.as_deref().unwrap_or(container);
        let c = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .ok_or_else(|| format!("resourceFieldRef names no container {name:?}"))?;
        let res = c.resources.clone().unwrap_or_default();
        let (kind, what) = r
            .resource
            .split_once('.')
            .ok_or_else(|| format!("unsupported resourceFieldRef {:?}", r.resource))?;
        let map = match kind {
            "limits" => res.limits,
            "requests" => res.requests,
            _ => return Err(format!("unsupported resourceFieldRef {:?}", r.resource)),
        };
        let allocatable = match what {
            "cpu" => "16",
            "memory" => "64Gi",
            "ephemeral-storage" => "100Gi",
            _ => return Err(format!("unsupported resourceFieldRef {:?}", r.resource)),
        };
        let value = map
            .and_then(|m| m.get(what).map(|q| q.0.clone()))
            .unwrap_or_else(|| {
                if kind == "limits" {
                    allocatable.to_owned()
                } else {
                    "0".to_owned()
                }
            });
        quantity::divide(&value, r.divisor.as_ref().map(|d| d.0.as_str()))
            .ok_or_else(|| format!("cannot divide {value:?} for {:?}", r.resource))
    }

    /// The container's environment in order, `$(VAR)` expanded from the variables before it,
    /// plus the API server's address (`KUBERNETES_SERVICE_HOST`, `_PORT`).
    pub fn env(
        &self,
        c: &Container,
        api_host: &str,
        api_port: u16,
    ) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = vec![
            ("KUBERNETES_SERVICE_HOST".into(), api_host.into()),
            ("KUBERNETES_SERVICE_PORT".into(), api_port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), api_port.to_string()),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://{api_host}:{api_port}"),
            ),
            (
                "HOSTNAME".into(),
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.hostname.clone())
                    .or_else(|| self.pod.metadata.name.clone())
                    .unwrap_or_default(),
            ),
        ];
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(s) = &from.secret_ref {
                match self.secret(&s.name) {
                    Some(sec) => {
                        for (k, v) in sec.data.clone().unwrap_or_default() {
                            out.push((
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into(),
                            ));
                        }
                    }
                    None if s.optional == Some(true) => {}
                    None => return Err(format!("secret {:?} not found", s.name)),
                }
            }
            if let Some(cm) = &from.config_map_ref {
                match self.config_map(&cm.name) {
                    Some(m) => {
                        for (k, v) in m.data.clone().unwrap_or_default() {
                            out.push((format!("{prefix}{k}"), v));
                        }
                    }
                    None if cm.optional == Some(true) => {}
                    None => return Err(format!("configmap {:?} not found", cm.name)),
                }
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                expand(v, &out)
            } else if let Some(src) = &e.value_from {
                if let Some(f) = &src.field_ref {
                    self.field(f)?
                } else if let Some(r) = &src.resource_field_ref {
                    self.resource(&c.name, r)?
                } else if let Some(k) = &src.secret_key_ref {
                    let v = self.secret(&k.name).and_then(|s| {
                        s.data
                            .as_ref()?
                            .get(&k.key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    });
                    match v {
                        Some(v) => v,
                        None if k.optional == Some(true) => continue,
                        None => return Err(format!("secret {:?} has no key {:?}", k.name, k.key)),
                    }
                } else if let Some(k) = &src.config_map_key_ref {
                    let v = self
                        .config_map(&k.name)
                        .and_then(|m| m.data.as_ref()?.get(&k.key).cloned());
                    match v {
                        Some(v) => v,
                        None if k.optional == Some(true) => continue,
                        None => {
                            return Err(format!("configmap {:?} has no key {:?}", k.name, k.key));
                        }
                    }
                } else {
                    return Err(format!("unsupported valueFrom for {:?}", e.name));
                }
            } else {
                String::new()
            };
            out.retain(|(k, _)| k != &e.name);
            out.push((e.name.clone(), value));
        }
        Ok(out)
    }

    /// What volume `v` holds now. `base` is where the agent keeps this pod's volumes.
    pub async fn content(
        &self,
        v: &Volume,
        base: &Path,
        client: &Client,
        tokens: &mut Tokens,
    ) -> Result<Content, String> {
        if let Some(c) = &v.persistent_volume_claim {
            let ns = self.ns();
            let claim = self
                .stores
                .claims
                .get(&ObjectRef::new(&c.claim_name).within(&ns))
                .ok_or_else(|| format!("persistentvolumeclaim {:?} not found", c.claim_name))?;
            let pv_name = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    format!("persistentvolumeclaim {:?} is not bound yet", c.claim_name)
                })?;
            let pv = self
                .stores
                .volumes
                .get(&ObjectRef::new(&pv_name))
                .ok_or_else(|| format!("persistentvolume {pv_name:?} not found"))?;
            let path = pv
                .spec
                .as_ref()
                .and_then(|s| s.host_path.as_ref().map(|h| h.path.clone()))
                .ok_or_else(|| format!("persistentvolume {pv_name:?} is not a hostPath volume"))?;
            return Ok(Content::Dir(PathBuf::from(path)));
        }
        if let Some(h) = &v.host_path {
            return Ok(Content::Dir(PathBuf::from(&h.path)));
        }
        if v.empty_dir.is_some() {
            return Ok(Content::Dir(base.join("empty").join(&v.name)));
        }
        let mut files = Files::new();
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            self.secret_files(
                &name,
                s.items.as_deref(),
                s.default_mode,
                s.optional,
                &mut files,
            )?;
        } else if let Some(c) = &v.config_map {
            self.config_map_files(
                &c.name,
                c.items.as_deref(),
                c.default_mode,
                c.optional,
                &mut files,
            )?;
        } else if let Some(d) = &v.downward_api {
            for item in d.items.iter().flatten() {
                self.downward_file(item, d.default_mode, &mut files)?;
            }
        } else if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(s) = &src.secret {
                    self.secret_files(
                        &s.name,
                        s.items.as_deref(),
                        p.default_mode,
                        s.optional,
                        &mut files,
                    )?;
                }
                if let Some(c) = &src.config_map {
                    self.config_map_files(
                        &c.name,
                        c.items.as_deref(),
                        p.default_mode,
                        c.optional,
                        &mut files,
                    )?;
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        self.downward_file(item, p.default_mode, &mut files)?;
                    }
                }
                if let Some(t) = &src.service_account_token {
                    let token = self
                        .token(
                            client,
                            tokens,
                            t.audience.clone().unwrap_or_default(),
                            t.expiration_seconds.unwrap_or(3607),
                        )
                        .await?;
                    files.insert(t.path.clone(), (token.into_bytes(), mode(p.default_mode)));
                }
            }
        } else {
            return Err(format!(
                "volume {:?}: this agent does not support its type",
                v.name
            ));
        }
        Ok(Content::Files(files))
    }

    fn secret_files(
        &self,
        name: &str,
        items: Option<&[KeyToPath]>,
        default_mode: Option<i32>,
        optional: Option<bool>,
        files: &mut Files,
    ) -> Result<(), String> {
        let data = self.secret(name).map(|s| {
            s.data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        });
        source_files(
            &format!("secret {name:?}"),
            data,
            items,
            default_mode,
            optional,
            files,
        )
    }

    fn config_map_files(
        &self,
        name: &str,
        items: Option<&[KeyToPath]>,
        default_mode: Option<i32>,
        optional: Option<bool>,
        files: &mut Files,
    ) -> Result<(), String> {
        let data = self.config_map(name).map(|m| {
            let mut data: BTreeMap<String, Vec<u8>> = m
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in m.binary_data.clone().unwrap_or_default() {
                data.insert(k, v.0);
            }
            data
        });
        source_files(
            &format!("configmap {name:?}"),
            data,
            items,
            default_mode,
            optional,
            files,
        )
    }

    fn downward_file(
        &self,
        item: &DownwardAPIVolumeFile,
        default_mode: Option<i32>,
        files: &mut Files,
    ) -> Result<(), String> {
        let value = if let Some(f) = &item.field_ref {
            self.field(f)?
        } else if let Some(r) = &item.resource_field_ref {
            let c = r.container_name.clone().unwrap_or_default();
            self.resource(&c, r)?
        } else {
            return Err(format!("downward API item {:?} has no source", item.path));
        };
        files.insert(
            item.path.clone(),
            (value.into_bytes(), mode(item.mode.or(default_mode))),
        );
        Ok(())
    }

    /// A bound service-account token for this pod (TokenRequest), reused until 80% of its
    /// lifetime has passed.
    async fn token(
        &self,
        client: &Client,
        tokens: &mut Tokens,
        audience: String,
        expiration: i64,
    ) -> Result<String, String> {
        let ns = self.ns();
        let spec = self.pod.spec.as_ref();
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let key = (
            ns.clone(),
            sa.clone(),
            uid.clone(),
            audience.clone(),
            expiration,
        );
        if let Some((t, at, ttl)) = tokens.0.get(&key)
            && at.elapsed() < ttl.mul_f64(0.8)
        {
            return Ok(t.clone());
        }
        let audiences: Vec<String> = if audience.is_empty() {
            vec![]
        } else {
            vec![audience]
        };
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1", "kind": "Pod",
                    "name": self.pod.metadata.name, "uid": uid,
                }
            }
        });
        let req = http::Request::post(format!(
            "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
        let tr: TokenRequest = client
            .request(req)
            .await
            .map_err(|e| format!("cannot get a token for serviceaccount {ns}/{sa}: {e}"))?;
        let token = tr.status.map(|s| s.token).unwrap_or_default();
        let ttl = Duration::from_secs(u64::try_from(expiration).unwrap_or(3607));
        tokens.0.insert(key, (token.clone(), Instant::now(), ttl));
        Ok(token)
    }
}

fn mode(m: Option<i32>) -> u32 {
    u32::try_from(m.unwrap_or(0o644)).unwrap_or(0o644)
}

/// A Secret or ConfigMap source: its keys as files, nothing when it is missing but optional,
/// an error naming it when it is missing otherwise.
fn source_files(
    what: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: Option<bool>,
    files: &mut Files,
) -> Result<(), String> {
    match data {
        Some(data) => pick(what, data, items, default_mode, files),
        None if optional == Some(true) => Ok(()),
        None => Err(format!("{what} not found")),
    }
}

/// The keys a volume source projects: all of them, or the listed `items` (each must exist).
fn pick(
    what: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    files: &mut Files,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                files.insert(k, (v, mode(default_mode)));
            }
        }
        Some(items) => {
            for i in items {
                let v = data
                    .get(&i.key)
                    .ok_or_else(|| format!("{what} has no key {:?}", i.key))?;
                files.insert(i.path.clone(), (v.clone(), mode(i.mode.or(default_mode))));
            }
        }
    }
    Ok(())
}

/// Brings `dir` to hold exactly `files`: each changed file is written to a temporary name
/// and renamed into place (a reader never sees half a file), files no longer listed go.
/// Returns whether anything changed.
pub fn write_files(dir: &Path, files: &Files) -> std::io::Result<bool> {
    fs::create_dir_all(dir)?;
    let mut changed = false;
    for (rel, (data, mode)) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let same = fs::read(&path).is_ok_and(|old| &old == data)
            && fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode);
        if same {
            continue;
        }
        let tmp = dir.join(format!(".{}.tmp", rel.replace('/', "_")));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(*mode))?;
        drop(f);
        fs::rename(&tmp, &path)?;
        changed = true;
    }
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && !files.contains_key(&name) {
            fs::remove_file(entry.path())?;
            changed = true;
        }
    }
    Ok(changed)
}

/// `$(VAR)` replaced by the value of `VAR` defined earlier; `$$(VAR)` is a literal `$(VAR)`;
/// an undefined `$(VAR)` stays as it is (the kubelet's rules).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet() {
        let env = vec![("POD_NAME".to_string(), "db-0".to_string())];
        assert_eq!(expand("$(POD_NAME).db-peer", &env), "db-0.db-peer");
        assert_eq!(expand("$$(POD_NAME)", &env), "$(POD_NAME)");
        assert_eq!(expand("$(UNSET)/x", &env), "$(UNSET)/x");
        assert_eq!(expand("a$b", &env), "a$b");
        assert_eq!(expand("$(POD_NAME", &env), "$(POD_NAME");
    }

    #[test]
    fn files_are_replaced_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o600));
        files.insert("b".into(), (b"2".to_vec(), 0o644));
        assert!(write_files(dir.path(), &files).unwrap());
        assert!(!write_files(dir.path(), &files).unwrap(), "nothing changed");
        files.remove("b");
        files.insert("a".into(), (b"3".to_vec(), 0o600));
        assert!(write_files(dir.path(), &files).unwrap());
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"3");
        assert!(!dir.path().join("b").exists());
        let m = fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
    }
}
