//! The object store against a real Azure Blob Storage API server, Azurite (see
//! `rstore_tests::azurite`): the shared scenario, signed with the account key, then what the
//! user is told when the key is wrong or the container is missing.

#![cfg(feature = "store")]

mod support;

use std::time::Duration;

use rstore_backup::store::{BackupStore, StoreError, StoreOptions};
use rstore_tests::azurite::{ACCOUNT, ACCOUNT_KEY, Azurite};

fn options(endpoint: &str, key: &str) -> StoreOptions {
    StoreOptions {
        part_size: 5 * 1024 * 1024,
        from_env: false,
        max_retries: 1,
        retry_timeout: Duration::from_secs(3),
        ..StoreOptions::default()
    }
    .with("azure_storage_account_name", ACCOUNT)
    .with("azure_storage_account_key", key)
    .with("azure_storage_endpoint", endpoint)
}

#[tokio::test]
async fn azure_scenario_against_azurite() {
    let Some(az) = Azurite::start("azure_scenario_against_azurite") else {
        return;
    };
    assert_eq!(az.create_container("backups"), 201);
    let opts = options(&az.endpoint(), ACCOUNT_KEY);
    let store = BackupStore::open("az://backups/team-a/prod", &opts).unwrap();
    let took = support::scenario::run(&store, "Azurite").await;
    println!("Azurite: 20 MiB multipart upload took {took:?}");
    let container = BackupStore::open("az://backups", &opts).unwrap();
    support::scenario::nothing_outside(&container, "team-a/prod/").await;
}

#[tokio::test]
async fn azure_wrong_key_and_missing_container_are_named() {
    let Some(az) = Azurite::start("azure_wrong_key_and_missing_container_are_named") else {
        return;
    };
    assert_eq!(az.create_container("backups"), 201);

    // Another key, well-formed: every request's signature is wrong.
    let other_key = "b3RoZXIga2V5IG9mIHRoZSByaWdodCBsZW5ndGggZm9yIGhtYWM=";
    let url = "az://backups/p";
    let store = BackupStore::open(url, &options(&az.endpoint(), other_key)).unwrap();
    let err = store.check().await.unwrap_err();
    println!("wrong key: {err}");
    assert!(matches!(err, StoreError::Credentials { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(url) && text.contains("AZURE_STORAGE_ACCOUNT_KEY"),
        "{text}"
    );
    assert!(!err.is_transient());

    let url = "az://no-such-container/p";
    let store = BackupStore::open(url, &options(&az.endpoint(), ACCOUNT_KEY)).unwrap();
    let err = store.check().await.unwrap_err();
    println!("missing container: {err}");
    assert!(matches!(err, StoreError::NoBucket { .. }), "{err}");
    assert!(err.to_string().contains(url), "{err}");
    let err = store
        .upload("c/x.rsb", support::chunks(vec![1; 10], 5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoBucket { .. }), "upload: {err}");
}
