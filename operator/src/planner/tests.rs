//! Planner tests: a table of rules on hand-made states, and property tests over generated
//! states (safety on arbitrary observations; convergence in the simulator).

use proptest::prelude::*;
use proptest::sample::Index;

use super::sim::{self, World};
use super::*;
use crate::crd::{MemberRole, ReadConsistency, ReplicationMode};

const V1: &str = "rstore/node:1";
const V2: &str = "rstore/node:2";

fn desired(voters: u32, learners: u32) -> Desired {
    Desired {
        voters,
        learners,
        image: V1.into(),
        mode: ReplicationMode::Quorum,
        read_consistency: ReadConsistency::Linearizable,
        paused: false,
        restore: false,
    }
}

fn plan_in(world: &World, d: &Desired) -> Step {
    plan(d, &world.observe(), &sim::policy())
}

fn is_wait(step: &Step) -> bool {
    matches!(step, Step::Wait { .. })
}

/// Runs the planner and the simulator until `Done`, returning the steps taken.
fn converge(world: &mut World, d: &Desired, max_steps: usize) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for _ in 0..max_steps {
        let observed = world.observe();
        let step = plan(d, &observed, &sim::policy());
        check_safety(d, &observed, &sim::policy(), &step)?;
        if let Step::Degraded { reason, .. } = &step {
            return Err(format!(
                "degraded from a healthy start: {reason}; after {steps:?}"
            ));
        }
        if step == Step::Done {
            steps.push(step);
            return Ok(steps);
        }
        world
            .apply(&step)
            .map_err(|e| format!("{step:?} failed: {e}; after {steps:?}"))?;
        steps.push(step);
        world.tick();
    }
    Err(format!(
        "not done after {max_steps} steps; last: {:?}; world: {world:?}",
        &steps[steps.len().saturating_sub(5)..]
    ))
}

/// The world has exactly the shape `d` asks for.
fn assert_shape(world: &World, d: &Desired) -> Result<(), String> {
    let target = d.total();
    let ok = world.sts == Some((target, d.image.clone()))
        && world.pods.len() == target as usize
        && world.pods.values().all(|p| p.image == d.image)
        && world.members.len() == target as usize
        && world.members.iter().all(|(id, m)| {
            m.ordinal < target && world.pods.get(&m.ordinal).is_some_and(|p| p.id == *id)
        })
        && world
            .members
            .values()
            .filter(|m| m.role == MemberRole::Voter)
            .count()
            == d.voters as usize
        && world.mode == d.mode
        && world.read_consistency == d.read_consistency;
    if ok {
        Ok(())
    } else {
        Err(format!("Done but shape differs: {world:?} vs {d:?}"))
    }
}

/// The safety rules every single step must obey, whatever was observed.
fn check_safety(d: &Desired, o: &Observed, policy: &Policy, step: &Step) -> Result<(), String> {
    let healthy = |c: &ClusterObs, m: &MemberObs| {
        m.id == c.leader_id
            || m.last_contact_ms
                .is_some_and(|t| t <= policy.contact_timeout_ms)
    };
    if let Some(c) = &o.cluster {
        // (c) one membership change at a time.
        if c.membership_changing && step.is_membership_change() {
            return Err(format!("{step:?} while a membership change is in progress"));
        }
        // (a) never below a healthy quorum of the resulting configuration.
        let removed_voter = match step {
            Step::RemoveMember { id, .. } => c
                .members
                .iter()
                .find(|m| m.id == *id && m.role == MemberRole::Voter),
            _ => None,
        };
        if let Some(m) = removed_voter {
            let voters: Vec<&MemberObs> = c
                .members
                .iter()
                .filter(|m| m.role == MemberRole::Voter)
                .collect();
            let healthy_after =
                voters.iter().filter(|v| healthy(c, v)).count() - usize::from(healthy(c, m));
            if voters.len() < 2 || healthy_after < quorum(voters.len() - 1) {
                return Err(format!(
                    "{step:?} leaves {healthy_after} healthy of {} voters",
                    voters.len().saturating_sub(1)
                ));
            }
        }
        // Rolling restarts only on a fully healthy, caught-up cluster.
        if let Step::RestartPod { pod } = step {
            let all_fine = c.members.iter().all(|m| {
                healthy(c, m) && (m.id == c.leader_id || m.lag.is_some_and(|l| l <= policy.max_lag))
            });
            if !all_fine {
                return Err(format!(
                    "restart of pod {pod} while a member is unhealthy or lagging"
                ));
            }
        }
    }
    // (b) the StatefulSet never shrinks under a Raft member.
    if let Step::ScaleStatefulSet { replicas } = step {
        let current = o.statefulset.as_ref().map_or(0, |s| s.replicas);
        if *replicas < current {
            let Some(c) = &o.cluster else {
                return Err("shrink without a cluster view".into());
            };
            if let Some(m) = c
                .members
                .iter()
                .find(|m| m.ordinal.is_some_and(|x| x >= *replicas))
            {
                return Err(format!("shrink to {replicas} while {} is a member", m.id));
            }
        }
    }
    // Bootstrap happens once, on pod 0, when no cluster exists anywhere in sight.
    if let Step::InitCluster { pod } = step {
        let any_initialized = o
            .pods
            .iter()
            .any(|p| p.node.as_ref().is_some_and(|n| n.cluster_id.is_some()));
        if *pod != 0 || o.cluster.is_some() || o.known_cluster_id.is_some() || any_initialized {
            return Err(format!("{step:?} with a cluster present"));
        }
    }
    if d.paused && step.is_action() {
        return Err(format!("{step:?} while paused"));
    }
    Ok(())
}

// ----- table: one rule each -----

#[test]
fn creates_the_statefulset_first() {
    let step = plan_in(&World::default(), &desired(3, 1));
    assert_eq!(
        step,
        Step::CreateStatefulSet {
            replicas: 4,
            image: V1.into()
        }
    );
}

#[test]
fn bootstrap_inits_pod_zero_then_adds_and_promotes_one_at_a_time() {
    let d = desired(3, 0);
    let mut w = World::default();
    w.apply(&plan_in(&w, &d)).unwrap();
    assert_eq!(plan_in(&w, &d), Step::InitCluster { pod: 0 });
    w.apply(&Step::InitCluster { pod: 0 }).unwrap();
    let id1 = w.pods[&1].id;
    assert_eq!(plan_in(&w, &d), Step::AddLearner { pod: 1, id: id1 });
    let steps = converge(&mut w, &d, 50).unwrap();
    assert_eq!(steps.last(), Some(&Step::Done));
    assert_shape(&w, &d).unwrap();
    let membership = steps.iter().filter(|s| s.is_membership_change()).count();
    assert_eq!(membership, 4, "2 adds and 2 promotions: {steps:?}");
}

#[test]
fn a_store_restored_from_a_backup_is_never_initialized_empty() {
    let d = Desired {
        restore: true,
        ..desired(3, 0)
    };
    let mut w = World::default();
    w.apply(&plan_in(&w, &d)).unwrap();
    // Pod 0 answers, uninitialized (still restoring, or started without its restore): wait.
    for _ in 0..5 {
        let step = plan_in(&w, &d);
        assert!(is_wait(&step), "{step:?}");
        assert!(step.to_string().contains("restore"), "{step}");
        w.tick();
    }
    // Pod 0 came up with the restored cluster: the others join it as usual.
    w.apply(&Step::InitCluster { pod: 0 }).unwrap();
    let steps = converge(&mut w, &d, 50).unwrap();
    assert!(!steps.iter().any(|s| matches!(s, Step::InitCluster { .. })));
    assert_shape(&w, &d).unwrap();
}

#[test]
fn never_inits_while_a_cluster_is_known_or_pod_zero_is_silent() {
    let d = desired(3, 0);
    let mut w = World::default();
    w.apply(&Step::CreateStatefulSet {
        replicas: 3,
        image: V1.into(),
    })
    .unwrap();
    w.pods.get_mut(&0).unwrap().down_ticks = 5;
    assert!(is_wait(&plan_in(&w, &d)));

    // The cluster was made before (status says so) but no leader answers: wait, then degrade.
    let mut w = World::healthy(3, 0, V1);
    for p in w.pods.values_mut() {
        p.down_ticks = 1_000;
    }
    w.leader = None;
    assert!(is_wait(&plan_in(&w, &d)));
    w.no_leader_ticks = 31;
    assert!(matches!(plan_in(&w, &d), Step::Degraded { .. }));
}

#[test]
fn scale_out_grows_the_statefulset_then_joins_as_learner_then_promotes() {
    let d = desired(5, 0);
    let mut w = World::healthy(3, 0, V1);
    assert_eq!(plan_in(&w, &d), Step::ScaleStatefulSet { replicas: 5 });
    w.apply(&Step::ScaleStatefulSet { replicas: 5 }).unwrap();
    let id3 = w.pods[&3].id;
    assert_eq!(plan_in(&w, &d), Step::AddLearner { pod: 3, id: id3 });
    w.apply(&Step::AddLearner { pod: 3, id: id3 }).unwrap();
    // Not caught up yet: the next pod joins first, promotion waits for the lag.
    let id4 = w.pods[&4].id;
    assert_eq!(plan_in(&w, &d), Step::AddLearner { pod: 4, id: id4 });
    w.apply(&Step::AddLearner { pod: 4, id: id4 }).unwrap();
    assert!(is_wait(&plan_in(&w, &d)), "learners still lagging");
    w.tick();
    w.tick();
    w.tick();
    assert_eq!(plan_in(&w, &d), Step::PromoteVoter { id: id3 });
}

#[test]
fn waits_while_a_membership_change_is_in_flight() {
    let w = World::healthy(3, 0, V1);
    let mut o = w.observe();
    o.cluster.as_mut().unwrap().membership_changing = true;
    let step = plan(&desired(5, 0), &o, &sim::policy());
    assert!(is_wait(&step), "{step:?}");
}

#[test]
fn scale_in_removes_from_raft_first_highest_ordinal_then_shrinks() {
    let d = desired(3, 0);
    let mut w = World::healthy(5, 0, V1);
    let id4 = w.member_at(4).unwrap();
    let id3 = w.member_at(3).unwrap();
    assert_eq!(
        plan_in(&w, &d),
        Step::RemoveMember {
            id: id4,
            reason: RemoveReason::ScaleIn
        }
    );
    w.apply(&Step::RemoveMember {
        id: id4,
        reason: RemoveReason::ScaleIn,
    })
    .unwrap();
    assert_eq!(
        plan_in(&w, &d),
        Step::RemoveMember {
            id: id3,
            reason: RemoveReason::ScaleIn
        }
    );
    w.apply(&Step::RemoveMember {
        id: id3,
        reason: RemoveReason::ScaleIn,
    })
    .unwrap();
    assert_eq!(plan_in(&w, &d), Step::ScaleStatefulSet { replicas: 3 });
}

#[test]
fn scale_in_prefers_unhealthy_then_lagging_members() {
    let d = desired(3, 0);
    let mut w = World::healthy(5, 0, V1);
    let id3 = w.member_at(3).unwrap();
    w.pods.get_mut(&3).unwrap().down_ticks = 10;
    assert_eq!(
        plan_in(&w, &d),
        Step::RemoveMember {
            id: id3,
            reason: RemoveReason::ScaleIn
        }
    );

    let mut w = World::healthy(5, 0, V1);
    let id3 = w.member_at(3).unwrap();
    w.members.get_mut(&id3).unwrap().lag = 5_000;
    assert_eq!(
        plan_in(&w, &d),
        Step::RemoveMember {
            id: id3,
            reason: RemoveReason::ScaleIn
        }
    );
}

#[test]
fn scale_in_keeps_healthy_voters_until_the_remaining_pods_have_theirs() {
    let d = desired(3, 0);
    let mut w = World::healthy(5, 0, V1);
    let id2 = w.member_at(2).unwrap();
    w.apply(&Step::RemoveMember {
        id: id2,
        reason: RemoveReason::Demote,
    })
    .unwrap();
    w.pods.get_mut(&2).unwrap().down_ticks = 10;
    let step = plan_in(&w, &d);
    assert!(
        matches!(&step, Step::Wait { reason } if reason.contains("stays")),
        "{step:?}"
    );
    converge(&mut w, &d, 60).unwrap();
    assert_shape(&w, &d).unwrap();
}

#[test]
fn refuses_a_scale_in_that_would_break_quorum() {
    // 3 voters, pod 1 down: removing healthy pod 2 leaves 1 healthy of 2 voters.
    let d = desired(2, 0);
    let mut w = World::healthy(3, 0, V1);
    w.pods.get_mut(&1).unwrap().down_ticks = 10;
    let step = plan_in(&w, &d);
    assert!(
        matches!(&step, Step::Refuse { reason } if reason.contains("quorum")),
        "{step:?}"
    );
}

#[test]
fn never_removes_the_last_voter() {
    let w = World::healthy(1, 0, V1);
    let mut o = w.observe();
    // An orphan voter that is also the only voter and the leader: refuse, do not remove.
    o.cluster.as_mut().unwrap().members[0].ordinal = None;
    let step = plan(&desired(1, 0), &o, &sim::policy());
    assert!(matches!(step, Step::Refuse { .. }), "{step:?}");
}

#[test]
fn a_wiped_pod_gets_its_stale_id_removed_then_rejoins_with_the_new_id() {
    let d = desired(3, 0);
    let mut w = World::healthy(3, 0, V1);
    let old = w.member_at(2).unwrap();
    let new = w.fresh_pod(2, V1);
    assert_eq!(
        plan_in(&w, &d),
        Step::RemoveMember {
            id: old,
            reason: RemoveReason::StaleId { pod: 2 }
        }
    );
    w.apply(&plan_in(&w, &d)).unwrap();
    assert_eq!(plan_in(&w, &d), Step::AddLearner { pod: 2, id: new });
    converge(&mut w, &d, 30).unwrap();
    assert!(!w.members.contains_key(&old), "the old id is never reused");
}

#[test]
fn an_orphan_member_is_removed() {
    let w = World::healthy(3, 0, V1);
    let mut o = w.observe();
    let c = o.cluster.as_mut().unwrap();
    c.members.push(MemberObs {
        id: 999,
        ordinal: None,
        role: MemberRole::Learner,
        lag: None,
        last_contact_ms: None,
        unhealthy_for_ms: 0,
    });
    let step = plan(&desired(3, 0), &o, &sim::policy());
    assert_eq!(
        step,
        Step::RemoveMember {
            id: 999,
            reason: RemoveReason::Orphan
        }
    );
}

/// One pod's unconfirmed word (a made-up leader, term or member list) removes no one:
/// the same orphan as above is kept, with a refusal that says why.
#[test]
fn an_unconfirmed_view_removes_no_member() {
    let w = World::healthy(5, 0, V1);
    let mut o = w.observe();
    let c = o.cluster.as_mut().unwrap();
    c.members.push(MemberObs {
        id: 999,
        ordinal: None,
        role: MemberRole::Learner,
        lag: Some(u64::MAX),
        last_contact_ms: Some(u64::MAX),
        unhealthy_for_ms: u64::MAX,
    });
    c.unconfirmed = Some("only 1 of the 5 reachable members agree".into());
    for d in [desired(5, 0), desired(3, 0)] {
        let step = plan(&d, &o, &sim::policy());
        assert!(
            !matches!(step, Step::RemoveMember { .. }),
            "removed on an unconfirmed view: {step}"
        );
        if let Step::Refuse { reason } = &step {
            assert!(reason.contains("not confirmed"), "{reason}");
        }
    }
    // Confirmed, the same view does remove.
    o.cluster.as_mut().unwrap().unconfirmed = None;
    assert_eq!(
        plan(&desired(5, 0), &o, &sim::policy()),
        Step::RemoveMember {
            id: 999,
            reason: RemoveReason::Orphan
        }
    );
}

#[test]
fn an_unreachable_member_is_replaced_only_after_the_timeout() {
    let d = desired(3, 0);
    let mut w = World::healthy(3, 0, V1);
    let id2 = w.member_at(2).unwrap();
    w.pods.get_mut(&2).unwrap().down_ticks = 1_000;
    w.members.get_mut(&id2).unwrap().unhealthy_ticks = 59;
    assert!(is_wait(&plan_in(&w, &d)));
    w.members.get_mut(&id2).unwrap().unhealthy_ticks = 60;
    assert_eq!(
        plan_in(&w, &d),
        Step::RemoveMember {
            id: id2,
            reason: RemoveReason::Unreachable { for_ms: 60_000 }
        }
    );
}

#[test]
fn quorum_loss_waits_briefly_then_reports_degraded_and_forces_nothing() {
    let d = desired(3, 0);
    let w = World::healthy(3, 0, V1);
    let mut o = w.observe();
    for m in &mut o.cluster.as_mut().unwrap().members[1..] {
        m.last_contact_ms = None;
        m.unhealthy_for_ms = 5_000;
    }
    assert!(is_wait(&plan(&d, &o, &sim::policy())));
    for m in &mut o.cluster.as_mut().unwrap().members[1..] {
        m.unhealthy_for_ms = 400_000; // beyond the replacement timeout too
    }
    match plan(&d, &o, &sim::policy()) {
        Step::Degraded {
            reason,
            recovery_steps,
        } => {
            assert!(reason.contains("quorum lost"), "{reason}");
            assert!(!recovery_steps.is_empty());
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
}

#[test]
fn mode_change_is_applied_live() {
    let mut d = desired(3, 0);
    d.mode = ReplicationMode::Sync;
    d.read_consistency = ReadConsistency::Stale;
    let w = World::healthy(3, 0, V1);
    assert_eq!(
        plan_in(&w, &d),
        Step::SetConfig {
            mode: ReplicationMode::Sync,
            read_consistency: ReadConsistency::Stale
        }
    );
}

#[test]
fn rolling_image_change_goes_followers_first_leader_last() {
    let mut d = desired(3, 1);
    d.image = V2.into();
    let mut w = World::healthy(3, 1, V1);
    let leader_pod = w.members[&w.leader.unwrap()].ordinal;
    assert_eq!(
        plan_in(&w, &d),
        Step::SetStatefulSetImage { image: V2.into() }
    );
    let steps = converge(&mut w, &d, 60).unwrap();
    let restarts: Vec<u32> = steps
        .iter()
        .filter_map(|s| match s {
            Step::RestartPod { pod } => Some(*pod),
            _ => None,
        })
        .collect();
    assert_eq!(restarts.len(), 4, "{steps:?}");
    assert_eq!(restarts[0], 3, "the learner first");
    assert_eq!(*restarts.last().unwrap(), leader_pod, "the leader last");
    assert_shape(&w, &d).unwrap();
}

#[test]
fn no_restart_while_a_member_lags() {
    let mut d = desired(3, 0);
    d.image = V2.into();
    let mut w = World::healthy(3, 0, V1);
    w.apply(&Step::SetStatefulSetImage { image: V2.into() })
        .unwrap();
    let id1 = w.member_at(1).unwrap();
    w.members.get_mut(&id1).unwrap().lag = 5_000;
    assert!(is_wait(&plan_in(&w, &d)));
}

#[test]
fn surplus_voters_are_removed_and_rejoin_as_learners() {
    let d = desired(3, 2);
    let mut w = World::healthy(5, 0, V1);
    let step = plan_in(&w, &d);
    assert!(
        matches!(
            step,
            Step::RemoveMember {
                reason: RemoveReason::Demote,
                ..
            }
        ),
        "{step:?}"
    );
    converge(&mut w, &d, 60).unwrap();
    assert_shape(&w, &d).unwrap();
}

#[test]
fn paused_takes_no_action() {
    let mut d = desired(5, 0);
    d.paused = true;
    let w = World::healthy(3, 0, V1);
    assert!(is_wait(&plan_in(&w, &d)));
    let d = Desired {
        paused: true,
        ..desired(3, 0)
    };
    assert_eq!(plan_in(&w, &d), Step::Done);
}

#[test]
fn a_pod_from_another_cluster_is_refused() {
    let w = World::healthy(3, 0, V1);
    let mut o = w.observe();
    o.pods[1].node.as_mut().unwrap().cluster_id = Some("someone-else".into());
    let step = plan(&desired(3, 0), &o, &sim::policy());
    assert!(matches!(step, Step::Refuse { .. }), "{step:?}");
}

#[test]
fn a_converged_cluster_is_done() {
    let w = World::healthy(3, 2, V1);
    assert_eq!(plan_in(&w, &desired(3, 2)), Step::Done);
}

// ----- properties -----

fn arb_image() -> impl Strategy<Value = String> {
    prop_oneof![Just(V1.to_owned()), Just(V2.to_owned())]
}

fn arb_mode() -> impl Strategy<Value = ReplicationMode> {
    prop_oneof![
        Just(ReplicationMode::Quorum),
        Just(ReplicationMode::Sync),
        Just(ReplicationMode::Async)
    ]
}

fn arb_consistency() -> impl Strategy<Value = ReadConsistency> {
    prop_oneof![
        Just(ReadConsistency::Linearizable),
        Just(ReadConsistency::Leader),
        Just(ReadConsistency::Stale)
    ]
}

fn arb_role() -> impl Strategy<Value = MemberRole> {
    prop_oneof![Just(MemberRole::Voter), Just(MemberRole::Learner)]
}

fn arb_desired(max_voters: u32, max_learners: u32) -> impl Strategy<Value = Desired> {
    (
        1..=max_voters,
        0..=max_learners,
        arb_image(),
        arb_mode(),
        arb_consistency(),
    )
        .prop_map(
            |(voters, learners, image, mode, read_consistency)| Desired {
                voters,
                learners,
                image,
                mode,
                read_consistency,
                paused: false,
                restore: false,
            },
        )
}

fn arb_cluster_id() -> impl Strategy<Value = String> {
    prop_oneof![9 => Just("c".to_owned()), 1 => Just("x".to_owned())]
}

fn arb_member() -> impl Strategy<Value = MemberObs> {
    (
        1..12u64,
        proptest::option::weighted(0.9, 0..9u32),
        arb_role(),
        proptest::option::of(0..300u64),
        proptest::option::of(0..10_000u64),
        0..600_000u64,
    )
        .prop_map(
            |(id, ordinal, role, lag, last_contact_ms, unhealthy_for_ms)| MemberObs {
                id,
                ordinal,
                role,
                lag,
                last_contact_ms,
                unhealthy_for_ms,
            },
        )
}

fn arb_cluster() -> impl Strategy<Value = ClusterObs> {
    (
        arb_cluster_id(),
        proptest::collection::vec(arb_member(), 0..10),
        any::<Index>(),
        any::<bool>(),
        arb_mode(),
        arb_consistency(),
    )
        .prop_map(
            |(cluster_id, mut members, leader, membership_changing, mode, rc)| {
                members.sort_by_key(|m| m.id);
                members.dedup_by_key(|m| m.id);
                let leader_id = if members.is_empty() {
                    1
                } else {
                    members[leader.index(members.len())].id
                };
                ClusterObs {
                    cluster_id,
                    leader_id,
                    unconfirmed: None,
                    members,
                    membership_changing,
                    mode,
                    read_consistency: rc,
                }
            },
        )
}

fn arb_pod() -> impl Strategy<Value = PodObs> {
    (
        0..9u32,
        any::<bool>(),
        arb_image(),
        proptest::option::weighted(
            0.8,
            (1..12u64, proptest::option::of(arb_cluster_id()))
                .prop_map(|(id, cluster_id)| NodeObs { id, cluster_id }),
        ),
    )
        .prop_map(|(ordinal, ready, image, node)| PodObs {
            ordinal,
            ready,
            image,
            node,
        })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        proptest::option::weighted(
            0.9,
            (0..9u32, arb_image()).prop_map(|(replicas, image)| StatefulSetObs { replicas, image }),
        ),
        proptest::collection::vec(arb_pod(), 0..9),
        proptest::option::weighted(0.8, arb_cluster()),
        proptest::option::weighted(0.7, arb_cluster_id()),
        0..200_000u64,
    )
        .prop_map(
            |(statefulset, mut pods, cluster, known_cluster_id, no_leader_for_ms)| {
                pods.sort_by_key(|p| p.ordinal);
                pods.dedup_by_key(|p| p.ordinal);
                Observed {
                    statefulset,
                    pods,
                    cluster,
                    known_cluster_id,
                    no_leader_for_ms,
                }
            },
        )
}

/// Where a generated member's pod stands at the start.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Up,
    Down(u64),
    Wiped,
}

fn arb_fate() -> impl Strategy<Value = Fate> {
    prop_oneof![6 => Just(Fate::Up), 2 => (1..120u64).prop_map(Fate::Down), 1 => Just(Fate::Wiped)]
}

/// A running cluster with a healthy quorum, in any shape, with some pods down or wiped.
fn arb_running_world() -> impl Strategy<Value = World> {
    (1..=5u32, 0..=3u32)
        .prop_flat_map(|(voters, learners)| {
            let n = (voters + learners) as usize;
            (
                Just(voters),
                proptest::sample::subsequence((0..9u32).collect::<Vec<_>>(), n).prop_shuffle(),
                proptest::collection::vec(arb_fate(), n),
                proptest::collection::vec(0..2_000u64, n),
                proptest::collection::vec(0..80u64, n),
                0..=2u32,
                proptest::collection::vec((arb_image(), 0..3u64), 11),
                arb_image(),
                arb_mode(),
                arb_consistency(),
            )
        })
        .prop_map(
            |(voters, ordinals, mut fates, lags, unhealthy, extra, pod_facts, image, mode, rc)| {
                // Keep a healthy quorum: the first voters come up until there is one.
                let needed = quorum(voters as usize);
                let mut up = fates[..voters as usize]
                    .iter()
                    .filter(|f| matches!(f, Fate::Up))
                    .count();
                for f in fates[..voters as usize].iter_mut() {
                    if up >= needed {
                        break;
                    }
                    if !matches!(f, Fate::Up) {
                        *f = Fate::Up;
                        up += 1;
                    }
                }
                let replicas = ordinals.iter().max().copied().unwrap_or(0) + 1 + extra;
                let mut w = World {
                    sts: Some((replicas, image)),
                    cluster_id: Some(sim::CLUSTER_ID.into()),
                    known_cluster_id: Some(sim::CLUSTER_ID.into()),
                    mode,
                    read_consistency: rc,
                    ..World::default()
                };
                for ordinal in 0..replicas {
                    let (pod_image, down) = &pod_facts[ordinal as usize];
                    w.fresh_pod(ordinal, pod_image);
                    w.pods.get_mut(&ordinal).unwrap().down_ticks = *down;
                }
                for (i, ordinal) in ordinals.iter().enumerate() {
                    let pod = w.pods.get_mut(ordinal).unwrap();
                    let up_now = matches!(fates[i], Fate::Up);
                    match fates[i] {
                        Fate::Wiped => {}
                        Fate::Up => {
                            pod.initialized = true;
                            pod.down_ticks = 0;
                        }
                        Fate::Down(t) => {
                            pod.initialized = true;
                            pod.down_ticks = t;
                        }
                    }
                    let id = if matches!(fates[i], Fate::Wiped) {
                        10_000 + u64::from(*ordinal)
                    } else {
                        pod.id
                    };
                    w.members.insert(
                        id,
                        sim::SimMember {
                            ordinal: *ordinal,
                            role: if i < voters as usize {
                                MemberRole::Voter
                            } else {
                                MemberRole::Learner
                            },
                            lag: if up_now { lags[i] } else { lags[i] + 1_000 },
                            unhealthy_ticks: if up_now { 0 } else { unhealthy[i] },
                        },
                    );
                }
                w.leader = None;
                w.tick();
                w
            },
        )
}

/// A cluster being born: nothing yet, or a StatefulSet of uninitialized pods.
fn arb_fresh_world() -> impl Strategy<Value = World> {
    proptest::option::of((1..6u32, arb_image(), proptest::collection::vec(0..5u64, 6))).prop_map(
        |sts| {
            let mut w = World::default();
            if let Some((replicas, image, downs)) = sts {
                w.sts = Some((replicas, image.clone()));
                for ordinal in 0..replicas {
                    w.fresh_pod(ordinal, &image);
                    w.pods.get_mut(&ordinal).unwrap().down_ticks = downs[ordinal as usize];
                }
            }
            w
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// (a), (b), (c) and the other per-step rules hold for any observation at all.
    #[test]
    fn every_step_is_safe(d in arb_desired(9, 4), o in arb_observed(), paused in any::<bool>()) {
        let d = Desired { paused, ..d };
        let policy = Policy::default();
        let step = plan(&d, &o, &policy);
        if let Err(e) = check_safety(&d, &o, &policy, &step) {
            return Err(TestCaseError::fail(format!("{e}\nobserved: {o:?}\ndesired: {d:?}")));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// (d) From any start with a healthy quorum, the planner reaches `Done` with the desired
    /// shape in a bounded number of steps, every one of them safe.
    #[test]
    fn converges_from_a_healthy_quorum(
        mut w in prop_oneof![4 => arb_running_world(), 1 => arb_fresh_world()],
        d in arb_desired(5, 3),
    ) {
        prop_assume!(w.cluster_id.is_none() || w.has_quorum());
        let start = w.clone();
        match converge(&mut w, &d, 600) {
            Ok(_) => {
                if let Err(e) = assert_shape(&w, &d) {
                    return Err(TestCaseError::fail(format!("{e}\nstart: {start:?}")));
                }
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e}\nstart: {start:?}"))),
        }
    }
}
