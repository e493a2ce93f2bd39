//! The object store over a local directory (`file:///dir`): the shared scenario, and URLs
//! that are refused with a reason.

#![cfg(feature = "store")]

mod support;

use rstore_backup::format::{self, Entry, FORMAT_VERSION, Header};
use rstore_backup::manifest::Status;
use rstore_backup::save::{SaveError, save_stream};
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

/// Two saves of one cluster at one revision in the same second (two members asked at once on
/// an idle cluster) want the same write-once name: the second is refused with a reason that
/// says so and is transient, and the first stays complete and untouched.
#[tokio::test]
async fn a_second_save_of_the_same_revision_in_the_same_second_is_refused_and_the_first_kept() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = BackupStore::open(&url, &options()).unwrap();
    let started = 1_764_990_000_123u64;
    let header = Header {
        format: FORMAT_VERSION,
        cluster_id: "c-same".into(),
        revision: 42,
        log_index: 50,
        created_unix_ms: started,
        source_node: 1,
        keys: 1,
        data_bytes: 4,
        config: serde_json::json!({}),
    };
    let entries = [Entry {
        key: "k".into(),
        create_revision: 42,
        mod_revision: 42,
        version: 1,
        value: b"abc".to_vec(),
    }];
    let bytes = format::encode(header, &entries).unwrap();
    let stream =
        || futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes.clone()))]);
    let first = save_stream(&store, "c-same", 42, started, stream())
        .await
        .expect("first save");
    let err = save_stream(&store, "c-same", 42, started + 400, stream())
        .await
        .expect_err("same name");
    assert!(
        matches!(err, SaveError::SameName { revision: 42, .. }),
        "{err}"
    );
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&first.object) && text.contains("same second"),
        "{text}"
    );
    let manifest = store.read_manifest(&first.object).await.unwrap().unwrap();
    assert_eq!(manifest.status, Status::Complete);
    assert_eq!(manifest.sha256, first.sha256);
}
