//! `node dev`, run as a newcomer runs it: secure by default, with the files it names, and
//! copy-paste commands that work as printed; stopped by any signal (SIGKILL included)
//! without leaving members behind; restarted on its data directory with the data and the
//! credentials it had; and stopped at once, saying why, when a member cannot start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rstore_tests::harness::wait_until;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// This package's `node` binary, which cargo builds for the package's tests.
fn node_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

/// How long `node dev` may take to print its endpoints, and its members to stop.
const STARTUP: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(20);

/// A running `node dev` and what it printed up to "Press Ctrl-C to stop.".
struct Dev {
    child: Child,
    printed: Vec<String>,
    client_ports: Vec<u16>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `nodes` consecutive pairs of loopback ports that were free a moment ago.
fn free_base(nodes: u16) -> u16 {
    loop {
        let base = 20_000 + rand::random::<u16>() % 30_000;
        let free =
            (0..2 * nodes).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
}

/// Start `node dev` on `dir`; `Err` with its output if it exits first.
async fn start_at(dir: &Path, base: u16, nodes: u16, extra: &[&str]) -> Result<Dev, String> {
    let mut child = Command::new(node_bin())
        .args(["dev", "--nodes", &nodes.to_string(), "--base-port"])
        .arg(base.to_string())
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("Press Ctrl-C");
            printed.push(line);
            if done {
                return true;
            }
        }
        false
    };
    let ready = tokio::time::timeout(STARTUP, read)
        .await
        .expect("node dev printed nothing within the startup time");
    if !ready {
        let out = child.wait_with_output().await.unwrap();
        return Err(format!(
            "node dev exited ({}): {}\n{}",
            out.status,
            printed.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Keep reading its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Dev {
        child,
        printed,
        client_ports: (0..nodes).map(|i| base + 2 * i).collect(),
    })
}

/// Start `node dev` on free ports (retrying if another process took one meanwhile).
async fn start(dir: &Path, nodes: u16, extra: &[&str]) -> Dev {
    for _ in 0..5 {
        match start_at(dir, free_base(nodes), nodes, extra).await {
            Ok(dev) => return dev,
            Err(e) if e.contains("Address already in use") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free ports for node dev in 5 tries")
}

/// Run a printed command line with `sh`, `node` on the PATH; its stdout, or a panic.
fn sh(line: &str) -> String {
    let bin_dir = node_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", line])
        .env("PATH", path)
        .env_remove("RSTORE_ENDPOINT")
        .env_remove("RSTORE_TOKEN")
        .env_remove("RSTORE_CACERT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{line}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The members on these client ports (and the peer ports after them) all stop within
/// [`STOP`].
async fn members_gone(client_ports: &[u16], what: &str) {
    for &port in client_ports {
        wait_until(
            STOP,
            &format!("member on {port} to stop {what}"),
            async || !port_open(port) && !port_open(port + 1),
        )
        .await;
    }
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("node dev is running");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn dev_client(dir: &Path, token: Option<&str>) -> reqwest::Client {
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        b = b.default_headers(h);
    }
    b.build().unwrap()
}

/// The JSON `client` gets from `url`.
async fn get_json(client: &reqwest::Client, url: String) -> Value {
    let r = client.get(&url).send().await.unwrap();
    r.json()
        .await
        .unwrap_or_else(|e| panic!("{url}: not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_is_secure_by_default_and_its_printed_commands_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut dev = start(dir, 3, &[]).await;
    let out = dev.printed.join("\n");
    let ep = format!("https://127.0.0.1:{}", dev.client_ports[0]);
    assert!(out.contains(&format!("client {ep}")), "{out}");

    // The files it names, secrets readable by their owner only, and no raw token where
    // the members read them.
    for f in [
        "ca.crt",
        "admin.token",
        "write.token",
        "read.token",
        "admin.crt",
        "admin.key",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing; printed:\n{out}");
        assert!(
            out.contains(&dir.join(f).display().to_string()),
            "{f} not named:\n{out}"
        );
    }
    for f in [
        "admin.token",
        "write.token",
        "read.token",
        "admin.key",
        "ca.key",
        "tokens",
    ] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let admin_token = admin_token.trim();
    let hashes = std::fs::read_to_string(dir.join("tokens")).unwrap();
    assert!(
        !hashes.contains(admin_token),
        "the members' token file holds a raw token"
    );

    // TLS and authentication on, and said so.
    let anonymous = dev_client(dir, None);
    let r = anonymous
        .get(format!("{ep}/v1/kv/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let info = get_json(&dev_client(dir, Some(admin_token)), format!("{ep}/v1/node")).await;
    assert_eq!(info["security"]["plaintext"], false, "{info}");
    let read_token = std::fs::read_to_string(dir.join("read.token")).unwrap();
    let r = dev_client(dir, Some(read_token.trim()))
        .put(format!("{ep}/v1/kv/hello"))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a read token wrote");

    // Every printed command, as printed, in order: the put first.
    let commands: Vec<&str> = dev
        .printed
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl ") || l.starts_with("node "))
        .collect();
    assert!(commands.len() >= 5, "too few commands printed:\n{out}");
    assert!(commands[0].contains("-X PUT"), "{out}");
    for c in &commands {
        let answer = sh(c);
        if c.contains("-X PUT") {
            assert!(answer.contains("revision"), "`{c}`: {answer}");
        } else if c.ends_with("/v1/cluster") {
            assert!(answer.contains("members"), "`{c}`: {answer}");
        } else {
            assert!(answer.contains("world"), "`{c}`: {answer}");
        }
    }
    // The environment-variable form: "or set A=.. B=.. and run: node kv get hello".
    let env_line = dev
        .printed
        .iter()
        .find_map(|l| l.strip_prefix("or set "))
        .unwrap_or_else(|| panic!("no environment form printed:\n{out}"));
    let (vars, cmd) = env_line.split_once(" and run: ").unwrap();
    assert!(sh(&format!("export {vars}; {cmd}")).contains("world"));

    // SIGTERM stops it and every member.
    signal(&dev.child, "-TERM");
    let status = tokio::time::timeout(STOP, dev.child.wait())
        .await
        .expect("node dev did not stop after SIGTERM")
        .unwrap();
    assert!(status.success(), "node dev after SIGTERM: {status}");
    members_gone(&dev.client_ports, "after SIGTERM").await;

    // Restarted on the same directory: the same credentials, and the data it had.
    // (On the same ports: the members' addresses are in the membership it kept.)
    let base = dev.client_ports[0];
    drop(dev);
    let mut dev = start_at(dir, base, 3, &[]).await.unwrap();
    let again = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    assert_eq!(
        again.trim(),
        admin_token,
        "the admin token changed on restart"
    );
    let ep = format!("https://127.0.0.1:{}", dev.client_ports[0]);
    let admin = dev_client(dir, Some(admin_token));
    wait_until(
        rstore_tests::harness::ELECTION,
        "hello after the restart",
        async || match admin.get(format!("{ep}/v1/kv/hello")).send().await {
            Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == "world"),
            _ => false,
        },
    )
    .await;
    let cluster = get_json(&admin, format!("{ep}/v1/cluster")).await;
    assert_eq!(
        cluster["members"].as_array().map(Vec::len),
        Some(3),
        "{cluster}"
    );

    // SIGKILL leaves it no chance to stop its members: they stop by themselves.
    signal(&dev.child, "-KILL");
    let _ = dev.child.wait().await;
    members_gone(&dev.client_ports, "after node dev was killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_stops_at_once_and_says_why_when_a_member_cannot_start() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_base(3);
    // Member 1's client port is taken by a listener that never answers.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 2)).unwrap();
    let started = std::time::Instant::now();
    let err = match start_at(tmp.path(), base, 3, &[]).await {
        Ok(dev) => panic!(
            "node dev started with a port taken:\n{}",
            dev.printed.join("\n")
        ),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "node dev took {:?} to give up",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("127.0.0.1:{}", base + 2)) && err.contains("Address already in use"),
        "the error should name the port and why: {err}"
    );
    // The members that did start are stopped.
    members_gone(&[base, base + 4], "after node dev gave up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_plaintext_only_on_request_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = start(tmp.path(), 1, &["--insecure-plaintext"]).await;
    let out = dev.printed.join("\n");
    assert!(out.contains("PLAINTEXT"), "{out}");
    let ep = format!("http://127.0.0.1:{}", dev.client_ports[0]);
    assert!(out.contains(&ep), "{out}");
    assert!(!tmp.path().join("admin.token").exists());
    let info = get_json(&reqwest::Client::new(), format!("{ep}/v1/node")).await;
    assert_eq!(info["security"]["plaintext"], true, "{info}");
    for c in dev.printed.iter().map(|l| l.trim()) {
        if c.starts_with("curl ") || c.starts_with("node ") {
            sh(c);
        }
    }
}
