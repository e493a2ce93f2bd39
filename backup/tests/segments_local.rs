//! Archived segments in a local directory store: written once with their manifest, listed,
//! read back checked; a segment left without its manifest is adopted only when it checks
//! out; the archive's position is replaced, not added to.

#![cfg(feature = "store")]

use rstore_backup::archive::{Position, SegmentName};
use rstore_backup::retention::State;
use rstore_backup::segment::{Change, ChangeKind, Revision, SegmentWriter};
use rstore_backup::store::{BackupStore, StoreError, StoreOptions};

fn store(dir: &std::path::Path) -> BackupStore {
    let opts = StoreOptions {
        from_env: false,
        ..StoreOptions::default()
    };
    BackupStore::open(&format!("file://{}", dir.display()), &opts).unwrap()
}

fn segment(
    cluster: &str,
    first: u64,
    last: u64,
) -> (rstore_backup::segment::SegmentHeader, Vec<u8>) {
    let mut w = SegmentWriter::new(cluster, first);
    for r in first..=last {
        w.push(&Revision {
            revision: r,
            received_unix_ms: 1_000 + r,
            changes: vec![Change {
                kind: ChangeKind::Put,
                key: format!("k{r}"),
                value: vec![1; 10],
                create_revision: r,
                version: 1,
            }],
        })
        .unwrap();
    }
    w.finish(last, 5_000).unwrap()
}

#[tokio::test]
async fn segments_are_written_once_listed_and_read_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let (h, bytes) = segment("c1", 1, 10);
    let up = s.write_segment(&h, bytes.clone(), 1, 2).await.unwrap();
    assert_eq!(up.object, SegmentName::new("c1", 1, 10).object());
    let again = s.write_segment(&h, bytes, 1, 2).await.unwrap_err();
    assert!(matches!(again, StoreError::AlreadyExists { .. }), "{again}");
    let (h2, revs) = s.read_segment(&up.object).await.unwrap();
    assert_eq!((h2, revs.len()), (h, 10));
    let listed = s.list_segments("c1").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), State::Good);
    assert!(s.list_segments("c2").await.unwrap().is_empty());
    // Backups of the cluster are not segments, nor segments backups.
    assert!(s.list_backups(Some("c1")).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_segment_without_its_manifest_is_adopted_only_when_it_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let (_, bytes) = segment("c1", 11, 20);
    let object = SegmentName::new("c1", 11, 20).object();
    s.put_once(&object, bytes.clone().into()).await.unwrap();
    assert_eq!(
        s.list_segments("c1").await.unwrap()[0].state(),
        State::InProgress
    );
    let e = s.read_segment(&object).await.unwrap_err().to_string();
    assert!(e.contains("no manifest") && e.contains(&object), "{e}");
    let h = s.adopt_segment(&object, 9_000).await.unwrap();
    assert_eq!(h.last_revision, 20);
    assert_eq!(s.list_segments("c1").await.unwrap()[0].state(), State::Good);
    s.read_segment(&object).await.unwrap();

    // A cut-off one, or one holding other revisions than its name, is not adopted.
    let cut = SegmentName::new("c1", 21, 30).object();
    let (_, bytes) = segment("c1", 21, 30);
    s.put_once(&cut, bytes[..bytes.len() - 5].to_vec().into())
        .await
        .unwrap();
    let e = s.adopt_segment(&cut, 9_000).await.unwrap_err().to_string();
    assert!(
        e.contains(&cut) && e.contains("truncated") && e.contains("delete it"),
        "{e}"
    );
    let misnamed = SegmentName::new("c1", 31, 40).object();
    let (_, bytes) = segment("c1", 41, 50);
    s.put_once(&misnamed, bytes.into()).await.unwrap();
    let e = s
        .adopt_segment(&misnamed, 9_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not 31 to 40"), "{e}");
    let foreign = SegmentName::new("c1", 51, 60).object();
    let (_, bytes) = segment("c2", 51, 60);
    s.put_once(&foreign, bytes.into()).await.unwrap();
    let e = s
        .adopt_segment(&foreign, 9_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster c2, not of cluster c1"), "{e}");
}

#[tokio::test]
async fn the_position_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    assert_eq!(s.read_position("c1").await.unwrap(), None);
    for revision in [5, 9] {
        let p = Position {
            cluster_id: "c1".into(),
            revision,
            confirmed_unix_ms: revision * 1000,
        };
        s.write_position(&p).await.unwrap();
        assert_eq!(s.read_position("c1").await.unwrap(), Some(p));
    }
}
