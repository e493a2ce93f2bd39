//! The snapshot file, `snapshot/current`: its format (a checksummed file holding the whole
//! state machine, in the same format as before the state moved to memory, so snapshots pass
//! between versions) and reading and writing it. A snapshot that fails its checks stops the
//! node rather than start it empty.

use std::path::Path;

use openraft::{AnyError, StorageIOError};
use serde::{Deserialize, Serialize};
#[cfg(test)]
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

/// The serialized form of a snapshot, the whole state machine, as bincode encodes this
/// struct: [`StreamWriter`] writes it and [`decode_from`] reads it record by record; the
/// tests hold both to this definition.
#[cfg(test)]
#[derive(Serialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    config: ClusterConfig,
    /// (key, encoded record)
    data: Vec<(ByteBuf, ByteBuf)>,
}

/// A snapshot file, checked: its metadata and payload. On disk it is what `bincode` makes of
/// `(meta, payload as bytes, crc32 of the payload)`: the meta, the payload's length (u64 LE)
/// and bytes, and the checksum (u32 LE).
pub(super) struct SnapshotFile {
    pub(super) meta: SnapshotMeta,
    pub(super) payload: Vec<u8>,
}

/// A snapshot payload, decoded.
pub(super) struct Decoded {
    pub(super) last_applied: Option<LogId>,
    pub(super) membership: StoredMembership,
    pub(super) revision: u64,
    pub(super) config: ClusterConfig,
    pub(super) data: Data,
}

/// The payload of a snapshot of `data` at `revision`, as of `meta`, encoded in memory: the
/// reference [`StreamWriter`] is tested against.
#[cfg(test)]
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

/// A snapshot payload in memory (one received from the leader), decoded record by record:
/// the payload and the state are the two copies in memory, not three.
pub(super) fn decode_payload(payload: &[u8]) -> Result<Decoded, StorageError> {
    let mut r = payload;
    let decoded = decode_from(&mut r, payload.len() as u64).map_err(err_read)?;
    if !r.is_empty() {
        return Err(err_read(std::io::Error::other(format!(
            "{} bytes after the last record",
            r.len()
        ))));
    }
    Ok(decoded)
}

/// The encoding of `bincode::serialize`, for reading the meta at the head of a file; the
/// limit keeps a damaged length prefix from allocating without bound.
fn meta_options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(16 << 20)
}

/// Just the metadata of the snapshot file at `path`, read without loading the payload.
pub(super) fn read_meta(path: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
    Ok(open_file(path)?.map(|(meta, _, _)| meta))
}

/// The snapshot file at `path`, checked. Read in its parts, so the payload is the one copy
/// of the file in memory.
pub(super) fn read_file(path: &Path) -> Result<Option<SnapshotFile>, StorageError> {
    use std::io::Read;
    let Some((meta, len, mut r)) = open_file(path)? else {
        return Ok(None);
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)
        .map_err(|e| undecodable(path, &e))?;
    check_crc(path, &mut r, crc32fast::hash(&payload))?;
    Ok(Some(SnapshotFile { meta, payload }))
}

/// The snapshot file at `path`, decoded as it is read, record by record, and checked (its
/// checksum once the payload is read; nothing decoded is used before that). How a member
/// loads its state at start-up: the state is the one copy in memory, where reading the file
/// whole and then decoding it held the file, the decoded pairs and the state at once.
pub(super) fn read_state(path: &Path) -> Result<Option<(SnapshotMeta, Decoded)>, StorageError> {
    use std::io::Read;
    let Some((meta, len, mut r)) = open_file(path)? else {
        return Ok(None);
    };
    let mut payload = Checksummed {
        inner: (&mut r).take(len),
        crc: crc32fast::Hasher::new(),
    };
    let decoded = decode_from(&mut payload, len).map_err(|e| undecodable(path, &e));
    // The rest of the payload (none, in a good file) counts toward its checksum too.
    let rest =
        std::io::copy(&mut payload, &mut std::io::sink()).map_err(|e| undecodable(path, &e))?;
    let crc = payload.crc.finalize();
    check_crc(path, &mut r, crc)?;
    let decoded = decoded?;
    if rest != 0 {
        return Err(undecodable(
            path,
            &format!("{rest} bytes after the last record"),
        ));
    }
    Ok(Some((meta, decoded)))
}

type FileReader = std::io::BufReader<std::fs::File>;

/// The snapshot file at `path` opened past its meta and its payload's length: the meta, the
/// length (no more than the file holds, so a damaged one allocates nothing) and a reader at
/// the payload's first byte. `None` when there is no file.
fn open_file(path: &Path) -> Result<Option<(SnapshotMeta, u64, FileReader)>, StorageError> {
    use bincode::Options;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err_snapshot(e)),
    };
    let size = f.metadata().map_err(err_snapshot)?.len();
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let meta: SnapshotMeta = meta_options()
        .deserialize_from(&mut r)
        .map_err(|e| undecodable(path, &e))?;
    let len = read_u64(&mut r).map_err(|e| undecodable(path, &e))?;
    if len > size {
        return Err(undecodable(
            path,
            &format!("a payload of {len} bytes in a file of {size}"),
        ));
    }
    Ok(Some((meta, len, r)))
}

/// Reads the checksum that follows a payload whose bytes hash to `crc`, and refuses the file
/// if they differ.
fn check_crc(path: &Path, r: &mut FileReader, crc: u32) -> Result<(), StorageError> {
    use std::io::Read;
    let mut want = [0u8; 4];
    r.read_exact(&mut want).map_err(|e| undecodable(path, &e))?;
    if crc != u32::from_le_bytes(want) {
        return Err(corrupt_snapshot(path, "fails its checksum"));
    }
    Ok(())
}

fn undecodable(path: &Path, e: &dyn std::fmt::Display) -> StorageError {
    corrupt_snapshot(path, &format!("cannot be decoded: {e}"))
}

/// A payload of `len` bytes, decoded from `r` record by record; lengths that exceed what is
/// left of it are refused before anything is allocated for them.
fn decode_from(r: &mut impl std::io::Read, len: u64) -> std::io::Result<Decoded> {
    let head: PayloadHead = bincode::deserialize_from(&mut *r).map_err(std::io::Error::other)?;
    let keys = read_u64(r)?;
    let too_long = |what: &str, n: u64| {
        std::io::Error::other(format!("a {what} of {n} bytes in a payload of {len}"))
    };
    let mut data = Data::default();
    for _ in 0..keys {
        let n = read_u64(r)?;
        if n > len {
            return Err(too_long("key", n));
        }
        let mut key = vec![0u8; n as usize];
        r.read_exact(&mut key)?;
        let key = String::from_utf8(key).map_err(std::io::Error::other)?;
        let n = read_u64(r)?;
        if n > len {
            return Err(too_long("record", n));
        }
        if (n as usize) < Record::HEADER {
            return Err(std::io::Error::other(format!(
                "a short record for key {key:?}"
            )));
        }
        let mut counters = [0u8; Record::HEADER];
        r.read_exact(&mut counters)?;
        let mut value = vec![0u8; n as usize - Record::HEADER];
        r.read_exact(&mut value)?;
        data.insert(key, Record::from_parts(&counters, value.into()));
    }
    Ok(Decoded {
        last_applied: head.last_applied,
        membership: head.membership,
        revision: head.revision,
        config: head.config,
        data,
    })
}

fn read_u64(r: &mut impl std::io::Read) -> std::io::Result<u64> {
    let mut word = [0u8; 8];
    r.read_exact(&mut word)?;
    Ok(u64::from_le_bytes(word))
}

/// A reader that checksums what passes through it.
struct Checksummed<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: std::io::Read> std::io::Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Write `dir/current` durably (the format of [`SnapshotFile`]), in its parts so the payload
/// is not copied.
pub(super) fn write_file(
    dir: &Path,
    meta: &SnapshotMeta,
    payload: &[u8],
) -> Result<(), StorageError> {
    let head = bincode::serialize(meta).map_err(err_snapshot)?;
    let len = (payload.len() as u64).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    // A failed fsync aborts the process (see `crate::store::fsync`).
    crate::store::fsync::write_durably_parts(&dir.join("current"), &[&head, &len, payload, &crc])
        .map_err(err_snapshot)
}

/// The first fields of [`SnapshotPayload`] alone. bincode writes a struct as its fields in
/// order, so these bytes, then the length of `data` and its pairs, are the payload.
#[derive(Serialize, Deserialize)]
struct PayloadHead {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    config: ClusterConfig,
}

/// Writes a snapshot file record by record, without holding an encoding of the state in
/// memory: how a member builds its snapshots, and how a restore from a backup writes one. The
/// file is byte for byte what [`write_file`] writes for the same state (tested), and is
/// renamed into place only once complete.
pub struct StreamWriter {
    out: std::io::BufWriter<std::fs::File>,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    crc: crc32fast::Hasher,
    keys_left: u64,
    bytes_left: u64,
    payload_len: u64,
    last_log_id: Option<LogId>,
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
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision,
            config: *config,
        })
        .map_err(std::io::Error::other)?;
        // Per key: two length prefixes (8 each) and the record's three counters (24).
        let payload_len = head.len() as u64 + 8 + keys * 40 + data_bytes;
        std::fs::create_dir_all(dir)?;
        let path = dir.join("current");
        let tmp = dir.join("current.partial");
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
            payload_len,
            last_log_id: meta.last_log_id,
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
        let parts: [&[u8]; 5] = [
            &(key.len() as u64).to_le_bytes(),
            key.as_bytes(),
            &((Record::HEADER + r.value.len()) as u64).to_le_bytes(),
            &r.counters(),
            &r.value,
        ];
        for p in parts {
            self.out.write_all(p)?;
            self.crc.update(p);
        }
        Ok(())
    }

    /// Write the checksum, make the file durable and move it into place. Returns the size
    /// of the payload it wrote.
    pub fn finish(self) -> std::io::Result<u64> {
        let sealed = self.seal()?;
        sealed.rename()?;
        Ok(sealed.payload_len)
    }

    /// [`Self::finish`], for a snapshot built while the member may install one from its
    /// leader: under `files` (held by every writer of `current`), the file is moved into
    /// place only if `current` is not already a later snapshot, and dropped otherwise
    /// (`None`). Without this, a build that finished after an install would put the older
    /// state back in `current`, and a restart would load it.
    pub(super) fn finish_unless_superseded(
        self,
        files: &std::sync::Mutex<()>,
    ) -> Result<Option<u64>, StorageError> {
        let sealed = self.seal().map_err(err_snapshot)?;
        let _files = files.lock().expect("snapshot file lock");
        let current = read_meta(&sealed.path)?.and_then(|m| m.last_log_id);
        if current > sealed.last_log_id {
            let _ = std::fs::remove_file(&sealed.tmp);
            return Ok(None);
        }
        sealed.rename().map_err(err_snapshot)?;
        Ok(Some(sealed.payload_len))
    }

    /// Write the checksum and make the temp file durable.
    fn seal(self) -> std::io::Result<Sealed> {
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
        Ok(Sealed {
            tmp: self.tmp,
            path: self.path,
            payload_len: self.payload_len,
            last_log_id: self.last_log_id,
        })
    }
}

/// A complete, durable snapshot file not yet in place.
struct Sealed {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    payload_len: u64,
    last_log_id: Option<LogId>,
}

impl Sealed {
    fn rename(&self) -> std::io::Result<()> {
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

    #[test]
    fn a_build_that_ends_after_a_later_install_leaves_the_install_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let at = |index| SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 0), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        };
        let config = ClusterConfig::default();
        let files = std::sync::Mutex::new(());
        // A build at index 10 starts; an install at index 20 lands before it ends.
        let build = StreamWriter::create(dir.path(), &at(10), 3, &config, 0, 0).unwrap();
        let installed = at(20);
        let payload = encode_payload(&installed, 7, config, Data::default()).unwrap();
        write_file(dir.path(), &installed, &payload).unwrap();
        assert_eq!(build.finish_unless_superseded(&files).unwrap(), None);
        let current = dir.path().join("current");
        assert_eq!(
            read_file(&current).unwrap().unwrap().meta.snapshot_id,
            "s20"
        );
        assert!(!dir.path().join("current.partial").exists());
        // A later build replaces it.
        let build = StreamWriter::create(dir.path(), &at(30), 9, &config, 0, 0).unwrap();
        assert!(build.finish_unless_superseded(&files).unwrap().is_some());
        let file = read_file(&current).unwrap().unwrap();
        assert_eq!(file.meta.snapshot_id, "s30");
        assert_eq!(decode_payload(&file.payload).unwrap().revision, 9);
    }

    #[test]
    fn a_snapshot_file_whose_length_overstates_its_payload_is_corrupt_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta::default();
        let payload = encode_payload(&meta, 1, ClusterConfig::default(), Data::default()).unwrap();
        write_file(dir.path(), &meta, &payload).unwrap();
        let path = dir.path().join("current");
        let good = std::fs::read(&path).unwrap();
        let mut bytes = good.clone();
        let at = bincode::serialize(&meta).unwrap().len();
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = read_file(&path).err().expect("refused").to_string();
        assert!(err.contains("is corrupt"), "{err}");
        // Cut short: the checksum is missing.
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        let err = read_file(&path).err().expect("refused").to_string();
        assert!(err.contains("is corrupt"), "{err}");
        std::fs::write(&path, &good).unwrap();
        assert!(read_file(&path).unwrap().is_some());
    }

    #[test]
    fn a_state_read_as_it_streams_is_the_state_decoded_whole_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = LogId::new(openraft::CommittedLeaderId::new(2, 0), 77);
        let meta = SnapshotMeta {
            last_log_id: Some(id),
            last_membership: StoredMembership::default(),
            snapshot_id: "s77".into(),
        };
        let mut data = Data::default();
        for i in 0..500u64 {
            data.insert(
                format!("key/{i:04}"),
                Record {
                    create_revision: i + 1,
                    mod_revision: 2 * i + 1,
                    version: i % 7 + 1,
                    value: bytes::Bytes::from(vec![i as u8; (i % 50) as usize]),
                },
            );
        }
        let config = ClusterConfig::default();
        let payload = encode_payload(&meta, 1234, config, data.clone()).unwrap();
        write_file(dir.path(), &meta, &payload).unwrap();
        let path = dir.path().join("current");
        let (read_meta, streamed) = read_state(&path).unwrap().unwrap();
        let whole = decode_payload(&read_file(&path).unwrap().unwrap().payload).unwrap();
        assert_eq!(read_meta, meta);
        assert_eq!(streamed.revision, 1234);
        assert_eq!(streamed.last_applied, Some(id));
        assert_eq!(streamed.data.map, data.map);
        assert_eq!(streamed.data.map, whole.data.map);
        assert_eq!(streamed.data.bytes, data.bytes);
        assert!(read_state(&dir.path().join("none")).unwrap().is_none());

        let good = std::fs::read(&path).unwrap();
        let refused = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = read_state(&path).err().expect(what).to_string();
            assert!(err.contains("is corrupt"), "{what}: {err}");
            err
        };
        // A flipped bit in a value: only the checksum can tell.
        let mut flipped = good.clone();
        let at = good.len() - 100;
        flipped[at] ^= 0x10;
        let err = refused(&flipped, "a flipped bit");
        assert!(err.contains("fails its checksum"), "{err}");
        // Cut short, at many places.
        for cut in [good.len() - 1, good.len() - 4, good.len() / 2, 40, 3] {
            refused(&good[..cut], &format!("cut at {cut}"));
        }
        // A key length past the payload: refused, not allocated.
        let mut long = good.clone();
        let first_key = good
            .windows(8)
            .position(|w| w == b"key/0000")
            .expect("first key");
        long[first_key - 8..first_key].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        refused(&long, "a huge key length");
    }
}
