//! The snapshot file, `snapshot/current`: its format (a checksummed file holding the whole
//! state machine, in the same format as before the state moved to memory, so snapshots pass
//! between versions) and reading and writing it. A snapshot that fails its checks stops the
//! node rather than start it empty.

use std::path::Path;

use openraft::{AnyError, StorageIOError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::record::{Data, Record};
use crate::types::{ClusterConfig, LogId, NodeId, SnapshotMeta, StorageError, StoredMembership};

pub(super) fn err_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_state_machine(AnyError::new(&e)).into()
}

pub(super) fn err_snapshot(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_snapshot(None, AnyError::new(&e)).into()
}

pub(super) fn corrupt_snapshot(path: &Path, what: &str) -> StorageError {
    err_read(std::io::Error::other(format!(
        "snapshot file {} is corrupt ({what}); refusing to use it. Restore the data directory \
         from backup, or wipe it entirely to rejoin as a new member",
        path.display()
    )))
}

/// The serialized form of a snapshot: the whole state machine.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    config: ClusterConfig,
    /// (key, encoded record)
    data: Vec<(ByteBuf, ByteBuf)>,
}

/// A snapshot file: metadata and payload, with a checksum.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub(super) meta: SnapshotMeta,
    pub(super) payload: ByteBuf,
    crc: u32,
}

/// A snapshot payload, decoded.
pub(super) struct Decoded {
    pub(super) last_applied: Option<LogId>,
    pub(super) membership: StoredMembership,
    pub(super) revision: u64,
    pub(super) config: ClusterConfig,
    pub(super) data: Data,
}

/// The payload of a snapshot of `data` at `revision`, as of `meta`.
pub(super) fn encode_payload(
    meta: &SnapshotMeta,
    revision: u64,
    config: ClusterConfig,
    data: Data,
) -> Result<Vec<u8>, StorageError> {
    let payload = SnapshotPayload {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        revision,
        config,
        data: data
            .map
            .into_iter()
            .map(|(k, r)| (ByteBuf::from(k.into_bytes()), ByteBuf::from(r.encode())))
            .collect(),
    };
    bincode::serialize(&payload).map_err(err_snapshot)
}

/// Whether `payload` decodes as a snapshot payload, checked before anything is touched.
pub(super) fn check_payload(payload: &[u8]) -> Result<(), StorageError> {
    bincode::deserialize::<SnapshotPayload>(payload)
        .map(|_| ())
        .map_err(err_read)
}

pub(super) fn decode_payload(payload: &[u8]) -> Result<Decoded, StorageError> {
    let snap: SnapshotPayload = bincode::deserialize(payload).map_err(err_read)?;
    let mut data = Data::default();
    for (k, v) in snap.data {
        let key = String::from_utf8(k.into_vec()).map_err(err_read)?;
        let record = Record::decode(&v).ok_or_else(|| {
            err_read(std::io::Error::other(format!(
                "a short record for key {key:?}"
            )))
        })?;
        data.insert(key, record);
    }
    Ok(Decoded {
        last_applied: snap.last_applied,
        membership: snap.membership,
        revision: snap.revision,
        config: snap.config,
        data,
    })
}

/// Just the metadata of the snapshot file at `path`, read without loading the payload.
pub(super) fn read_meta(path: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
    use bincode::Options;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err_snapshot(e)),
    };
    // The encoding of `bincode::serialize`; the limit keeps a damaged length prefix
    // from allocating without bound.
    let meta: SnapshotMeta = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(16 << 20)
        .deserialize_from(std::io::BufReader::new(f))
        .map_err(|e| corrupt_snapshot(path, &e.to_string()))?;
    Ok(Some(meta))
}

pub(super) fn read_file(path: &Path) -> Result<Option<SnapshotFile>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err_snapshot(e)),
    };
    let file: SnapshotFile = bincode::deserialize(&bytes)
        .map_err(|e| corrupt_snapshot(path, &format!("cannot be decoded: {e}")))?;
    if crc32fast::hash(&file.payload) != file.crc {
        return Err(corrupt_snapshot(path, "fails its checksum"));
    }
    Ok(Some(file))
}

pub(super) fn write_file(
    dir: &Path,
    meta: &SnapshotMeta,
    payload: &[u8],
) -> Result<(), StorageError> {
    let file = SnapshotFile {
        meta: meta.clone(),
        payload: ByteBuf::from(payload.to_vec()),
        crc: crc32fast::hash(payload),
    };
    let bytes = bincode::serialize(&file).map_err(err_snapshot)?;
    // A failed fsync aborts the process (see `crate::store::fsync`).
    crate::store::fsync::write_durably(&dir.join("current"), &bytes).map_err(err_snapshot)
}
