//! A key's record and what the records cost: the unit the state machine stores, its
//! encoding in snapshot payloads, and the byte accounting behind the data quota. Kept apart
//! so that the encoding (which snapshots written by older versions depend on) changes only
//! on purpose.

use std::collections::BTreeMap;

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
    /// Shared, not copied, by reads and by the copy a backup takes.
    pub value: bytes::Bytes,
}

impl Record {
    pub(super) const HEADER: usize = 24;

    /// The record's counters as snapshot payloads hold them, before its value.
    pub(super) fn counters(&self) -> [u8; Self::HEADER] {
        let mut out = [0u8; Self::HEADER];
        out[..8].copy_from_slice(&self.create_revision.to_be_bytes());
        out[8..16].copy_from_slice(&self.mod_revision.to_be_bytes());
        out[16..].copy_from_slice(&self.version.to_be_bytes());
        out
    }

    /// The record of `counters` (as [`Self::counters`] writes them) and `value`.
    pub(super) fn from_parts(counters: &[u8; Self::HEADER], value: bytes::Bytes) -> Self {
        let u = |i: usize| u64::from_be_bytes(counters[i..i + 8].try_into().expect("8 bytes"));
        Self {
            create_revision: u(0),
            mod_revision: u(8),
            version: u(16),
            value,
        }
    }

    /// The encoding in snapshot payloads: the counters, then the value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER + self.value.len());
        out.extend_from_slice(&self.counters());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let counters = bytes.get(..Self::HEADER)?.try_into().expect("HEADER bytes");
        Some(Self::from_parts(
            counters,
            bytes::Bytes::copy_from_slice(&bytes[Self::HEADER..]),
        ))
    }
}

/// What one key costs beyond its key and value bytes: the map's node share, the key's and
/// value's headers and the record's counters (measured: about 90 bytes on x86-64), rounded
/// up. The data quota counts it, so that many small keys cannot hold far more memory than
/// the quota says.
pub const KEY_OVERHEAD_BYTES: u64 = 128;

fn record_bytes(key: &str, r: &Record) -> u64 {
    (key.len() + r.value.len()) as u64 + KEY_OVERHEAD_BYTES
}

/// The records, and how many bytes of keys and values they hold (for the data quota).
#[derive(Default, Clone)]
pub struct Data {
    pub(super) map: BTreeMap<String, Record>,
    pub(super) bytes: u64,
}

impl Data {
    pub(super) fn get(&self, key: &str) -> Option<&Record> {
        self.map.get(key)
    }

    pub(super) fn insert(&mut self, key: String, record: Record) {
        let added = record_bytes(&key, &record);
        let replaced = (key.len() as u64) + KEY_OVERHEAD_BYTES;
        self.bytes += added;
        if let Some(old) = self.map.insert(key, record) {
            self.bytes -= replaced + old.value.len() as u64;
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= record_bytes(key, &old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = Record {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            value: bytes::Bytes::from_static(b"hello"),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"short"), None);
    }

    #[test]
    fn data_counts_keys_values_and_overhead() {
        let rec = |v: &[u8]| Record {
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            value: bytes::Bytes::copy_from_slice(v),
        };
        let mut d = Data::default();
        d.insert("ab".into(), rec(b"xyz"));
        assert_eq!(d.bytes, 5 + KEY_OVERHEAD_BYTES);
        d.insert("ab".into(), rec(b"x"));
        assert_eq!(d.bytes, 3 + KEY_OVERHEAD_BYTES);
        d.remove("ab");
        d.remove("never");
        assert_eq!(d.bytes, 0);
    }
}
