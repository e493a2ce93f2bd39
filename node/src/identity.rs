//! The node's identity: a random, never-reused Raft id and the id of the cluster it belongs to.
//!
//! Both live in `DATA_DIR/identity.json`, next to the data they describe. When the data
//! directory is lost, the identity goes with it and the node comes back as a new member
//! with a new id: reusing an id after data loss would break Raft's safety.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is corrupt ({source}); refusing to start with an unknown identity. Restore it from backup, or wipe the whole data directory to rejoin as a new member"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path} is missing but {dir} holds data ({entry}); refusing to start with a new id over old data, which would break Raft's safety. Restore identity.json from backup, or wipe the whole data directory to rejoin as a new member"
    )]
    Missing {
        path: PathBuf,
        dir: PathBuf,
        entry: &'static str,
    },
    #[error("this node already belongs to cluster {current}, not {requested}")]
    ClusterMismatch { current: String, requested: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct IdentityFile {
    node_id: NodeId,
    cluster_id: Option<String>,
}

/// The persisted identity of this node.
#[derive(Debug)]
pub struct Identity {
    path: PathBuf,
    node_id: NodeId,
    cluster_id: RwLock<Option<String>>,
}

/// Entries of the data directory that only exist once the node has an identity: when one
/// of them is there, a missing `identity.json` means it was lost, not that the node is new.
const DATA_ENTRIES: &[&str] = &["db", "snapshot", "watermark"];

impl Identity {
    /// Load the identity from `dir`, or create a fresh one if the directory holds none.
    /// A directory that holds data but no identity is refused: a new id over old data
    /// (its votes and log) would break Raft's safety.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join("identity.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: IdentityFile =
                    serde_json::from_slice(&bytes).map_err(|source| IdentityError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                Ok(Self {
                    path,
                    node_id: file.node_id,
                    cluster_id: RwLock::new(file.cluster_id),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(entry) = DATA_ENTRIES.iter().find(|e| dir.join(e).exists()) {
                    return Err(IdentityError::Missing {
                        path,
                        dir: dir.to_path_buf(),
                        entry,
                    });
                }
                let node_id = loop {
                    let id: u64 = rand::random();
                    // Keep ids below 2^53 so that JSON clients which parse numbers as
                    // doubles (JavaScript, jq) see them exactly. Zero is reserved.
                    let id = id & ((1u64 << 53) - 1);
                    if id != 0 {
                        break id;
                    }
                };
                let ident = Self {
                    path,
                    node_id,
                    cluster_id: RwLock::new(None),
                };
                ident.persist().map_err(|source| IdentityError::Io {
                    path: ident.path.clone(),
                    source,
                })?;
                Ok(ident)
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().expect("identity lock").clone()
    }

    /// Record the cluster this node belongs to. Adopting the same id again is a no-op;
    /// adopting a different one is refused.
    pub fn adopt_cluster(&self, cluster_id: &str) -> Result<(), IdentityError> {
        {
            let mut cur = self.cluster_id.write().expect("identity lock");
            match cur.as_deref() {
                Some(c) if c == cluster_id => return Ok(()),
                Some(c) => {
                    return Err(IdentityError::ClusterMismatch {
                        current: c.to_string(),
                        requested: cluster_id.to_string(),
                    });
                }
                None => *cur = Some(cluster_id.to_string()),
            }
        }
        self.persist().map_err(|source| IdentityError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Write the file durably: temp file, fsync, rename, fsync the directory.
    fn persist(&self) -> std::io::Result<()> {
        let file = IdentityFile {
            node_id: self.node_id,
            cluster_id: self.cluster_id(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("identity serializes");
        // Through the store's fsync, as the log: a failed sync aborts, rather than let an
        // identity that seems saved come back different after a crash.
        crate::store::fsync::write_durably(&self.path, &bytes)
    }
}

/// A fresh random cluster id, as 16 hex digits.
pub fn new_cluster_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reload_and_is_new_after_wipe() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        a.adopt_cluster("c1").unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(b.cluster_id().as_deref(), Some("c1"));
        assert!(b.adopt_cluster("c2").is_err());

        let wiped = tempfile::tempdir().unwrap();
        let c = Identity::load_or_create(wiped.path()).unwrap();
        assert_ne!(c.node_id(), a.node_id());
        assert_eq!(c.cluster_id(), None);
    }

    #[test]
    fn missing_identity_next_to_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        // Still there: loads as before.
        assert_eq!(
            Identity::load_or_create(dir.path()).unwrap().node_id(),
            first.node_id()
        );
        std::fs::remove_file(dir.path().join("identity.json")).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, IdentityError::Missing { .. }), "{msg}");
        assert!(msg.contains("missing") && msg.contains("wipe"), "{msg}");
        assert!(!dir.path().join("identity.json").exists());
    }

    #[test]
    fn corrupt_identity_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("identity.json"), b"{not json").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
