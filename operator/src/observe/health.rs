//! The last part of the observe step: the observation reduced to the planner's input
//! ([`Observed`]), with the clocks that turn "unhealthy now" into "unhealthy for this long"
//! ([`HealthClock`], pure: the time is passed in, so tests drive it). [`Clocks`] keeps one per
//! store across reconciles.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::crd::ReplicatedStore;
use crate::observe::Observation;
use crate::planner::{
    ClusterObs, MemberObs, NodeObs, Observed, PodObs, Policy, StatefulSetObs, member_healthy,
};
use crate::resources::statefulset::revision_of;

/// The health clock of every store, by the store's `namespace/name`.
#[derive(Debug, Default)]
pub struct Clocks(Mutex<HashMap<String, HealthClock>>);

impl Clocks {
    /// `obs` of the store `rs` (`key`) reduced to the planner's input, its clock advanced to
    /// now.
    pub fn observed(
        &self,
        key: &str,
        rs: &ReplicatedStore,
        obs: &Observation,
        policy: &Policy,
    ) -> Observed {
        let sts_revision = obs
            .statefulset
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| revision_of(s.template.metadata.as_ref()));
        let known_cluster_id = rs.status.as_ref().and_then(|s| s.cluster_id.clone());
        let mut clocks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        clocks.entry(key.to_owned()).or_default().to_planner(
            obs,
            sts_revision,
            known_cluster_id,
            policy,
            Instant::now(),
        )
    }
}

/// How long each member has been unhealthy, and how long no leader has been known, for one
/// `ReplicatedStore`. Kept in memory: after an operator restart every clock starts again,
/// which only delays a replacement, never hastens one.
#[derive(Debug, Default)]
pub struct HealthClock {
    unhealthy_since: HashMap<u64, Instant>,
    no_leader_since: Option<Instant>,
}

impl HealthClock {
    /// Reduces the observation to the planner's input, advancing the clocks to `now`.
    pub fn to_planner(
        &mut self,
        obs: &Observation,
        revision_of_sts: Option<String>,
        known_cluster_id: Option<String>,
        policy: &Policy,
        now: Instant,
    ) -> Observed {
        let statefulset = obs.statefulset.as_ref().map(|s| StatefulSetObs {
            replicas: s
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0),
            image: revision_of_sts.clone().unwrap_or_default(),
        });
        let pods = obs
            .pods
            .values()
            .map(|p| PodObs {
                ordinal: p.ordinal,
                ready: p.ready,
                image: p.revision.clone().unwrap_or_default(),
                node: p.node.as_ref().map(|n| NodeObs {
                    id: n.id,
                    cluster_id: n.cluster_id.clone(),
                }),
            })
            .collect();
        let mut cluster = obs.view.as_ref().and_then(|v| {
            let leader_id = v.leader_id?;
            let members: Vec<MemberObs> = v
                .members
                .iter()
                .map(|m| MemberObs {
                    id: m.id,
                    ordinal: obs.member_ordinals.get(&m.id).copied().flatten(),
                    role: m.role,
                    lag: m.lag,
                    last_contact_ms: m.last_contact_ms,
                    unhealthy_for_ms: 0,
                })
                .collect();
            Some(ClusterObs {
                cluster_id: v.cluster_id.clone()?,
                leader_id,
                unconfirmed: obs.unconfirmed.clone(),
                members,
                membership_changing: v.membership_changing,
                mode: v.replication_mode,
                read_consistency: v.read_consistency,
            })
        });
        match &mut cluster {
            Some(c) => {
                self.no_leader_since = None;
                let leader = c.leader_id;
                self.unhealthy_since
                    .retain(|id, _| c.members.iter().any(|m| m.id == *id));
                for m in &mut c.members {
                    if member_healthy(m, leader, policy) {
                        self.unhealthy_since.remove(&m.id);
                    } else {
                        let since = *self.unhealthy_since.entry(m.id).or_insert(now);
                        m.unhealthy_for_ms = millis(now - since);
                    }
                }
            }
            None => {
                self.no_leader_since.get_or_insert(now);
            }
        }
        Observed {
            statefulset,
            pods,
            cluster,
            known_cluster_id,
            no_leader_for_ms: self.no_leader_since.map_or(0, |s| millis(now - s)),
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodeapi::ClusterView;

    #[test]
    fn clocks_track_unhealthy_members_and_a_missing_leader() {
        use crate::nodeapi::MemberView;
        let mut clock = HealthClock::default();
        let policy = Policy::default();
        let t0 = Instant::now();
        let mut obs = Observation::default();
        let none = clock.to_planner(&obs, None, None, &policy, t0);
        assert_eq!(none.no_leader_for_ms, 0);
        let later = clock.to_planner(
            &obs,
            None,
            None,
            &policy,
            t0 + std::time::Duration::from_secs(3),
        );
        assert_eq!(later.no_leader_for_ms, 3000);
        let member = |id, contact| MemberView {
            id,
            role: crate::crd::MemberRole::Voter,
            client_url: String::new(),
            peer_url: String::new(),
            matched_index: None,
            lag: Some(0),
            last_contact_ms: contact,
        };
        obs.view = Some(ClusterView {
            cluster_id: Some("c".into()),
            leader_id: Some(1),
            term: 2,
            members: vec![member(1, None), member(2, Some(10)), member(3, None)],
            membership_changing: false,
            replication_mode: Default::default(),
            read_consistency: Default::default(),
            oldest_revision: 1,
            revision: 0,
        });
        let t1 = t0 + std::time::Duration::from_secs(10);
        let a = clock.to_planner(&obs, None, None, &policy, t1);
        assert_eq!(a.no_leader_for_ms, 0);
        let b = clock.to_planner(
            &obs,
            None,
            None,
            &policy,
            t1 + std::time::Duration::from_secs(7),
        );
        let c = b.cluster.unwrap();
        let by_id = |id| {
            c.members
                .iter()
                .find(|m| m.id == id)
                .unwrap()
                .unhealthy_for_ms
        };
        assert_eq!((by_id(1), by_id(2), by_id(3)), (0, 0, 7000));
    }
}
