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
