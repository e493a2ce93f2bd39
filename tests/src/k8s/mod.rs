//! The real Kubernetes control plane on one machine, for users without Docker and for the
//! end-to-end suite (`tests/tests/k8s_e2e.rs`).
//!
//! Kubernetes's own components, built from their Go modules by `tests/k8s/build.sh`, run as
//! processes under one directory: etcd, kube-apiserver (TLS, client-certificate users, RBAC
//! and the default admission plugins), kube-controller-manager (its default controllers:
//! StatefulSet, Deployment, garbage collector, PV binder, EndpointSlice, node lifecycle,
//! disruption, service accounts) and kube-scheduler. What a kind cluster adds on top, a
//! kubelet and a provisioner, is the [`agent`]: it registers Nodes, runs the pods bound to
//! them as real processes, one network namespace per pod, and provisions volumes.
//!
//! - [`plane`]: starting, checking and stopping the components; the PKI and kubeconfigs;
//! - [`agent`]: the node agent (the kubelet's part), its volume provisioner and its names;
//! - `src/bin/rstore-k8s.rs`: `rstore-k8s up`, the one command users run.

pub mod agent;
pub mod plane;

pub use plane::{ControlPlane, PlaneOptions};
