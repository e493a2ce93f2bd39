//! Histories of register operations and their linearizability check.
//!
//! Clients record every operation on a key: its input, when it was invoked, when it
//! completed and what it answered (a value, ok, a definite failure, or an unknown outcome
//! after a timeout or a cut connection). [`check_key`] then asks whether some order of the
//! operations, consistent with real time, explains every answer under the sequential
//! specification of one rstore key ([`KeySpec`]: reads, unconditional writes, and
//! compare-and-set on the version). The search is the Wing–Gong–Lowe algorithm with
//! memoization from the `todc-utils` crate ([`todc_utils::WGLChecker`]).
//!
//! How outcomes enter the history (as Porcupine and Jepsen do):
//! - an operation that definitely did nothing (connection refused, `no_leader`, 412 for a
//!   read-free failure) is left out, except a failed compare-and-set, which is a read of
//!   the version;
//! - an operation with an unknown outcome gets its response at the end of the history, so
//!   it may take effect at any moment after its invocation, or never. To keep the search
//!   small, an [`KeyOp::End`] marker follows every completed operation: before it, an
//!   unknown write or compare-and-set may only be placed where it takes effect; after it,
//!   anywhere (which stands for "never took effect"). Placing a no-op earlier would only
//!   multiply the memoized states (2^k for k pending no-ops) without explaining anything
//!   more, since it can always be moved after the marker;
//! - a read with an unknown outcome observed nothing and is left out.
//!
//! Every write carries a unique value, so a read names the write it saw, and an
//! acknowledged write that later reads do not reflect is a violation: "no acknowledged
//! write is lost" is part of what is checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use todc_utils::linearizability::history::{Action, History};
use todc_utils::{Specification, WGLChecker};

/// The state of one key: absent, or a value (the unique id of the write that made it)
/// and its version (writes since creation).
pub type KeyState = Option<(u64, u64)>;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Read,
    Write {
        value: u64,
    },
    /// `If-Match: "<expect>"`.
    Cas {
        expect: u64,
        value: u64,
    },
}

/// What the client saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A read: the value and version, or absent (404).
    Read(KeyState),
    /// The write or compare-and-set was applied; with the version it produced when the
    /// answer says (`async` writes and `sync` timeouts do not).
    Ok { version: Option<u64> },
    /// The compare-and-set was refused (412): the version did not match.
    CasFailed,
    /// Surely not applied (refused connection, `no_leader`): left out of the history.
    Failed,
    /// May or may not have been applied (timeout, cut connection, `outcome_unknown`).
    Unknown,
}

/// One operation of one client, with the sequence numbers of its invocation and
/// completion (taken from one counter shared by every client, so their order is real time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub input: Input,
    pub output: Output,
    pub invoked: u64,
    pub completed: u64,
}

/// Which version an operation that writes may produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ver {
    /// Any: nothing is known (used by [`brute_force`]).
    Any,
    /// Exactly this one: the answer said so, or a read saw the written value with it.
    Exactly(u64),
    /// One that no answer or read accounts for (a hole below the highest version seen).
    Hole(Arc<BTreeSet<u64>>),
}

impl Ver {
    fn allows(&self, version: u64) -> bool {
        match self {
            Ver::Any => true,
            Ver::Exactly(v) => *v == version,
            Ver::Hole(holes) => holes.contains(&version),
        }
    }
}

/// An operation as the specification sees it: input and output together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOp {
    /// After every completed operation, before the unknown outcomes' responses.
    End,
    Read(KeyState),
    /// An unconditional write that took effect (acknowledged, or unknown and placed
    /// before the end marker).
    Write {
        value: u64,
        version: Ver,
    },
    /// A compare-and-set that was applied (`Some(true)`), refused (`Some(false)`), or whose
    /// outcome is unknown (`None`: before the end marker, it applies, so it must match).
    Cas {
        expect: u64,
        value: u64,
        applied: Option<bool>,
        version: Ver,
    },
}

/// One step of the sequential specification of a key: the state after `op`, or `None` if
/// `op` cannot happen in `state`. Versions count the writes since creation (the workload
/// never deletes), so every write produces the next version.
pub fn step(op: &KeyOp, state: &KeyState) -> Option<KeyState> {
    let current = state.map_or(0, |(_, v)| v);
    let matches = |expect: u64| state.is_some() && current == expect;
    match op {
        KeyOp::End => Some(*state),
        KeyOp::Read(seen) => (seen == state).then_some(*state),
        KeyOp::Write { value, version } => version
            .allows(current + 1)
            .then_some(Some((*value, current + 1))),
        KeyOp::Cas {
            expect,
            value,
            applied: Some(true) | None,
            version,
        } => {
            (matches(*expect) && version.allows(current + 1)).then_some(Some((*value, current + 1)))
        }
        KeyOp::Cas {
            expect,
            applied: Some(false),
            ..
        } => (!matches(*expect)).then_some(*state),
    }
}

/// The sequential specification of one rstore key, with the end marker: the state is
/// whether the marker was passed, and the key's state. After the marker only operations
/// with unknown outcomes remain, and they change nothing observable.
pub struct KeySpec;

impl Specification for KeySpec {
    type State = (bool, KeyState);
    type Operation = KeyOp;

    fn init() -> Self::State {
        (false, None)
    }

    fn apply(op: &KeyOp, &(ended, state): &Self::State) -> (bool, Self::State) {
        match (ended, op) {
            (false, KeyOp::End) => (true, (true, state)),
            (true, KeyOp::End) => (false, (true, state)),
            (true, _) => (true, (true, state)),
            (false, op) => match step(op, &state) {
                Some(next) => (true, (false, next)),
                None => (false, (false, state)),
            },
        }
    }
}

/// What the answers and reads of one key say about versions: which value each version
/// had, and the versions below the highest seen that nobody accounts for.
///
/// Sound because versions only grow (no deletes) and values are unique:
/// - a write whose value a read saw with version `v` produced `v`;
/// - when a final read began after every other operation with a known outcome had
///   completed, every write that took effect before it produced a version up to the one
///   it saw, and one that took effect later can go after the end marker. A write whose
///   value nobody saw cannot have produced a version that holds another value, so before
///   the end marker it can only fill a hole.
struct Versions {
    of_value: HashMap<u64, u64>,
    /// `None` without a final read.
    holes: Option<Arc<BTreeSet<u64>>>,
}

impl Versions {
    fn of(ops: &[&Op]) -> Versions {
        let mut of_value = HashMap::new();
        let mut seen = BTreeSet::new();
        for op in ops {
            let written = match op.input {
                Input::Write { value } | Input::Cas { value, .. } => Some(value),
                Input::Read => None,
            };
            match (op.output, written) {
                (Output::Read(Some((value, v))), _)
                | (Output::Ok { version: Some(v) }, Some(value)) => {
                    of_value.entry(value).or_insert(v);
                    seen.insert(v);
                }
                _ => {}
            }
        }
        let last_known = |except: &Op| {
            ops.iter()
                .filter(|o| !pending(o) && !std::ptr::eq(**o, except))
                .map(|o| o.completed)
                .max()
                .unwrap_or(0)
        };
        let final_read = ops
            .iter()
            .any(|o| matches!(o.output, Output::Read(_)) && o.invoked > last_known(o));
        let max = seen.last().copied().unwrap_or(0);
        let holes = final_read.then(|| Arc::new((1..=max).filter(|v| !seen.contains(v)).collect()));
        Versions { of_value, holes }
    }

    /// The version a write of `value` may produce.
    fn constraint(&self, value: u64) -> Ver {
        match (self.of_value.get(&value), &self.holes) {
            (Some(v), _) => Ver::Exactly(*v),
            (None, Some(holes)) => Ver::Hole(holes.clone()),
            (None, None) => Ver::Any,
        }
    }
}

/// The operation the specification checks, or `None` if it belongs in no history. With
/// `versions`, writes carry what is known of their version; without, nothing.
fn key_op(op: &Op, versions: Option<&Versions>) -> Option<KeyOp> {
    let ver = |value: u64, output: Output| match (output, versions) {
        (Output::Ok { version: Some(v) }, _) => Ver::Exactly(v),
        (_, None) => Ver::Any,
        (_, Some(known)) => known.constraint(value),
    };
    Some(match (op.input, op.output) {
        (_, Output::Failed) => return None,
        (Input::Read, Output::Read(seen)) => KeyOp::Read(seen),
        (Input::Read, _) => return None,
        (Input::Write { value }, output) => KeyOp::Write {
            value,
            version: ver(value, output),
        },
        (Input::Cas { expect, value }, output) => KeyOp::Cas {
            expect,
            value,
            applied: match output {
                Output::Ok { .. } => Some(true),
                Output::CasFailed => Some(false),
                _ => None,
            },
            version: ver(value, output),
        },
    })
}

/// Whether an operation's response goes to the end of the history.
fn pending(op: &Op) -> bool {
    op.output == Output::Unknown
}

/// The history of one key in `todc-utils` form: every operation is its own process (a
/// client whose operation timed out goes on as a new process, as in Jepsen), calls and
/// responses in the order of their sequence numbers, unknown responses last.
pub fn history_of(ops: &[&Op]) -> Option<History<KeyOp>> {
    let versions = Versions::of(ops);
    // (sequence, is a response, process, operation)
    let mut events: Vec<(u64, bool, usize, KeyOp)> = Vec::new();
    let mut last = 0;
    for (process, op) in ops.iter().enumerate() {
        let Some(k) = key_op(op, Some(&versions)) else {
            continue;
        };
        events.push((op.invoked, false, process, k.clone()));
        let at = if pending(op) {
            u64::MAX
        } else {
            last = last.max(op.completed);
            op.completed
        };
        last = last.max(op.invoked);
        events.push((at, true, process, k));
    }
    if events.is_empty() {
        return None;
    }
    // The end marker: invoked and completed after every other invocation and completion.
    events.push((last + 1, false, ops.len(), KeyOp::End));
    events.push((last + 2, true, ops.len(), KeyOp::End));
    events.sort_by_key(|(at, response, process, _)| (*at, *response, *process));
    Some(History::from_actions(
        events
            .into_iter()
            .map(|(_, response, process, op)| {
                (
                    process,
                    if response {
                        Action::Response(op)
                    } else {
                        Action::Call(op)
                    },
                )
            })
            .collect(),
    ))
}

/// The verdict on one key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    Violation,
    /// The search did not finish in time (reported, never taken as a pass).
    Undecided,
}

/// Check one key's operations, giving up after `budget`.
pub fn check_key(ops: &[&Op], budget: Duration) -> Verdict {
    let Some(history) = history_of(ops) else {
        return Verdict::Linearizable;
    };
    let (tx, rx) = mpsc::channel();
    // A search that runs past its budget is abandoned (threads cannot be stopped); it ends
    // with the test process.
    std::thread::spawn(move || {
        let _ = tx.send(WGLChecker::<KeySpec>::is_linearizable(history));
    });
    match rx.recv_timeout(budget) {
        Ok(true) => Verdict::Linearizable,
        Ok(false) => Verdict::Violation,
        Err(_) => Verdict::Undecided,
    }
}

/// The verdicts of a whole run, key by key.
#[derive(Debug, Default)]
pub struct Report {
    pub keys: usize,
    pub ops: usize,
    pub unknown: usize,
    pub violations: Vec<String>,
    pub undecided: Vec<String>,
}

/// Split `ops` by key and check every key's history.
pub fn check_all(ops: &[Op], budget: Duration) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = Report {
        keys: by_key.len(),
        ops: ops.len(),
        unknown: ops.iter().filter(|o| pending(o)).count(),
        ..Report::default()
    };
    for (key, ops) in by_key {
        match check_key(&ops, budget) {
            Verdict::Linearizable => {}
            Verdict::Violation => report.violations.push(key.to_string()),
            Verdict::Undecided => report.undecided.push(key.to_string()),
        }
    }
    report
}

/// Brute force, for testing the checker on small histories: try every order of the
/// operations that respects real time (an operation that completed before another was
/// invoked comes first), with each unknown operation either taking effect or not, and
/// no deduction about versions.
pub fn brute_force(ops: &[&Op]) -> bool {
    let entries: Vec<(u64, u64, KeyOp, bool)> = ops
        .iter()
        .filter_map(|op| {
            let k = key_op(op, None)?;
            let end = if pending(op) { u64::MAX } else { op.completed };
            Some((op.invoked, end, k, pending(op)))
        })
        .collect();
    fn search(entries: &[(u64, u64, KeyOp, bool)], done: &mut Vec<bool>, state: KeyState) -> bool {
        if done.iter().all(|d| *d) {
            return true;
        }
        for i in 0..entries.len() {
            if done[i] {
                continue;
            }
            // `i` may go next only if no other pending operation completed before it began.
            let blocked =
                (0..entries.len()).any(|j| !done[j] && j != i && entries[j].1 < entries[i].0);
            if blocked {
                continue;
            }
            let (_, _, op, unknown) = &entries[i];
            done[i] = true;
            if let Some(next) = step(op, &state)
                && search(entries, done, next)
            {
                return true;
            }
            // An unknown operation may also never have happened.
            if *unknown && search(entries, done, state) {
                return true;
            }
            done[i] = false;
        }
        false
    }
    search(&entries, &mut vec![false; entries.len()], None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BUDGET: Duration = Duration::from_secs(30);

    fn op(input: Input, output: Output, invoked: u64, completed: u64) -> Op {
        Op {
            key: "k".into(),
            input,
            output,
            invoked,
            completed,
        }
    }

    fn verdict(ops: &[Op]) -> Verdict {
        let refs: Vec<&Op> = ops.iter().collect();
        check_key(&refs, BUDGET)
    }

    fn w(value: u64, version: Option<u64>, a: u64, b: u64) -> Op {
        op(Input::Write { value }, Output::Ok { version }, a, b)
    }

    fn r(seen: KeyState, a: u64, b: u64) -> Op {
        op(Input::Read, Output::Read(seen), a, b)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            r(None, 0, 1),
            w(7, Some(1), 2, 3),
            r(Some((7, 1)), 4, 5),
            op(
                Input::Cas {
                    expect: 1,
                    value: 8,
                },
                Output::Ok { version: Some(2) },
                6,
                7,
            ),
            op(
                Input::Cas {
                    expect: 1,
                    value: 9,
                },
                Output::CasFailed,
                8,
                9,
            ),
            r(Some((8, 2)), 10, 11),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    // Negative controls: each of these must be flagged, or the suite could never fail.

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let h = [
            w(1, Some(1), 0, 1),
            w(2, Some(2), 2, 3),
            r(Some((1, 1)), 4, 5),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn lost_acknowledged_write_is_a_violation() {
        // The write was acknowledged, then a read that began afterwards finds nothing.
        let h = [w(1, Some(1), 0, 1), r(None, 2, 3)];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn reading_a_value_never_written_is_a_violation() {
        let h = [w(1, Some(1), 0, 1), r(Some((5, 1)), 2, 3)];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn a_write_applied_twice_is_a_violation() {
        // The second acknowledgement says version 3: something was applied twice.
        let h = [w(1, Some(1), 0, 1), w(2, Some(3), 2, 3)];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn reads_that_disagree_during_a_write_are_a_violation() {
        // Two reads, one after the other, both overlapping a write: new then old.
        let h = [w(1, None, 0, 9), r(Some((1, 1)), 1, 2), r(None, 3, 4)];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn a_cas_that_succeeded_on_a_wrong_version_is_a_violation() {
        let h = [
            w(1, Some(1), 0, 1),
            op(
                Input::Cas {
                    expect: 5,
                    value: 2,
                },
                Output::Ok { version: None },
                2,
                3,
            ),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never() {
        // Applied after a later read…
        let late = [
            op(Input::Write { value: 1 }, Output::Unknown, 0, 1),
            r(None, 2, 3),
            r(Some((1, 1)), 4, 5),
        ];
        assert_eq!(verdict(&late), Verdict::Linearizable);
        // …or never.
        let never = [
            op(Input::Write { value: 1 }, Output::Unknown, 0, 1),
            r(None, 2, 3),
        ];
        assert_eq!(verdict(&never), Verdict::Linearizable);
        // But not un-applied once seen.
        let flicker = [
            op(Input::Write { value: 1 }, Output::Unknown, 0, 1),
            r(Some((1, 1)), 2, 3),
            r(None, 4, 5),
        ];
        assert_eq!(verdict(&flicker), Verdict::Violation);
    }

    #[test]
    fn definite_failures_are_left_out() {
        // A write that surely did nothing must never be seen.
        let h = [
            op(Input::Write { value: 1 }, Output::Failed, 0, 1),
            r(Some((1, 1)), 2, 3),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
        let h = [
            op(Input::Write { value: 1 }, Output::Failed, 0, 1),
            r(None, 2, 3),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn versions_nobody_saw_are_filled_by_unknown_or_unversioned_writes() {
        let unknown = |value, a, b| op(Input::Write { value }, Output::Unknown, a, b);
        // Version 2 was never seen: the unknown write 2 took it.
        let h = [
            w(1, Some(1), 0, 1),
            unknown(2, 2, 3),
            w(3, Some(3), 4, 5),
            r(Some((3, 3)), 6, 7),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // No hole: the unknown write never took effect (or only after the final read).
        let h = [
            w(1, Some(1), 0, 1),
            unknown(2, 2, 3),
            w(3, Some(2), 4, 5),
            r(Some((3, 2)), 6, 7),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // An acknowledged write without a version (async) fills the hole…
        let h = [
            w(1, Some(1), 0, 1),
            w(2, None, 2, 3),
            w(3, Some(3), 4, 5),
            r(Some((3, 3)), 6, 7),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // …and without a hole it was lost.
        let h = [
            w(1, Some(1), 0, 1),
            w(2, None, 2, 3),
            w(3, Some(2), 4, 5),
            r(Some((3, 2)), 6, 7),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn many_unknown_writes_are_checked_quickly() {
        // 40 unknown writes that never took effect, among 400 acknowledged ones and reads:
        // without the version deduction the search would try their 2^40 subsets.
        let mut ops = Vec::new();
        let mut t = 0;
        let mut version = 0;
        for i in 0..400u64 {
            if i % 10 == 0 {
                ops.push(op(
                    Input::Write { value: 10_000 + i },
                    Output::Unknown,
                    t,
                    t + 1,
                ));
            }
            version += 1;
            ops.push(w(i, Some(version), t + 2, t + 3));
            ops.push(r(Some((i, version)), t + 4, t + 5));
            t += 6;
        }
        ops.push(r(Some((399, version)), t, t + 1));
        let start = std::time::Instant::now();
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn check_all_splits_by_key_and_counts() {
        let mut ops = vec![w(1, Some(1), 0, 1), r(Some((1, 1)), 2, 3)];
        let mut other = r(Some((9, 1)), 4, 5);
        other.key = "other".into();
        ops.push(other);
        let report = check_all(&ops, BUDGET);
        assert_eq!((report.keys, report.ops), (2, 3));
        assert_eq!(report.violations, vec!["other".to_string()]);
    }

    /// Small random histories over two values, with overlapping intervals and unknown
    /// outcomes: the memoized search agrees with brute force.
    fn small_history() -> impl Strategy<Value = Vec<Op>> {
        let one = (
            0u8..3,
            0u64..3,
            1u64..3,
            0u8..5,
            0u64..12,
            1u64..6,
            proptest::option::of(1u64..4),
        );
        let last = proptest::option::of((0u64..4, 1u64..4));
        (proptest::collection::vec(one, 1..7), last).prop_map(|(raw, last)| {
            let mut ops: Vec<Op> = raw
                .into_iter()
                .enumerate()
                .map(|(i, (kind, v, expect, out, start, len, ver))| {
                    let value = i as u64 + 1;
                    let (input, output) = match kind {
                        0 => (
                            Input::Read,
                            Output::Read(if v == 0 {
                                None
                            } else {
                                Some((v, ver.unwrap_or(1)))
                            }),
                        ),
                        1 => (
                            Input::Write { value },
                            match out {
                                0 => Output::Unknown,
                                1 => Output::Failed,
                                _ => Output::Ok { version: ver },
                            },
                        ),
                        _ => (
                            Input::Cas { expect, value },
                            match out {
                                0 => Output::Unknown,
                                1 => Output::CasFailed,
                                _ => Output::Ok { version: ver },
                            },
                        ),
                    };
                    // Sequence numbers are unique: each event gets its own slot.
                    let invoked = start * 20 + i as u64;
                    let completed = (start + len) * 20 + 10 + i as u64;
                    Op {
                        key: "k".into(),
                        input,
                        output,
                        invoked,
                        completed,
                    }
                })
                .collect();
            // Often a final read after everything else, as the fault suite does.
            if let Some((v, ver)) = last {
                ops.push(Op {
                    key: "k".into(),
                    input: Input::Read,
                    output: Output::Read(if v == 0 { None } else { Some((v, ver)) }),
                    invoked: 10_000,
                    completed: 10_001,
                });
            }
            ops
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn wgl_agrees_with_brute_force(ops in small_history()) {
            let refs: Vec<&Op> = ops.iter().collect();
            let expected = if brute_force(&refs) { Verdict::Linearizable } else { Verdict::Violation };
            prop_assert_eq!(check_key(&refs, BUDGET), expected, "{:#?}", ops);
        }
    }
}
