//! The framing both of rstore's self-checking streams share: full backups
//! ([`crate::format`]) and archived change segments ([`crate::segment`]).
//!
//! ```text
//! MAGIC (8 bytes) u32 version       little-endian
//! frame*                            [kind u8][len u32][crc32 u32 of kind and body][body]
//! ```
//!
//! The last frame of a stream is its trailer, which carries the SHA-256 of every byte
//! before the trailer's frame. [`put_frame`] writes a frame; [`FrameReader`] reads the
//! magic and version, then frames, checking each frame's CRC, bounding its length
//! ([`MAX_FRAME`]), keeping the running SHA-256, and naming the byte offset of anything
//! wrong (as [`FormatError`]).

use std::io::Read;

use ring::digest::{Context, SHA256};

/// What is wrong with a backup or segment stream. `offset` is the byte offset in the stream where the
/// problem was found.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not an rstore backup: it does not start with the bytes \"RSTOREBK\"")]
    NotABackup,
    #[error("not an rstore archive segment: it does not start with the bytes \"RSTOREWL\"")]
    NotASegment,
    #[error(
        "format version {found} is not supported by this build (it reads version {reads}); restore it with the rstore version that wrote it or a newer one"
    )]
    UnsupportedVersion { found: u32, reads: u32 },
    #[error("truncated at byte {offset}: the stream ends inside {what}")]
    Truncated { offset: u64, what: String },
    #[error("corrupt at byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    #[error("cannot read the backup: {0}")]
    Io(#[from] std::io::Error),
}

impl FormatError {
    pub(crate) fn corrupt(offset: u64, what: impl Into<String>) -> Self {
        Self::Corrupt {
            offset,
            what: what.into(),
        }
    }
}

/// The largest frame a reader accepts, so that a damaged length cannot make it allocate
/// without bound (a frame holds at least one record, and a record's value is far smaller).
pub const MAX_FRAME: usize = 256 << 20;

/// Bytes before a frame's body: kind, length, CRC.
pub(crate) const FRAME_HEAD: usize = 9;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn frame_crc(kind: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(body);
    h.finalize()
}

/// Append one frame of `kind` holding `body` to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame_crc(kind, body).to_le_bytes());
    out.extend_from_slice(body);
}

/// A frame built where it will be sent: `buf` starts with [`FRAME_HEAD`] bytes kept free,
/// then holds the body; this writes the head for `kind` into them. The body is not copied
/// again (a backup's records are most of its bytes).
pub(crate) fn seal_frame_in_place(buf: &mut [u8], kind: u8) {
    let (head, body) = buf.split_at_mut(FRAME_HEAD);
    head[0] = kind;
    head[1..5].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[5..9].copy_from_slice(&frame_crc(kind, body).to_le_bytes());
}

/// The start of a stream: `magic` and `version`.
pub(crate) fn put_start(out: &mut Vec<u8>, magic: &[u8; 8], version: u32) {
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
}

/// SHA-256 of `bytes`, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let mut c = Context::new(&SHA256);
    c.update(bytes);
    hex(c.finish().as_ref())
}

/// What a stream's first bytes were.
pub(crate) enum Start {
    /// Not this kind of stream (wrong or missing magic).
    Foreign,
    /// The magic, then a version other than the one expected.
    Version(u32),
}

/// Reads the frames of a stream, checking each, and keeping the SHA-256 of every frame
/// but the trailer's (the trailer holds it), and, once the trailer was read, of the whole
/// stream (a manifest holds that one): one hashing pass gives both.
pub(crate) struct FrameReader<R> {
    r: R,
    offset: u64,
    sha: Context,
    whole: Option<String>,
    /// The body of the last frame read, and its offset in the stream.
    pub(crate) frame: Vec<u8>,
    pub(crate) frame_at: u64,
}

impl<R: Read> FrameReader<R> {
    /// Read the magic and the version: `Err(Ok(start))` when they are not `magic` and
    /// `version`.
    pub(crate) fn open(
        mut r: R,
        magic: &[u8; 8],
        version: u32,
    ) -> Result<Result<Self, Start>, FormatError> {
        let mut start = [0u8; 12];
        let n = read_full(&mut r, &mut start)?;
        if n < magic.len() || &start[..8] != magic {
            return Ok(Err(Start::Foreign));
        }
        if n < start.len() {
            return Err(FormatError::Truncated {
                offset: n as u64,
                what: "the format version".into(),
            });
        }
        let found = u32::from_le_bytes(start[8..12].try_into().expect("4 bytes"));
        if found != version {
            return Ok(Err(Start::Version(found)));
        }
        let mut sha = Context::new(&SHA256);
        sha.update(&start);
        Ok(Ok(Self {
            r,
            offset: start.len() as u64,
            sha,
            whole: None,
            frame: Vec::new(),
            frame_at: 0,
        }))
    }

    /// Bytes read so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Read one frame into `self.frame`; its kind and the offset of its head. A frame of
    /// kind `trailer` is left out of the running SHA-256.
    pub(crate) fn read_frame(&mut self, what: &str, trailer: u8) -> Result<(u8, u64), FormatError> {
        let at = self.offset;
        let mut head = [0u8; FRAME_HEAD];
        let n = read_full(&mut self.r, &mut head)?;
        if n < FRAME_HEAD {
            return Err(FormatError::Truncated {
                offset: at + n as u64,
                what: format!("{what} (its frame head)"),
            });
        }
        let kind = head[0];
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            return Err(FormatError::corrupt(
                at,
                format!("a frame claims {len} bytes, more than the {MAX_FRAME} allowed"),
            ));
        }
        self.frame.clear();
        self.frame.resize(len, 0);
        let got = read_full(&mut self.r, &mut self.frame)?;
        if got < len {
            return Err(FormatError::Truncated {
                offset: at + (FRAME_HEAD + got) as u64,
                what: format!("{what} ({got} of its {len} bytes)"),
            });
        }
        if frame_crc(kind, &self.frame) != crc {
            return Err(FormatError::corrupt(
                at,
                format!("{what} fails its checksum"),
            ));
        }
        if kind != trailer {
            self.sha.update(&head);
            self.sha.update(&self.frame);
        } else {
            let mut whole = self.sha.clone();
            whole.update(&head);
            whole.update(&self.frame);
            self.whole = Some(hex(whole.finish().as_ref()));
        }
        self.offset = at + (FRAME_HEAD + len) as u64;
        self.frame_at = at + FRAME_HEAD as u64;
        Ok((kind, at))
    }

    /// The SHA-256 of every frame read before the trailer (once, at the trailer).
    pub(crate) fn digest(&mut self) -> String {
        hex(std::mem::replace(&mut self.sha, Context::new(&SHA256))
            .finish()
            .as_ref())
    }

    /// The SHA-256 of the whole stream, trailer included, once the trailer was read.
    pub(crate) fn whole_digest(&self) -> Option<&str> {
        self.whole.as_deref()
    }

    /// Refuse bytes after the trailer.
    pub(crate) fn expect_end(&mut self) -> Result<(), FormatError> {
        let mut extra = [0u8; 1];
        if read_full(&mut self.r, &mut extra)? != 0 {
            return Err(FormatError::corrupt(
                self.offset,
                "bytes follow the trailer",
            ));
        }
        Ok(())
    }

    pub(crate) fn into_inner(self) -> R {
        self.r
    }
}

/// Reads the fields of one record in a frame's body, naming the record's offset (`at`) when
/// it runs past the frame.
pub(crate) struct Cursor<'a> {
    body: &'a [u8],
    pub(crate) pos: usize,
    at: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(body: &'a [u8], at: u64) -> Self {
        Self { body, pos: 0, at }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let got = self
            .pos
            .checked_add(n)
            .and_then(|end| self.body.get(self.pos..end))
            .ok_or_else(|| {
                FormatError::corrupt(self.at, "a record runs past the end of its frame")
            })?;
        self.pos += n;
        Ok(got)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.bytes(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<usize, FormatError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")) as usize)
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Fill `buf` as far as the stream goes; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
