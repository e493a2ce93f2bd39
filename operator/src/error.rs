//! The error of the `operator` binary's own work around reconcile: the command line, the
//! local control plane and leader election. Reconcile has its own (see
//! [`crate::controller::Error`] and its stages').

/// Errors of the operator's commands (`operator run`, `operator local`, `operator crd`, ...).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The generated CRD could not be written as YAML.
    #[error("cannot serialize the CRD as YAML: {0}")]
    CrdSerialize(#[source] serde_yaml::Error),

    /// Output could not be written (for example a closed stdout pipe).
    #[error("cannot write output: {0}")]
    WriteOutput(#[source] std::io::Error),

    /// A resource given on the command line is not a valid `ReplicatedStore`.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// Another replica took the leader election Lease, or it could not be renewed in time.
    #[error("lost the leader election Lease; exiting so that this replica restarts as a standby")]
    LostLease,

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

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
