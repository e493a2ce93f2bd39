//! A small, pure model of a cluster for testing the planner: it turns its state into an
//! [`Observed`], applies a [`Step`] as if it succeeded, and lets time pass.
//!
//! It is deliberately simple (elections are instant, learners catch up at a fixed rate, a
//! restarted pod is down for one tick) but it keeps the facts the planner's safety rests on:
//! an id lives and dies with the pod's volume, a pod below the StatefulSet's count comes back
//! after a while, and a leader needs a reachable quorum of voters.

use std::collections::BTreeMap;

use super::{ClusterObs, MemberObs, NodeObs, Observed, PodObs, Policy, StatefulSetObs, Step};
use crate::crd::{MemberRole, ReadConsistency, ReplicationMode};

/// Simulated time per planner step.
pub const TICK_MS: u64 = 1_000;
/// Lag of a learner when it joins; it catches up by [`CATCH_UP_PER_TICK`] each tick.
pub const LAG_ON_JOIN: u64 = 1_000;
/// Entries a reachable member catches up per tick.
pub const CATCH_UP_PER_TICK: u64 = 400;
/// The one cluster id the simulation makes.
pub const CLUSTER_ID: &str = "cluster-1";

/// The policy the simulated time scale is built for.
pub fn policy() -> Policy {
    Policy {
        max_lag: 100,
        contact_timeout_ms: 3 * TICK_MS,
        replace_after_ms: 60 * TICK_MS,
        degraded_after_ms: 30 * TICK_MS,
    }
}

/// A pod and its volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPod {
    /// Node id on the volume.
    pub id: u64,
    /// The volume holds cluster state (the node joined or initialized a cluster).
    pub initialized: bool,
    /// Image the pod runs.
    pub image: String,
    /// Ticks until the pod answers again (0: up).
    pub down_ticks: u64,
}

/// A Raft member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMember {
    /// Ordinal of the pod its address names.
    pub ordinal: u32,
    /// Voter or learner.
    pub role: MemberRole,
    /// Entries behind the leader.
    pub lag: u64,
    /// Ticks it has been unreachable.
    pub unhealthy_ticks: u64,
}

/// The whole simulated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// StatefulSet replicas and template image.
    pub sts: Option<(u32, String)>,
    /// Pods that exist, by ordinal.
    pub pods: BTreeMap<u32, SimPod>,
    /// Raft members, by id.
    pub members: BTreeMap<u64, SimMember>,
    /// Current leader.
    pub leader: Option<u64>,
    /// Cluster id once initialized.
    pub cluster_id: Option<String>,
    /// Cluster id recorded in the resource's status.
    pub known_cluster_id: Option<String>,
    /// Replication mode.
    pub mode: ReplicationMode,
    /// Read consistency.
    pub read_consistency: ReadConsistency,
    /// Next fresh node id.
    pub next_id: u64,
    /// Ticks without a leader.
    pub no_leader_ticks: u64,
}

impl Default for World {
    fn default() -> Self {
        Self {
            sts: None,
            pods: BTreeMap::new(),
            members: BTreeMap::new(),
            leader: None,
            cluster_id: None,
            known_cluster_id: None,
            mode: ReplicationMode::Quorum,
            read_consistency: ReadConsistency::Linearizable,
            next_id: 100,
            no_leader_ticks: 0,
        }
    }
}

impl World {
    /// A healthy, converged cluster: voters on pods `0..voters`, learners after them.
    pub fn healthy(voters: u32, learners: u32, image: &str) -> Self {
        let mut w = Self {
            sts: Some((voters + learners, image.to_owned())),
            cluster_id: Some(CLUSTER_ID.into()),
            known_cluster_id: Some(CLUSTER_ID.into()),
            ..Self::default()
        };
        for ordinal in 0..voters + learners {
            let id = w.fresh_pod(ordinal, image);
            w.pods.get_mut(&ordinal).expect("just made").initialized = true;
            let role = if ordinal < voters {
                MemberRole::Voter
            } else {
                MemberRole::Learner
            };
            w.members.insert(
                id,
                SimMember {
                    ordinal,
                    role,
                    lag: 0,
                    unhealthy_ticks: 0,
                },
            );
        }
        w.leader = w.members.keys().next().copied();
        w
    }

    /// Puts an empty pod (new volume, new id) at `ordinal`; returns its id.
    pub fn fresh_pod(&mut self, ordinal: u32, image: &str) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pods.insert(
            ordinal,
            SimPod {
                id,
                initialized: false,
                image: image.to_owned(),
                down_ticks: 0,
            },
        );
        id
    }

    /// Id of the member on pod `ordinal`.
    pub fn member_at(&self, ordinal: u32) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.ordinal == ordinal)
            .map(|(id, _)| *id)
    }

    /// The member's pod answers with the member's id.
    pub fn reachable(&self, id: u64) -> bool {
        self.members.get(&id).is_some_and(|m| {
            self.pods
                .get(&m.ordinal)
                .is_some_and(|p| p.down_ticks == 0 && p.id == id)
        })
    }

    fn voter_ids(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| m.role == MemberRole::Voter)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Reachable voters form a quorum of all voters.
    pub fn has_quorum(&self) -> bool {
        let voters = self.voter_ids();
        let up = voters.iter().filter(|id| self.reachable(**id)).count();
        !voters.is_empty() && up >= super::quorum(voters.len())
    }

    fn elect(&mut self) {
        let keep = self.leader.is_some_and(|l| {
            self.reachable(l)
                && self
                    .members
                    .get(&l)
                    .is_some_and(|m| m.role == MemberRole::Voter)
        });
        if keep && self.has_quorum() {
            return;
        }
        self.leader = if self.has_quorum() {
            self.voter_ids().into_iter().find(|id| self.reachable(*id))
        } else {
            None
        };
    }

    /// What the operator would observe now.
    pub fn observe(&self) -> Observed {
        let pods = self
            .pods
            .iter()
            .map(|(ordinal, p)| {
                let up = p.down_ticks == 0;
                PodObs {
                    ordinal: *ordinal,
                    ready: up && self.members.contains_key(&p.id),
                    image: p.image.clone(),
                    node: up.then(|| NodeObs {
                        id: p.id,
                        cluster_id: if p.initialized {
                            self.cluster_id.clone()
                        } else {
                            None
                        },
                    }),
                }
            })
            .collect();
        let cluster = self
            .leader
            .filter(|l| self.reachable(*l))
            .map(|leader_id| ClusterObs {
                cluster_id: self.cluster_id.clone().unwrap_or_default(),
                leader_id,
                unconfirmed: None,
                members: self
                    .members
                    .iter()
                    .map(|(id, m)| {
                        let up = self.reachable(*id);
                        MemberObs {
                            id: *id,
                            ordinal: Some(m.ordinal),
                            role: m.role,
                            lag: up.then_some(m.lag),
                            last_contact_ms: up.then_some(TICK_MS / 10),
                            unhealthy_for_ms: m.unhealthy_ticks * TICK_MS,
                        }
                    })
                    .collect(),
                membership_changing: false,
                mode: self.mode,
                read_consistency: self.read_consistency,
            });
        Observed {
            statefulset: self.sts.as_ref().map(|(replicas, image)| StatefulSetObs {
                replicas: *replicas,
                image: image.clone(),
            }),
            pods,
            cluster,
            known_cluster_id: self.known_cluster_id.clone(),
            no_leader_for_ms: self.no_leader_ticks * TICK_MS,
        }
    }

    /// Applies a step as if it succeeded. An `Err` means the step could not have succeeded:
    /// the planner asked for something the world does not allow.
    pub fn apply(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::CreateStatefulSet { replicas, image } => {
                if self.sts.is_some() {
                    return Err("StatefulSet exists".into());
                }
                self.sts = Some((*replicas, image.clone()));
                self.sync_pods();
            }
            Step::ScaleStatefulSet { replicas } => {
                let (r, _) = self.sts.as_mut().ok_or("no StatefulSet")?;
                *r = *replicas;
                self.sync_pods();
            }
            Step::SetStatefulSetImage { image } => {
                self.sts.as_mut().ok_or("no StatefulSet")?.1 = image.clone();
            }
            Step::InitCluster { pod } => {
                let p = self.pods.get_mut(pod).ok_or("no such pod")?;
                if p.down_ticks > 0 || p.initialized || self.cluster_id.is_some() {
                    return Err(format!("cannot init pod {pod}"));
                }
                p.initialized = true;
                let id = p.id;
                self.cluster_id = Some(CLUSTER_ID.into());
                self.known_cluster_id = Some(CLUSTER_ID.into());
                self.members.insert(
                    id,
                    SimMember {
                        ordinal: *pod,
                        role: MemberRole::Voter,
                        lag: 0,
                        unhealthy_ticks: 0,
                    },
                );
                self.leader = Some(id);
            }
            Step::AddLearner { pod, id } => {
                self.need_leader()?;
                let p = self.pods.get_mut(pod).ok_or("no such pod")?;
                if p.down_ticks > 0 || p.id != *id || self.members.contains_key(id) {
                    return Err(format!("cannot add pod {pod} as {id}"));
                }
                p.initialized = true;
                self.members.insert(
                    *id,
                    SimMember {
                        ordinal: *pod,
                        role: MemberRole::Learner,
                        lag: LAG_ON_JOIN,
                        unhealthy_ticks: 0,
                    },
                );
            }
            Step::PromoteVoter { id } => {
                self.need_leader()?;
                let m = self.members.get_mut(id).ok_or("no such member")?;
                if m.role != MemberRole::Learner || m.lag > policy().max_lag {
                    return Err(format!("cannot promote {id}"));
                }
                m.role = MemberRole::Voter;
            }
            Step::RemoveMember { id, .. } => {
                self.need_leader()?;
                self.members.remove(id).ok_or("no such member")?;
                self.elect();
            }
            Step::RestartPod { pod } => {
                let image = self.sts.as_ref().ok_or("no StatefulSet")?.1.clone();
                let p = self.pods.get_mut(pod).ok_or("no such pod")?;
                p.image = image;
                p.down_ticks = 1;
                self.elect();
            }
            Step::SetConfig {
                mode,
                read_consistency,
            } => {
                self.need_leader()?;
                self.mode = *mode;
                self.read_consistency = *read_consistency;
            }
            Step::Wait { .. } | Step::Refuse { .. } | Step::Degraded { .. } | Step::Done => {}
        }
        Ok(())
    }

    fn need_leader(&self) -> Result<(), String> {
        match self.leader {
            Some(l) if self.reachable(l) => Ok(()),
            _ => Err("no leader".into()),
        }
    }

    /// The StatefulSet controller: pods below the count exist (new ones with empty volumes),
    /// pods at or above it are deleted with their volumes (`whenScaled: Delete`).
    fn sync_pods(&mut self) {
        let Some((replicas, image)) = self.sts.clone() else {
            return;
        };
        self.pods.retain(|ordinal, _| *ordinal < replicas);
        for ordinal in 0..replicas {
            if !self.pods.contains_key(&ordinal) {
                self.fresh_pod(ordinal, &image);
            }
        }
    }

    /// One tick of time: pods come back, members catch up, leaders get elected.
    pub fn tick(&mut self) {
        for p in self.pods.values_mut() {
            p.down_ticks = p.down_ticks.saturating_sub(1);
        }
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            let up = self.reachable(id);
            let m = self.members.get_mut(&id).expect("listed");
            if up {
                m.lag = m.lag.saturating_sub(CATCH_UP_PER_TICK);
                m.unhealthy_ticks = 0;
            } else {
                m.unhealthy_ticks += 1;
            }
        }
        self.elect();
        if self.leader.is_some() || self.cluster_id.is_none() {
            self.no_leader_ticks = 0;
        } else {
            self.no_leader_ticks += 1;
        }
    }
}
