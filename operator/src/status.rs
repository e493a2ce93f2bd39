//! Report: the `ReplicatedStore` status computed from one observation and the planner's step,
//! as a pure function. Conditions keep their `lastTransitionTime` while their status stays.
//!
//! - `Available`: a leader is known, a quorum of voters is healthy, and the cluster has been
//!   formed (it reached the desired number of voters at least once).
//! - `Progressing`: True while the operator acts or waits for a step; False once the cluster
//!   matches the spec (`Reconciled`), when a step is refused (`StepRefused`), or when paused.
//! - `Degraded`: True when quorum or the leader is lost (with the recovery steps), or when a
//!   member is unhealthy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{MemberStatus, Phase, ReplicatedStore, ReplicatedStoreStatus};
use crate::observe::Observation;
use crate::planner::{
    Desired, Observed, Policy, RemoveReason, Step, member_caught_up, member_healthy, quorum,
};
use crate::resources::Names;

/// Condition types.
pub const AVAILABLE: &str = "Available";
/// Condition types.
pub const PROGRESSING: &str = "Progressing";
/// Condition types.
pub const DEGRADED: &str = "Degraded";

/// The status to write after `step` was chosen (and, for an action, attempted).
pub fn compute(
    rs: &ReplicatedStore,
    desired: &Desired,
    obs: &Observation,
    observed: &Observed,
    step: &Step,
    policy: &Policy,
    now: &Time,
) -> ReplicatedStoreStatus {
    let names = Names::of(rs);
    let previous = rs.status.clone().unwrap_or_default();
    let generation = rs.metadata.generation;
    let cluster = observed.cluster.as_ref();
    let (voters, healthy_voters) = cluster.map_or((0, 0), |c| {
        let voters: Vec<_> = c
            .members
            .iter()
            .filter(|m| m.role == crate::crd::MemberRole::Voter)
            .collect();
        let healthy = voters
            .iter()
            .filter(|m| member_healthy(m, c.leader_id, policy))
            .count();
        (voters.len(), healthy)
    });
    let formed = voters >= desired.voters as usize
        || !matches!(
            previous.phase,
            None | Some(Phase::Pending) | Some(Phase::Bootstrapping)
        );
    let members: Vec<MemberStatus> = cluster
        .iter()
        .flat_map(|c| {
            let names = &names;
            c.members.iter().map(move |m| MemberStatus {
                pod: m.ordinal.map(|o| names.pod(o)),
                node_id: m.id.to_string(),
                role: m.role,
                healthy: member_caught_up(m, c.leader_id, policy),
                lag: m.lag,
            })
        })
        .collect();
    let unhealthy: Vec<String> = members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| match &m.pod {
            Some(p) => format!("{p} (node {})", m.node_id),
            None => format!("node {}", m.node_id),
        })
        .collect();
    let has_quorum = cluster.is_some() && healthy_voters >= quorum(voters.max(1));
    let ready_pods = obs.pods.values().filter(|p| p.ready).count();

    let phase = phase(desired, obs, observed, step, formed, &unhealthy);
    let available = if !formed {
        cond(
            AVAILABLE,
            false,
            "Bootstrapping",
            "the cluster is still being formed",
        )
    } else if cluster.is_none() {
        cond(AVAILABLE, false, "NoLeader", "no member knows a leader")
    } else if has_quorum && ready_pods < quorum(voters.max(1)) {
        // Raft can be healthy a moment before the kubelet's readiness probes say so, and
        // until they do the client Service routes nowhere: `kubectl wait
        // --for=condition=Available` followed by a request through the Service must work.
        cond(
            AVAILABLE,
            false,
            "PodsNotReady",
            &format!(
                "{ready_pods} of {} pods Ready, {} needed: the client Service routes only to Ready pods (readiness probe /readyz)",
                obs.pods.len(),
                quorum(voters.max(1))
            ),
        )
    } else if !has_quorum {
        cond(
            AVAILABLE,
            false,
            "QuorumLost",
            &format!(
                "{healthy_voters} of {voters} voters healthy, {} needed",
                quorum(voters)
            ),
        )
    } else {
        cond(
            AVAILABLE,
            true,
            "QuorumHealthy",
            &format!(
                "{healthy_voters} of {voters} voters healthy; leader {}",
                obs.leader_pod(&names).unwrap_or_else(|| "unknown".into())
            ),
        )
    };
    let progressing = match step {
        Step::Done => cond(
            PROGRESSING,
            false,
            "Reconciled",
            "the cluster matches the spec",
        ),
        Step::Refuse { reason } => cond(PROGRESSING, false, "StepRefused", reason),
        Step::Wait { reason } if desired.paused => cond(PROGRESSING, false, "Paused", reason),
        Step::Degraded { reason, .. } => cond(PROGRESSING, false, "QuorumLost", reason),
        Step::Wait { reason } => cond(PROGRESSING, true, "Waiting", reason),
        action => cond(PROGRESSING, true, step_reason(action), &action.to_string()),
    };
    // A store restored from a backup whose first pod cannot restore it: say why, from the
    // pod's termination message, instead of waiting in silence.
    let progressing = match restore_failure(rs, obs, formed) {
        Some(why) => cond(PROGRESSING, false, RESTORE_FAILED, &why),
        None => progressing,
    };
    let degraded = match step {
        Step::Degraded {
            reason,
            recovery_steps,
        } => {
            let steps: Vec<String> = recovery_steps
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{}) {s}", i + 1))
                .collect();
            let kind = if cluster.is_none() {
                "NoLeader"
            } else {
                "QuorumLost"
            };
            cond(
                DEGRADED,
                true,
                kind,
                &format!("{reason}. Recovery: {}", steps.join(" ")),
            )
        }
        _ if !unhealthy.is_empty() => cond(
            DEGRADED,
            true,
            "MemberUnhealthy",
            &format!("unhealthy or lagging: {}", unhealthy.join(", ")),
        ),
        _ => cond(
            DEGRADED,
            false,
            "AllMembersHealthy",
            "every member is healthy",
        ),
    };
    let conditions = [available, progressing, degraded]
        .into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = previous
                .conditions
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
            c
        })
        .collect();
    ReplicatedStoreStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        ready_replicas: i32::try_from(obs.pods.values().filter(|p| p.ready).count())
            .unwrap_or(i32::MAX),
        leader: obs.leader_pod(&names),
        term: obs.view.as_ref().map(|v| v.term),
        cluster_id: cluster
            .map(|c| c.cluster_id.clone())
            .or(observed.known_cluster_id.clone()),
        members,
        credentials_secret: obs.credentials_secret.clone(),
    }
}

/// The `Progressing` reason of a store whose first pod cannot restore the backup it is
/// created from.
pub const RESTORE_FAILED: &str = "RestoreFailed";

/// Why pod 0 of a store created from a backup could not restore it, while the cluster is not
/// formed yet: what to fix, and the node's own words.
fn restore_failure(rs: &ReplicatedStore, obs: &Observation, formed: bool) -> Option<String> {
    if formed || rs.spec.bootstrap.is_none() {
        return None;
    }
    let pod = obs.pods.get(&0)?;
    let why = pod.failed_start.as_deref()?;
    Some(format!(
        "pod {}, which restores the backup, failed: {why}. Fix spec.bootstrap.fromBackup, the \
         backup or its credentials Secret; the pod retries with backoff",
        pod.name
    ))
}

fn phase(
    desired: &Desired,
    obs: &Observation,
    observed: &Observed,
    step: &Step,
    formed: bool,
    unhealthy: &[String],
) -> Phase {
    if desired.paused {
        return Phase::Paused;
    }
    match step {
        Step::Degraded { .. } => return Phase::Degraded,
        Step::CreateStatefulSet { .. } => return Phase::Pending,
        Step::InitCluster { .. } => return Phase::Bootstrapping,
        _ if !formed => return Phase::Bootstrapping,
        Step::Done => return Phase::Available,
        Step::RemoveMember {
            reason:
                RemoveReason::StaleId { .. } | RemoveReason::Orphan | RemoveReason::Unreachable { .. },
            ..
        } => return Phase::Healing,
        Step::AddLearner { .. }
        | Step::PromoteVoter { .. }
        | Step::ScaleStatefulSet { .. }
        | Step::RemoveMember { .. } => return Phase::Scaling,
        Step::SetStatefulSetImage { .. } | Step::RestartPod { .. } | Step::SetConfig { .. } => {
            return Phase::Upgrading;
        }
        Step::Wait { .. } | Step::Refuse { .. } => {}
    }
    // Waiting or refused: say what the cluster is in the middle of.
    let target = desired.total() as usize;
    let members = observed.cluster.as_ref().map_or(0, |c| c.members.len());
    let sts_replicas = observed
        .statefulset
        .as_ref()
        .map_or(0, |s| s.replicas as usize);
    if observed.cluster.is_none() || !unhealthy.is_empty() {
        Phase::Healing
    } else if members != target || sts_replicas != target {
        Phase::Scaling
    } else if obs
        .pods
        .values()
        .any(|p| p.revision.as_deref().unwrap_or_default() != desired.image)
    {
        Phase::Upgrading
    } else {
        Phase::Available
    }
}

/// The CamelCase reason of an action, for conditions and Events.
pub fn step_reason(step: &Step) -> &'static str {
    match step {
        Step::CreateStatefulSet { .. } => "CreatingStatefulSet",
        Step::ScaleStatefulSet { .. } => "ScalingStatefulSet",
        Step::SetStatefulSetImage { .. } => "UpdatingPodTemplate",
        Step::InitCluster { .. } => "InitializingCluster",
        Step::AddLearner { .. } => "AddingMember",
        Step::PromoteVoter { .. } => "PromotingMember",
        Step::RemoveMember { .. } => "RemovingMember",
        Step::RestartPod { .. } => "RestartingPod",
        Step::SetConfig { .. } => "ApplyingConfig",
        Step::Wait { .. } => "Waiting",
        Step::Refuse { .. } => "StepRefused",
        Step::Degraded { .. } => "QuorumLost",
        Step::Done => "Reconciled",
    }
}

fn cond(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// A one-line summary for logs and the local control plane.
pub fn summary(rs: &ReplicatedStore, status: &ReplicatedStoreStatus) -> String {
    let phase = status.phase.map_or("-".to_owned(), |p| format!("{p:?}"));
    let members: Vec<String> = status
        .members
        .iter()
        .map(|m| {
            let role = match m.role {
                crate::crd::MemberRole::Voter => "V",
                crate::crd::MemberRole::Learner => "L",
            };
            let pod = m.pod.clone().unwrap_or_else(|| format!("?{}", m.node_id));
            let mark = if status.leader.as_deref() == m.pod.as_deref() && m.pod.is_some() {
                "*"
            } else {
                ""
            };
            format!("{pod}{mark}:{role}{}", if m.healthy { "" } else { "!" })
        })
        .collect();
    format!(
        "{}/{} {phase} ready={} mode={} members=[{}]",
        rs.namespace().unwrap_or_default(),
        rs.name_any(),
        status.ready_replicas,
        rs.spec.replication.mode.as_str(),
        members.join(" ")
    )
}
