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

/// The first fields of [`SnapshotPayload`] alone. bincode writes a struct as its fields in
/// order, so these bytes, then the length of `data` and its pairs, are the payload.
#[derive(Serialize)]
struct PayloadHead<'a> {
    last_applied: &'a Option<LogId>,
    membership: &'a StoredMembership,
    revision: u64,
    config: &'a ClusterConfig,
}

/// Writes a snapshot file record by record, for a restore from a backup, without holding
/// the state or its encoding in memory. The file is byte for byte what [`write_file`]
/// writes for the same state (tested), and is renamed into place only once complete.
pub struct StreamWriter {
    out: std::io::BufWriter<std::fs::File>,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    crc: crc32fast::Hasher,
    keys_left: u64,
    bytes_left: u64,
}

impl StreamWriter {
    /// Start `dir/current` for a state of `keys` keys holding `data_bytes` bytes of keys
    /// and values (the lengths go before the records).
    pub fn create(
        dir: &Path,
        meta: &SnapshotMeta,
        revision: u64,
        config: &ClusterConfig,
        keys: u64,
        data_bytes: u64,
    ) -> std::io::Result<Self> {
        use std::io::Write;
        let head = bincode::serialize(&PayloadHead {
            last_applied: &meta.last_log_id,
            membership: &meta.last_membership,
            revision,
            config,
        })
        .map_err(std::io::Error::other)?;
        // Per key: two length prefixes (8 each) and the record's three counters (24).
        let payload_len = head.len() as u64 + 8 + keys * 40 + data_bytes;
        std::fs::create_dir_all(dir)?;
        let path = dir.join("current");
        let tmp = dir.join("current.restoring");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        out.write_all(&bincode::serialize(meta).map_err(std::io::Error::other)?)?;
        out.write_all(&payload_len.to_le_bytes())?;
        let mut crc = crc32fast::Hasher::new();
        for part in [&head[..], &keys.to_le_bytes()] {
            out.write_all(part)?;
            crc.update(part);
        }
        Ok(Self {
            out,
            tmp,
            path,
            crc,
            keys_left: keys,
            bytes_left: data_bytes,
        })
    }

    pub fn push(&mut self, key: &str, r: &Record) -> std::io::Result<()> {
        use std::io::Write;
        let n = (key.len() + r.value.len()) as u64;
        if self.keys_left == 0 || self.bytes_left < n {
            return Err(std::io::Error::other(
                "more records than the snapshot was started for",
            ));
        }
        self.keys_left -= 1;
        self.bytes_left -= n;
        let parts: [&[u8]; 7] = [
            &(key.len() as u64).to_le_bytes(),
            key.as_bytes(),
            &(24 + r.value.len() as u64).to_le_bytes(),
            &r.create_revision.to_be_bytes(),
            &r.mod_revision.to_be_bytes(),
            &r.version.to_be_bytes(),
            &r.value,
        ];
        for p in parts {
            self.out.write_all(p)?;
            self.crc.update(p);
        }
        Ok(())
    }

    /// Write the checksum, make the file durable and move it into place.
    pub fn finish(self) -> std::io::Result<()> {
        use std::io::Write;
        if self.keys_left != 0 || self.bytes_left != 0 {
            return Err(std::io::Error::other(format!(
                "{} keys ({} bytes) fewer than the snapshot was started for",
                self.keys_left, self.bytes_left
            )));
        }
        let mut out = self.out;
        out.write_all(&self.crc.finalize().to_le_bytes())?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        crate::store::fsync::sync_all(&f, &self.tmp);
        drop(f);
        std::fs::rename(&self.tmp, &self.path)?;
        crate::store::fsync::sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Member;

    #[test]
    fn a_streamed_snapshot_is_the_file_write_file_writes() {
        let id = LogId::new(openraft::CommittedLeaderId::new(0, 0), 0);
        let membership = openraft::Membership::new(
            vec![[7u64].into_iter().collect()],
            [(
                7u64,
                Member {
                    peer_url: "http://p".into(),
                    client_url: "http://c".into(),
                },
            )]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
        );
        let meta = SnapshotMeta {
            last_log_id: Some(id),
            last_membership: StoredMembership::new(Some(id), membership),
            snapshot_id: "restored".into(),
        };
        let mut data = Data::default();
        for (k, v) in [("a", &b"1"[..]), ("b/c", b""), ("zz", &[0u8; 300][..])] {
            data.insert(
                k.into(),
                Record {
                    create_revision: 2,
                    mod_revision: 5,
                    version: 3,
                    value: bytes::Bytes::copy_from_slice(v),
                },
            );
        }
        let config = ClusterConfig::default();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let payload = encode_payload(&meta, 9, config, data.clone()).unwrap();
        write_file(a.path(), &meta, &payload).unwrap();
        let bytes: u64 = data
            .map
            .iter()
            .map(|(k, r)| (k.len() + r.value.len()) as u64)
            .sum();
        let mut w = StreamWriter::create(b.path(), &meta, 9, &config, data.map.len() as u64, bytes)
            .unwrap();
        for (k, r) in &data.map {
            w.push(k, r).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(
            std::fs::read(a.path().join("current")).unwrap(),
            std::fs::read(b.path().join("current")).unwrap()
        );
        let file = read_file(&b.path().join("current")).unwrap().unwrap();
        let decoded = decode_payload(&file.payload).unwrap();
        assert_eq!(decoded.revision, 9);
        assert_eq!(decoded.data.map, data.map);
    }
}
