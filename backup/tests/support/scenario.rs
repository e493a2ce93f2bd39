//! The scenario every backend runs: a streamed multipart upload read back equal, write-once,
//! manifests, listing with states, verification of a corrupted backup, retention, deletion,
//! and an upload whose source fails midway leaving nothing behind.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream;
use rstore_backup::format::{FORMAT_VERSION, Header};
use rstore_backup::manifest::{BackupName, Manifest, ManifestError};
use rstore_backup::retention::{self, Policy, State};
use rstore_backup::store::{BackupStore, StoreError};

use super::{chunks, data, sha256_hex};

pub const CLUSTER: &str = "c-test";
const MIB: usize = 1024 * 1024;

fn header(revision: u64, created_unix_ms: u64) -> Header {
    Header {
        format: FORMAT_VERSION,
        cluster_id: CLUSTER.into(),
        revision,
        log_index: revision + 3,
        created_unix_ms,
        source_node: 1,
        keys: 100,
        data_bytes: 20 * MIB as u64,
        config: serde_json::json!({}),
    }
}

/// The prefix the scenario ran under was honoured: of everything in `root` (the bucket or
/// container), nothing lies outside `prefix`'s cluster directory.
pub async fn nothing_outside(root: &BackupStore, prefix: &str) {
    let all = root.list("").await.unwrap();
    assert!(!all.is_empty(), "the scenario left nothing to look at");
    let inside = format!("{prefix}{CLUSTER}/");
    assert!(all.iter().all(|o| o.name.starts_with(&inside)), "{all:?}");
}

/// Runs it; `what` names the backend in messages. Returns the 20 MiB upload's time.
pub async fn run(store: &BackupStore, what: &str) -> Duration {
    store
        .check()
        .await
        .unwrap_or_else(|e| panic!("{what}: check: {e}"));
    let t0 = 1_764_990_000_000u64;

    // A 20 MiB backup streamed in 64 KiB chunks: sent in parts (5 MiB each here).
    let big = BackupName::new(CLUSTER, t0 + 3_600_000, 300).object();
    let bytes = data(20 * MIB, 7);
    let started = Instant::now();
    let up = store
        .upload(&big, chunks(bytes.clone(), 64 * 1024))
        .await
        .unwrap_or_else(|e| panic!("{what}: upload: {e}"));
    let took = started.elapsed();
    println!("{what}: uploaded 20 MiB in {} parts in {took:?}", up.parts);
    assert_eq!((up.size, up.parts), (bytes.len() as u64, 4), "{what}");
    assert_eq!(up.url, store.object_url(&big));

    // Read back equal, as a stream.
    let download = store.get(&big).await.unwrap();
    assert_eq!(download.size, bytes.len() as u64);
    let back: Vec<u8> = download.stream.map(|c| c.unwrap().to_vec()).concat().await;
    assert!(back == bytes, "{what}: the object read back differs");

    // Written once: a second upload (large or small) and a direct put are refused.
    let again = store
        .upload(&big, chunks(data(6 * MIB, 8), MIB))
        .await
        .unwrap_err();
    assert!(
        matches!(again, StoreError::AlreadyExists { .. }),
        "{what}: {again}"
    );
    assert!(
        again.to_string().contains(&store.object_url(&big)),
        "{again}"
    );
    let small = BackupName::new(CLUSTER, t0 + 7_200_000, 400).object();
    let up_small = store
        .upload(&small, chunks(data(3000, 9), 1000))
        .await
        .unwrap();
    assert_eq!((up_small.size, up_small.parts), (3000, 1));
    let err = store
        .put_once(&small, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { .. }),
        "{what}: conditional put: {err}"
    );
    assert_eq!(
        store.get_bytes(&small).await.unwrap().len(),
        3000,
        "{what}: the refused put changed it"
    );

    // Manifests: written once, read back, verified.
    let m = Manifest::complete(
        &big,
        &header(300, t0 + 3_600_000),
        up.size,
        &sha256_hex(&bytes),
        t0,
        t0 + 900,
    );
    store.write_manifest(&m).await.unwrap();
    assert!(matches!(
        store.write_manifest(&m).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.read_manifest(&big).await.unwrap(), Some(m.clone()));
    assert_eq!(store.verify(&big).await.unwrap(), m);
    assert_eq!(store.read_manifest(&small).await.unwrap(), None);

    // A backup whose manifest does not match its object (same size, other bytes): it lists
    // as good (sizes match) but verify reads it and refuses it, naming it.
    let swapped = BackupName::new(CLUSTER, t0 + 1_800_000, 200).object();
    let up_swapped = store
        .upload(&swapped, chunks(data(2000, 10), 500))
        .await
        .unwrap();
    let lie = Manifest::complete(
        &swapped,
        &header(200, t0),
        up_swapped.size,
        &sha256_hex(&data(2000, 11)),
        t0,
        t0,
    );
    store.write_manifest(&lie).await.unwrap();
    let err = store.verify(&swapped).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Manifest(ManifestError::Checksum { .. })),
        "{what}: {err}"
    );
    assert!(err.to_string().contains(&swapped), "{err}");

    // A failed backup (no object) and a truncated one (the manifest says more bytes).
    let failed = BackupName::new(CLUSTER, t0, 100).object();
    store
        .write_manifest(&Manifest::failed(
            &failed,
            "the node went away",
            None,
            t0,
            t0 + 5,
        ))
        .await
        .unwrap();
    let truncated = BackupName::new(CLUSTER, t0 + 600_000, 150).object();
    store
        .upload(&truncated, chunks(data(100, 12), 100))
        .await
        .unwrap();
    let m_trunc = Manifest::complete(
        &truncated,
        &header(150, t0),
        200,
        &sha256_hex(&data(200, 12)),
        t0,
        t0,
    );
    store.write_manifest(&m_trunc).await.unwrap();
    let err = store.verify(&truncated).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Manifest(ManifestError::Size {
                expected: 200,
                found: 100,
                ..
            })
        ),
        "{err}"
    );

    // The listing, oldest first, and what each counts as.
    let listed = store.list_backups(Some(CLUSTER)).await.unwrap();
    let states: Vec<(&str, State)> = listed
        .iter()
        .map(|l| (l.object.as_str(), l.state()))
        .collect();
    assert_eq!(
        states,
        [
            (failed.as_str(), State::Failed),
            (truncated.as_str(), State::Failed),
            (swapped.as_str(), State::Good),
            (big.as_str(), State::Good),
            (small.as_str(), State::InProgress),
        ],
        "{what}"
    );
    let everything = store.list("").await.unwrap();
    assert_eq!(everything.len(), 8, "{what}: {everything:?}");
    assert!(
        everything
            .iter()
            .all(|o| o.name.starts_with("c-test/backup-")),
        "{everything:?}"
    );

    // Retention keeping one: the older good one and the failures before the newest good go;
    // the one in progress stays.
    let entries: Vec<_> = listed.iter().map(|l| l.entry()).collect();
    let policy = Policy {
        keep_last: Some(1),
        max_age: None,
        abandoned_after: None,
    };
    let doomed = retention::to_delete(&entries, &policy, t0 + 10_000_000);
    assert_eq!(doomed, [swapped.clone(), truncated.clone(), failed.clone()]);
    for name in &doomed {
        store.delete_backup(name).await.unwrap();
    }
    let left: Vec<String> = store
        .list_backups(None)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.object)
        .collect();
    assert_eq!(left, [big.clone(), small.clone()]);

    // Deleting: gone, named in the error; deleting again is not an error.
    store.delete_backup(&big).await.unwrap();
    store.delete_backup(&big).await.unwrap();
    let err = store.get(&big).await.err().expect("deleted");
    assert!(matches!(err, StoreError::NotFound { .. }), "{what}: {err}");
    assert!(err.to_string().contains(&store.object_url(&big)), "{err}");

    // A source that fails midway (after two parts): an error that says so, nothing kept.
    let broken = BackupName::new(CLUSTER, t0 + 9_000_000, 500).object();
    let good = chunks(data(12 * MIB, 13), MIB);
    let bad = stream::iter([Err(std::io::Error::other("the node closed the stream"))]);
    let err = store.upload(&broken, good.chain(bad)).await.unwrap_err();
    assert!(matches!(err, StoreError::Source { .. }), "{what}: {err}");
    assert!(
        err.to_string().contains("the node closed the stream"),
        "{err}"
    );
    assert_eq!(
        store.size(&broken).await.unwrap(),
        None,
        "{what}: a failed upload left an object"
    );
    took
}
