//! The user's path on the real control plane: `tests/k8s/build.sh` builds Kubernetes's own
//! components (cached), [`ControlPlane::up`] runs them with the node agent as kubelet, and
//! `tests/e2e/local.sh` runs the shared scenarios (`tests/e2e/scenarios.sh`) with kubectl and
//! helm against it.
//!
//! It needs root (network namespaces), Go (the first build) and jq. Where one is missing it
//! says so and passes, unless `RSTORE_K8S_E2E=1` demands it (`.ci/run` sets it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rstore_tests::k8s::{ControlPlane, PlaneOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repo")
        .to_owned()
}

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_owned()
}

/// Why this machine cannot run the suite, if it cannot.
fn missing() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some("not running as root (pods get network namespaces)".into());
    }
    for tool in ["go", "jq", "ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Builds (or finds cached) the control plane's binaries; their directory.
fn build() -> PathBuf {
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(repo().join("tests/k8s/build.sh"))
        .output()
        .expect("run tests/k8s/build.sh");
    assert!(
        out.status.success(),
        "tests/k8s/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "control plane binaries ready in {:.1} s\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_path_on_a_real_control_plane() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("RSTORE_K8S_E2E").as_deref() != Ok("1"),
            "RSTORE_K8S_E2E=1 but this machine cannot run the real control plane: {why}"
        );
        eprintln!("SKIPPED the real control plane suite: {why}");
        return;
    }
    let bin_dir = build();
    let dir = tempfile::Builder::new()
        .prefix("rstore-k8s-e2e-")
        .tempdir()
        .expect("tempdir");
    let mut opts = PlaneOptions::new(
        dir.path().join("plane"),
        bin_dir.clone(),
        profile_dir().join("node"),
        profile_dir().join("operator"),
    );
    // examples/production.yaml spreads 5 members over 5 storage Nodes.
    opts.nodes = 6;
    let plane = match ControlPlane::up(opts).await {
        Ok(p) => p,
        Err(e) => panic!("the control plane did not start: {e:#}"),
    };
    eprintln!(
        "control plane ready in {:.1} s",
        plane.ready_after.as_secs_f64()
    );
    // The object store the backup scenario writes to and restores from: a real S3 API server
    // (moto) on the plane's bridge, where the operator's and the members' pods reach it.
    let moto = rstore_tests::moto::Moto::start_on(
        "the_users_path_on_a_real_control_plane",
        false,
        plane.api_addr().ip(),
    );
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let t = Instant::now();
    let log = dir.path().join("scenarios.log");
    let out = std::fs::File::create(&log).expect("scenario log");
    let mut child = tokio::process::Command::new("bash")
        .arg(repo().join("tests/e2e/local.sh"))
        .current_dir(repo())
        .env("PATH", path)
        .env("RSTORE_K8S_DIR", plane.dir())
        .env("NODE_BIN", profile_dir().join("node"))
        .env("E2E_TIMEOUT", "180")
        .env(
            "BACKUP_S3_ENDPOINT",
            moto.as_ref().map(|m| m.endpoint()).unwrap_or_default(),
        )
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("run tests/e2e/local.sh");
    let status = tokio::time::timeout(Duration::from_secs(1500), child.wait()).await;
    let ok = matches!(&status, Ok(Ok(s)) if s.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // The steps and their results; everything on failure.
    for line in text.lines() {
        if !ok || line.starts_with("== ") || line.starts_with("ok ") || line.starts_with("FAIL") {
            eprintln!("{line}");
        }
    }
    eprintln!("scenarios took {:.1} s", t.elapsed().as_secs_f64());
    plane.shutdown().await;
    assert!(
        ok,
        "the scenarios failed: {status:?} (their output is above)"
    );
}

/// A component that cannot start is named, with the end of its log, and nothing the plane
/// started before it is left running: here a kube-apiserver that refuses its flags, after a
/// real etcd came up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_cannot_start_is_named_with_its_log() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("RSTORE_K8S_E2E").as_deref() != Ok("1"),
            "RSTORE_K8S_E2E=1 but this machine cannot run the real control plane: {why}"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    let real = build();
    let dir = tempfile::Builder::new()
        .prefix("rstore-k8s-broken-")
        .tempdir()
        .expect("tempdir");
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    for c in [
        "etcd",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
    ] {
        std::os::unix::fs::symlink(real.join(c), bin_dir.join(c)).expect("symlink");
    }
    let broken = bin_dir.join("kube-apiserver");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'Error: unknown flag: --rstore-broken-on-purpose' >&2\nexit 1\n",
    )
    .expect("write the broken kube-apiserver");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let plane_dir = dir.path().join("plane");
    let opts = PlaneOptions::new(
        plane_dir.clone(),
        bin_dir,
        profile_dir().join("node"),
        profile_dir().join("operator"),
    );
    let err = match ControlPlane::up(opts).await {
        Ok(p) => {
            p.shutdown().await;
            panic!("the control plane came up with a kube-apiserver that exits at once");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("kube-apiserver") && err.contains("--rstore-broken-on-purpose"),
        "the error does not name kube-apiserver with its log: {err}"
    );
    // etcd, started before it, is gone: no process of this plane is left.
    let left = Command::new("pgrep")
        .args(["-f", &plane_dir.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "processes of the failed plane are still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
