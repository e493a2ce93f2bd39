//! Harness for the cross-process tests: clusters of real `node` processes on loopback.
//!
//! Every node gets its own free client and peer ports and a data directory inside the
//! cluster's temp dir, and writes its log next to it. Processes are killed when their
//! [`TestNode`] is dropped, so a failing test never leaks them; when a test panics, the
//! [`Cluster`] prints the tail of every node's log before it goes.
//!
//! Layout, one job a module:
//! - [`process`]: [`node_bin`], [`TestNode`], [`Interposer`]: one process, started, stopped,
//!   killed, restarted, wiped;
//! - [`client`]: [`NodeClient`], [`Resp`]: the HTTP contract of docs/api.md, one node at a
//!   time, every answer whole;
//! - [`cluster`]: [`Cluster`]: bootstrap through the admin API, leader lookup, membership;
//! - [`creds`]: [`Creds`], the cluster's CA and tokens, and [`raw_connect`];
//! - [`checks`]: [`Expected`] values, [`write_keys`], [`assert_values`], metrics;
//! - [`wait`]: [`wait_until`], [`wait_for`]: poll a condition, never sleep a fixed time.
//!
//! An [`Interposer`] (the fault-injection suite's proxy or network namespaces,
//! `tests/faults/README.md`) can stand between the nodes: it decides where each node listens,
//! what it advertises to its peers and how its process is started, while the test's own
//! [`NodeClient`]s still talk to the node directly.
//!
//! Every cluster runs as deployed: TLS on both ports with a per-cluster CA ([`Creds`]), a
//! member certificate per node naming its advertised peer URL, and bearer tokens for each
//! role. The harness's own client trusts the CA and sends the admin token. A test that
//! passes `RSTORE_INSECURE_PLAINTEXT=1` in the node environment gets plaintext nodes.
//!
//! The binary is the caller's: tests of the `node` package pass `env!("CARGO_BIN_EXE_node")`,
//! the others [`node_bin`] (`RSTORE_NODE_BIN`, else the one next to the test executable).
//! Set `RSTORE_TEST_KEEP=1` to keep the data dirs and logs of every cluster after the test.

pub mod checks;
pub mod client;
pub mod cluster;
pub mod creds;
pub mod process;
pub mod wait;

pub use checks::{
    Expected, assert_values, count_matches, count_stale_matches, members, metric_value, write_keys,
};
pub use client::{Consistency, NodeClient, Resp, kv_path};
pub use cluster::Cluster;
pub use creds::{Creds, RawStream, raw_connect};
pub use process::{Interposer, TestNode, node_bin};
pub use wait::{CATCH_UP, ELECTION, STARTUP, wait_for, wait_until};
