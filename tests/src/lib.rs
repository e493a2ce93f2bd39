//! Shared code for the cross-crate tests. The process harness lives in `tests/tests/common`;
//! this library holds what the fault-injection suite (`tests/faults/README.md`) needs and
//! what can be tested on its own:
//! - [`faultnet`]: a TCP proxy between node processes that cuts, delays and heals links;
//! - [`netns`]: one network namespace per node process, with nftables rules that cut links
//!   and drop packets (used instead of the proxy where the tests run as root);
//! - [`linearizability`]: operation histories and their linearizability check.

pub mod faultnet;
pub mod linearizability;
pub mod netns;
