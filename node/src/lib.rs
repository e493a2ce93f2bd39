//! rstore node: one member of a replicated key-value store cluster.
//!
//! The modules form a one-way stack: each uses only its own layer and those below it
//! (`node/tests/module_cycles.rs`, run in CI, fails on any module cycle and on any use of a
//! layer above). Bottom to top:
//! 1. storage and commands: [`types`] (the openraft type configuration, the commands in the
//!    log), [`store`] (the Raft log and vote in a write-ahead log with a true durability
//!    barrier; the state machine in memory, with snapshot files as checkpoints),
//!    [`identity`] (the persisted node id and cluster id), [`metrics`], [`background`]
//!    (whole-state work on threads at the lowest CPU priority);
//! 2. configuration, TLS and credentials: [`config`] (the server flags and settings),
//!    [`auth`] (roles and tokens), [`tls`], [`pki`]; [`web`] (the JSON error and the body
//!    reader both ports share); [`listener`] (the connection cap and timeouts on both ports);
//! 3. peer traffic and the write path below HTTP: [`network`] (Raft RPC to peers),
//!    [`batcher`] (group commit and acknowledgement by replication mode), [`readindex`],
//!    [`watchdog`], [`snapshots`] (when a member snapshots its state), and the follower's
//!    batched forwarder ([`forward::client`]);
//! 4. [`app`]: the state a running node shares with its handlers;
//! 5. the two ports: [`api`] (the client port) and [`peer`] (the peer port), with
//!    [`forward`] (both sides of forwarding to the leader);
//! 6. [`node`]: starting and running one, on listeners the caller binds;
//! 7. [`cli`]: the command line (`node serve`, `dev`, `cert`, and the `kv`/`cluster` client),
//!    which no server module imports.
//!
//! A write, file by file (`PUT /v1/kv/{key}`):
//! 1. `api/mod.rs` routes it, behind `api/authorize.rs`, to `api/kv.rs`, which parses the
//!    key and condition, reads the body (`web.rs`) and answers at the end;
//! 2. `forward/leader.rs` finds the leader: this node's batcher, or (on a follower)
//!    `forward/client.rs`, which batches writes to the leader's peer port, where
//!    `forward/serve.rs` (through `peer.rs`) hands them to the leader's batcher;
//! 3. `batcher.rs` groups writes into one log entry and acknowledges each by replication
//!    mode: in `async` mode once `store/log/mod.rs` says the entry is durable on the leader
//!    (its `store/durable.rs` barrier), else once `store/sm/mod.rs` applied it
//!    (`store/sm/apply.rs` decides the outcome).

pub mod api;
pub mod app;
pub mod auth;
pub mod background;
pub mod batcher;
pub mod cli;
pub mod config;
pub mod forward;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peer;
pub use rstore_api::pki;
pub mod readindex;
pub mod snapshots;
pub mod store;
pub mod tls;
pub mod types;
pub mod watchdog;
pub mod web;
