//! Validate stage: the spec the store really runs with, and what the planner is to reach,
//! checked without a client. Rejects what the CRD's admission rules should already have
//! rejected (the CRD may have been installed without them).

use std::borrow::Cow;

use k8s_openapi::api::apps::v1::StatefulSet;

use crate::crd::{MAX_READ_REPLICAS, MAX_REPLICAS, ReplicatedStore, ReplicatedStoreSpec};
use crate::planner::Desired;
use crate::resources::CONTAINER;

/// Why a spec cannot be reconciled. The messages are shown in the `InvalidSpec` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `spec.replicas` out of range.
    #[error("invalid spec: replicas is {replicas}, must be between 1 and {MAX_REPLICAS}")]
    Replicas {
        /// What the spec says.
        replicas: i32,
    },
    /// `spec.readReplicas` out of range.
    #[error(
        "invalid spec: readReplicas is {read_replicas}, must be between 0 and {MAX_READ_REPLICAS}"
    )]
    ReadReplicas {
        /// What the spec says.
        read_replicas: i32,
    },
}

/// A store that passed validation.
#[derive(Debug, Clone)]
pub struct Valid<'a> {
    /// The resource with the spec it really runs with: a store made in plaintext by an
    /// operator before TLS stays in plaintext ([`legacy_plaintext`]), since switching a running
    /// cluster's transport under it would cut its members off from each other.
    pub rs: Cow<'a, ReplicatedStore>,
    /// What the planner is to reach; `image` is the spec's until the build stage sets the pod
    /// template revision.
    pub desired: Desired,
}

/// Checks `rs` against what its StatefulSet (if any) already runs.
pub fn validate<'a>(
    rs: &'a ReplicatedStore,
    existing: Option<&StatefulSet>,
) -> Result<Valid<'a>, Error> {
    let rs = if legacy_plaintext(rs, existing) {
        let mut r = rs.clone();
        r.spec.tls.insecure_plaintext = true;
        Cow::Owned(r)
    } else {
        Cow::Borrowed(rs)
    };
    let desired = desired(&rs.spec)?;
    Ok(Valid { rs, desired })
}

/// The planner's target, read from the spec.
pub fn desired(spec: &ReplicatedStoreSpec) -> Result<Desired, Error> {
    let voters = u32::try_from(spec.replicas)
        .ok()
        .filter(|v| (1..=MAX_REPLICAS.unsigned_abs()).contains(v))
        .ok_or(Error::Replicas {
            replicas: spec.replicas,
        })?;
    let learners = u32::try_from(spec.read_replicas)
        .ok()
        .filter(|l| *l <= MAX_READ_REPLICAS.unsigned_abs())
        .ok_or(Error::ReadReplicas {
            read_replicas: spec.read_replicas,
        })?;
    Ok(Desired {
        voters,
        learners,
        image: spec.image.clone(),
        mode: spec.replication.mode,
        read_consistency: spec.replication.read_consistency,
        paused: spec.paused,
        restore: spec.bootstrap.is_some(),
    })
}

/// Whether `rs` asks for TLS but its existing StatefulSet runs its members without it (made
/// by an operator before TLS).
pub fn legacy_plaintext(rs: &ReplicatedStore, existing: Option<&StatefulSet>) -> bool {
    runs_plaintext(existing) && !rs.spec.tls.insecure_plaintext
}

/// Whether an existing StatefulSet runs its members without TLS.
fn runs_plaintext(sts: Option<&StatefulSet>) -> bool {
    sts.and_then(|s| s.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| {
            env.iter().any(|e| {
                e.name == "RSTORE_INSECURE_PLAINTEXT" && e.value.as_deref() == Some("true")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_rejects_impossible_specs() {
        let ok = ReplicatedStoreSpec::default();
        assert_eq!(desired(&ok).unwrap().total(), 3);
        for (replicas, read_replicas) in [(0, 0), (10, 0), (-1, 0), (3, -1), (3, 17)] {
            let spec = ReplicatedStoreSpec {
                replicas,
                read_replicas,
                ..ReplicatedStoreSpec::default()
            };
            assert!(desired(&spec).is_err(), "{replicas}/{read_replicas}");
        }
    }
}
