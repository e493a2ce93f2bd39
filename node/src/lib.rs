//! rstore node: one member of a replicated key-value store cluster.
//!
//! Layout:
//! - [`types`]: the openraft type configuration and the commands in the log;
//! - [`identity`]: the persisted node id and cluster id;
//! - [`store`]: the Raft log and vote in a write-ahead log with a true durability barrier, and
//!   the state machine in memory with snapshot files as checkpoints.

pub mod api;
pub mod app;
pub mod batcher;
pub mod cli;
pub mod dev;
pub mod forwarder;
pub mod identity;
pub mod metrics;
pub mod network;
pub mod readindex;
pub mod store;
pub mod types;
pub mod watchdog;
