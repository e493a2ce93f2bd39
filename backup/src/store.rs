//! Backups in object storage, by URL, through the `object_store` crate (feature `store`).
//!
//! [`BackupStore::open`] takes `s3://BUCKET/PREFIX` (S3 and S3-compatible stores: give
//! [`StoreOptions::endpoint`]), `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX` (or `azure://`)
//! and `file:///DIRECTORY`; [`options`] says where credentials come from. Object names given
//! to its methods are relative to the URL's prefix, as [`crate::manifest::BackupName`] makes
//! them.
//!
//! Objects are written once:
//! - an upload that fits in one part, and every manifest, is one request with
//!   `PutMode::Create`, which the store refuses atomically when the object exists (S3 and
//!   S3-compatible stores through `If-None-Match: *`, GCS, Azure, a local directory);
//! - a larger upload is a multipart upload, which object_store cannot make conditional: it is
//!   check-then-put (refused if the object exists when the upload starts). A writer racing on
//!   the same name (same cluster, second and revision) could still replace it, but the
//!   manifest (written with `PutMode::Create`) is the commit: only one writer's manifest is
//!   kept, and [`BackupStore::verify`] finds an object that is not the one its manifest
//!   describes.
//!
//! Uploads stream: at most about `part_size × (upload_concurrency + 1)` bytes are held.
//!
//! Archived segments of the change stream ([`crate::archive_store`]) are small objects written
//! once with `PutMode::Create`, each followed by its manifest.

mod error;
pub mod options;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::manifest::{BackupName, Manifest, Sha256, manifest_name, object_of_manifest};
use crate::retention::{Entry, State};
pub use error::StoreError;
pub use options::{Backend, MIN_PART_SIZE, StoreOptions};

/// A backup location: an object store and the prefix backups are kept under.
#[derive(Debug, Clone)]
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    backend: Backend,
    part_size: usize,
    concurrency: usize,
}

/// What an upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The object's name (relative to the prefix) and its full URL.
    pub object: String,
    pub url: String,
    pub size: u64,
    /// How many parts it was sent in (1: a single request).
    pub parts: u64,
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the prefix.
    pub name: String,
    pub size: u64,
    pub last_modified_unix_ms: i64,
}

/// A backup (or, as `Listed<SegmentName>`, an archived segment) as listed: its object and
/// its manifest, as found.
#[derive(Debug)]
pub struct Listed<N = BackupName> {
    pub name: N,
    pub object: String,
    /// The object's size, if the object exists.
    pub size: Option<u64>,
    /// `None` when there is no manifest (yet); `Some(Err)` when it cannot be read.
    pub manifest: Option<Result<Manifest, StoreError>>,
}

impl<N> Listed<N> {
    /// Good when the manifest says complete and its size matches the object's (the
    /// checksum is only checked when the object is read: [`BackupStore::verify`]).
    pub fn state(&self) -> State {
        match (&self.manifest, self.size) {
            (None, _) => State::InProgress,
            (Some(Ok(m)), Some(size)) if m.check(size, None).is_ok() => State::Good,
            _ => State::Failed,
        }
    }
}

impl Listed {
    /// The listing as retention sees it.
    pub fn entry(&self) -> Entry {
        Entry {
            name: self.object.clone(),
            time_unix_ms: self.name.unix_secs * 1000,
            state: self.state(),
        }
    }
}

/// A download: the object's size and its bytes.
pub struct Download {
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl BackupStore {
    /// Opens the location `url` names (no request is made: see [`BackupStore::check`]).
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        let (store, prefix, backend) = options::build(url, opts)?;
        Ok(Self {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
            backend,
            part_size: opts.part_size.max(MIN_PART_SIZE),
            concurrency: opts.upload_concurrency.max(1),
        })
    }

    /// The URL it was opened with (without a trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The full URL of an object.
    pub fn object_url(&self, name: &str) -> String {
        format!("{}/{}", self.url, name)
    }

    fn path(&self, name: &str) -> Result<Path, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: self.object_url(name),
            reason,
        };
        let rel = Path::parse(name).map_err(|e| bad(e.to_string()))?;
        if name.is_empty() || rel.as_ref() != name {
            return Err(bad("not a valid object name".into()));
        }
        Ok(self.prefix.parts().chain(rel.parts()).collect())
    }

    fn err(&self, e: object_store::Error, name: &str, op: &'static str) -> StoreError {
        classify_local(
            error::classify(
                e,
                &self.url,
                &self.object_url(name),
                op,
                self.backend.credentials_hint(),
            ),
            self.backend,
        )
    }

    /// Makes one request to see that the location is there and the credentials work.
    pub async fn check(&self) -> Result<(), StoreError> {
        let probe = self.prefix.clone();
        match self.store.list_with_delimiter(Some(&probe)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(e, "", "list")),
        }
    }

    /// Whether an object exists, and its size.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.store.head(&self.path(name)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match self.err(e, name, "head") {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Writes `name` from `stream`, refusing if it exists (see the module doc for how). The
    /// upload is aborted, and nothing is kept, if the stream fails.
    pub async fn upload<S, E>(&self, name: &str, mut stream: S) -> Result<Uploaded, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let path = self.path(name)?;
        if self.size(name).await?.is_some() {
            return Err(StoreError::AlreadyExists {
                object: self.object_url(name),
            });
        }
        let source_err = |e: E| StoreError::Source {
            object: self.object_url(name),
            reason: e.to_string(),
        };
        let mut size = 0u64;
        // The first part: if the stream ends within it, one conditional request.
        let mut first = Vec::new();
        let mut buffered = 0usize;
        while buffered < self.part_size {
            match stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(source_err)?;
                    buffered += chunk.len();
                    first.push(chunk);
                }
                None => {
                    let payload: PutPayload = first.into_iter().collect();
                    self.put_create(name, &path, payload).await?;
                    return self.uploaded(name, buffered as u64, 1).await;
                }
            }
        }
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.err(e, name, "start the upload of"))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        for chunk in first {
            size += chunk.len() as u64;
            writer.put(chunk);
        }
        let failed = loop {
            if let Err(e) = writer.wait_for_capacity(self.concurrency).await {
                break self.err(e, name, "upload a part of");
            }
            match stream.next().await {
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    writer.put(chunk);
                }
                Some(Err(e)) => break source_err(e),
                None => {
                    let parts = size.div_ceil(self.part_size as u64);
                    return match writer.finish().await {
                        Ok(_) => self.uploaded(name, size, parts).await,
                        Err(e) => Err(self.err(e, name, "complete the upload of")),
                    };
                }
            }
        };
        // Best effort: a store that keeps the parts of an abandoned upload (S3) should have a
        // lifecycle rule that removes them.
        let _ = writer.abort().await;
        Err(failed)
    }

    async fn uploaded(&self, name: &str, size: u64, parts: u64) -> Result<Uploaded, StoreError> {
        let url = self.object_url(name);
        match self.size(name).await? {
            Some(found) if found == size => Ok(Uploaded {
                object: name.to_string(),
                url,
                size,
                parts,
            }),
            found => Err(StoreError::Other {
                object: url,
                op: "upload",
                detail: format!("{size} bytes were sent, but the store holds {found:?} bytes"),
            }),
        }
    }

    async fn put_create(
        &self,
        name: &str,
        path: &Path,
        payload: PutPayload,
    ) -> Result<(), StoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(path, payload, opts).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(e, name, "write")),
        }
    }

    /// Writes a small object, replacing it if it exists: only for the archive's position
    /// ([`crate::archive::Position`]); backups, segments and manifests are written once.
    pub async fn put_replace(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        match self
            .store
            .put(&self.path(name)?, PutPayload::from(bytes))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(e, name, "write")),
        }
    }

    /// Writes a small object once (refused atomically if it exists).
    pub async fn put_once(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.put_create(name, &self.path(name)?, PutPayload::from(bytes))
            .await
    }

    async fn get_result(&self, name: &str) -> Result<object_store::GetResult, StoreError> {
        let path = self.path(name)?;
        self.store
            .get(&path)
            .await
            .map_err(|e| self.err(e, name, "read"))
    }

    /// Reads an object as a stream of bytes.
    pub async fn get(&self, name: &str) -> Result<Download, StoreError> {
        let got = self.get_result(name).await?;
        let size = got.meta.size;
        let this = self.clone();
        let name = name.to_string();
        let stream = got
            .into_stream()
            .map_err(move |e| this.err(e, &name, "read"))
            .boxed();
        Ok(Download { size, stream })
    }

    /// Reads a whole (small) object.
    pub async fn get_bytes(&self, name: &str) -> Result<Bytes, StoreError> {
        let got = self.get_result(name).await?;
        got.bytes().await.map_err(|e| self.err(e, name, "read"))
    }

    /// Every object under `under` (relative to the prefix; "" for all), sorted by name.
    pub async fn list(&self, under: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let dir = if under.is_empty() {
            self.prefix.clone()
        } else {
            self.path(under)?
        };
        let mut out = Vec::new();
        let mut listing = self.store.list(Some(&dir));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.err(e, under, "list"))?;
            let Some(rel) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            let name = rel
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectInfo {
                name,
                size: meta.size,
                last_modified_unix_ms: meta.last_modified.timestamp_millis(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes an object; one that is already gone is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.store.delete(&self.path(name)?).await {
            Ok(()) => Ok(()),
            Err(e) => match self.err(e, name, "delete") {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Writes a backup's manifest beside its object, once.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.put_once(
            &manifest_name(&manifest.object),
            Bytes::from(manifest.to_json()),
        )
        .await
    }

    /// A backup's manifest; `None` if it has none (yet).
    pub async fn read_manifest(&self, object: &str) -> Result<Option<Manifest>, StoreError> {
        match self.get_bytes(&manifest_name(object)).await {
            Ok(bytes) => Ok(Some(Manifest::from_json(object, &bytes)?)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The backups of `cluster_id` (of every cluster if `None`), oldest first, with their
    /// manifests. Objects whose names are not backup names are left out.
    pub async fn list_backups(&self, cluster_id: Option<&str>) -> Result<Vec<Listed>, StoreError> {
        self.list_with_manifests(
            cluster_id.unwrap_or(""),
            object_of_manifest,
            BackupName::parse,
        )
        .await
    }

    /// The objects under `folder` whose names `parse` reads, each with its manifest (named
    /// so that `object_of` finds the object), by name: what a listing of backups and of
    /// archived segments share.
    pub(crate) async fn list_with_manifests<N: Ord>(
        &self,
        folder: &str,
        object_of: fn(&str) -> Option<&str>,
        parse: fn(&str) -> Option<N>,
    ) -> Result<Vec<Listed<N>>, StoreError> {
        let objects = self.list(folder).await?;
        let mut by_name = std::collections::BTreeMap::<N, (String, Option<u64>, bool)>::new();
        for o in &objects {
            let (object, is_manifest) = match object_of(&o.name) {
                Some(object) => (object, true),
                None => (o.name.as_str(), false),
            };
            let Some(name) = parse(object) else {
                continue;
            };
            let slot = by_name
                .entry(name)
                .or_insert_with(|| (object.to_string(), None, false));
            if is_manifest {
                slot.2 = true;
            } else {
                slot.1 = Some(o.size);
            }
        }
        let mut out = Vec::new();
        for (name, (object, size, has_manifest)) in by_name {
            let manifest = match has_manifest {
                false => None,
                true => self.read_manifest(&object).await.transpose(),
            };
            out.push(Listed {
                name,
                object,
                size,
                manifest,
            });
        }
        Ok(out)
    }

    /// Reads a backup through and checks it against its manifest (complete, size, SHA-256):
    /// the manifest of a good backup, or what is wrong.
    pub async fn verify(&self, object: &str) -> Result<Manifest, StoreError> {
        let manifest = self
            .read_manifest(object)
            .await?
            .ok_or_else(|| StoreError::Other {
                object: self.object_url(object),
                op: "verify",
                detail: "it has no manifest: it is still being written, or its writer failed"
                    .into(),
            })?;
        manifest.check(manifest.object_size, None)?;
        let mut download = self.get(object).await?;
        let mut sha = Sha256::default();
        let mut size = 0u64;
        while let Some(chunk) = download.stream.next().await {
            let chunk = chunk?;
            sha.update(&chunk);
            size += chunk.len() as u64;
        }
        manifest.check(size, Some(&sha.finish_hex()))?;
        Ok(manifest)
    }

    /// Deletes a backup: its object first, then its manifest (so that an interruption leaves
    /// a manifest without its object, which lists as failed, not an object without one).
    pub async fn delete_backup(&self, object: &str) -> Result<(), StoreError> {
        self.delete(object).await?;
        self.delete(&manifest_name(object)).await
    }
}

/// A local directory's missing files are plain "not found"; for the other backends a
/// missing bucket was already told apart.
fn classify_local(err: StoreError, backend: Backend) -> StoreError {
    match (backend, err) {
        (Backend::Local, StoreError::Credentials { url, detail, .. }) => StoreError::Other {
            object: url,
            op: "access",
            detail: format!("{detail}; check the directory's owner and permissions"),
        },
        (_, err) => err,
    }
}
