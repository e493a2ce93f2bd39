//! rstore operator: reconciles `ReplicatedStore` resources into Raft clusters of rstore nodes.
//!
//! Reconcile is a pipeline (see DESIGN.md, "Operator"): observe the Kubernetes objects and
//! every node's view of Raft, decide the next safe step with a pure function, then act and
//! report status.
//!
//! - [`crd`]: the `ReplicatedStore` types, from which the CRD YAML is generated;
//! - [`resources`]: the owned objects (StatefulSet, Services, PDB), built without IO;
//! - [`observe`]: Kubernetes objects and node answers, reduced to the planner's input;
//! - [`planner`]: the pure step planner, which picks exactly one next step;
//! - [`controller`]: the reconcile function (observe, plan, act, report) and the controller;
//! - [`status`]: the status and conditions, computed without IO;
//! - [`nodeapi`]: the typed client of the node's admin API;
//! - [`metrics`]: Prometheus metrics and the health endpoints;
//! - [`leader`]: leader election on a coordination Lease;
//! - [`local`]: the local control plane (in-memory API server and a pod runner);
//! - [`cli`]: the command line of the `operator` binary.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod nodeapi;
pub mod observe;
pub mod planner;
pub mod resources;
pub mod status;

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

    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// A node refused or could not be reached.
    #[error("{0}")]
    Node(#[from] nodeapi::NodeApiError),

    /// What the step needs was not in the observation any more (it changed meanwhile).
    #[error("observation out of date: {0}")]
    Observation(String),

    /// JSON encoding.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// Another replica took the leader election Lease, or it could not be renewed in time.
    #[error("lost the leader election Lease; exiting so that this replica restarts as a standby")]
    LostLease,

    /// The store's certificates or tokens could not be issued or read.
    #[error("credentials: {0}")]
    Credentials(String),

    /// The local control plane failed.
    #[error("local control plane: {0}")]
    Local(String),

    /// An IO error with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CrdSerialize(_) | Self::WriteOutput(_) | Self::Json(_) => "internal",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Kube(_) => "kube",
            Self::Node(_) => "node",
            Self::Observation(_) => "stale_observation",
            Self::Local(_) | Self::Io { .. } => "local",
            Self::LostLease => "lease",
            Self::Credentials(_) => "credentials",
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
