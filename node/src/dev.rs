//! `node dev`: a local cluster of real node processes on loopback, for newcomers.
//!
//! It starts N `node serve` children on consecutive ports, initializes the first, adds the
//! others through the admin API (as the operator does), prints the endpoints, and on
//! Ctrl-C stops every child with SIGTERM.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Client port of the first member; member i uses base+2i (client) and base+2i+1 (peer).
    #[arg(long, default_value_t = 7379)]
    pub base_port: u16,
    /// Keep data here (one subdirectory per member) instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

struct Member {
    child: Child,
    client: String,
    peer: String,
}

fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
}

async fn wait_http(
    http: &reqwest::Client,
    url: &str,
    deadline: Instant,
) -> anyhow::Result<serde_json::Value> {
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(r.json().await?);
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be from 1 to 9");
    }
    // A temporary directory is removed when `_tmp` drops, after the members stopped.
    let (_tmp, root) = match &args.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new().prefix("rstore-dev-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let exe = std::env::current_exe().context("cannot find the node binary")?;
    let http = reqwest::Client::new();
    let mut members = Vec::new();
    for i in 0..args.nodes {
        let client_port = args.base_port + 2 * i as u16;
        let client = format!("127.0.0.1:{client_port}");
        let peer = format!("127.0.0.1:{}", client_port + 1);
        let dir = root.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let child = Command::new(&exe)
            .args(["serve", "--data-dir"])
            .arg(&dir)
            .args(["--listen-client", &client, "--listen-peer", &peer])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a member")?;
        members.push(Member {
            child,
            client: format!("http://{client}"),
            peer: format!("http://{peer}"),
        });
    }
    let result = bootstrap(&http, &members).await;
    if let Err(e) = result {
        for m in &members {
            terminate(m.child.id());
        }
        return Err(e.context(format!("see the member logs under {}", root.display())));
    }
    println!(
        "rstore dev cluster: {} members, data in {}",
        members.len(),
        root.display()
    );
    for (i, m) in members.iter().enumerate() {
        println!(
            "  member {i}: client {}  peer {}  log {}/node-{i}/node.log",
            m.client,
            m.peer,
            root.display()
        );
    }
    let ep = &members[0].client;
    println!();
    println!("Try:");
    println!("  curl -X PUT --data-binary 'world' {ep}/v1/kv/hello");
    println!("  curl {ep}/v1/kv/hello");
    println!("  curl {ep}/v1/cluster");
    println!("  node kv get hello --endpoint {ep}");
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    println!("stopping...");
    for m in &members {
        terminate(m.child.id());
    }
    for m in &mut members {
        match tokio::time::timeout(Duration::from_secs(10), m.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = m.child.kill().await;
            }
        }
    }
    println!("stopped.");
    Ok(())
}

async fn bootstrap(http: &reqwest::Client, members: &[Member]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = &members[0];
    let info = wait_http(http, &format!("{}/v1/node", first.client), deadline).await?;
    if info["role"] == "uninitialized" {
        let r = http
            .post(format!("{}/v1/cluster/init", first.client))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("init failed: {}", r.text().await.unwrap_or_default());
        }
    }
    for m in &members[1..] {
        let info = wait_http(http, &format!("{}/v1/node", m.client), deadline).await?;
        if info["role"] != "uninitialized" {
            continue; // restarted with kept data: already a member
        }
        let body = serde_json::json!({"id": info["id"], "peer_url": m.peer, "client_url": m.client, "role": "voter"});
        let r = http
            .post(format!("{}/v1/cluster/members", first.client))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "adding {} failed: {}",
                m.client,
                r.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}
