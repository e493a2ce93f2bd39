//! `node kv ...` and `node cluster ...`: a client of the HTTP API, in the manner of
//! etcdctl. It reaches the server only over HTTP, as any user's client does.

use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};

#[derive(Args, Debug, Clone)]
pub struct Endpoint {
    /// Client URL of any member.
    #[arg(
        long,
        env = "RSTORE_ENDPOINT",
        default_value = "https://127.0.0.1:7379",
        global = true
    )]
    pub endpoint: String,
    /// The cluster CA certificate (PEM) to verify the member's certificate with.
    #[arg(long, env = "RSTORE_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) to authenticate with (its organization is its role).
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "RSTORE_CERT",
        global = true,
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        env = "RSTORE_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
    /// A bearer token to authenticate with.
    #[arg(long, env = "RSTORE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file in the format of /etc/hosts consulted before DNS (as the local control plane
    /// writes for its pods' names).
    #[arg(
        long = "hosts-file",
        id = "client_hosts_file",
        env = "RSTORE_HOSTS_FILE",
        global = true
    )]
    pub hosts_file: Option<PathBuf>,
}

impl Endpoint {
    /// An HTTP client with these credentials.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let ca = self.cacert.as_ref().map(read).transpose()?;
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let mut b = crate::tls::reqwest_client(
            ca.as_deref(),
            identity.as_ref().map(|(c, k)| (&c[..], &k[..])),
        )?;
        if let Some(hosts) = &self.hosts_file {
            crate::network::hosts::set_file(hosts.clone());
            b = b.dns_resolver(std::sync::Arc::new(crate::network::hosts::ReqwestResolver));
        }
        if let Some(t) = &self.token {
            let mut h = reqwest::header::HeaderMap::new();
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                .context("the token is not a valid header value")?;
            v.set_sensitive(true);
            h.insert(reqwest::header::AUTHORIZATION, v);
            b = b.default_headers(h);
        }
        Ok(b.build()?)
    }
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Write a value.
    Put {
        key: String,
        value: String,
        /// Only if the key is at this version (compare-and-set).
        #[arg(long, conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Read a value.
    Get {
        key: String,
        /// linearizable, leader or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Delete a key.
    Del {
        key: String,
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Run a transaction: JSON as in docs/api.md, from --file or standard input.
    Txn {
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Stream changes under a prefix (Ctrl-C to stop).
    Watch {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Replay kept history from this revision.
        #[arg(long)]
        start_revision: Option<u64>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// List keys by prefix.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        ep: Endpoint,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show members, leader, and replication progress.
    Status {
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Make the node at --endpoint a new one-member cluster.
    Init {
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Add a member (as a learner, promoted to voter once caught up unless --learner).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        peer_url: String,
        #[arg(long)]
        client_url: String,
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Show or change the replication mode and default read consistency.
    Config {
        /// quorum, sync or async.
        #[arg(long)]
        mode: Option<String>,
        /// linearizable, leader or stale.
        #[arg(long)]
        read_consistency: Option<String>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Remove a member.
    Remove {
        id: u64,
        #[command(flatten)]
        ep: Endpoint,
    },
}

fn encode_key(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message")?.as_str()?
            ))
        })
        .unwrap_or(body);
    bail!("{status}: {msg}")
}

/// One watch line as `REV  TYPE  KEY  VALUE`, or progress and errors as they are.
fn print_watch_line(line: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return;
    };
    let Some(events) = v["events"].as_array() else {
        if !v["error"].is_null() {
            eprintln!("{}", v["error"]);
        }
        return;
    };
    for e in events {
        let value = base64::engine::general_purpose::STANDARD
            .decode(e["value_base64"].as_str().unwrap_or(""))
            .unwrap_or_default();
        println!(
            "{}\t{}\t{}\t{}",
            v["revision"],
            e["type"].as_str().unwrap_or(""),
            e["key"].as_str().unwrap_or(""),
            String::from_utf8_lossy(&value)
        );
    }
}

/// Send a request, fail on an error answer, and decode the JSON body.
async fn send_json(req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let resp = req.send().await.context("cannot reach the endpoint")?;
    Ok(check(resp).await?.json().await?)
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

impl KvCommand {
    fn endpoint(&self) -> &Endpoint {
        match self {
            KvCommand::Put { ep, .. }
            | KvCommand::Get { ep, .. }
            | KvCommand::Del { ep, .. }
            | KvCommand::Txn { ep, .. }
            | KvCommand::Watch { ep, .. }
            | KvCommand::List { ep, .. } => ep,
        }
    }
}

impl ClusterCommand {
    fn endpoint(&self) -> &Endpoint {
        match self {
            ClusterCommand::Status { ep }
            | ClusterCommand::Init { ep }
            | ClusterCommand::Add { ep, .. }
            | ClusterCommand::Config { ep, .. }
            | ClusterCommand::Remove { ep, .. } => ep,
        }
    }
}

pub async fn run_kv(cmd: KvCommand) -> anyhow::Result<()> {
    let http = cmd.endpoint().client()?;
    match cmd {
        KvCommand::Put {
            key,
            value,
            if_version,
            if_absent,
            ep,
        } => {
            let mut req = http
                .put(format!("{}/v1/kv/{}", ep.endpoint, encode_key(&key)))
                .body(value);
            if let Some(v) = if_version {
                req = req.header("if-match", format!("\"{v}\""));
            }
            if if_absent {
                req = req.header("if-none-match", "*");
            }
            print_json(&send_json(req).await?);
        }
        KvCommand::Get {
            key,
            consistency,
            ep,
        } => {
            let resp = http
                .get(format!("{}/v1/kv/{}", ep.endpoint, encode_key(&key)))
                .query(&[("consistency", consistency)])
                .send()
                .await
                .context("cannot reach the endpoint")?;
            let resp = check(resp).await?;
            let version = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.bytes().await?;
            eprintln!("version {}", version.trim_matches('"'));
            println!("{}", String::from_utf8_lossy(&body));
        }
        KvCommand::Del {
            key,
            if_version,
            ep,
        } => {
            let mut req = http.delete(format!("{}/v1/kv/{}", ep.endpoint, encode_key(&key)));
            if let Some(v) = if_version {
                req = req.header("if-match", format!("\"{v}\""));
            }
            print_json(&send_json(req).await?);
        }
        KvCommand::Txn { file, ep } => {
            let body = match file {
                Some(f) => {
                    std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
                }
                None => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                }
            };
            let req = http
                .post(format!("{}/v1/txn", ep.endpoint))
                .header("content-type", "application/json")
                .body(body);
            print_json(&send_json(req).await?);
        }
        KvCommand::Watch {
            prefix,
            start_revision,
            ep,
        } => {
            let mut q = vec![("prefix", prefix)];
            if let Some(r) = start_revision {
                q.push(("start_revision", r.to_string()));
            }
            let mut resp = check(
                http.get(format!("{}/v1/watch", ep.endpoint))
                    .query(&q)
                    .send()
                    .await
                    .context("cannot reach the endpoint")?,
            )
            .await?;
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    print_watch_line(&line);
                }
            }
        }
        KvCommand::List { prefix, limit, ep } => {
            let mut start_after: Option<String> = None;
            let mut left = limit;
            loop {
                let mut q = vec![
                    ("prefix", prefix.clone()),
                    ("limit", left.min(1000).to_string()),
                ];
                if let Some(s) = &start_after {
                    q.push(("start_after", s.clone()));
                }
                let v = send_json(http.get(format!("{}/v1/kv", ep.endpoint)).query(&q)).await?;
                let items = v["items"].as_array().cloned().unwrap_or_default();
                for item in &items {
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(item["value_base64"].as_str().unwrap_or(""))
                        .unwrap_or_default();
                    println!(
                        "{}\t{}",
                        item["key"].as_str().unwrap_or(""),
                        String::from_utf8_lossy(&value)
                    );
                }
                left = left.saturating_sub(items.len());
                if left == 0 || !v["more"].as_bool().unwrap_or(false) || items.is_empty() {
                    break;
                }
                start_after = items
                    .last()
                    .and_then(|i| i["key"].as_str())
                    .map(String::from);
            }
        }
    }
    Ok(())
}

pub async fn run_cluster(cmd: ClusterCommand) -> anyhow::Result<()> {
    let http = cmd.endpoint().client()?;
    let v: serde_json::Value = match cmd {
        ClusterCommand::Status { ep } => {
            let c: serde_json::Value =
                send_json(http.get(format!("{}/v1/cluster", ep.endpoint))).await?;
            println!(
                "cluster {}  leader {}  term {}",
                c["cluster_id"].as_str().unwrap_or("-"),
                c["leader_id"],
                c["term"]
            );
            println!(
                "{:<18} {:<8} {:<28} {:>10} {:>8} {:>10}",
                "ID", "ROLE", "CLIENT URL", "MATCHED", "LAG", "CONTACT"
            );
            for m in c["members"].as_array().cloned().unwrap_or_default() {
                let leader = if m["id"] == c["leader_id"] { "*" } else { "" };
                println!(
                    "{:<18} {:<8} {:<28} {:>10} {:>8} {:>10}",
                    format!("{}{}", m["id"], leader),
                    m["role"].as_str().unwrap_or(""),
                    m["client_url"].as_str().unwrap_or(""),
                    m["matched_index"].to_string(),
                    m["lag"].to_string(),
                    m["last_contact_ms"]
                        .as_u64()
                        .map(|v| format!("{v}ms"))
                        .unwrap_or("-".into()),
                );
            }
            return Ok(());
        }
        ClusterCommand::Init { ep } => {
            send_json(http.post(format!("{}/v1/cluster/init", ep.endpoint))).await?
        }
        ClusterCommand::Add {
            id,
            peer_url,
            client_url,
            learner,
            ep,
        } => {
            let body = serde_json::json!({"id": id, "peer_url": peer_url, "client_url": client_url,
                "role": if learner { "learner" } else { "voter" }});
            send_json(
                http.post(format!("{}/v1/cluster/members", ep.endpoint))
                    .json(&body),
            )
            .await?
        }
        ClusterCommand::Config {
            mode,
            read_consistency,
            ep,
        } => {
            if mode.is_none() && read_consistency.is_none() {
                send_json(http.get(format!("{}/v1/cluster/config", ep.endpoint))).await?
            } else {
                let mut body = serde_json::Map::new();
                if let Some(m) = mode {
                    body.insert("replication_mode".into(), m.into());
                }
                if let Some(r) = read_consistency {
                    body.insert("read_consistency".into(), r.into());
                }
                send_json(
                    http.put(format!("{}/v1/cluster/config", ep.endpoint))
                        .json(&body),
                )
                .await?
            }
        }
        ClusterCommand::Remove { id, ep } => {
            send_json(http.delete(format!("{}/v1/cluster/members/{id}", ep.endpoint))).await?
        }
    };
    print_json(&v);
    Ok(())
}
