//! Archived segments in object storage (feature `store`), as methods of
//! [`crate::store::BackupStore`]: written once with their manifest, listed with
//! their manifests, and read back checked against the manifest (size, SHA-256), their own
//! framing and checksums, and their name (cluster, first and last revision). Every error
//! names the segment's URL and what is wrong with it.

use bytes::Bytes;

use crate::archive::{Position, SegmentName};
use crate::frame::sha256_hex;
use crate::manifest::{Manifest, segment_of_manifest};
use crate::segment::{Revision, SegmentHeader, SegmentReader};
use crate::store::{BackupStore, Listed, StoreError, Uploaded};

/// A segment as listed: its object and its manifest, as found.
pub type ListedSegment = Listed<SegmentName>;

impl BackupStore {
    /// The segments of `cluster_id`, by revision, with their manifests.
    pub async fn list_segments(&self, cluster_id: &str) -> Result<Vec<ListedSegment>, StoreError> {
        self.list_with_manifests(
            &SegmentName::folder(cluster_id),
            segment_of_manifest,
            SegmentName::parse,
        )
        .await
    }

    /// Writes a segment once, then its manifest (the commit: a segment without one never
    /// counts).
    pub async fn write_segment(
        &self,
        header: &SegmentHeader,
        bytes: Vec<u8>,
        started_unix_ms: u64,
        finished_unix_ms: u64,
    ) -> Result<Uploaded, StoreError> {
        let name = SegmentName::new(
            &header.cluster_id,
            header.first_revision,
            header.last_revision,
        );
        let object = name.object();
        let (size, sha256) = (bytes.len() as u64, sha256_hex(&bytes));
        self.put_once(&object, Bytes::from(bytes)).await?;
        let manifest = Manifest::segment_complete(
            &object,
            header,
            size,
            &sha256,
            started_unix_ms,
            finished_unix_ms,
        );
        self.write_manifest(&manifest).await?;
        Ok(Uploaded {
            url: self.object_url(&object),
            object,
            size,
            parts: 1,
        })
    }

    /// Reads a segment and checks it whole: it has a complete manifest, its size and
    /// SHA-256 are the manifest's, its frames and trailer check out, and it holds what its
    /// name says (cluster, first and last revision).
    pub async fn read_segment(
        &self,
        object: &str,
    ) -> Result<(SegmentHeader, Vec<Revision>), StoreError> {
        let url = self.object_url(object);
        let bad = |detail: String| StoreError::Other {
            object: url.clone(),
            op: "check the segment",
            detail,
        };
        let name = SegmentName::parse(object).ok_or_else(|| {
            bad("it is not named as a segment (CLUSTER/wal/seg-FIRST-LAST.rsw)".into())
        })?;
        let manifest = self.read_manifest(object).await?.ok_or_else(|| {
            bad("it has no manifest: its upload was cut off before it completed".into())
        })?;
        manifest.check(manifest.object_size, None)?;
        let bytes = self.get_bytes(object).await?;
        manifest.check(bytes.len() as u64, Some(&sha256_hex(&bytes)))?;
        let (header, revisions) = read_checked(&bytes, &name).map_err(bad)?;
        if manifest.segment.as_ref() != Some(&header) {
            return Err(bad(
                "its manifest describes another segment: it was copied or replaced".into(),
            ));
        }
        Ok((header, revisions))
    }

    /// Gives a segment that was uploaded whole but has no manifest (its writer died between
    /// the two) the manifest it lacks, once it checked out; its header.
    pub async fn adopt_segment(
        &self,
        object: &str,
        now_unix_ms: u64,
    ) -> Result<SegmentHeader, StoreError> {
        let url = self.object_url(object);
        let bad = |detail: String| StoreError::Other {
            object: url.clone(),
            op: "adopt the segment",
            detail,
        };
        let name =
            SegmentName::parse(object).ok_or_else(|| bad("it is not named as a segment".into()))?;
        let bytes = self.get_bytes(object).await?;
        let (header, _) = read_checked(&bytes, &name).map_err(|e| {
            bad(format!(
                "{e}. It has no manifest, so no restore uses it: delete it, and the archiver writes that range again"
            ))
        })?;
        let manifest = Manifest::segment_complete(
            object,
            &header,
            bytes.len() as u64,
            &sha256_hex(&bytes),
            header.closed_unix_ms,
            now_unix_ms,
        );
        self.write_manifest(&manifest).await?;
        Ok(header)
    }
}

impl BackupStore {
    /// Records what an idle archiver confirmed (replacing the previous record).
    pub async fn write_position(&self, p: &Position) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(p).expect("a position serializes");
        self.put_replace(&Position::object(&p.cluster_id), Bytes::from(bytes))
            .await
    }

    /// What the archiver of `cluster_id` last confirmed, if it recorded anything.
    pub async fn read_position(&self, cluster_id: &str) -> Result<Option<Position>, StoreError> {
        let name = Position::object(cluster_id);
        match self.get_bytes(&name).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Other {
                    object: self.object_url(&name),
                    op: "read",
                    detail: format!("it is not an archive position: {e}"),
                }),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads a whole segment and checks that it is the one `name` says.
fn read_checked(
    bytes: &[u8],
    name: &SegmentName,
) -> Result<(SegmentHeader, Vec<Revision>), String> {
    let (header, revisions) = SegmentReader::open(bytes)
        .and_then(SegmentReader::read_all)
        .map_err(|e| e.to_string())?;
    if header.cluster_id != name.cluster_id {
        return Err(format!(
            "it holds the changes of cluster {}, not of cluster {} that its name says",
            header.cluster_id, name.cluster_id
        ));
    }
    if (header.first_revision, header.last_revision) != (name.first, name.last) {
        return Err(format!(
            "it holds revisions {} to {}, not {} to {} as its name says",
            header.first_revision, header.last_revision, name.first, name.last
        ));
    }
    Ok((header, revisions))
}
