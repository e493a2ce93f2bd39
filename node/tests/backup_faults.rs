//! Backups when things go wrong around them: the object store dying in the middle of an
//! upload, credentials the store refuses, a full disk under `backup save` and `backup
//! restore`. Each fails with a message that says what happened, keeps the earlier backups
//! good, leaves no partial file or half-restored directory, and the cluster serves on.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rstore_tests::harness::{Cluster, metric_value};
use rstore_tests::moto::Moto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_node"))
}

/// Run `node ARGS...` off the async threads; its exit status, stdout and stderr.
async fn node(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(node_bin())
            .args(&args)
            .output()
            .expect("run node");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// The admin flags for member 0 of `cluster`.
fn admin(cluster: &Cluster) -> Vec<String> {
    let creds = cluster.creds();
    vec![
        "--endpoint".into(),
        cluster.nodes[0].direct_client_url.clone(),
        "--cacert".into(),
        creds.ca_file().display().to_string(),
        "--token".into(),
        creds.admin_token.clone(),
    ]
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// A TCP proxy in front of the object store that can "kill" it: once `dead`, every
/// connection is dropped and new ones are closed at once, as when the store's process is
/// gone behind its address. Counts the bytes sent to the store.
struct StoreProxy {
    port: u16,
    dead: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StoreProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StoreProxy {
    async fn start(target: u16) -> StoreProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dead = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (d, s) = (dead.clone(), sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let (d, s) = (d.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if d.load(Ordering::SeqCst) || sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            s.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if d.load(Ordering::SeqCst) || cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either side ending (or the store dying) ends the connection.
                    tokio::select! {
                        () = up => {},
                        () = down => {},
                        () = async {
                            while !d.load(Ordering::SeqCst) {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            }
                        } => {},
                    }
                });
            }
        });
        StoreProxy {
            port,
            dead,
            sent,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_dying_mid_upload_fails_the_save_and_keeps_the_earlier_backup_good() {
    let Some(moto) = Moto::start("store killed mid-upload", false) else {
        return;
    };
    assert_eq!(moto.create_bucket("backups"), 200);
    let proxy = StoreProxy::start(moto.port).await;
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    // About 20 MiB: more than two 8 MiB parts, so the upload is long under way when it dies.
    let value = vec![b'x'; 4096];
    for i in 0..5000 {
        c.put_acked(&format!("big/{i:05}"), &value).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    rstore_tests::moto::write_credentials(&creds, &format!("http://127.0.0.1:{}", proxy.port));
    let creds = creds.display().to_string();
    let save = || {
        let mut a = args(&[
            "backup",
            "save",
            "--out",
            "s3://backups/db",
            "--credentials-dir",
            &creds,
        ]);
        a.extend(admin(&cluster));
        node(a)
    };
    let (ok, out, err) = save().await;
    assert!(ok, "the first save: {out}{err}");
    let good: serde_json::Value = serde_json::from_str(out.trim()).unwrap();

    // The second save: the store dies once 1 MiB of it has reached the store. (A write
    // first: two saves at one revision within one second would share an object name.)
    c.put_acked("between/saves", b"v").await;
    let second = tokio::spawn(save());
    let base = proxy.sent.load(Ordering::SeqCst);
    let sent = proxy.sent.clone();
    rstore_tests::harness::wait_until(
        std::time::Duration::from_secs(60),
        "the second upload to be under way",
        async || sent.load(Ordering::SeqCst) > base + (1 << 20),
    )
    .await;
    proxy.dead.store(true, Ordering::SeqCst);
    let (ok, out, err) = second.await.unwrap();
    assert!(!ok, "a save whose store died succeeded: {out}");
    assert!(
        err.contains("no backup was saved to s3://backups/db/"),
        "the failure does not name the object: {err}"
    );
    // The cluster serves on.
    c.put_acked("after/store-died", b"v").await;

    // The store comes back: the earlier backup is the newest good one, and restores.
    proxy.dead.store(false, Ordering::SeqCst);
    let restored = tmp.path().join("restored");
    let (ok, out, err) = node(args(&[
        "backup",
        "restore",
        "s3://backups/db",
        "--credentials-dir",
        &creds,
        "--data-dir",
        restored.to_str().unwrap(),
        "--advertise-client",
        "https://127.0.0.1:1",
        "--advertise-peer",
        "https://127.0.0.1:2",
    ]))
    .await;
    assert!(ok, "{out}{err}");
    let rev = good["revision"].as_u64().unwrap();
    assert!(
        out.contains(&format!("restored revision {rev} (5000 keys)")),
        "{out}"
    );
    // And a save now succeeds.
    let (ok, out, err) = save().await;
    assert!(ok, "a save after the store came back: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_the_store_refuses_are_named_before_anything_streams() {
    // With auth, moto knows no key at all: every credential is wrong.
    let Some(moto) = Moto::start("wrong credentials", true) else {
        return;
    };
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    c.put_acked("k", b"v").await;
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    rstore_tests::moto::write_credentials(&creds, &moto.endpoint());
    let mut a = args(&[
        "backup",
        "save",
        "--out",
        "s3://backups/db",
        "--credentials-dir",
        creds.to_str().unwrap(),
    ]);
    a.extend(admin(&cluster));
    let (ok, _, err) = node(a).await;
    assert!(!ok);
    assert!(
        err.contains("refused the credentials") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    let metrics = c.get_path("/metrics").await.text();
    let streamed = metric_value(&metrics, "rstore_backups_total{outcome=\"complete\"}");
    assert_eq!(
        streamed.unwrap_or(0.0),
        0.0,
        "a backup streamed for nothing"
    );
}

/// A tmpfs of `bytes` at a new directory, unmounted when dropped; `None` (after saying
/// why) where mounting is not allowed.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            });
            assert!(!root, "running as root, yet a tmpfs cannot be mounted");
            eprintln!("SKIPPED the full-disk test: mounting a tmpfs needs root");
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_save_and_restore_cleanly_and_the_cluster_serves_on() {
    let Some(disk) = Tmpfs::mount(1 << 20) else {
        return;
    };
    let cluster = Cluster::start(node_bin(), 1).await;
    let c = cluster.client(0);
    let value = vec![b'y'; 4096];
    for i in 0..600 {
        c.put_acked(&format!("full/{i:04}"), &value).await;
    }
    // Save into the full disk: refused with the OS's reason, no file or partial left.
    let out_file = disk.0.path().join("backup.rsb");
    let mut a = args(&["backup", "save", "--out", out_file.to_str().unwrap()]);
    a.extend(admin(&cluster));
    let (ok, _, err) = node(a).await;
    assert!(!ok);
    assert!(err.contains("No space left on device"), "{err}");
    let left: Vec<_> = std::fs::read_dir(disk.0.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed save left {left:?}");
    c.put_acked("after/full-disk", b"v").await;

    // A good backup elsewhere, restored into the full disk: refused, nothing left behind.
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.rsb");
    let mut a = args(&["backup", "save", "--out", good.to_str().unwrap()]);
    a.extend(admin(&cluster));
    let (ok, out, err) = node(a).await;
    assert!(ok, "{out}{err}");
    let target = disk.0.path().join("restored");
    let (ok, _, err) = node(args(&[
        "backup",
        "restore",
        good.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
        "--advertise-client",
        "https://127.0.0.1:1",
        "--advertise-peer",
        "https://127.0.0.1:2",
    ]))
    .await;
    assert!(!ok);
    assert!(
        err.contains("was not restored") && err.contains("No space left on device"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(disk.0.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed restore left {left:?}");
}
