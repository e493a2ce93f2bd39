//! rstore operator: reconciles `ReplicatedStore` resources into Raft clusters of rstore nodes.
//!
//! Reconcile is a pipeline (see DESIGN.md, "Operator"): observe the Kubernetes objects and
//! every node's view of Raft, decide the next safe step with a pure function, then act and
//! report status.
//!
//! - [`crd`]: the `ReplicatedStore`, `Backup` and `BackupSchedule` types, from which the
//!   CRD YAML is generated;
//! - [`backup`]: the `Backup` and `BackupSchedule` controllers;
//! - [`resources`]: the owned objects (StatefulSet, Services, PDB, ...), built without IO;
//! - [`observe`]: the Kubernetes objects and every node's answers, read, and reduced to the
//!   planner's input with health clocks ([`observe::health`]);
//! - [`planner`]: the pure step planner, which picks exactly one next step;
//! - [`controller`]: the reconcile pipeline (validate, build, apply, observe, plan, act,
//!   status), and the kube-runtime controller;
//! - [`status`]: the status and conditions, computed without IO;
//! - [`nodeapi`]: the typed client of the node's admin API;
//! - [`metrics`]: Prometheus metrics and the health endpoints;
//! - [`leader`]: leader election on a coordination Lease;
//! - [`local`]: the local control plane (in-memory API server and a pod runner);
//! - [`cli`]: the command line of the `operator` binary.

pub mod backup;
pub mod cli;
pub mod controller;
pub mod crd;
mod error;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod nodeapi;
pub mod observe;
pub mod planner;
pub mod resources;
pub mod status;

pub use error::{Error, Result};
