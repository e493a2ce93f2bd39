//! The write-ahead log across restarts of the store: the vote and commit index survive any
//! number of them, and restarts without writes do not leave segments behind.

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, LogId, Vote};
use rstore_node::store::{self, Retention};

async fn open(dir: &std::path::Path) -> store::Storage {
    let retention = Retention {
        revisions: 100,
        bytes: 1 << 20,
    };
    // An earlier handle's flusher thread may still hold the lock for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store::open(dir, 1 << 16, retention, |_| {}).await {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("open store: {e}"),
        }
    }
}

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn vote_and_commit_index_survive_restarts_and_segments_do_not_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new(7, 42);
    let committed = LogId::new(CommittedLeaderId::new(7, 42), 0);
    {
        let s = open(dir.path()).await;
        let mut log = s.log;
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(committed)).await.unwrap();
    }
    for restart in 0..12 {
        let s = open(dir.path()).await;
        let mut log = s.log;
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(vote),
            "restart {restart}"
        );
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(committed),
            "restart {restart}"
        );
        // The segment of this run, and the one before it (removed at the next start).
        assert!(
            segments(dir.path()) <= 2,
            "restart {restart}: {} segments",
            segments(dir.path())
        );
    }
}
