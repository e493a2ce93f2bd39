//! Segment names, the plan from a backup to a target, and replay.

use super::*;
use crate::segment::Change;

fn seg(first: u64, last: u64) -> SegmentName {
    SegmentName::new("c0ffee", first, last)
}

#[test]
fn names_round_trip_and_others_are_not_segments() {
    let s = seg(7, 1234);
    assert_eq!(
        s.object(),
        "c0ffee/wal/seg-00000000000000000007-00000000000000001234.rsw"
    );
    assert_eq!(SegmentName::parse(&s.object()), Some(s));
    for other in [
        "c0ffee/backup-20261205T095959Z-r00000000000000119876.rsb",
        "c0ffee/wal/seg-00000000000000000009-00000000000000000007.rsw",
        "c0ffee/wal/seg-7-1234.rsw",
        "wal/seg-00000000000000000007-00000000000000001234.rsw",
        "c0ffee/wal/seg-00000000000000000007-00000000000000001234.rsw.manifest.json",
    ] {
        assert_eq!(SegmentName::parse(other), None, "{other}");
    }
}

#[test]
fn a_plan_chains_from_the_revision_after_the_backup_to_the_target() {
    let segs = [seg(1, 10), seg(11, 20), seg(21, 35), seg(36, 40)];
    assert_eq!(plan(12, 21, &segs).unwrap(), vec![seg(11, 20), seg(21, 35)]);
    assert_eq!(plan(10, 11, &segs).unwrap(), vec![seg(11, 20)]);
    assert_eq!(plan(0, 40, &segs).unwrap().len(), 4);
    assert_eq!(
        plan(5, 41, &segs),
        Err(PlanError::BeyondArchive {
            target: 41,
            newest: 40
        })
    );
    assert!(matches!(plan(5, 6, &[]), Err(PlanError::NoSegments { .. })));
    let gap = plan(5, 38, &[seg(1, 10), seg(21, 35), seg(36, 40)]).unwrap_err();
    assert_eq!(
        gap,
        PlanError::Gap {
            missing: 11,
            after: seg(1, 10).object(),
            next: seg(21, 35).object()
        }
    );
    let text = gap.to_string();
    assert!(text.contains("revision 11") && text.contains("at or before revision 10"));
    // A gap after the target does not matter.
    assert_eq!(
        plan(5, 10, &[seg(1, 10), seg(21, 35)]).unwrap(),
        vec![seg(1, 10)]
    );
}

fn put(key: &str, value: &str, create: u64, version: u64) -> Change {
    Change {
        kind: ChangeKind::Put,
        key: key.into(),
        value: value.as_bytes().to_vec(),
        create_revision: create,
        version,
    }
}

fn del(key: &str) -> Change {
    Change {
        kind: ChangeKind::Delete,
        key: key.into(),
        value: vec![],
        create_revision: 0,
        version: 0,
    }
}

fn rev(revision: u64, changes: Vec<Change>) -> Revision {
    Revision {
        revision,
        received_unix_ms: 0,
        changes,
    }
}

#[test]
fn replay_follows_the_state_and_refuses_changes_that_do_not_continue_it() {
    let mut r = Replay::new(5);
    r.insert(Entry {
        key: "a".into(),
        create_revision: 2,
        mod_revision: 5,
        version: 3,
        value: b"old".to_vec(),
    });
    r.apply(&rev(6, vec![put("a", "new", 2, 4), put("b", "1", 6, 1)]))
        .unwrap();
    // A transaction that deletes and recreates a key, and writes another twice.
    r.apply(&rev(
        7,
        vec![
            del("a"),
            put("a", "again", 7, 1),
            put("b", "2", 6, 2),
            put("b", "3", 6, 3),
        ],
    ))
    .unwrap();
    assert_eq!(r.revision(), 7);
    let (entries, n, bytes) = r.into_entries();
    assert_eq!((n, bytes), (2, 2 + 5 + 1));
    assert_eq!(
        (
            entries[0].create_revision,
            entries[0].mod_revision,
            entries[0].version
        ),
        (7, 7, 1)
    );
    assert_eq!(
        (
            entries[1].create_revision,
            entries[1].mod_revision,
            entries[1].version,
            &entries[1].value[..]
        ),
        (6, 7, 3, &b"3"[..])
    );

    let mut r = Replay::new(5);
    let e = r.apply(&rev(6, vec![put("x", "1", 3, 2)])).unwrap_err();
    assert!(e.contains("does not continue"), "{e}");
    let e = Replay::new(5).apply(&rev(6, vec![del("x")])).unwrap_err();
    assert!(e.contains("does not hold it"), "{e}");
    let e = Replay::new(5)
        .apply(&rev(5, vec![put("x", "1", 5, 1)]))
        .unwrap_err();
    assert!(e.contains("comes after"), "{e}");
}

mod property {
    //! Any history, cut into segments anywhere, encoded and read back, replayed from a
    //! backup at any revision to any later one, gives exactly the state at that revision.

    use super::*;
    use crate::segment::{SegmentReader, SegmentWriter};
    use proptest::prelude::*;

    /// The state a simple model keeps: key -> (value, create, mod, version).
    type State = BTreeMap<String, (Vec<u8>, u64, u64, u64)>;

    /// Revisions 1..=n from `ops` (key index, put or delete, value byte, changes in the
    /// revision), with the state after each.
    fn history(ops: &[Vec<(u8, bool, u8)>]) -> (Vec<Revision>, Vec<State>) {
        let mut state = State::new();
        let mut states = vec![state.clone()];
        let mut revs = Vec::new();
        for (i, changes) in ops.iter().enumerate() {
            let rev = i as u64 + 1;
            let mut out = Vec::new();
            for &(k, put_it, v) in changes {
                let key = format!("k{}", k % 6);
                if put_it || !state.contains_key(&key) {
                    let (create, version) = match state.get(&key) {
                        Some(c) => (c.1, c.3 + 1),
                        None => (rev, 1),
                    };
                    state.insert(
                        key.clone(),
                        (vec![v; (v % 5) as usize], create, rev, version),
                    );
                    out.push(Change {
                        kind: ChangeKind::Put,
                        key,
                        value: vec![v; (v % 5) as usize],
                        create_revision: create,
                        version,
                    });
                } else {
                    state.remove(&key);
                    out.push(Change {
                        kind: ChangeKind::Delete,
                        key,
                        value: vec![],
                        create_revision: 0,
                        version: 0,
                    });
                }
            }
            revs.push(Revision {
                revision: rev,
                received_unix_ms: rev,
                changes: out,
            });
            states.push(state.clone());
        }
        (revs, states)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn replay_to_any_target_is_the_state_at_it(
            ops in prop::collection::vec(prop::collection::vec((0u8..6, any::<bool>(), any::<u8>()), 1..4), 1..60),
            cuts in prop::collection::vec(1u64..60, 0..8),
            base_pick in any::<u64>(),
            target_pick in any::<u64>(),
        ) {
            let (revs, states) = history(&ops);
            let n = revs.len() as u64;
            let base = base_pick % (n + 1);
            let target = base + target_pick % (n - base + 1);
            // Segments from the revision after the backup, cut at `cuts`.
            let mut bounds: Vec<u64> = cuts.into_iter().filter(|c| *c > base && *c < n).collect();
            bounds.push(n);
            bounds.sort();
            bounds.dedup();
            let mut stored = BTreeMap::new();
            let mut first = base + 1;
            for last in bounds {
                if first > n || last < first {
                    continue;
                }
                let mut w = SegmentWriter::new("c", first);
                for r in &revs[(first - 1) as usize..last as usize] {
                    w.push(r).unwrap();
                }
                let (_, bytes) = w.finish(last, 0).unwrap();
                stored.insert(SegmentName::new("c", first, last), bytes);
                first = last + 1;
            }
            let names: Vec<SegmentName> = stored.keys().cloned().collect();
            let mut replay = Replay::new(base);
            for (k, (v, c, m, ver)) in &states[base as usize] {
                replay.insert(Entry {
                    key: k.clone(),
                    create_revision: *c,
                    mod_revision: *m,
                    version: *ver,
                    value: v.clone(),
                });
            }
            if target > base {
                for name in plan(base, target, &names).unwrap() {
                    let (_, rs) = SegmentReader::open(&stored[&name][..]).unwrap().read_all().unwrap();
                    let from = replay.revision();
                    for r in rs.iter().filter(|r| r.revision > from && r.revision <= target) {
                        replay.apply(r).unwrap();
                    }
                }
            }
            replay.finish_at(target);
            prop_assert_eq!(replay.revision(), target);
            let (entries, _, _) = replay.into_entries();
            let got: State = entries
                .into_iter()
                .map(|e| (e.key, (e.value, e.create_revision, e.mod_revision, e.version)))
                .collect();
            prop_assert_eq!(&got, &states[target as usize]);
        }
    }
}
