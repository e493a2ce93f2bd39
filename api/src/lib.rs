//! The vocabulary shared by the node, the operator and the benchmark: how a cluster
//! acknowledges writes ([`ReplicationMode`]) and serves reads by default
//! ([`ReadConsistency`]), the admin API's JSON bodies ([`admin`]), and (feature `client`)
//! one typed client of a node's HTTP API ([`client`]).
//!
//! One definition, so that the names the node's admin API accepts, the values the CRD allows
//! and the benchmark's `--mode` cannot drift apart. The serde form is the lowercase name, and
//! the variant order is part of the node's Raft log format (bincode): append, never reorder.

pub mod admin;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "pki")]
pub mod pki;
pub mod rate;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// When a write is acknowledged. A cluster-wide setting, changed through the Raft log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// A majority of voters has the write durable, and the leader applied it.
    #[default]
    Quorum,
    /// Every voter has the write durable.
    Sync,
    /// The leader's own log has the write durable; a leader crash can lose it.
    Async,
}

/// How reads are served when the request does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// Read index on the leader: sees every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// The leader's local state, without a quorum round.
    Leader,
    /// The answering node's local state; may lag.
    Stale,
}

/// A name that is none of the values; its message lists the ones that are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub expected: &'static str,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} '{}'; use {}",
            self.what, self.name, self.expected
        )
    }
}

impl std::error::Error for UnknownName {}

/// The names of an enum's values, one list: `ALL`, `as_str`, `FromStr` and `Display`.
macro_rules! named {
    ($ty:ident, $what:literal, $expected:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name in the admin API, the CRD, the command line and query strings.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        name: s.to_string(),
                        expected: $expected,
                    }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named!(ReplicationMode, "replication_mode", "quorum, sync or async", {
    Quorum => "quorum",
    Sync => "sync",
    Async => "async",
});

named!(ReadConsistency, "read_consistency", "linearizable, leader or stale", {
    Linearizable => "linearizable",
    Leader => "leader",
    Stale => "stale",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for &m in ReplicationMode::ALL {
            assert_eq!(m.as_str().parse::<ReplicationMode>(), Ok(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{m}\""));
            assert_eq!(serde_json::from_str::<ReplicationMode>(&json).unwrap(), m);
        }
        for &c in ReadConsistency::ALL {
            assert_eq!(c.as_str().parse::<ReadConsistency>(), Ok(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
        }
        let err = "Quorum".parse::<ReplicationMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown replication_mode 'Quorum'; use quorum, sync or async"
        );
        assert!("".parse::<ReadConsistency>().is_err());
    }
}
