//! An archived segment of the change stream: every change a cluster made in a contiguous
//! range of revisions `[first, last]`, as `node backup archive` receives it from a watch,
//! in the same self-checking framing as a full backup ([`crate::frame`]).
//!
//! ```text
//! "RSTOREWL" u32 version            magic, then SEGMENT_VERSION (little-endian)
//! frame*                            [kind u8][len u32][crc32 u32 of kind and body][body]
//!   kind 1: header                  JSON `SegmentHeader` (cluster, first and last revision,
//!                                   counts, receive times)
//!   kind 2: revisions               revisions, back to back, in ascending order:
//!                                   [revision u64][received_unix_ms u64][changes u32]
//!                                   then each change: [kind u8: 1 put, 2 delete]
//!                                   [key_len u32][key][create_revision u64][version u64]
//!                                   [value_len u32][value]
//!   kind 3: trailer                 JSON `SegmentTrailer`: the counts and the SHA-256 of
//!                                   every byte before the trailer's frame
//! ```
//!
//! A revision is the unit: all changes of one revision (a transaction may make several)
//! are one record, never split between frames or segments. The range `[first, last]` says
//! the segment holds *every* change with a revision in it, so segments chain without gaps
//! when each next one starts at the previous one's `last + 1`.
//!
//! `received_unix_ms` is when the archiver received the revision (the cluster does not
//! stamp writes with a time). Restoring "at a time" resolves the time to the newest
//! revision received by then, so its precision is bounded by the archive lag at that moment
//! (the `rstore_archive_lag_seconds` metric).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::frame::{Cursor, FormatError, FrameReader, Start, put_frame, put_start, sha256_hex};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"RSTOREWL";
/// The version of the segment format this build writes and reads.
pub const SEGMENT_VERSION: u32 = 1;

const FRAME_TARGET: usize = 256 << 10;
const KIND_HEADER: u8 = 1;
const KIND_REVISIONS: u8 = 2;
const KIND_TRAILER: u8 = 3;
const CHANGE_PUT: u8 = 1;
const CHANGE_DELETE: u8 = 2;

/// What a segment holds: its first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// [`SEGMENT_VERSION`] when written.
    pub format: u32,
    /// The cluster whose changes these are.
    pub cluster_id: String,
    /// The segment holds every change with a revision in `[first_revision, last_revision]`.
    pub first_revision: u64,
    pub last_revision: u64,
    /// How many revisions (with changes) and changes it holds.
    pub revisions: u64,
    pub changes: u64,
    /// When the archiver received its first and last revision (0 when it holds none).
    pub first_received_unix_ms: u64,
    pub last_received_unix_ms: u64,
    /// When the archiver closed it: it then knew of no change after `last_revision`.
    pub closed_unix_ms: u64,
}

/// A segment's last frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentTrailer {
    pub revisions: u64,
    pub changes: u64,
    /// Lowercase hex SHA-256 of every byte of the segment before the trailer's frame.
    pub sha256: String,
}

/// A put or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change to one key, as the watch reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub key: String,
    /// The new value (empty for a delete).
    pub value: Vec<u8>,
    /// The key's create revision and version after a put (0 for a delete).
    pub create_revision: u64,
    pub version: u64,
}

/// All changes of one revision, in the order the cluster applied them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub revision: u64,
    pub received_unix_ms: u64,
    pub changes: Vec<Change>,
}

impl Revision {
    /// Bytes it takes in a segment.
    pub fn encoded_len(&self) -> usize {
        20 + self
            .changes
            .iter()
            .map(|c| 25 + c.key.len() + c.value.len())
            .sum::<usize>()
    }
}

/// Builds one segment in memory: [`SegmentWriter::push`] each revision in ascending
/// order, then [`SegmentWriter::finish`].
pub struct SegmentWriter {
    cluster_id: String,
    first: u64,
    frames: Vec<u8>,
    records: Vec<u8>,
    last_pushed: Option<u64>,
    revisions: u64,
    changes: u64,
    received: Option<(u64, u64)>,
}

/// The writer was used against its contract (a bug in the caller, reported).
#[derive(Debug, thiserror::Error)]
#[error("segment writer: {0}")]
pub struct SegmentWriteError(String);

impl SegmentWriter {
    /// A segment of `cluster_id` that starts at revision `first`.
    pub fn new(cluster_id: &str, first: u64) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            first,
            frames: Vec::new(),
            records: Vec::new(),
            last_pushed: None,
            revisions: 0,
            changes: 0,
            received: None,
        }
    }

    /// The first revision it covers.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The newest revision pushed.
    pub fn last_pushed(&self) -> Option<u64> {
        self.last_pushed
    }

    /// Encoded bytes so far.
    pub fn len(&self) -> usize {
        self.frames.len() + self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revisions == 0
    }

    /// When its first revision was received.
    pub fn first_received_unix_ms(&self) -> Option<u64> {
        self.received.map(|r| r.0)
    }

    /// Add one revision: after every one pushed before, at or after `first`, with at least
    /// one change.
    pub fn push(&mut self, rev: &Revision) -> Result<(), SegmentWriteError> {
        let floor = self.last_pushed.map_or(self.first, |l| l + 1);
        if rev.revision < floor {
            return Err(SegmentWriteError(format!(
                "revision {} pushed where revision {floor} or later belongs",
                rev.revision
            )));
        }
        if rev.changes.is_empty() {
            return Err(SegmentWriteError(format!(
                "revision {} has no changes",
                rev.revision
            )));
        }
        let r = &mut self.records;
        r.extend_from_slice(&rev.revision.to_le_bytes());
        r.extend_from_slice(&rev.received_unix_ms.to_le_bytes());
        r.extend_from_slice(&(rev.changes.len() as u32).to_le_bytes());
        for c in &rev.changes {
            r.push(match c.kind {
                ChangeKind::Put => CHANGE_PUT,
                ChangeKind::Delete => CHANGE_DELETE,
            });
            r.extend_from_slice(&(c.key.len() as u32).to_le_bytes());
            r.extend_from_slice(c.key.as_bytes());
            r.extend_from_slice(&c.create_revision.to_le_bytes());
            r.extend_from_slice(&c.version.to_le_bytes());
            r.extend_from_slice(&(c.value.len() as u32).to_le_bytes());
            r.extend_from_slice(&c.value);
        }
        self.last_pushed = Some(rev.revision);
        self.revisions += 1;
        self.changes += rev.changes.len() as u64;
        let first = self.received.map_or(rev.received_unix_ms, |r| r.0);
        self.received = Some((first, rev.received_unix_ms));
        // Frames are sealed between revisions only.
        if self.records.len() >= FRAME_TARGET {
            put_frame(&mut self.frames, KIND_REVISIONS, &self.records);
            self.records.clear();
        }
        Ok(())
    }

    /// The whole segment, covering `[first, last]` (`last` at least the newest revision
    /// pushed: the archiver knew of no change after it when it closed the segment at
    /// `closed_unix_ms`); its header and its bytes.
    pub fn finish(
        mut self,
        last: u64,
        closed_unix_ms: u64,
    ) -> Result<(SegmentHeader, Vec<u8>), SegmentWriteError> {
        if last < self.first || self.last_pushed.is_some_and(|p| p > last) {
            return Err(SegmentWriteError(format!(
                "a segment from {} with revisions up to {:?} cannot end at {last}",
                self.first, self.last_pushed
            )));
        }
        if !self.records.is_empty() {
            put_frame(&mut self.frames, KIND_REVISIONS, &self.records);
        }
        let (first_received, last_received) = self.received.unwrap_or((0, 0));
        let header = SegmentHeader {
            format: SEGMENT_VERSION,
            cluster_id: self.cluster_id,
            first_revision: self.first,
            last_revision: last,
            revisions: self.revisions,
            changes: self.changes,
            first_received_unix_ms: first_received,
            last_received_unix_ms: last_received,
            closed_unix_ms,
        };
        let mut out = Vec::with_capacity(self.frames.len() + 1024);
        put_start(&mut out, MAGIC, SEGMENT_VERSION);
        put_frame(
            &mut out,
            KIND_HEADER,
            &serde_json::to_vec(&header).expect("a header serializes"),
        );
        out.extend_from_slice(&self.frames);
        let trailer = SegmentTrailer {
            revisions: self.revisions,
            changes: self.changes,
            sha256: sha256_hex(&out),
        };
        put_frame(
            &mut out,
            KIND_TRAILER,
            &serde_json::to_vec(&trailer).expect("a trailer serializes"),
        );
        Ok((header, out))
    }
}

/// Reads and checks a segment: [`SegmentReader::open`] reads the header,
/// [`SegmentReader::next_revision`] yields the revisions and, after the last, checks the
/// trailer. A segment is good only once `next_revision` has returned `Ok(None)`.
pub struct SegmentReader<R> {
    fr: FrameReader<R>,
    header: SegmentHeader,
    pos: usize,
    last: Option<u64>,
    revisions: u64,
    changes: u64,
    done: bool,
}

impl<R: Read> SegmentReader<R> {
    /// Read the magic, the version and the header.
    pub fn open(r: R) -> Result<Self, FormatError> {
        let mut fr = match FrameReader::open(r, MAGIC, SEGMENT_VERSION)? {
            Ok(fr) => fr,
            Err(Start::Foreign) => return Err(FormatError::NotASegment),
            Err(Start::Version(found)) => {
                return Err(FormatError::UnsupportedVersion {
                    found,
                    reads: SEGMENT_VERSION,
                });
            }
        };
        let (kind, at) = fr.read_frame("the header frame", KIND_TRAILER)?;
        if kind != KIND_HEADER {
            return Err(FormatError::corrupt(
                at,
                format!("the first frame is of kind {kind}, not the header"),
            ));
        }
        let header: SegmentHeader = serde_json::from_slice(&fr.frame)
            .map_err(|e| FormatError::corrupt(at, format!("the header is not valid: {e}")))?;
        if header.format != SEGMENT_VERSION || header.first_revision > header.last_revision {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "the header is impossible (format {}, revisions {} to {})",
                    header.format, header.first_revision, header.last_revision
                ),
            ));
        }
        fr.frame.clear();
        Ok(Self {
            fr,
            header,
            pos: 0,
            last: None,
            revisions: 0,
            changes: 0,
            done: false,
        })
    }

    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The next revision, or `None` after the trailer checked out.
    pub fn next_revision(&mut self) -> Result<Option<Revision>, FormatError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.pos < self.fr.frame.len() {
                return self.revision().map(Some);
            }
            let (kind, at) = self
                .fr
                .read_frame("a revisions frame or the trailer", KIND_TRAILER)?;
            self.pos = 0;
            match kind {
                KIND_REVISIONS if !self.fr.frame.is_empty() => {}
                KIND_TRAILER => {
                    self.finish(at)?;
                    self.done = true;
                }
                other => {
                    return Err(FormatError::corrupt(
                        at,
                        format!("a frame of kind {other} where revisions or the trailer belong"),
                    ));
                }
            }
        }
    }

    fn revision(&mut self) -> Result<Revision, FormatError> {
        let at = self.fr.frame_at + self.pos as u64;
        let body = &self.fr.frame[self.pos..];
        let mut p = Cursor::new(body, at);
        let revision = p.u64()?;
        let received_unix_ms = p.u64()?;
        let n = p.u32()?;
        if n == 0 {
            return Err(FormatError::corrupt(
                at,
                format!("revision {revision} has no changes"),
            ));
        }
        let (first, last) = (self.header.first_revision, self.header.last_revision);
        let floor = self.last.map_or(first, |l| l + 1);
        if revision < floor || revision > last {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "revision {revision} is out of place: the segment holds {first} to {last}, and the one before it was {:?}",
                    self.last
                ),
            ));
        }
        let mut changes = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let kind = match p.u8()? {
                CHANGE_PUT => ChangeKind::Put,
                CHANGE_DELETE => ChangeKind::Delete,
                other => {
                    return Err(FormatError::corrupt(
                        at,
                        format!("a change of kind {other}"),
                    ));
                }
            };
            let klen = p.u32()?;
            let key = String::from_utf8(p.bytes(klen)?.to_vec())
                .map_err(|_| FormatError::corrupt(at, "a key is not UTF-8"))?;
            let create_revision = p.u64()?;
            let version = p.u64()?;
            let vlen = p.u32()?;
            let value = p.bytes(vlen)?.to_vec();
            let possible = match kind {
                ChangeKind::Put => {
                    version > 0 && create_revision > 0 && create_revision <= revision
                }
                ChangeKind::Delete => value.is_empty(),
            };
            if key.is_empty() || !possible {
                return Err(FormatError::corrupt(
                    at,
                    format!(
                        "an impossible change at revision {revision}: key {key:?}, create {create_revision}, version {version}"
                    ),
                ));
            }
            changes.push(Change {
                kind,
                key,
                value,
                create_revision,
                version,
            });
        }
        self.pos += p.pos;
        self.last = Some(revision);
        self.revisions += 1;
        self.changes += n as u64;
        if self.revisions > self.header.revisions || self.changes > self.header.changes {
            return Err(FormatError::corrupt(
                at,
                "more revisions or changes than the header says",
            ));
        }
        Ok(Revision {
            revision,
            received_unix_ms,
            changes,
        })
    }

    fn finish(&mut self, at: u64) -> Result<(), FormatError> {
        let trailer: SegmentTrailer = serde_json::from_slice(&self.fr.frame)
            .map_err(|e| FormatError::corrupt(at, format!("the trailer is not valid: {e}")))?;
        let sha = self.fr.digest();
        if trailer.sha256 != sha {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "the SHA-256 of the segment is {sha}, but its trailer says {}: the segment was altered or spliced",
                    trailer.sha256
                ),
            ));
        }
        let counts = (self.revisions, self.changes);
        if counts != (self.header.revisions, self.header.changes)
            || counts != (trailer.revisions, trailer.changes)
        {
            return Err(FormatError::corrupt(
                at,
                format!(
                    "it holds {} revisions and {} changes, but the header says {} and {}, the trailer {} and {}",
                    self.revisions,
                    self.changes,
                    self.header.revisions,
                    self.header.changes,
                    trailer.revisions,
                    trailer.changes
                ),
            ));
        }
        self.fr.expect_end()?;
        self.fr.frame.clear();
        Ok(())
    }

    /// Read and check the whole segment: its revisions.
    pub fn read_all(mut self) -> Result<(SegmentHeader, Vec<Revision>), FormatError> {
        let mut out = Vec::new();
        while let Some(r) = self.next_revision()? {
            out.push(r);
        }
        Ok((self.header, out))
    }
}

#[cfg(test)]
mod tests;
