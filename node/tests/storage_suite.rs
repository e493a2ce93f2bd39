//! openraft's storage conformance suite, run against our log store (sled) and state machine (in memory).
//!
//! Also guarantees that `cargo test --workspace` builds the `node` binary, which the
//! process-level tests in the `tests` crate start.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use rstore_node::store::{self, LogStore, StateMachineStore};
use rstore_node::types::{NodeId, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = store::open(
            dir.path(),
            8 << 20,
            store::Retention {
                revisions: 1000,
                bytes: 1 << 20,
            },
            |_| {},
        )
        .await
        .expect("open store");
        Ok((dir, s.log, s.sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("storage suite");
}
