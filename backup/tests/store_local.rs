//! The object store over a local directory (`file:///dir`): the shared scenario, and URLs
//! that are refused with a reason.

#![cfg(feature = "store")]

mod support;

use rstore_backup::store::{BackupStore, StoreError, StoreOptions};

fn options() -> StoreOptions {
    StoreOptions {
        part_size: 5 * 1024 * 1024,
        from_env: false,
        ..StoreOptions::default()
    }
}

#[tokio::test]
async fn local_directory_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = BackupStore::open(&url, &options()).unwrap();
    support::scenario::run(&store, "local directory").await;
    // Nothing but the objects: no staging files left behind by the uploads.
    let left: Vec<_> = walk(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn bad_urls_are_refused_with_a_reason() {
    for (url, want) in [
        ("ftp://host/x", "unknown scheme ftp:"),
        ("s3:///prefix", "bucket or container is missing"),
        ("file://host/dir", "three slashes"),
        ("not a url", "relative URL"),
        ("s3://bucket/p?x=1", "query"),
    ] {
        let err = BackupStore::open(url, &options()).unwrap_err();
        assert!(matches!(err, StoreError::BadUrl { .. }), "{url}: {err}");
        let text = err.to_string();
        assert!(text.contains(url) && text.contains(want), "{url}: {text}");
        assert!(text.contains("s3://BUCKET/PREFIX"), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("file://{}/nope", dir.path().display());
    let err = BackupStore::open(&missing, &options()).unwrap_err();
    assert!(matches!(err, StoreError::NoDirectory { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing) && err.to_string().contains("mkdir -p"),
        "{err}"
    );
}

#[test]
fn azure_without_an_account_says_what_to_set() {
    let err = BackupStore::open("az://container/prefix", &options()).unwrap_err();
    assert!(matches!(err, StoreError::Config { .. }), "{err}");
    assert!(err.to_string().contains("az://container/prefix"), "{err}");
}

#[test]
fn every_backend_opens_from_its_url() {
    let opts = options()
        .with("aws_access_key_id", "k")
        .with("aws_secret_access_key", "s")
        .with("azure_storage_account_name", "acct")
        .with("azure_storage_account_key", "a2V5")
        .with("google_service_account_key", "{}");
    for url in [
        "s3://bucket/a/b",
        "s3://bucket",
        "az://container/p",
        "azure://container/p",
    ] {
        let store = BackupStore::open(url, &opts).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(store.object_url("c/x.rsb"), format!("{url}/c/x.rsb"));
    }
}

#[tokio::test]
async fn object_names_must_be_plain() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        BackupStore::open(&format!("file://{}/", dir.path().display()), &options()).unwrap();
    for name in ["", "/abs", "a//b", "a/../b", "a/"] {
        let err = store.put_once(name, bytes::Bytes::new()).await.unwrap_err();
        assert!(matches!(err, StoreError::BadUrl { .. }), "{name:?}: {err}");
    }
}
