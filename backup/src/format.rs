//! The backup stream: what `GET /v1/cluster/backup` sends, `node backup save` stores and
//! `node backup restore` reads.
//!
//! ```text
//! "RSTOREBK" u32 version            magic, then FORMAT_VERSION (little-endian)
//! frame*                            [kind u8][len u32][crc32 u32 of kind and body][body]
//!   kind 1: header                  JSON `Header` (cluster, revision, counts, settings)
//!   kind 2: records                 records, back to back, keys in ascending order:
//!                                   [key_len u32][key][create u64][mod u64][version u64]
//!                                   [value_len u32][value]
//!   kind 3: trailer                 JSON `Trailer`: the key count and the SHA-256 of every
//!                                   byte before the trailer's frame
//! ```
//!
//! Integers are little-endian. The writer ([`Writer`]) produces the stream in chunks, so a
//! node streams a large state without holding its encoding in memory. The reader
//! ([`Reader`]) checks everything it can while it reads (frame checksums, key order,
//! revisions at most the header's, counts) and, at the end, the SHA-256 and the counts
//! against the header and the trailer; its errors name the byte offset and what is wrong,
//! so that a restore refuses a corrupt, truncated or spliced backup before it starts
//! anything.

use std::io::Read;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

pub use crate::frame::FormatError;
pub use crate::frame::MAX_FRAME;
use crate::frame::{
    FRAME_HEAD, FrameReader, Start, hex, put_frame, put_start, seal_frame_in_place,
};

/// The version of the stream format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first bytes of every backup.
pub const MAGIC: &[u8; 8] = b"RSTOREBK";

/// Records are sealed into a frame once it holds this many bytes.
const FRAME_TARGET: usize = 256 << 10;

const KIND_HEADER: u8 = 1;
const KIND_RECORDS: u8 = 2;
const KIND_TRAILER: u8 = 3;

/// What a backup holds, the stream's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT_VERSION`] when written.
    pub format: u32,
    /// The id of the cluster the backup was taken from.
    pub cluster_id: String,
    /// The store's revision the backup is consistent at: every write with a revision up to
    /// it is in the backup, and none after it.
    pub revision: u64,
    /// The Raft log index the state was taken at.
    pub log_index: u64,
    /// When the state was taken, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The member that streamed it.
    pub source_node: u64,
    /// How many keys follow, and their key and value bytes.
    pub keys: u64,
    pub data_bytes: u64,
    /// The cluster's settings (replication mode, read consistency), as the node's admin API
    /// gives them.
    pub config: serde_json::Value,
}

/// The stream's last frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub keys: u64,
    /// Lowercase hex SHA-256 of every byte of the stream before the trailer's frame.
    pub sha256: String,
}

/// One key and its record, as a backup holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub value: Vec<u8>,
}

/// Writes a backup stream in chunks: [`Writer::new`] with the header, [`Writer::push`] each
/// record in ascending key order, taking the bytes ready so far with [`Writer::take`], and
/// [`Writer::finish`] for the rest.
pub struct Writer {
    out: Vec<u8>,
    records: Vec<u8>,
    sha: Context,
    header: Header,
    keys: u64,
    data_bytes: u64,
}

/// The writer was used against its contract (a bug in the caller, reported, not panicked).
#[derive(Debug, thiserror::Error)]
#[error("backup writer: {0}")]
pub struct WriteError(String);

impl Writer {
    pub fn new(header: Header) -> Self {
        let mut out = Vec::with_capacity(FRAME_TARGET + 1024);
        put_start(&mut out, MAGIC, FORMAT_VERSION);
        let body = serde_json::to_vec(&header).expect("a header serializes");
        put_frame(&mut out, KIND_HEADER, &body);
        Self {
            out,
            records: fresh_frame(),
            sha: Context::new(&SHA256),
            header,
            keys: 0,
            data_bytes: 0,
        }
    }

    /// Add one record (keys must come in ascending order; the reader checks it).
    pub fn push(
        &mut self,
        key: &[u8],
        create_revision: u64,
        mod_revision: u64,
        version: u64,
        value: &[u8],
    ) {
        let r = &mut self.records;
        r.extend_from_slice(&(key.len() as u32).to_le_bytes());
        r.extend_from_slice(key);
        r.extend_from_slice(&create_revision.to_le_bytes());
        r.extend_from_slice(&mod_revision.to_le_bytes());
        r.extend_from_slice(&version.to_le_bytes());
        r.extend_from_slice(&(value.len() as u32).to_le_bytes());
        r.extend_from_slice(value);
        self.keys += 1;
        self.data_bytes += (key.len() + value.len()) as u64;
        if self.records.len() >= FRAME_TARGET {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if self.records.len() > FRAME_HEAD {
            seal_frame_in_place(&mut self.records, KIND_RECORDS);
            let frame = std::mem::replace(&mut self.records, fresh_frame());
            if self.out.is_empty() {
                self.out = frame;
            } else {
                // Only the first frame: it follows the stream's start and header.
                self.out.extend_from_slice(&frame);
            }
        }
    }

    /// Bytes ready to send (whole frames); empty until a frame fills.
    pub fn take(&mut self) -> Vec<u8> {
        self.sha.update(&self.out);
        std::mem::take(&mut self.out)
    }

    /// Seal the last records and write the trailer: the rest of the stream. Fails if the
    /// records pushed do not match the header's counts.
    pub fn finish(mut self) -> Result<Vec<u8>, WriteError> {
        if (self.keys, self.data_bytes) != (self.header.keys, self.header.data_bytes) {
            return Err(WriteError(format!(
                "the header promised {} keys of {} bytes, but {} keys of {} bytes were written",
                self.header.keys, self.header.data_bytes, self.keys, self.data_bytes
            )));
        }
        self.seal();
        self.sha.update(&self.out);
        let trailer = Trailer {
            keys: self.keys,
            sha256: hex(self.sha.finish().as_ref()),
        };
        let body = serde_json::to_vec(&trailer).expect("a trailer serializes");
        put_frame(&mut self.out, KIND_TRAILER, &body);
        Ok(self.out)
    }
}

/// A records frame to fill: its head's bytes kept free (see [`seal_frame_in_place`]).
fn fresh_frame() -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAME_TARGET + 1024);
    v.resize(FRAME_HEAD, 0);
    v
}

/// A whole backup in memory (tests and small states).
pub fn encode(header: Header, entries: &[Entry]) -> Result<Vec<u8>, WriteError> {
    let mut w = Writer::new(header);
    let mut out = Vec::new();
    for e in entries {
        w.push(
            e.key.as_bytes(),
            e.create_revision,
            e.mod_revision,
            e.version,
            &e.value,
        );
        out.extend(w.take());
    }
    out.extend(w.finish()?);
    Ok(out)
}

/// Reads and checks a backup stream: [`Reader::open`] reads the header, [`Reader::next`]
/// yields the records and, after the last one, checks the trailer. A stream is good only
/// once `next` has returned `Ok(None)`.
pub struct Reader<R> {
    fr: FrameReader<R>,
    header: Header,
    /// The read position in the current frame's body.
    pos: usize,
    keys: u64,
    data_bytes: u64,
    last_key: Option<String>,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Read the magic, the version and the header.
    pub fn open(r: R) -> Result<Self, FormatError> {
        let fr = match FrameReader::open(r, MAGIC, FORMAT_VERSION)? {
            Ok(fr) => fr,
            Err(Start::Foreign) => return Err(FormatError::NotABackup),
            Err(Start::Version(found)) => {
                return Err(FormatError::UnsupportedVersion {
                    found,
                    reads: FORMAT_VERSION,
                });
            }
        };
        let mut reader = Self {
            fr,
            header: Header {
                format: 0,
                cluster_id: String::new(),
                revision: 0,
                log_index: 0,
                created_unix_ms: 0,
                source_node: 0,
                keys: 0,
                data_bytes: 0,
                config: serde_json::Value::Null,
            },
            pos: 0,
            keys: 0,
            data_bytes: 0,
            last_key: None,
            done: false,
        };
        let (kind, at) = reader.read_frame("the header frame")?;
        if kind != KIND_HEADER {
            return Err(FormatError::corrupt(
                at,
                format!("the first frame is of kind {kind}, not the header"),
            ));
        }
        reader.header = serde_json::from_slice(&reader.fr.frame)
            .map_err(|e| FormatError::corrupt(at, format!("the header is not valid: {e}")))?;
        if reader.header.format != FORMAT_VERSION {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "the header says format {} inside a version {FORMAT_VERSION} stream",
                    reader.header.format
                ),
            ));
        }
        reader.fr.frame.clear();
        Ok(reader)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.fr.offset()
    }

    /// Read one frame into `self.fr.frame`; returns its kind and the offset of its head.
    fn read_frame(&mut self, what: &str) -> Result<(u8, u64), FormatError> {
        let got = self.fr.read_frame(what, KIND_TRAILER)?;
        self.pos = 0;
        Ok(got)
    }

    /// The next record, or `None` after the trailer checked out.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, FormatError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.pos < self.fr.frame.len() {
                return self.record().map(Some);
            }
            let (kind, at) = self.read_frame("a records frame or the trailer")?;
            match kind {
                KIND_RECORDS if !self.fr.frame.is_empty() => {}
                KIND_RECORDS => return Err(FormatError::corrupt(at, "an empty records frame")),
                KIND_TRAILER => {
                    self.finish(at)?;
                    self.done = true;
                }
                other => {
                    return Err(FormatError::corrupt(
                        at,
                        format!("a frame of kind {other} where records or the trailer belong"),
                    ));
                }
            }
        }
    }

    fn record(&mut self) -> Result<Entry, FormatError> {
        let at = self.fr.frame_at + self.pos as u64;
        let body = &self.fr.frame[self.pos..];
        let short = || FormatError::corrupt(at, "a record runs past the end of its frame");
        let u32_at = |i: usize| -> Option<usize> {
            Some(u32::from_le_bytes(body.get(i..i + 4)?.try_into().ok()?) as usize)
        };
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?))
        };
        let klen = u32_at(0).ok_or_else(short)?;
        let key = body.get(4..4 + klen).ok_or_else(short)?;
        let p = 4 + klen;
        let (create, modr, version) = (
            u64_at(p).ok_or_else(short)?,
            u64_at(p + 8).ok_or_else(short)?,
            u64_at(p + 16).ok_or_else(short)?,
        );
        let vlen = u32_at(p + 24).ok_or_else(short)?;
        let value = body.get(p + 28..p + 28 + vlen).ok_or_else(short)?.to_vec();
        let used = p + 28 + vlen;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| FormatError::corrupt(at, "a key is not UTF-8"))?;
        if key.is_empty() {
            return Err(FormatError::corrupt(at, "an empty key"));
        }
        if let Some(last) = &self.last_key
            && *last >= key
        {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "key {key:?} does not come after {last:?}: keys must be unique and in order"
                ),
            ));
        }
        if version == 0 || create == 0 || create > modr || modr > self.header.revision {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "key {key:?} has impossible revisions (create {create}, mod {modr}, version {version}) for a backup at revision {}",
                    self.header.revision
                ),
            ));
        }
        self.pos += used;
        self.keys += 1;
        self.data_bytes += (key.len() + value.len()) as u64;
        if self.keys > self.header.keys {
            return Err(FormatError::corrupt(
                at,
                format!("more keys than the {} the header says", self.header.keys),
            ));
        }
        self.last_key = Some(key.clone());
        Ok(Entry {
            key,
            create_revision: create,
            mod_revision: modr,
            version,
            value,
        })
    }

    /// Check the trailer (in `self.frame`, found at `at`) and that nothing follows it.
    fn finish(&mut self, at: u64) -> Result<(), FormatError> {
        let trailer: Trailer = serde_json::from_slice(&self.fr.frame)
            .map_err(|e| FormatError::corrupt(at, format!("the trailer is not valid: {e}")))?;
        let sha = self.fr.digest();
        if trailer.sha256 != sha {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "the SHA-256 of the stream is {sha}, but its trailer says {}: the backup was altered or spliced",
                    trailer.sha256
                ),
            ));
        }
        if (self.keys, self.data_bytes) != (self.header.keys, self.header.data_bytes)
            || trailer.keys != self.keys
        {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "it holds {} keys of {} bytes, but the header says {} keys of {} bytes and the trailer {} keys",
                    self.keys,
                    self.data_bytes,
                    self.header.keys,
                    self.header.data_bytes,
                    trailer.keys
                ),
            ));
        }
        self.fr.expect_end()?;
        self.fr.frame.clear();
        self.pos = 0;
        Ok(())
    }

    /// The stream read from.
    /// The SHA-256 of the whole stream as read (what a manifest records), once its trailer
    /// was read: after [`Reader::verify_rest`], or the last entry.
    pub fn stream_sha256(&self) -> Option<&str> {
        self.fr.whole_digest()
    }

    pub fn into_inner(self) -> R {
        self.fr.into_inner()
    }

    /// Read and check the rest of the stream, counting the records.
    pub fn verify_rest(&mut self) -> Result<u64, FormatError> {
        let mut n = 0;
        while self.next_entry()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
