//! rstore node: one member of a replicated key-value store cluster.
//!
//! Layout:
//! - [`types`]: the openraft type configuration and the commands in the log;
//! - [`identity`]: the persisted node id and cluster id;
//! - [`app`]: the state a running node shares; [`node`]: starting and stopping one;
//! - [`tls`], [`auth`], [`pki`]: certificates, credentials and roles; [`listener`]: the
//!   connection cap and timeouts on both ports;
//! - [`api`]: the client port; [`network`]: member-to-member traffic on the peer port;
//! - [`store`]: the Raft log and vote in a write-ahead log with a true durability barrier, and
//!   the state machine in memory with snapshot files as checkpoints.

pub mod api;
pub mod app;
pub mod auth;
pub mod batcher;
pub mod cli;
pub mod dev;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod network;
pub mod node;
pub use rstore_api::pki;
pub mod readindex;
pub mod store;
pub mod tls;
pub mod types;
pub mod watchdog;
