//! `node dev`: a local cluster of real node processes on loopback, for newcomers.
//!
//! It starts N `node serve` children on consecutive ports, initializes the first, adds the
//! others through the admin API (as the operator does), prints the endpoints, and on
//! Ctrl-C, SIGTERM or SIGHUP stops every child with SIGTERM. Each child also holds a pipe
//! from `node dev` as its standard input and shuts down when it closes, so no member
//! outlives `node dev`, even one killed with SIGKILL. A member that exits by itself (a port in
//! use, say) stops `node dev` at once, with the error it exited with.
//!
//! Secure by default, like a deployed cluster: it makes a cluster CA (`DATA_DIR/ca.crt`,
//! `ca.key`), a member certificate per member, bearer tokens for each role
//! (`DATA_DIR/admin.token`, `write.token`, `read.token`; the members get only their hashes,
//! in `DATA_DIR/tokens`) and an admin client certificate (`DATA_DIR/admin.crt`, `admin.key`).
//! With a kept `--data-dir` they are reused. `--insecure-plaintext` runs without any of it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rstore_api::admin::{MemberRole, NodeInfo};
use rstore_api::client::{Credentials, NodeClient};
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
    /// No TLS and no authentication (see `node serve --insecure-plaintext`).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// The credentials of a dev cluster, in its data directory.
struct Creds {
    root: PathBuf,
    ca: crate::pki::Ca,
    admin_token: String,
}

const ROLES: [&str; 3] = ["admin", "write", "read"];

impl Creds {
    /// Make (or, in a kept data directory, reuse) the CA, the tokens and the admin
    /// certificate.
    fn prepare(root: &std::path::Path) -> anyhow::Result<Self> {
        use crate::pki::{Ca, Pem, new_token, token_line, write_file};
        let ca = match Pem::read(root, "ca") {
            Ok(pem) => Ca::from_pem(pem)?,
            Err(_) => {
                let ca = Ca::generate("dev")?;
                ca.pem().write(root, "ca")?;
                ca
            }
        };
        let mut lines = String::from("# NAME ROLE sha256:HEX (written by node dev)\n");
        for role in ROLES {
            let path = root.join(format!("{role}.token"));
            let token = match std::fs::read_to_string(&path) {
                Ok(t) => t.trim().to_string(),
                Err(_) => {
                    let t = new_token();
                    write_file(&path, &t, true)?;
                    t
                }
            };
            lines.push_str(&token_line(role, role, &token));
        }
        write_file(&root.join("tokens"), &lines, true)?;
        if Pem::read(root, "admin").is_err() {
            ca.client("dev-admin", "admin")?.write(root, "admin")?;
        }
        let admin_token = std::fs::read_to_string(root.join("admin.token"))?
            .trim()
            .to_string();
        Ok(Self {
            root: root.to_path_buf(),
            ca,
            admin_token,
        })
    }

    /// The certificate files of the member whose peer URL is `peer_url`.
    fn member(&self, i: usize, peer_url: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self.root.join("certs");
        let stem = format!("node-{i}");
        self.ca
            .member(&["127.0.0.1".into(), "localhost".into()], peer_url)?
            .write(&dir, &stem)?;
        Ok((
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        ))
    }

    /// Trusting the cluster CA, with the admin token.
    fn credentials(&self) -> Credentials {
        Credentials::ca(self.ca.pem().cert.as_bytes()).with_token(self.admin_token.clone())
    }
}

struct Member {
    child: Child,
    /// Held open for the member's lifetime: its end tells the member to shut down.
    _stdin: Option<tokio::process::ChildStdin>,
    /// Its client URL's API, as the admin.
    api: NodeClient,
    client: String,
    peer: String,
    log: PathBuf,
}

impl Member {
    /// An error if the member process has exited, with the error it logged.
    fn check_running(&mut self) -> anyhow::Result<()> {
        let Ok(Some(status)) = self.child.try_wait() else {
            return Ok(());
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The error it exited with, without a backtrace; or else the end of its log.
        let why = match log.lines().find(|l| l.starts_with("Error: ")) {
            Some(line) => line.to_string(),
            None => {
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            }
        };
        bail!(
            "the member at {} exited ({status}); from {}:\n{why}",
            self.client,
            self.log.display(),
        )
    }
}

fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
}

/// What `member` says of itself (`GET /v1/node`), once it answers; an error if it exits
/// first.
async fn wait_node(member: &mut Member, deadline: Instant) -> anyhow::Result<NodeInfo> {
    let api = member.api.clone().with_timeout(Duration::from_secs(2));
    loop {
        member.check_running()?;
        if let Ok(info) = api.node().await {
            return Ok(info);
        }
        if Instant::now() > deadline {
            bail!("{}/v1/node did not answer in time", member.client);
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
    std::fs::create_dir_all(&root)?;
    let creds = if args.insecure_plaintext {
        None
    } else {
        Some(Creds::prepare(&root)?)
    };
    let http = creds
        .as_ref()
        .map_or_else(Credentials::none, Creds::credentials)
        .reqwest_builder()?
        .build()?;
    let scheme = if creds.is_some() { "https" } else { "http" };
    let mut members = Vec::new();
    for i in 0..args.nodes {
        let client_port = args.base_port + 2 * i as u16;
        let client = format!("127.0.0.1:{client_port}");
        let peer = format!("127.0.0.1:{}", client_port + 1);
        let dir = root.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["serve", "--data-dir"]).arg(&dir).args([
            "--listen-client",
            &client,
            "--listen-peer",
            &peer,
        ]);
        match &creds {
            Some(c) => {
                let (cert, key) = c.member(i, &format!("https://{peer}"))?;
                cmd.arg("--tls-ca-file")
                    .arg(root.join("ca.crt"))
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--token-file")
                    .arg(root.join("tokens"));
            }
            None => {
                cmd.arg("--insecure-plaintext");
            }
        }
        let mut child = cmd
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a member")?;
        let client = format!("{scheme}://{client}");
        members.push(Member {
            _stdin: child.stdin.take(),
            child,
            api: NodeClient::new(http.clone(), &client),
            client,
            peer: format!("{scheme}://{peer}"),
            log: dir.join("node.log"),
        });
    }
    let result = bootstrap(&mut members).await;
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
    match &creds {
        Some(_) => {
            let r = root.display();
            println!("TLS on both ports; CA certificate {r}/ca.crt. Credentials:");
            println!("  tokens {r}/admin.token, {r}/write.token, {r}/read.token (one per role)");
            println!("  admin client certificate {r}/admin.crt, key {r}/admin.key");
            println!();
            println!("Try:");
            let auth =
                format!("--cacert {r}/ca.crt -H \"Authorization: Bearer $(cat {r}/admin.token)\"");
            println!("  curl {auth} -X PUT --data-binary 'world' {ep}/v1/kv/hello");
            println!("  curl {auth} {ep}/v1/kv/hello");
            println!("  curl {auth} {ep}/v1/cluster");
            println!(
                "  curl --cacert {r}/ca.crt --cert {r}/admin.crt --key {r}/admin.key {ep}/v1/kv/hello"
            );
            println!(
                "  node kv get hello --endpoint {ep} --cacert {r}/ca.crt --token \"$(cat {r}/admin.token)\""
            );
            println!(
                "or set RSTORE_ENDPOINT={ep} RSTORE_CACERT={r}/ca.crt RSTORE_TOKEN=$(cat {r}/admin.token) and run: node kv get hello"
            );
        }
        None => {
            println!(
                "PLAINTEXT: no TLS and no authentication; anyone who reaches these ports has full access."
            );
            println!();
            println!("Try:");
            println!("  curl -X PUT --data-binary 'world' {ep}/v1/kv/hello");
            println!("  curl {ep}/v1/kv/hello");
            println!("  curl {ep}/v1/cluster");
            println!("  node kv get hello --endpoint {ep}");
        }
    }
    println!();
    println!("Press Ctrl-C to stop.");
    let stopped = stop_requested(&mut members).await;
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
    stopped
}

/// Waits for Ctrl-C, SIGTERM or SIGHUP; or for a member to exit by itself, an error (the
/// caller then stops the others).
async fn stop_requested(members: &mut [Member]) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let exited = async {
        loop {
            for m in members.iter_mut() {
                if let Err(e) = m.check_running() {
                    return e;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        _ = hup.recv() => Ok(()),
        e = exited => Err(e),
    }
}

async fn bootstrap(members: &mut [Member]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (first, rest) = members.split_first_mut().expect("at least one member");
    let info = wait_node(first, deadline).await?;
    if info.role == "uninitialized"
        && let Err(e) = first.api.init().await
    {
        bail!("init failed: {e}");
    }
    for m in rest {
        let info = wait_node(m, deadline).await?;
        if info.role != "uninitialized" {
            continue; // restarted with kept data: already a member
        }
        if let Err(e) = first
            .api
            .add_member(info.id, &m.peer, &m.client, MemberRole::Voter)
            .await
        {
            bail!("adding {} failed: {e}", m.client);
        }
    }
    Ok(())
}
