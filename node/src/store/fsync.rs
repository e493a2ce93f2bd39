//! A failed `fsync` of the store's files (log segments, the log directory, the snapshot,
//! the watermark) aborts the process: every sync of the store goes through this module, and
//! every failure through [`fsync_failed`].
//!
//! When `fsync`/`fdatasync` fails, Linux may already have given up on the dirty pages it
//! could not write and marked them clean: the error is reported once, reads still return
//! the data from the page cache, and a later `fsync` that succeeds says nothing about it
//! (PostgreSQL's "fsyncgate", 2018). Retrying the barrier, or returning an error that
//! later writes get past, could then acknowledge writes that stand on a log entry, vote or
//! seal that never reached the disk. Like PostgreSQL (a PANIC) and etcd (a fatal error),
//! the node stops at once instead, before anything else is acknowledged.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Stop the process because syncing `path` failed (see the module documentation for why
/// this cannot be retried or returned).
#[cold]
pub fn fsync_failed(path: &Path, err: &io::Error) -> ! {
    tracing::error!(
        path = %path.display(),
        error = %err,
        "fsync failed: what it should have made durable may be lost (the kernel may have dropped it from the page cache), and no retry can tell. Aborting rather than acknowledging writes that may stand on lost data; check the disk before restarting"
    );
    std::process::abort()
}

/// `fdatasync` `file` (at `path`), or abort.
pub fn sync_data(file: &File, path: &Path) {
    if let Err(e) = file.sync_data() {
        fsync_failed(path, &e)
    }
}

/// `fsync` `file` (at `path`), or abort.
pub fn sync_all(file: &File, path: &Path) {
    if let Err(e) = file.sync_all() {
        fsync_failed(path, &e)
    }
}

/// `fsync` the directory `dir` so that files created, renamed or removed in it are durable,
/// or abort. Opening it may fail like any open (nothing was lost then): that is returned.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    sync_all(&File::open(dir)?, dir);
    Ok(())
}

/// Write a file durably: a temporary file, `fsync`, rename, `fsync` of the directory. The
/// syncs abort on failure; other errors (creating, writing, renaming) are returned, and
/// leave the file as it was.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_durably_parts(path, &[bytes])
}

/// [`write_durably`] of the concatenation of `parts`.
pub fn write_durably_parts(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = io::BufWriter::new(File::create(&tmp)?);
        for part in parts {
            f.write_all(part)?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        sync_all(&f, &tmp);
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_that_succeed_return() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_durably(&path, b"one").unwrap();
        write_durably(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
        let file = File::open(&path).unwrap();
        sync_data(&file, &path);
        sync_all(&file, &path);
        sync_dir(dir.path()).unwrap();
        // Not a sync failure: returned.
        assert!(sync_dir(&dir.path().join("missing")).is_err());
        assert!(write_durably(&dir.path().join("missing/f"), b"x").is_err());
    }
}
