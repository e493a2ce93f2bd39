//! rstore operator: reconciles `ReplicatedStore` resources into Raft clusters of rstore nodes.
//!
//! Reconcile is a pipeline (see DESIGN.md, "Operator"): observe the Kubernetes objects and
//! every node's view of Raft, decide the next safe step with a pure function, then act and
//! report status. This crate so far holds the parts that need no API server:
//!
//! - [`crd`]: the `ReplicatedStore` types, from which the CRD YAML is generated;
//! - [`planner`]: the pure step planner, which picks exactly one next step;
//! - [`cli`]: the command line of the `operator` binary.
//!
//! The controller loop (observe, act, status) comes in a later step.

pub mod cli;
pub mod crd;
pub mod planner;

/// Errors of the operator crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The generated CRD could not be written as YAML.
    #[error("cannot serialize the CRD as YAML: {0}")]
    CrdSerialize(#[source] serde_yaml::Error),

    /// Output could not be written (for example a closed stdout pipe).
    #[error("cannot write output: {0}")]
    WriteOutput(#[source] std::io::Error),

    /// The spec asks for something impossible (the CRD's admission rules should have caught it).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// `operator run` was asked for, but the controller does not exist yet.
    #[error(
        "`operator run` is not implemented yet: the controller loop is still being built; \
         use `operator crd` to print the CRD"
    )]
    RunNotImplemented,
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
