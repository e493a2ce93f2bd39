//! The object store against a real S3 API server, moto's (see `support`): the shared
//! scenario with a multipart upload, then what the user is told when the credentials are
//! wrong, the bucket is missing or the endpoint is unreachable.

#![cfg(feature = "store")]

mod support;

use std::time::{Duration, Instant};

use rstore_backup::store::{BackupStore, StoreError, StoreOptions};
use support::Moto;

fn options(endpoint: &str) -> StoreOptions {
    StoreOptions {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        part_size: 5 * 1024 * 1024,
        from_env: false,
        max_retries: 1,
        retry_timeout: Duration::from_secs(3),
        ..StoreOptions::default()
    }
    .with("aws_access_key_id", "testing")
    .with("aws_secret_access_key", "testing")
}

#[tokio::test]
async fn s3_scenario_against_moto() {
    let Some(moto) = Moto::start("s3_scenario_against_moto", false) else {
        return;
    };
    assert_eq!(moto.create_bucket("backups"), 200);
    let store = BackupStore::open("s3://backups/team-a/prod", &options(&moto.endpoint())).unwrap();
    let took = support::scenario::run(&store, "moto S3").await;
    println!("moto S3: 20 MiB multipart upload took {took:?}");
    let bucket = BackupStore::open("s3://backups", &options(&moto.endpoint())).unwrap();
    support::scenario::nothing_outside(&bucket, "team-a/prod/").await;
}

#[tokio::test]
async fn s3_wrong_credentials_are_named() {
    let Some(moto) = Moto::start("s3_wrong_credentials_are_named", true) else {
        return;
    };
    let url = "s3://backups/p";
    let store = BackupStore::open(url, &options(&moto.endpoint())).unwrap();
    let err = store.check().await.unwrap_err();
    println!("wrong credentials: {err}");
    assert!(matches!(err, StoreError::Credentials { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(url)
            && text.contains("AWS_ACCESS_KEY_ID")
            && text.contains("InvalidAccessKeyId"),
        "{text}"
    );
    let err = store
        .put_once("c/x.rsb", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Credentials { .. }), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn s3_missing_bucket_is_named() {
    let Some(moto) = Moto::start("s3_missing_bucket_is_named", false) else {
        return;
    };
    let url = "s3://no-such-bucket/p";
    let store = BackupStore::open(url, &options(&moto.endpoint())).unwrap();
    let err = store.check().await.unwrap_err();
    println!("missing bucket: {err}");
    assert!(matches!(err, StoreError::NoBucket { .. }), "{err}");
    assert!(
        err.to_string().contains(url) && err.to_string().contains("NoSuchBucket"),
        "{err}"
    );
    let err = store
        .upload("c/x.rsb", support::chunks(vec![1; 10], 5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoBucket { .. }), "upload: {err}");
    let err = store.get("c/x.rsb").await.err().unwrap();
    assert!(matches!(err, StoreError::NoBucket { .. }), "get: {err}");
}

#[tokio::test]
async fn s3_unreachable_endpoint_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let store = BackupStore::open("s3://backups/p", &options(&endpoint)).unwrap();
    let started = Instant::now();
    let err = store.check().await.unwrap_err();
    println!("unreachable: {err}");
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("s3://backups/p") && err.to_string().contains("endpoint"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
