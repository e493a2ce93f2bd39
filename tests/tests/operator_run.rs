//! `operator run`, the in-cluster controller, as a process: there is no API server here, so
//! this checks what can be checked without one. Against an unreachable HTTPS API server it
//! must fail with a clear error and a non-zero exit, not a panic (it once panicked building
//! its TLS client, because two rustls crypto providers were compiled in), and it must serve
//! `/healthz` while it tries.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rstore_tests::harness::node_bin;

#[test]
fn run_without_a_reachable_api_server_fails_cleanly() {
    let operator = node_bin().with_file_name("operator");
    assert!(operator.is_file(), "{} not built", operator.display());
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: \
             x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  \
             user:\n    token: t\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(&operator)
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--no-leader-election",
        ])
        .args(["--log-format", "text"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("operator run neither connected nor gave up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !stderr.contains("panicked"),
        "operator run panicked:\n{stderr}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: Kubernetes API"),
        "the error names the API server:\n{stderr}"
    );
}
