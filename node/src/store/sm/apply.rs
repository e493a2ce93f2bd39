//! What a command means: the key-value semantics every member applies, identically and in
//! log order (puts and deletes with their preconditions, transactions with their compares,
//! the revision each change gets, and the events watches see). Pure functions over the
//! records, with no IO and no locking, so that they are tested on their own and the
//! state machine around them ([`super::StateMachineStore`]) only feeds them entries.

use std::collections::BTreeMap;

use super::history::{Event, EventKind, RevisionEvents};
use super::record::{Data, Record};
use crate::types::{
    Command, Compare, CompareOp, CompareTarget, Condition, KeyValue, MAX_TXN_RESPONSE_BYTES,
    Outcome, Txn, TxnOp, TxnOpResult,
};

fn current(data: &Data, key: &str) -> Option<Record> {
    data.get(key).cloned()
}

fn check(cond: Condition, cur: &Option<Record>) -> Result<(), Outcome> {
    let ok = match cond {
        Condition::None => true,
        Condition::Version(v) => cur.as_ref().is_some_and(|r| r.version == v),
        Condition::Absent => cur.is_none(),
    };
    if ok {
        Ok(())
    } else {
        Err(Outcome::PreconditionFailed {
            current_version: cur.as_ref().map(|r| r.version),
        })
    }
}

fn compare_holds(c: &Compare, cur: &Option<Record>) -> bool {
    use std::cmp::Ordering as O;
    let ord = match (&c.target, cur) {
        (CompareTarget::Exists(want), _) => {
            let equal = cur.is_some() == *want;
            return match c.op {
                CompareOp::Equal => equal,
                CompareOp::NotEqual => !equal,
                CompareOp::Less | CompareOp::Greater => false,
            };
        }
        (CompareTarget::Version(w), r) => r.as_ref().map_or(0, |r| r.version).cmp(w),
        (CompareTarget::CreateRevision(w), r) => r.as_ref().map_or(0, |r| r.create_revision).cmp(w),
        (CompareTarget::ModRevision(w), r) => r.as_ref().map_or(0, |r| r.mod_revision).cmp(w),
        (CompareTarget::Value(_), None) => return c.op == CompareOp::NotEqual,
        (CompareTarget::Value(w), Some(r)) => r.value[..].cmp(w.as_slice()),
    };
    match c.op {
        CompareOp::Equal => ord == O::Equal,
        CompareOp::NotEqual => ord != O::Equal,
        CompareOp::Less => ord == O::Less,
        CompareOp::Greater => ord == O::Greater,
    }
}

/// Apply one put at `revision`, recording its event; returns the new version.
fn put(
    data: &mut Data,
    events: &mut Vec<Event>,
    cur: Option<Record>,
    key: String,
    value: Vec<u8>,
    revision: u64,
) -> u64 {
    let rec = match cur {
        Some(c) => Record {
            create_revision: c.create_revision,
            mod_revision: revision,
            version: c.version + 1,
            value: value.into(),
        },
        None => Record {
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            value: value.into(),
        },
    };
    let version = rec.version;
    events.push(Event {
        kind: EventKind::Put,
        key: key.clone(),
        value: rec.value.clone(),
        version,
        create_revision: rec.create_revision,
    });
    data.insert(key, rec);
    version
}

fn delete(data: &mut Data, events: &mut Vec<Event>, cur: &Record, key: String) {
    events.push(Event {
        kind: EventKind::Delete,
        key: key.clone(),
        value: bytes::Bytes::new(),
        version: 0,
        create_revision: cur.create_revision,
    });
    data.remove(&key);
}

fn apply_txn(
    data: &mut Data,
    changes: &mut Vec<RevisionEvents>,
    revision: &mut u64,
    txn: Txn,
) -> Outcome {
    let mut succeeded = true;
    for c in &txn.compare {
        let cur = current(data, &c.key);
        if !compare_holds(c, &cur) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    // What the gets will return, from the state and the branch's own earlier writes,
    // before anything is applied: a transaction whose answer would be too large is
    // refused whole (deterministically, on every member).
    let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
    let mut bytes = 0u64;
    for op in &ops {
        match op {
            TxnOp::Put { key, value } => {
                pending.insert(key, value.len() as u64);
            }
            TxnOp::Delete { key } => {
                pending.insert(key, 0);
            }
            TxnOp::Get { key } => {
                let value = match pending.get(key.as_str()) {
                    Some(&n) => n,
                    None => data.get(key).map_or(0, |r| r.value.len() as u64),
                };
                bytes += key.len() as u64 + value;
            }
        }
    }
    if bytes > MAX_TXN_RESPONSE_BYTES {
        return Outcome::TxnTooLarge { bytes };
    }
    // All writes of a transaction share one revision.
    let rev = *revision + 1;
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Put { key, value } => {
                let cur = current(data, &key);
                TxnOpResult::Put {
                    version: put(data, &mut events, cur, key, value, rev),
                }
            }
            TxnOp::Delete { key } => match current(data, &key) {
                Some(cur) => {
                    delete(data, &mut events, &cur, key);
                    TxnOpResult::Delete { deleted: true }
                }
                None => TxnOpResult::Delete { deleted: false },
            },
            TxnOp::Get { key } => TxnOpResult::Get(current(data, &key).map(|r| KeyValue {
                key,
                value: r.value.to_vec(),
                version: r.version,
                create_revision: r.create_revision,
                mod_revision: r.mod_revision,
            })),
        });
    }
    if !events.is_empty() {
        *revision = rev;
        changes.push(RevisionEvents {
            revision: rev,
            events,
        });
    }
    Outcome::Txn {
        succeeded,
        revision: *revision,
        results,
    }
}

pub(super) fn apply_command(
    data: &mut Data,
    changes: &mut Vec<RevisionEvents>,
    revision: &mut u64,
    cmd: Command,
) -> Outcome {
    match cmd {
        Command::Put { key, value, cond } => {
            let cur = current(data, &key);
            match check(cond, &cur) {
                Err(o) => o,
                Ok(()) => {
                    *revision += 1;
                    let mut events = Vec::with_capacity(1);
                    let version = put(data, &mut events, cur, key, value, *revision);
                    changes.push(RevisionEvents {
                        revision: *revision,
                        events,
                    });
                    Outcome::Put {
                        revision: *revision,
                        version,
                    }
                }
            }
        }
        Command::Delete { key, cond } => {
            let cur = current(data, &key);
            match (&cur, check(cond, &cur)) {
                (None, _) => Outcome::NotFound,
                (Some(_), Err(o)) => o,
                (Some(c), Ok(())) => {
                    *revision += 1;
                    let mut events = Vec::with_capacity(1);
                    delete(data, &mut events, c, key);
                    changes.push(RevisionEvents {
                        revision: *revision,
                        events,
                    });
                    Outcome::Deleted {
                        revision: *revision,
                    }
                }
            }
        }
        Command::Txn(txn) => apply_txn(data, changes, revision, txn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies commands to one state, as the state machine does, keeping the revision.
    #[derive(Default)]
    struct Machine {
        data: Data,
        revision: u64,
        changes: Vec<RevisionEvents>,
    }

    impl Machine {
        fn apply(&mut self, cmd: Command) -> Outcome {
            apply_command(&mut self.data, &mut self.changes, &mut self.revision, cmd)
        }
        fn put(&mut self, key: &str, value: &str, cond: Condition) -> Outcome {
            self.apply(Command::Put {
                key: key.into(),
                value: value.into(),
                cond,
            })
        }
        fn delete(&mut self, key: &str, cond: Condition) -> Outcome {
            self.apply(Command::Delete {
                key: key.into(),
                cond,
            })
        }
    }

    fn cmp(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
        Compare {
            key: key.into(),
            op,
            target,
        }
    }

    #[test]
    fn puts_count_versions_and_revisions() {
        let mut m = Machine::default();
        assert_eq!(
            m.put("a", "1", Condition::None),
            Outcome::Put {
                revision: 1,
                version: 1
            }
        );
        assert_eq!(
            m.put("b", "1", Condition::None),
            Outcome::Put {
                revision: 2,
                version: 1
            }
        );
        assert_eq!(
            m.put("a", "2", Condition::None),
            Outcome::Put {
                revision: 3,
                version: 2
            }
        );
        let a = m.data.get("a").unwrap();
        assert_eq!(
            (a.create_revision, a.mod_revision, &a.value[..]),
            (1, 3, &b"2"[..])
        );
        assert_eq!(m.changes.len(), 3);
        assert_eq!(m.changes[2].events[0].kind, EventKind::Put);
    }

    #[test]
    fn preconditions_that_fail_change_nothing() {
        let mut m = Machine::default();
        m.put("a", "1", Condition::None);
        let failed = Outcome::PreconditionFailed {
            current_version: Some(1),
        };
        assert_eq!(m.put("a", "2", Condition::Version(7)), failed);
        assert_eq!(m.put("a", "2", Condition::Absent), failed);
        assert_eq!(m.delete("a", Condition::Version(7)), failed);
        assert_eq!(
            m.put("new", "x", Condition::Version(1)),
            Outcome::PreconditionFailed {
                current_version: None
            }
        );
        assert_eq!((m.revision, m.changes.len()), (1, 1));
        assert_eq!(
            m.put("a", "2", Condition::Version(1)),
            Outcome::Put {
                revision: 2,
                version: 2
            }
        );
        assert_eq!(
            m.put("b", "1", Condition::Absent),
            Outcome::Put {
                revision: 3,
                version: 1
            }
        );
    }

    #[test]
    fn deletes_answer_not_found_and_a_recreated_key_starts_over() {
        let mut m = Machine::default();
        assert_eq!(m.delete("a", Condition::None), Outcome::NotFound);
        m.put("a", "1", Condition::None);
        m.put("a", "2", Condition::None);
        assert_eq!(
            m.delete("a", Condition::Version(2)),
            Outcome::Deleted { revision: 3 }
        );
        assert_eq!(m.changes[2].events[0].kind, EventKind::Delete);
        assert_eq!(
            m.put("a", "3", Condition::None),
            Outcome::Put {
                revision: 4,
                version: 1
            }
        );
        assert_eq!(m.data.get("a").unwrap().create_revision, 4);
    }

    #[test]
    fn compares_follow_the_documented_rules_for_missing_keys() {
        let missing = None;
        let holds = |op, target| compare_holds(&cmp("k", op, target), &missing);
        assert!(holds(CompareOp::Equal, CompareTarget::Version(0)));
        assert!(holds(CompareOp::Equal, CompareTarget::ModRevision(0)));
        assert!(holds(CompareOp::Equal, CompareTarget::Exists(false)));
        assert!(!holds(CompareOp::Equal, CompareTarget::Value(vec![])));
        assert!(holds(
            CompareOp::NotEqual,
            CompareTarget::Value(b"x".to_vec())
        ));
        assert!(!holds(CompareOp::Less, CompareTarget::Exists(true)));
        let present = Some(Record {
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: bytes::Bytes::from_static(b"m"),
        });
        let holds = |op, target| compare_holds(&cmp("k", op, target), &present);
        assert!(holds(CompareOp::Greater, CompareTarget::Version(2)));
        assert!(holds(CompareOp::Less, CompareTarget::CreateRevision(3)));
        assert!(holds(CompareOp::Less, CompareTarget::Value(b"n".to_vec())));
        assert!(holds(
            CompareOp::Greater,
            CompareTarget::Value(b"a".to_vec())
        ));
        assert!(holds(CompareOp::Equal, CompareTarget::Exists(true)));
    }

    #[test]
    fn a_transaction_takes_one_branch_at_one_revision() {
        let mut m = Machine::default();
        m.put("a", "1", Condition::None);
        let txn = |version| Txn {
            compare: vec![cmp("a", CompareOp::Equal, CompareTarget::Version(version))],
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: b"2".to_vec(),
                },
                TxnOp::Put {
                    key: "b".into(),
                    value: b"x".to_vec(),
                },
                TxnOp::Get { key: "b".into() },
            ],
            failure: vec![
                TxnOp::Get { key: "a".into() },
                TxnOp::Delete { key: "zz".into() },
            ],
        };
        let Outcome::Txn {
            succeeded,
            revision,
            results,
        } = m.apply(Command::Txn(txn(1)))
        else {
            panic!("not a transaction outcome")
        };
        assert!(succeeded);
        // Both writes share revision 2, and the get sees the branch's own earlier write.
        assert_eq!(revision, 2);
        assert_eq!(results[1], TxnOpResult::Put { version: 1 });
        let TxnOpResult::Get(Some(kv)) = &results[2] else {
            panic!("{results:?}")
        };
        assert_eq!((&kv.value[..], kv.mod_revision), (&b"x"[..], 2));
        assert_eq!(m.changes.last().unwrap().events.len(), 2);
        // The compare fails now: the failure branch runs, and reads change no revision.
        let Outcome::Txn {
            succeeded,
            revision,
            results,
        } = m.apply(Command::Txn(txn(1)))
        else {
            panic!("not a transaction outcome")
        };
        assert!(!succeeded);
        assert_eq!(revision, 2);
        assert_eq!(results[1], TxnOpResult::Delete { deleted: false });
        assert_eq!(m.revision, 2);
    }

    #[test]
    fn a_transaction_whose_answer_is_too_large_is_refused_whole() {
        let mut m = Machine::default();
        let big = vec![b'x'; (MAX_TXN_RESPONSE_BYTES / 2) as usize];
        let txn = Txn {
            compare: vec![],
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: big.clone(),
                },
                TxnOp::Get { key: "a".into() },
                TxnOp::Put {
                    key: "b".into(),
                    value: big,
                },
                TxnOp::Get { key: "b".into() },
            ],
            failure: vec![],
        };
        assert!(matches!(
            m.apply(Command::Txn(txn)),
            Outcome::TxnTooLarge { .. }
        ));
        assert_eq!((m.revision, m.data.map.len()), (0, 0));
    }
}
