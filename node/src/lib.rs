//! rstore node: one member of a replicated key-value store cluster.
//!
//! Layout:
//! - [`types`]: the openraft type configuration and the commands in the log;
//! - [`identity`]: the persisted node id and cluster id;
//! - [`store`]: the Raft log, vote and state machine in sled, with a true durability barrier.

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
