//! The retention rules on examples, and their invariants on any list of backups.

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const HOUR: u64 = 3_600_000;

fn e(name: &str, hours: u64, state: State) -> Entry {
    Entry {
        name: name.into(),
        time_unix_ms: hours * HOUR,
        state,
    }
}

fn policy(keep: Option<usize>, max_age_h: Option<u64>, abandoned_h: Option<u64>) -> Policy {
    let h = |n: u64| Duration::from_millis(n * HOUR);
    Policy {
        keep_last: keep,
        max_age: max_age_h.map(h),
        abandoned_after: abandoned_h.map(h),
    }
}

#[test]
fn keep_count_counts_only_good_backups() {
    let list = [
        e("g1", 1, State::Good),
        e("f2", 2, State::Failed),
        e("g3", 3, State::Good),
        e("f4", 4, State::Failed),
        e("g5", 5, State::Good),
        e("f6", 6, State::Failed),
    ];
    // Two good kept (g5, g3); g1 goes; failures older than g5 go; f6 (after it) stays.
    assert_eq!(
        to_delete(&list, &policy(Some(2), None, None), 10 * HOUR),
        ["f4", "f2", "g1"]
    );
    assert_eq!(
        to_delete(&list, &policy(None, None, None), 10 * HOUR),
        ["f4", "f2"]
    );
}

#[test]
fn the_newest_good_backup_survives_any_age_and_count() {
    let list = [
        e("g1", 1, State::Good),
        e("g2", 2, State::Good),
        e("f3", 3, State::Failed),
    ];
    let now = 1000 * HOUR;
    assert_eq!(
        to_delete(&list, &policy(Some(0), Some(1), None), now),
        ["g1"]
    );
    assert_eq!(to_delete(&list, &policy(None, Some(1), None), now), ["g1"]);
    assert_eq!(
        to_delete(&list, &policy(Some(5), Some(997), None), now),
        ["g1"]
    );
    assert!(to_delete(&list, &policy(Some(5), Some(999), None), now).is_empty());
}

#[test]
fn without_a_good_backup_nothing_is_deleted() {
    let list = [
        e("f1", 1, State::Failed),
        e("p2", 2, State::InProgress),
        e("f3", 3, State::Failed),
    ];
    assert!(to_delete(&list, &policy(Some(1), Some(1), Some(1)), 1000 * HOUR).is_empty());
}

#[test]
fn in_progress_backups_wait_until_abandoned() {
    let list = [
        e("p1", 1, State::InProgress),
        e("g2", 2, State::Good),
        e("p3", 3, State::InProgress),
    ];
    assert!(to_delete(&list, &policy(Some(1), Some(1), None), 1000 * HOUR).is_empty());
    assert!(to_delete(&list, &policy(Some(1), None, Some(24)), 20 * HOUR).is_empty());
    // Abandoned and older than the newest good backup: p1; p3 is newer than it and stays.
    assert_eq!(
        to_delete(&list, &policy(Some(1), None, Some(24)), 30 * HOUR),
        ["p1"]
    );
}

#[test]
fn clock_skew_counts_as_age_zero() {
    let list = [e("g1", 100, State::Good), e("g2", 200, State::Good)];
    assert!(to_delete(&list, &policy(None, Some(1), None), 50 * HOUR).is_empty());
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let state = prop_oneof![
        Just(State::Good),
        Just(State::Failed),
        Just(State::InProgress)
    ];
    prop::collection::vec((0u64..200, state), 0..30).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (h, state))| Entry {
                name: format!("b{i:03}"),
                time_unix_ms: h * HOUR,
                state,
            })
            .collect()
    })
}

fn key(e: &Entry) -> (u64, &str) {
    (e.time_unix_ms, e.name.as_str())
}

proptest! {
    #[test]
    fn retention_invariants(
        list in entries(),
        keep in prop::option::of(0usize..6),
        max_age in prop::option::of(0u64..150),
        abandoned in prop::option::of(0u64..150),
        now in 0u64..300,
    ) {
        let p = policy(keep, max_age, abandoned);
        let now = now * HOUR;
        let deleted = to_delete(&list, &p, now);
        let set: HashSet<&str> = deleted.iter().map(String::as_str).collect();
        prop_assert_eq!(set.len(), deleted.len(), "a name returned twice");
        let by_name = |n: &str| list.iter().find(|e| e.name == n).unwrap();
        prop_assert!(deleted.iter().all(|n| list.iter().any(|e| &e.name == n)));

        let newest_good = list.iter().filter(|e| e.state == State::Good).max_by_key(|e| key(e));
        let Some(newest_good) = newest_good else {
            prop_assert!(deleted.is_empty());
            return Ok(());
        };
        // The newest good backup is never deleted; nothing newer than it is deleted.
        prop_assert!(!set.contains(newest_good.name.as_str()));
        for n in &deleted {
            prop_assert!(key(by_name(n)) < key(newest_good), "{} is newer than the newest good", n);
        }
        // In progress: only when abandoned.
        for n in &deleted {
            let e = by_name(n);
            if e.state == State::InProgress {
                let limit = p.abandoned_after.expect("deleted an in-progress backup with no abandon age");
                prop_assert!(u128::from(now.saturating_sub(e.time_unix_ms)) > limit.as_millis());
            }
        }
        // Good backups: kept ones at least min(keep, good) unless too old; deleted ones are
        // past the count or too old; and with only a count, exactly the count is kept.
        let mut good: Vec<&Entry> = list.iter().filter(|e| e.state == State::Good).collect();
        good.sort_by(|a, b| key(b).cmp(&key(a)));
        for (i, e) in good.iter().enumerate() {
            let past_count = p.keep_last.is_some_and(|k| i >= k.max(1));
            let too_old = p.max_age.is_some_and(|a| u128::from(now.saturating_sub(e.time_unix_ms)) > a.as_millis());
            prop_assert_eq!(set.contains(e.name.as_str()), i > 0 && (past_count || too_old), "good backup {} at {}", &e.name, i);
        }
        // Failed backups older than the newest good one are all deleted.
        for e in list.iter().filter(|e| e.state == State::Failed) {
            prop_assert_eq!(set.contains(e.name.as_str()), key(e) < key(newest_good));
        }
    }
}

fn seg(name: &str, first: u64, last: u64) -> SegmentEntry {
    SegmentEntry {
        name: name.into(),
        first,
        last,
    }
}

#[test]
fn segments_go_once_the_oldest_kept_backup_covers_them() {
    let segments = [seg("a", 1, 100), seg("b", 101, 200), seg("c", 201, 300)];
    // Backups kept at 150 and 250: "a" (all at or before 150) goes; "b" spans 150 and
    // carries the changes after it, so it stays.
    assert_eq!(segments_to_delete(&segments, &[250, 150]), ["a"]);
    assert_eq!(segments_to_delete(&segments, &[200]), ["a", "b"]);
    // No good backup kept: nothing is deleted, whatever the segments.
    assert!(segments_to_delete(&segments, &[]).is_empty());
}

proptest! {
    /// Whatever is kept, every revision after the oldest kept backup stays in a kept
    /// segment, so a restore to any target between it and the newest segment still works.
    #[test]
    fn every_change_after_the_oldest_kept_backup_stays(
        cuts in proptest::collection::btree_set(1u64..1000, 1..20),
        kept in proptest::collection::vec(0u64..1100, 0..5),
    ) {
        let mut segments = Vec::new();
        let mut first = 1;
        for (i, last) in cuts.iter().enumerate() {
            segments.push(seg(&format!("s{i}"), first, *last));
            first = last + 1;
        }
        let doomed: HashSet<String> = segments_to_delete(&segments, &kept).into_iter().collect();
        let Some(oldest) = kept.iter().min().copied() else {
            prop_assert!(doomed.is_empty());
            return Ok(());
        };
        for s in &segments {
            if s.last > oldest {
                prop_assert!(!doomed.contains(&s.name), "{s:?} is needed after {oldest}");
            } else {
                prop_assert!(doomed.contains(&s.name), "{s:?} is of no use after {oldest}");
            }
        }
    }
}
