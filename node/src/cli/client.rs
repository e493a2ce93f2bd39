//! `node kv ...` and `node cluster ...`: a client of the HTTP API, in the manner of
//! etcdctl. It reaches the server only over HTTP, as any user's client does, through the
//! one typed client ([`rstore_api::client::NodeClient`]); this module owns the flags, the
//! printers and the words of a failure.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use rstore_api::admin::MemberRole;
use rstore_api::client::{
    ApiError, ConfigChange, Credentials, Error, NodeClient, Precondition, RangeQuery, TlsError,
    WatchLine,
};
use serde::Serialize;

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
    /// The typed client of the member at `--endpoint`, with these credentials (and
    /// `--hosts-file` consulted before DNS).
    pub fn client(&self) -> anyhow::Result<NodeClient> {
        let creds = Credentials::from_files(
            self.cacert.as_deref(),
            self.cert.as_deref().zip(self.key.as_deref()),
            self.token.as_deref(),
        )
        .map_err(unreadable)?;
        let mut b = creds.reqwest_builder()?;
        if let Some(hosts) = &self.hosts_file {
            crate::network::hosts::set_file(hosts.clone());
            b = b.dns_resolver(std::sync::Arc::new(crate::network::hosts::ReqwestResolver));
        }
        Ok(NodeClient::new(b.build()?, &self.endpoint))
    }
}

/// A credential file that cannot be read, as `cannot read PATH: why` (once, not twice).
fn unreadable(e: TlsError) -> anyhow::Error {
    match e {
        TlsError::Read { path, source } => {
            anyhow::Error::new(source).context(format!("cannot read {path}"))
        }
        other => other.into(),
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

/// A failed call in the command line's words: `STATUS: code: message` as the node answered
/// it (`403 Forbidden: permission_denied: ...`), or why the endpoint could not be reached.
pub(super) fn explain(e: Error) -> anyhow::Error {
    match e {
        Error::Api { api, .. } => {
            let status = reqwest::StatusCode::from_u16(api.status)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| api.status.to_string());
            if api.code == ApiError::UNKNOWN {
                anyhow::anyhow!("{status}: {}", api.message)
            } else {
                anyhow::anyhow!("{status}: {}: {}", api.code, api.message)
            }
        }
        Error::Unreachable { source, .. } => {
            anyhow::Error::new(source).context("cannot reach the endpoint")
        }
        other => other.into(),
    }
}

/// An answer as indented JSON, its keys sorted.
fn pretty(v: &impl Serialize) -> String {
    let v = serde_json::to_value(v).unwrap_or_default();
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn print_json(v: &impl Serialize) {
    println!("{}", pretty(v));
}

/// A number as JSON prints it: `null` when absent.
fn or_null(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// One watch line: each event as `REV  TYPE  KEY  VALUE`; the error that ends a watch on
/// standard error; progress not at all.
fn print_watch_line(line: WatchLine) {
    match line {
        WatchLine::Events { revision, events } => {
            for e in events {
                println!(
                    "{revision}\t{}\t{}\t{}",
                    e.kind,
                    e.key,
                    String::from_utf8_lossy(e.value.as_deref().unwrap_or_default())
                );
            }
        }
        WatchLine::Error { error } => {
            eprintln!("{}", serde_json::to_value(&error).unwrap_or_default());
        }
        WatchLine::Progress { .. } => {}
    }
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
    let node = cmd.endpoint().client()?;
    match cmd {
        KvCommand::Put {
            key,
            value,
            if_version,
            if_absent,
            ..
        } => {
            let condition = match (if_version, if_absent) {
                (Some(v), _) => Precondition::Version(v),
                (None, true) => Precondition::Absent,
                (None, false) => Precondition::None,
            };
            print_json(&node.put(&key, value, condition).await.map_err(explain)?);
        }
        KvCommand::Get {
            key, consistency, ..
        } => {
            let consistency = consistency.parse()?;
            let v = node
                .get_existing(&key, Some(consistency))
                .await
                .map_err(explain)?;
            eprintln!("version {}", v.version);
            println!("{}", String::from_utf8_lossy(&v.value));
        }
        KvCommand::Del {
            key, if_version, ..
        } => {
            let condition = if_version.map_or(Precondition::None, Precondition::Version);
            print_json(&node.delete(&key, condition).await.map_err(explain)?);
        }
        KvCommand::Txn { file, .. } => {
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
            print_json(&node.txn_raw(body).await.map_err(explain)?);
        }
        KvCommand::Watch {
            prefix,
            start_revision,
            ..
        } => {
            let mut watch = node.watch(&prefix, start_revision).await.map_err(explain)?;
            while let Some(line) = watch.next().await.map_err(explain)? {
                print_watch_line(line);
            }
        }
        KvCommand::List { prefix, limit, .. } => {
            let mut query = RangeQuery {
                prefix,
                ..RangeQuery::default()
            };
            let mut left = limit;
            loop {
                query.limit = Some(left.min(1000));
                let page = node.range(&query).await.map_err(explain)?;
                for item in &page.items {
                    println!("{}\t{}", item.key, String::from_utf8_lossy(&item.value));
                }
                left = left.saturating_sub(page.items.len());
                let Some(last) = page.items.last() else { break };
                if left == 0 || !page.more {
                    break;
                }
                query.start_after = Some(last.key.clone());
            }
        }
    }
    Ok(())
}

pub async fn run_cluster(cmd: ClusterCommand) -> anyhow::Result<()> {
    let node = cmd.endpoint().client()?;
    match cmd {
        ClusterCommand::Status { .. } => {
            let c = node.cluster().await.map_err(explain)?;
            println!(
                "cluster {}  leader {}  term {}",
                c.cluster_id.as_deref().unwrap_or("-"),
                or_null(c.leader_id),
                c.term
            );
            println!(
                "{:<18} {:<8} {:<28} {:>10} {:>8} {:>10}",
                "ID", "ROLE", "CLIENT URL", "MATCHED", "LAG", "CONTACT"
            );
            for m in &c.members {
                let leader = if Some(m.id) == c.leader_id { "*" } else { "" };
                println!(
                    "{:<18} {:<8} {:<28} {:>10} {:>8} {:>10}",
                    format!("{}{}", m.id, leader),
                    m.role.as_str(),
                    m.client_url,
                    or_null(m.matched_index),
                    or_null(m.lag),
                    m.last_contact_ms
                        .map(|v| format!("{v}ms"))
                        .unwrap_or("-".into()),
                );
            }
        }
        ClusterCommand::Init { .. } => print_json(&node.init().await.map_err(explain)?),
        ClusterCommand::Add {
            id,
            peer_url,
            client_url,
            learner,
            ..
        } => {
            let role = if learner {
                MemberRole::Learner
            } else {
                MemberRole::Voter
            };
            let view = node.add_member(id, &peer_url, &client_url, role).await;
            print_json(&view.map_err(explain)?);
        }
        ClusterCommand::Config {
            mode,
            read_consistency,
            ..
        } => {
            let config = if mode.is_none() && read_consistency.is_none() {
                node.config().await
            } else {
                let change = ConfigChange {
                    replication_mode: mode,
                    read_consistency,
                };
                node.set_config(&change).await
            };
            print_json(&config.map_err(explain)?);
        }
        ClusterCommand::Remove { id, .. } => {
            print_json(&node.remove_member(id).await.map_err(explain)?)
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_before() {
        let api = |status, body: &str| Error::Api {
            url: "https://n:7379".into(),
            api: ApiError::from_answer(status, body.as_bytes()),
        };
        let text = |e: Error| format!("{:#}", explain(e));
        assert_eq!(
            text(api(
                403,
                r#"{"error":{"code":"permission_denied","message":"no"}}"#
            )),
            "403 Forbidden: permission_denied: no"
        );
        assert_eq!(
            text(api(502, "<html>bad gateway</html>")),
            "502 Bad Gateway: <html>bad gateway</html>"
        );
        let ep = Endpoint {
            endpoint: "https://127.0.0.1:1".into(),
            cacert: Some("/nonexistent/ca.crt".into()),
            cert: None,
            key: None,
            token: None,
            hosts_file: None,
        };
        let err = format!("{:#}", ep.client().unwrap_err());
        assert_eq!(
            err,
            "cannot read /nonexistent/ca.crt: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn answers_print_as_the_node_wrote_them() {
        let written: rstore_api::client::Written =
            serde_json::from_str(r#"{"revision":null,"version":null,"durability":"leader"}"#)
                .unwrap();
        assert_eq!(
            pretty(&written),
            "{\n  \"durability\": \"leader\",\n  \"revision\": null,\n  \"version\": null\n}"
        );
        let txn = r#"{"succeeded":true,"revision":9,"results":[{"op":"get","found":false},{"op":"put","version":2}]}"#;
        let typed: rstore_api::client::TxnResponse = serde_json::from_str(txn).unwrap();
        let raw: serde_json::Value = serde_json::from_str(txn).unwrap();
        assert_eq!(pretty(&typed), pretty(&raw));
    }
}
