//! What the store tests share: test data streamed in chunks, and a real S3 API server
//! (`moto_server`, from PyPI's `moto[server]`) started on a free loopback port and killed
//! when dropped, even when the test fails.
//!
//! The server is found by `RSTORE_MOTO_SERVER`, else in `~/.cache/rstore/moto-venv` (where
//! `.ci/run` installs it), else in `/work/.venv-moto`. Without one the S3 tests are skipped with a
//! message, unless `RSTORE_REQUIRE_MOTO=1` (CI), when they fail.

#![allow(dead_code)]

pub mod scenario;

#[allow(unused_imports)] // store_local.rs needs no S3 server
pub use rstore_tests::moto::Moto;

use bytes::Bytes;
use futures::stream::{self, Stream};

/// `len` deterministic pseudo-random bytes (xorshift), so that no two parts are alike.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `bytes` as a stream of `chunk`-sized pieces, as a backup arrives from a node.
pub fn chunks(
    bytes: Vec<u8>,
    chunk: usize,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
    let bytes = Bytes::from(bytes);
    let pieces: Vec<_> = (0..bytes.len())
        .step_by(chunk)
        .map(|i| Ok(bytes.slice(i..(i + chunk).min(bytes.len()))))
        .collect();
    stream::iter(pieces)
}

/// Lowercase hex SHA-256, computed independently of the crate.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
