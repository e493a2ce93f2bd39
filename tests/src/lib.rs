//! Shared code for the cross-crate tests and the `node` package's process tests:
//! - [`harness`]: clusters of real `node` processes on loopback, and the tests' client;
//! - [`faultnet`]: a TCP proxy between node processes that cuts, delays and heals links;
//! - [`netns`]: one network namespace per node process, with nftables rules that cut links
//!   and drop packets (used instead of the proxy where the tests run as root);
//! - [`linearizability`]: operation histories and their linearizability check;
//! - [`moto`]: a real S3 API server (moto) for the backup tests;
//! - [`azurite`]: a real Azure Blob Storage API server (Azurite) for the backup tests, and
//!   [`servers`], what the two stand-in servers share;
//! - [`k8s`]: the real Kubernetes control plane on this machine, with a node agent as its
//!   kubelet (`rstore-k8s up`).

pub mod azurite;
pub mod faultnet;
pub mod harness;
pub mod k8s;
pub mod linearizability;
pub mod moto;
pub mod netns;
pub mod servers;

/// Cutting links between nodes, the part both fault networks share: a backend cuts one
/// directed link (`from → to`: the connections `from` opens to `to`), and the partitions the
/// scenarios use are built from that.
pub trait CutLinks {
    /// Cut the directed link `from → to`.
    fn cut(&self, from: usize, to: usize);

    /// Cut both directions between `a` and `b`.
    fn cut_both(&self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Cut node `node` off from every other node of `all`, both ways.
    fn isolate(&self, node: usize, all: &[usize]) {
        for &other in all.iter().filter(|&&o| o != node) {
            self.cut_both(node, other);
        }
    }
}
