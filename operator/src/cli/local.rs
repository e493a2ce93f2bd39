//! `operator local -f FILE`: the local control plane (see [`crate::local`]) for the
//! resources of a file, watched for edits, with each store's status and endpoints printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use kube::ResourceExt;

use crate::cli::log::LogFormat;
use crate::cli::run::shutdown_signal;
use crate::crd::ReplicatedStore;
use crate::local::{LocalControlPlane, LocalOptions};
use crate::status;
use crate::{Error, Result};

/// `operator local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// YAML file with one or more ReplicatedStore resources; watched for edits.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Where pod volumes and node logs go (default: a temporary directory, removed at exit).
    #[arg(long, env = "RSTORE_LOCAL_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The `node` binary pods run (default: `node` next to this binary).
    #[arg(long, env = "RSTORE_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Reads every ReplicatedStore of a YAML file (documents separated by `---`).
pub fn read_resources(path: &Path) -> Result<Vec<ReplicatedStore>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| Error::InvalidSpec(format!("{}: YAML: {e}", path.display())))?;
        if value.is_null() {
            continue;
        }
        let rs: ReplicatedStore = serde_yaml::from_value(value).map_err(|e| {
            Error::InvalidSpec(format!("{}: not a ReplicatedStore: {e}", path.display()))
        })?;
        out.push(rs);
    }
    if out.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "{} holds no ReplicatedStore",
            path.display()
        )));
    }
    Ok(out)
}

fn default_node_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("node")))
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// Runs the local control plane until a signal.
pub(crate) async fn local(args: &LocalArgs, out: &mut impl Write) -> Result<()> {
    let resources = read_resources(&args.file)?;
    let node_bin = args.node_bin.clone().unwrap_or_else(default_node_bin);
    let node_bin = std::fs::canonicalize(&node_bin).unwrap_or(node_bin);
    let mut opts = LocalOptions::new(node_bin.clone());
    opts.root = args.data_dir.clone();
    let plane = LocalControlPlane::start(opts).await?;
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say(
        out,
        format!(
            "rstore local control plane: volumes and node logs in {}",
            plane.root().display()
        ),
    );
    say(
        out,
        format!(
            "edit {} to scale or change the mode; Ctrl-C stops everything",
            args.file.display()
        ),
    );
    for rs in resources {
        plane.apply(rs).await?;
    }
    let mut modified = mtime(&args.file);
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut endpoints_shown: BTreeMap<String, bool> = BTreeMap::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
        let now = mtime(&args.file);
        if now != modified {
            modified = now;
            match read_resources(&args.file) {
                Ok(list) => {
                    for rs in list {
                        let name = rs.name_any();
                        match plane.apply(rs).await {
                            Ok(_) => say(out, format!("applied the edit of {name}")),
                            Err(e) => say(out, format!("cannot apply {name}: {e}")),
                        }
                    }
                }
                Err(e) => say(out, format!("ignoring the edit: {e}")),
            }
        }
        let list = kube::Api::<ReplicatedStore>::all(plane.client.clone())
            .list(&Default::default())
            .await?;
        for rs in list.items {
            let key = format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any());
            let Some(st) = &rs.status else { continue };
            let line = status::summary(&rs, st);
            if last.get(&key) != Some(&line) {
                say(out, line.clone());
                last.insert(key.clone(), line);
            }
            let available = st
                .conditions
                .iter()
                .any(|c| c.type_ == status::AVAILABLE && c.status == "True");
            if available && !endpoints_shown.get(&key).copied().unwrap_or(false) {
                endpoints_shown.insert(key, true);
                for line in endpoint_lines(&plane, &rs, st, &node_bin).await {
                    say(out, line);
                }
            }
        }
    }
    say(out, "stopping: every node gets SIGTERM".into());
    plane.shutdown().await;
    say(out, "stopped".into());
    Ok(())
}

/// What `operator local` prints once a store is Available: its endpoints, where its user
/// credential is, and commands that work as printed.
async fn endpoint_lines(
    plane: &LocalControlPlane,
    rs: &ReplicatedStore,
    st: &crate::crd::ReplicatedStoreStatus,
    node_bin: &Path,
) -> Vec<String> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let (urls, hosts_file) = {
        let runner = plane.runner.lock().await;
        let urls: Vec<(String, String, String)> = st
            .members
            .iter()
            .filter_map(|m| {
                let pod = m.pod.clone()?;
                let url = runner.client_url(&ns, &pod)?;
                let addr = runner.client_addr(&ns, &pod)?;
                Some((pod, url, addr.ip().to_string()))
            })
            .collect();
        (urls, runner.hosts_file())
    };
    let mut lines = vec![format!(
        "{name} is Available. Endpoints: {}",
        urls.iter()
            .map(|(pod, url, ip)| format!("{pod} {url} at {ip}"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    let Some((_, first, ip)) = urls.first() else {
        return lines;
    };
    let node = node_bin.display();
    let Some(secret) = st.credentials_secret.as_deref() else {
        lines.push(format!(
            "{name} runs in plaintext (spec.tls.insecurePlaintext): no credentials needed"
        ));
        lines.push(format!(
            "try: {node} kv put greeting hello --hosts-file {hosts} --endpoint {first} && {node} kv get greeting --hosts-file {hosts} --endpoint {first}",
            hosts = hosts_file.display()
        ));
        return lines;
    };
    // The user credential, as `kubectl get secret` would give it, in files.
    let dir = plane.root().join("credentials").join(&ns).join(&name);
    let written = async {
        let (ca, token) = plane.secret_files(&ns, secret).await.ok()?;
        std::fs::create_dir_all(&dir).ok()?;
        write_private(&dir.join("ca.crt"), &ca).ok()?;
        write_private(&dir.join("token"), &token).ok()?;
        Some(())
    }
    .await;
    if written.is_none() {
        lines.push(format!("cannot read Secret {ns}/{secret} yet"));
        return lines;
    }
    let (ca, token) = (dir.join("ca.crt"), dir.join("token"));
    let host = first
        .split("://")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_default();
    lines.push(format!(
        "credentials (Secret {ns}/{secret}, role write): {} and {}",
        ca.display(),
        token.display()
    ));
    lines.push(format!(
        "try: curl --cacert {ca} -H \"Authorization: Bearer $(cat {token})\" --resolve {host}:{port}:{ip} -X PUT --data-binary hello {first}/v1/kv/greeting",
        port = crate::resources::CLIENT_PORT,
        ca = ca.display(),
        token = token.display(),
    ));
    let flags = format!(
        "--hosts-file {hosts} --endpoint {first} --cacert {ca} --token \"$(cat {token})\"",
        hosts = hosts_file.display(),
        ca = ca.display(),
        token = token.display(),
    );
    lines.push(format!(
        "try: {node} kv put greeting hello {flags} && {node} kv get greeting {flags}"
    ));
    lines
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
