//! The manifest kept beside each backup object, and the names both are written under.
//!
//! A backup is two objects under the store's prefix:
//!
//! - `<cluster_id>/backup-<yyyymmddThhmmssZ>-r<revision, 20 digits>.rsb`: the backup stream
//!   (see [`crate::format`]); the time is when the state was taken, in UTC, so names sort by
//!   time and then by revision;
//! - the same name with `.manifest.json` added: a [`Manifest`], written once the object is
//!   complete (or has failed), holding what the backup contains, its size and its SHA-256.
//!
//! A backup counts as good only when its manifest says [`Status::Complete`] and the object's
//! size and SHA-256 match the manifest's ([`Manifest::check`]). An object without a manifest is
//! still being written, or was abandoned by a writer that died.
//!
//! Archived segments of the change stream ([`crate::archive`]) have manifests of the same
//! kind, with [`Manifest::segment`] set instead of [`Manifest::backup`].

use serde::{Deserialize, Serialize};

use crate::format::Header;
use crate::segment::SegmentHeader;

/// The suffix of backup objects.
pub const OBJECT_SUFFIX: &str = ".rsb";
/// What is appended to a backup object's name to name its manifest.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// The version of the manifest's JSON layout this build writes.
pub const MANIFEST_VERSION: u32 = 1;

/// The header's fields, as the manifest records them (the cluster's settings are left out:
/// they are in the backup itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub format: u32,
    pub cluster_id: String,
    pub revision: u64,
    pub log_index: u64,
    pub created_unix_ms: u64,
    pub source_node: u64,
    pub keys: u64,
    pub data_bytes: u64,
}

impl From<&Header> for BackupInfo {
    fn from(h: &Header) -> Self {
        Self {
            format: h.format,
            cluster_id: h.cluster_id.clone(),
            revision: h.revision,
            log_index: h.log_index,
            created_unix_ms: h.created_unix_ms,
            source_node: h.source_node,
            keys: h.keys,
            data_bytes: h.data_bytes,
        }
    }
}

/// How a backup ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    /// The whole stream was written and its trailer checked.
    Complete,
    /// The backup did not complete; the object, if any, must not be restored from.
    Failed { reason: String },
}

/// The JSON document beside a backup object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] when written.
    pub manifest_version: u32,
    /// The backup object's name, relative to the store's prefix.
    pub object: String,
    pub status: Status,
    /// What the backup holds: absent when it failed before its header was known (and for
    /// a segment).
    pub backup: Option<BackupInfo>,
    /// What an archived segment holds (absent for a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentHeader>,
    /// The object's size in bytes and the lowercase hex SHA-256 of all of it.
    pub object_size: u64,
    pub sha256: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub duration_ms: u64,
}

/// Why a backup is not a good one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest of {object} is not valid JSON for a manifest: {reason}")]
    Invalid { object: String, reason: String },
    #[error(
        "the manifest of {object} is version {found}; this build reads version {MANIFEST_VERSION}"
    )]
    Version { object: String, found: u32 },
    #[error("the manifest of {object} names another object, {named}: it was copied or renamed")]
    WrongObject { object: String, named: String },
    #[error("backup {object} failed: {reason}")]
    Failed { object: String, reason: String },
    #[error(
        "backup {object} is {found} bytes, but its manifest says {expected}: it was truncated or replaced"
    )]
    Size {
        object: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "backup {object} has SHA-256 {found}, but its manifest says {expected}: it was corrupted or replaced"
    )]
    Checksum {
        object: String,
        expected: String,
        found: String,
    },
}

impl Manifest {
    /// The manifest of a backup that completed.
    pub fn complete(
        object: &str,
        header: &Header,
        object_size: u64,
        sha256: &str,
        started_unix_ms: u64,
        finished_unix_ms: u64,
    ) -> Self {
        Self::new(
            object,
            Status::Complete,
            Some(BackupInfo::from(header)),
            object_size,
            sha256,
            started_unix_ms,
            finished_unix_ms,
        )
    }

    /// The manifest of an archived segment that was written whole.
    pub fn segment_complete(
        object: &str,
        header: &SegmentHeader,
        object_size: u64,
        sha256: &str,
        started_unix_ms: u64,
        finished_unix_ms: u64,
    ) -> Self {
        let mut m = Self::new(
            object,
            Status::Complete,
            None,
            object_size,
            sha256,
            started_unix_ms,
            finished_unix_ms,
        );
        m.segment = Some(header.clone());
        m
    }

    /// The manifest of a backup that failed, with what is known of it.
    pub fn failed(
        object: &str,
        reason: &str,
        header: Option<&Header>,
        started_unix_ms: u64,
        finished_unix_ms: u64,
    ) -> Self {
        let status = Status::Failed {
            reason: reason.to_string(),
        };
        Self::new(
            object,
            status,
            header.map(BackupInfo::from),
            0,
            "",
            started_unix_ms,
            finished_unix_ms,
        )
    }

    fn new(
        object: &str,
        status: Status,
        backup: Option<BackupInfo>,
        object_size: u64,
        sha256: &str,
        started_unix_ms: u64,
        finished_unix_ms: u64,
    ) -> Self {
        Self {
            manifest_version: MANIFEST_VERSION,
            object: object.to_string(),
            status,
            backup,
            segment: None,
            object_size,
            sha256: sha256.to_string(),
            started_unix_ms,
            finished_unix_ms,
            duration_ms: finished_unix_ms.saturating_sub(started_unix_ms),
        }
    }

    /// The manifest as pretty JSON, as it is stored.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Reads the manifest stored for `object`, refusing one of another version or one that
    /// names another object.
    pub fn from_json(object: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid {
                object: object.to_string(),
                reason: e.to_string(),
            })?;
        let version = value.get("manifest_version").and_then(|v| v.as_u64());
        if let Some(found) = version.filter(|&v| v != u64::from(MANIFEST_VERSION)) {
            let found = u32::try_from(found).unwrap_or(u32::MAX);
            return Err(ManifestError::Version {
                object: object.to_string(),
                found,
            });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| ManifestError::Invalid {
                object: object.to_string(),
                reason: e.to_string(),
            })?;
        if manifest.object != object {
            return Err(ManifestError::WrongObject {
                object: object.to_string(),
                named: manifest.object,
            });
        }
        Ok(manifest)
    }

    /// Whether this is the manifest of a good backup whose object is `size` bytes and, when
    /// the object was read, has the SHA-256 `sha256`.
    pub fn check(&self, size: u64, sha256: Option<&str>) -> Result<(), ManifestError> {
        let object = self.object.clone();
        if let Status::Failed { reason } = &self.status {
            return Err(ManifestError::Failed {
                object,
                reason: reason.clone(),
            });
        }
        if size != self.object_size {
            return Err(ManifestError::Size {
                object,
                expected: self.object_size,
                found: size,
            });
        }
        match sha256 {
            Some(found) if !found.eq_ignore_ascii_case(&self.sha256) => {
                Err(ManifestError::Checksum {
                    object,
                    expected: self.sha256.clone(),
                    found: found.to_string(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// A backup object's name, taken apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupName {
    /// The cluster it was taken from (the name's first part).
    pub cluster_id: String,
    /// When the state was taken, in whole seconds since the Unix epoch (UTC).
    pub unix_secs: u64,
    pub revision: u64,
}

impl BackupName {
    /// The name of the backup of `cluster_id` at `revision`, taken at `created_unix_ms`.
    pub fn new(cluster_id: &str, created_unix_ms: u64, revision: u64) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            unix_secs: created_unix_ms / 1000,
            revision,
        }
    }

    /// The object name: `<cluster_id>/backup-<yyyymmddThhmmssZ>-r<revision:020>.rsb`.
    pub fn object(&self) -> String {
        format!(
            "{}/backup-{}-r{:020}{OBJECT_SUFFIX}",
            self.cluster_id,
            format_utc(self.unix_secs),
            self.revision
        )
    }

    /// The name of the object's manifest.
    pub fn manifest(&self) -> String {
        manifest_name(&self.object())
    }

    /// Takes apart an object name made by [`BackupName::object`] (relative to the store's
    /// prefix); `None` for any other name, a manifest's among them.
    pub fn parse(object: &str) -> Option<Self> {
        let (cluster_id, file) = object.rsplit_once('/')?;
        if cluster_id.is_empty() || cluster_id.contains('/') {
            return None;
        }
        let rest = file.strip_prefix("backup-")?.strip_suffix(OBJECT_SUFFIX)?;
        let (time, revision) = rest.split_once("-r")?;
        if revision.len() != 20 || !revision.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let name = Self {
            cluster_id: cluster_id.to_string(),
            unix_secs: parse_utc(time)?,
            revision: revision.parse().ok()?,
        };
        (name.object() == object).then_some(name)
    }
}

/// The manifest's name for a backup object.
pub fn manifest_name(object: &str) -> String {
    format!("{object}{MANIFEST_SUFFIX}")
}

/// The backup object a manifest's name is for, if it is a manifest's name.
pub fn object_of_manifest(manifest: &str) -> Option<&str> {
    manifest
        .strip_suffix(MANIFEST_SUFFIX)
        .filter(|o| o.ends_with(OBJECT_SUFFIX))
}

/// The segment object a manifest's name is for, if it is a segment manifest's name.
pub fn segment_of_manifest(manifest: &str) -> Option<&str> {
    manifest
        .strip_suffix(MANIFEST_SUFFIX)
        .filter(|o| o.ends_with(crate::archive::SEGMENT_SUFFIX))
}

/// `yyyymmddThhmmssZ` for seconds since the Unix epoch.
pub fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The inverse of [`format_utc`]; `None` for anything else (years 1970 to 9999).
pub fn parse_utc(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = &text[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if y < 1970
        || !(1..=12).contains(&m)
        || d < 1
        || d > days_in_month(y, m)
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(y as i64, m as u32, d as u32)).ok()?;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-calendar algorithms (public domain), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// SHA-256 over bytes given in pieces, as lowercase hex.
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish_hex(self) -> String {
        self.0
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests;
