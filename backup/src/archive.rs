//! Point-in-time recovery, the pure part: the names archived segments are written under,
//! which segments take a full backup to a target revision ([`plan`]), and replaying their
//! changes onto the backup's state ([`Replay`]), exactly up to the target and checking that
//! every change continues the state it is applied to.
//!
//! Segments live beside the full backups of their cluster:
//! `<cluster_id>/wal/seg-<first revision, 20 digits>-<last revision, 20 digits>.rsw`, each with
//! a manifest (`.manifest.json`, as for backups: [`crate::manifest::Manifest`] with its
//! `segment` set). Names sort by revision. Beside them, [`Position`] says up to when an idle
//! archiver confirmed that nothing changed after the newest segment.

use std::collections::BTreeMap;

use crate::format::Entry;
use crate::segment::{ChangeKind, Revision};

/// The suffix of segment objects.
pub const SEGMENT_SUFFIX: &str = ".rsw";

/// A segment object's name, taken apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub cluster_id: String,
    pub first: u64,
    pub last: u64,
}

impl SegmentName {
    pub fn new(cluster_id: &str, first: u64, last: u64) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            first,
            last,
        }
    }

    /// The folder of a cluster's segments, relative to the store's prefix.
    pub fn folder(cluster_id: &str) -> String {
        format!("{cluster_id}/wal")
    }

    /// `<cluster_id>/wal/seg-<first:020>-<last:020>.rsw`.
    pub fn object(&self) -> String {
        format!(
            "{}/seg-{:020}-{:020}{SEGMENT_SUFFIX}",
            Self::folder(&self.cluster_id),
            self.first,
            self.last
        )
    }

    /// Takes apart a name made by [`SegmentName::object`]; `None` for any other.
    pub fn parse(object: &str) -> Option<Self> {
        let (folder, file) = object.rsplit_once('/')?;
        let cluster_id = folder.strip_suffix("/wal")?;
        if cluster_id.is_empty() || cluster_id.contains('/') {
            return None;
        }
        let rest = file.strip_prefix("seg-")?.strip_suffix(SEGMENT_SUFFIX)?;
        let (first, last) = rest.split_once('-')?;
        let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(first) || !digits(last) {
            return None;
        }
        let name = Self::new(cluster_id, first.parse().ok()?, last.parse().ok()?);
        (name.first <= name.last && name.object() == object).then_some(name)
    }
}

/// What an idle archiver last confirmed: at `confirmed_unix_ms` the cluster was at
/// `revision`, and every change up to it was archived. Kept (and replaced) at
/// `<cluster_id>/wal/position.json`, so that a restore at a time after the newest segment
/// knows whether the cluster changed since; the one object of the archive that is replaced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub cluster_id: String,
    pub revision: u64,
    pub confirmed_unix_ms: u64,
}

impl Position {
    /// Where a cluster's position is kept.
    pub fn object(cluster_id: &str) -> String {
        format!("{}/position.json", SegmentName::folder(cluster_id))
    }
}

/// Why the archive cannot take a backup to a target revision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "revision {target} is beyond the archive: the newest archived revision is {newest}. Restore at or before {newest}, or wait for the archiver to upload more"
    )]
    BeyondArchive { target: u64, newest: u64 },
    #[error(
        "revision {target} is beyond the archive: it holds no segment after the full backup at revision {base}. Restore at revision {base}, or start `node backup archive`"
    )]
    NoSegments { target: u64, base: u64 },
    #[error(
        "the archive has a gap: no complete segment holds revision {missing} (the segment before it: {after}; the next one: {next}). Revisions from {missing} on cannot be restored: restore at or before revision {}, or put the missing segment back",
        .missing - 1
    )]
    Gap {
        missing: u64,
        after: String,
        next: String,
    },
}

/// The segments that take a full backup at `base` to `target` (`base < target`), in order:
/// each next one holds the revision after the previous one's last, and the last holds
/// `target`. `segments` are the complete segments of one cluster, in any order.
pub fn plan(
    base: u64,
    target: u64,
    segments: &[SegmentName],
) -> Result<Vec<SegmentName>, PlanError> {
    let mut sorted: Vec<&SegmentName> = segments.iter().collect();
    sorted.sort();
    let newest = sorted.iter().map(|s| s.last).max();
    match newest {
        None => return Err(PlanError::NoSegments { target, base }),
        Some(newest) if newest < target => {
            return Err(PlanError::BeyondArchive { target, newest });
        }
        Some(_) => {}
    }
    let mut out: Vec<SegmentName> = Vec::new();
    let mut need = base + 1;
    while need <= target {
        let holder = sorted
            .iter()
            .filter(|s| s.first <= need && need <= s.last)
            .max_by_key(|s| s.last);
        match holder {
            Some(s) => {
                need = s.last + 1;
                out.push((*s).clone());
            }
            None => {
                return Err(PlanError::Gap {
                    missing: need,
                    after: out
                        .last()
                        .map_or_else(|| "none".into(), SegmentName::object),
                    next: sorted
                        .iter()
                        .find(|s| s.first > need)
                        .map_or_else(|| "none".into(), |s| s.object()),
                });
            }
        }
    }
    Ok(out)
}

/// The state of a store rebuilt from a full backup and the changes after it.
#[derive(Debug, Default)]
pub struct Replay {
    entries: BTreeMap<String, Entry>,
    revision: u64,
}

impl Replay {
    /// The state of a full backup at `revision`.
    pub fn new(revision: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            revision,
        }
    }

    /// Add one key of the full backup.
    pub fn insert(&mut self, e: Entry) {
        self.entries.insert(e.key.clone(), e);
    }

    /// The revision the state is at.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Apply the changes of one revision, which must come after the state's, checking that
    /// each continues the state (a put's version and create revision follow the key's, a
    /// delete removes a key that exists): a change that does not is the sign of a segment
    /// that does not belong to this backup, and is refused with what does not fit.
    pub fn apply(&mut self, rev: &Revision) -> Result<(), String> {
        if rev.revision <= self.revision {
            return Err(format!(
                "revision {} comes after the state's revision {}",
                rev.revision, self.revision
            ));
        }
        for c in &rev.changes {
            let cur = self.entries.get(&c.key);
            match c.kind {
                ChangeKind::Put => {
                    let (create, version) = match cur {
                        Some(e) => (e.create_revision, e.version + 1),
                        None => (rev.revision, 1),
                    };
                    if (c.create_revision, c.version) != (create, version) {
                        return Err(format!(
                            "revision {}: the put of {:?} says create revision {} and version {}, but the state before it makes them {create} and {version}: the change does not continue this state",
                            rev.revision, c.key, c.create_revision, c.version
                        ));
                    }
                    self.entries.insert(
                        c.key.clone(),
                        Entry {
                            key: c.key.clone(),
                            create_revision: create,
                            mod_revision: rev.revision,
                            version,
                            value: c.value.clone(),
                        },
                    );
                }
                ChangeKind::Delete => {
                    if self.entries.remove(&c.key).is_none() {
                        return Err(format!(
                            "revision {}: {:?} is deleted, but the state before it does not hold it: the change does not continue this state",
                            rev.revision, c.key
                        ));
                    }
                }
            }
        }
        self.revision = rev.revision;
        Ok(())
    }

    /// Set the revision the state is at to `target` once every change up to it was
    /// applied (revisions with no change to any key keep the state as it is).
    pub fn finish_at(&mut self, target: u64) {
        self.revision = self.revision.max(target);
    }

    /// The keys, in order, and their count and key and value bytes.
    pub fn into_entries(self) -> (Vec<Entry>, u64, u64) {
        let bytes = self
            .entries
            .values()
            .map(|e| (e.key.len() + e.value.len()) as u64)
            .sum();
        let n = self.entries.len() as u64;
        (self.entries.into_values().collect(), n, bytes)
    }
}

#[cfg(test)]
mod tests;
