//! The watch history kept by the state machine: read back per revision, and bounded by a
//! count of revisions and by bytes. Checked against a model on the real store, across random
//! group-commit sizes and retentions; and what a snapshot and a reopen keep of it.

use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use rstore_node::store::{self, EventKind, HistoryError, Retention};
use rstore_node::types::{Batch, Command, Condition, Entry, LogId, Request};

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        cond: Condition::None,
    }
}

fn delete(key: &str) -> Command {
    Command::Delete {
        key: key.to_string(),
        cond: Condition::None,
    }
}

/// What a revision changed: (key, Some(value)) for a put, (key, None) for a delete.
type Change = (String, Option<String>);

fn keep(revisions: u64) -> Retention {
    Retention {
        revisions,
        bytes: u64::MAX,
    }
}

/// Apply `groups` (one apply call each, several entries per call, several commands per
/// entry), then check every `history(from)` against the model; then snapshot, reopen, and
/// check the state and that history starts after the snapshot.
async fn run(groups: &[Vec<usize>], retention: Retention, big: bool, dir: &std::path::Path) {
    let s = store::open(dir, 8 << 20, retention, |_| {})
        .await
        .expect("open store");
    let mut sm = s.sm;
    let reader = sm.reader();
    let mut model: Vec<Change> = vec![(String::new(), None)]; // revisions start at 1
    let mut index = 0u64;
    let mut n = 0usize;
    for group in groups {
        let mut entries = Vec::new();
        for &cmds in group {
            index += 1;
            let mut batch = Vec::new();
            for _ in 0..cmds {
                n += 1;
                let key = format!("k{}", n % 7);
                // Every third command deletes; deleting a missing key makes no revision.
                if n.is_multiple_of(3) {
                    let exists = model
                        .iter()
                        .rev()
                        .find(|(k, _)| *k == key)
                        .is_some_and(|(_, v)| v.is_some());
                    if exists {
                        model.push((key.clone(), None));
                    }
                    batch.push(delete(&key));
                } else {
                    // Now and then a large value, so that the byte bound matters.
                    let value = if big && n % 5 == 1 {
                        format!("v{n}{}", "x".repeat(400 << 10))
                    } else {
                        format!("v{n}")
                    };
                    model.push((key.clone(), Some(value.clone())));
                    batch.push(put(&key, &value));
                }
            }
            entries.push(Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Request::Batch(Batch {
                    id: index,
                    cmds: batch,
                })),
            });
        }
        sm.apply(entries).await.expect("apply");
    }
    let last = model.len() as u64 - 1;
    assert_eq!(reader.revision(), last);
    check(&reader, &model, retention, big);
    let data: Vec<(String, Option<store::Record>)> = (0..7)
        .map(|i| format!("k{i}"))
        .map(|k| (k.clone(), reader.get(&k)))
        .collect();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot");
    drop(sm);
    drop(reader);
    drop(s.log);
    drop(s.flusher);

    // After a reopen (once the flusher thread has stopped), the state comes
    // from the snapshot, and history starts after it.
    let s = reopen(dir, retention).await;
    let reader = s.sm.reader();
    assert_eq!(reader.revision(), last);
    assert_eq!(reader.oldest_revision(), last + 1);
    for (k, v) in data {
        assert_eq!(reader.get(&k), v, "{k} after the reopen");
    }
    match reader.history(last, usize::MAX) {
        Err(HistoryError::Compacted { oldest, .. }) if oldest == last + 1 => {}
        other => panic!("history from {last} after the reopen: {other:?}"),
    }
    assert!(reader.history(last + 1, usize::MAX).unwrap().is_empty());
}

/// Check `history(from)` for every `from` (for a few when values are large).
fn check(reader: &store::KvReader, model: &[Change], retention: Retention, sample: bool) {
    let last = model.len() as u64 - 1;
    let oldest = reader.oldest_revision();
    // Exactly the newest revisions within both bounds are kept.
    let bytes = |r: u64| {
        let (k, v) = &model[r as usize];
        (k.len() + v.as_ref().map_or(0, |v| v.len())) as u64
    };
    let mut want_oldest = last + 1;
    let mut kept_bytes = 0;
    while want_oldest > 1
        && last + 1 - want_oldest < retention.revisions
        && kept_bytes + bytes(want_oldest - 1) <= retention.bytes
    {
        want_oldest -= 1;
        kept_bytes += bytes(want_oldest);
    }
    assert_eq!(
        oldest, want_oldest,
        "oldest revision kept, for {retention:?} at revision {last}"
    );
    let froms: Vec<u64> = if sample {
        vec![1, 2, last / 3, last / 2, last - 1, last, last + 1]
    } else {
        (1..=last + 1).collect()
    };
    for from in froms {
        match reader.history(from, usize::MAX) {
            Ok(revs) => {
                assert!(
                    from >= oldest,
                    "history from {from} < oldest {oldest} served"
                );
                let got: Vec<(u64, Change)> = revs
                    .iter()
                    .map(|r| {
                        assert_eq!(r.events.len(), 1, "one event per plain write");
                        let e = &r.events[0];
                        let v = match e.kind {
                            EventKind::Put => Some(String::from_utf8(e.value.to_vec()).unwrap()),
                            EventKind::Delete => None,
                        };
                        (r.revision, (e.key.clone(), v))
                    })
                    .collect();
                let want: Vec<(u64, Change)> = (from..=last)
                    .map(|r| (r, model[r as usize].clone()))
                    .collect();
                assert_eq!(got, want, "history from {from}");
            }
            Err(HistoryError::Compacted {
                requested,
                oldest: o,
            }) => {
                assert_eq!(requested, from);
                assert_eq!(o, oldest);
                assert!(
                    from < oldest,
                    "history from {from} >= oldest {oldest} refused"
                );
            }
        }
    }
    // A page limit cuts whole revisions.
    if let Ok(revs) = reader.history(oldest, 3) {
        assert_eq!(revs.len(), 3.min((last + 1 - oldest) as usize));
    }
}

/// Open the store in `dir` (new or not), waiting for an earlier handle's flusher thread to
/// let go.
async fn reopen(dir: &std::path::Path, retention: Retention) -> store::Storage {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store::open(dir, 8 << 20, retention, |_| {}).await {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("reopen store: {e}"),
        }
    }
}

/// Applies `n` entries of one put each (keys `k1`..`kn`, revisions 1..=n) and builds a
/// snapshot of them.
async fn put_keys_and_snapshot(
    sm: &mut store::StateMachineStore,
    n: u64,
) -> rstore_node::types::Snapshot {
    let entries: Vec<Entry> = (1..=n)
        .map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Request::Batch(Batch {
                id: i,
                cmds: vec![put(&format!("k{i}"), "v")],
            })),
        })
        .collect();
    sm.apply(entries).await.expect("apply");
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot")
}

/// Regression: installing a snapshot drops all history before it, and that must hold after
/// a restart too. The compaction mark was only set in memory, so a restarted member served
/// a watch from inside the gap as an empty history instead of 410.
#[test]
fn history_before_an_installed_snapshot_stays_compacted_after_a_restart() {
    block_on(async {
        // A member that wrote 20 revisions builds a snapshot.
        let source_dir = tempfile::tempdir().expect("temp dir");
        let source = reopen(source_dir.path(), keep(1000)).await;
        let mut sm = source.sm;
        let built = put_keys_and_snapshot(&mut sm, 20).await;
        // What a leader sends is the file the build wrote, as openraft reads it.
        let snapshot = sm
            .get_current_snapshot()
            .await
            .expect("read snapshot")
            .expect("a snapshot was built");
        assert_eq!(snapshot.meta, built.meta);

        // A fresh member installs it: it has no history before revision 21.
        let dir = tempfile::tempdir().expect("temp dir");
        let target = reopen(dir.path(), keep(1000)).await;
        let mut target_sm = target.sm;
        target_sm
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install snapshot");
        let gone = |reader: &store::KvReader, when: &str| {
            assert_eq!(reader.revision(), 20, "{when}");
            assert_eq!(reader.oldest_revision(), 21, "{when}");
            match reader.history(5, usize::MAX) {
                Err(HistoryError::Compacted { oldest: 21, .. }) => {}
                other => panic!("{when}: history from 5 should be compacted, got {other:?}"),
            }
            assert!(reader.get("k5").is_some(), "{when}: data kept");
        };
        gone(&target_sm.reader(), "after the install");
        drop(target_sm);
        drop(target.log);
        drop(target.flusher);

        let again = reopen(dir.path(), keep(1000)).await;
        gone(&again.sm.reader(), "after a restart");
    });
}

/// A restarted member answers openraft's start-up question (the current snapshot, of which
/// openraft 0.9.25 keeps only the meta) without reading the payload, and every later one (a
/// snapshot to send to a follower) with the whole file, which installs on another member.
#[test]
fn a_restarted_member_reads_its_snapshot_payload_only_when_it_is_sent() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = reopen(dir.path(), keep(1000)).await;
        let mut sm = s.sm;
        let built = put_keys_and_snapshot(&mut sm, 30).await;
        drop(sm);
        drop(s.log);
        drop(s.flusher);

        let again = reopen(dir.path(), keep(1000)).await;
        let mut sm = again.sm.for_raft_start();
        assert_eq!(
            sm.reader().revision(),
            30,
            "the state is loaded from the file"
        );
        let first = sm.get_current_snapshot().await.expect("read").expect("one");
        assert_eq!(first.meta, built.meta);
        assert!(
            first.snapshot.get_ref().is_empty(),
            "start-up reads no payload"
        );
        let sent = sm.get_current_snapshot().await.expect("read").expect("one");
        assert_eq!(sent.meta, built.meta);
        assert!(
            !sent.snapshot.get_ref().is_empty(),
            "a snapshot to send has its payload"
        );

        let other = tempfile::tempdir().expect("temp dir");
        let target = reopen(other.path(), keep(1000)).await;
        let mut target_sm = target.sm;
        target_sm
            .install_snapshot(&sent.meta, sent.snapshot)
            .await
            .expect("install");
        assert_eq!(target_sm.reader().revision(), 30);
        assert!(target_sm.reader().get("k17").is_some());
    });
}

fn block_on(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn history_is_trimmed_to_the_newest_revisions_and_starts_after_a_snapshot_on_reopen() {
    let groups: Vec<Vec<usize>> = (0..400).map(|i| vec![1 + i % 5, 1 + i % 3]).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    block_on(run(&groups, keep(50), false, dir.path()));
}

#[test]
fn history_is_bounded_in_bytes() {
    // 25 commands per apply call, a fifth of them 400 KiB: a 1 MiB bound keeps only the
    // last two or three large ones and what lies between.
    let groups: Vec<Vec<usize>> = (0..6).map(|_| vec![10, 15]).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let retention = Retention {
        revisions: 1000,
        bytes: 1 << 20,
    };
    block_on(run(&groups, retention, true, dir.path()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn history_matches_the_model(
        groups in prop::collection::vec(prop::collection::vec(1usize..40, 1..4), 1..60),
        revisions in 1u64..200,
        bytes in prop::option::of(1u64..2000),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let retention = Retention { revisions, bytes: bytes.unwrap_or(u64::MAX) };
        block_on(run(&groups, retention, false, dir.path()));
    }
}
