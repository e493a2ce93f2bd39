//! Backups of an rstore cluster, shared by the node (which streams one), the `node backup`
//! command (which saves and restores one) and the operator (which schedules them and keeps
//! the newest).
//!
//! - [`check`]: checking a backup stream as it arrives, on a thread of its own.
//! - [`format`]: the backup stream: a header (cluster, revision, counts), the records in
//!   checksummed frames, and a trailer with the SHA-256 of everything before it; its writer
//!   and its checking reader, which names what is wrong with a corrupt or truncated stream.
//! - [`manifest`]: the JSON kept beside each backup object (what it holds, its size and
//!   checksum, whether it completed), and the names objects are written under.
//! - [`retention`]: which backups a schedule keeps, by count and by age (pure).
//! - [`frame`]: the checksummed framing both streams share (backups and segments).
//! - [`segment`]: an archived segment of the change stream (every change in a range of
//!   revisions, as `node backup archive` received it), its writer and its checking reader.
//! - [`archive`]: point-in-time recovery, the pure part: segment names, which segments take
//!   a backup to a revision, and replaying them exactly up to it.
//! - [`store`] (feature `store`): object storage by URL through the `object_store` crate;
//!   [`save`]: a backup stream saved into a store, checked, with its manifest;
//!   [`archive_store`]: the archive's segments there.

pub mod archive;
#[cfg(feature = "store")]
pub mod archive_store;
pub mod check;
pub mod format;
pub mod frame;
pub mod manifest;
pub mod retention;
#[cfg(feature = "store")]
pub mod save;
pub mod segment;
#[cfg(feature = "store")]
pub mod store;
