//! An image's file into the archive, or a file already there adopted:
//! the worker's two ways to an [`ArchivedFile`], on the disk or in a bucket.
//!
//! On disk a file is written durably (`.part`, fsync, rename, fsync dir:
//! [`archive::write_durably`]) after the free-space reserve is checked. In
//! a bucket it is one PUT carrying its SHA-256, its capture time and a
//! fingerprint of the metadata it was tagged from, so a later run adopts it
//! with one HEAD instead of a download.

use super::files::{Archive, Place};
use crate::archive::bucket::{Bucket, BucketError};
use crate::archive::checksum::sha256_hex;
use crate::archive::webp;
use crate::archive::{self, ArchiveError, ArchivedFile, FileKind};
use crate::model::ImageMeta;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use tracing::debug;

/// A file's final bytes and where they go, before they are stored: the
/// tagged JPEG or the WebP a worker made of a downloaded image.
pub struct ImageFile {
    /// Its archive path ([`archive::image_path`]).
    pub path: PathBuf,
    /// The whole file.
    pub bytes: Vec<u8>,
    /// A JPEG a WebP job kept because the image is too large for WebP.
    pub kept_jpeg: bool,
    /// The metadata it was tagged from: its capture time is the file's
    /// mtime on disk (an object's `captured-at` in a bucket), and a bucket
    /// records its [`tagged_from`] (computed only there: it hashes the
    /// metadata, a cost a disk write does not need).
    pub meta: ImageMeta,
}

impl ImageFile {
    /// The row's record of this file once it is stored: hashed from the
    /// buffer about to be written (no second read).
    fn archived(&self) -> ArchivedFile {
        ArchivedFile {
            path: self.path.clone(),
            bytes: self.bytes.len() as u64,
            sha256: Some(sha256_hex(&self.bytes)),
            kept_jpeg: self.kept_jpeg,
            packing_id: None,
        }
    }
}

/// What an image's tags were made from: its stored metadata. An object with
/// the same fingerprint carries the tags we would write now.
pub fn tagged_from(meta: &ImageMeta) -> String {
    sha256_hex(&serde_json::to_vec(meta).unwrap_or_default())
}

/// The largest object adoption reads into memory to check it (our largest
/// images are panoramas of tens of MB).
const MAX_ADOPTED_BYTES: u64 = 256 << 20;

impl Archive {
    /// Stores `file` at its path: durably on the local disk (keeping the
    /// free-space reserve: a full disk is [`ArchiveError::DiskFull`]), or
    /// with one PUT in the bucket (one that fails is
    /// [`ArchiveError::Unavailable`]).
    pub async fn put_image(&self, file: ImageFile) -> Result<ArchivedFile, ArchiveError> {
        self.make_and_put(move || Ok::<_, ArchiveError>(file)).await
    }

    /// [`Archive::put_image`] of the file `make` builds on the blocking pool
    /// (tagging, say): on disk the build and the durable write share one
    /// blocking task, one hand-off between threads per image instead of two.
    pub async fn make_and_put<E>(
        &self,
        make: impl FnOnce() -> Result<ImageFile, E> + Send + 'static,
    ) -> Result<ArchivedFile, E>
    where
        E: From<ArchiveError> + Send + 'static,
    {
        let panicked = |join: tokio::task::JoinError| {
            E::from(ArchiveError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(format!("writing the image panicked: {join}")),
            })
        };
        match &self.place {
            Place::Disk => {
                let reserve = self.reserve();
                tokio::task::spawn_blocking(move || Ok(store_file(make()?, reserve)?))
                    .await
                    .map_err(panicked)?
            }
            Place::Bucket(bucket) => {
                let file = tokio::task::spawn_blocking(make)
                    .await
                    .map_err(panicked)??;
                Ok(put_in_bucket(bucket, file)
                    .await
                    .map_err(ArchiveError::from)?)
            }
        }
    }

    /// The file already at one of `candidates` (the image's final paths, in
    /// order of preference), adopted instead of a download: a JPEG is
    /// re-tagged from `meta` (rewritten only if that changes it); a WebP is
    /// taken as is if its container is whole. `keeps_jpeg`: a `.jpg` here is
    /// a JPEG a WebP job kept for its size. `None` when the image must be
    /// downloaded; [`ArchiveError::Unavailable`] when the bucket does not
    /// answer (downloading would be wasted: the write could not land
    /// either).
    pub async fn adopt(
        &self,
        candidates: Vec<(PathBuf, FileKind)>,
        meta: &ImageMeta,
        keeps_jpeg: bool,
    ) -> Result<Option<ArchivedFile>, ArchiveError> {
        match &self.place {
            Place::Disk => Ok(adopt_local(candidates, meta, self.reserve(), keeps_jpeg).await),
            Place::Bucket(bucket) => {
                Ok(adopt_from_bucket(bucket, candidates, meta, keeps_jpeg).await?)
            }
        }
    }
}

/// Writes the file durably at its path, keeping the free-space reserve.
fn store_file(file: ImageFile, reserve: u64) -> Result<ArchivedFile, ArchiveError> {
    let archived = file.archived();
    let dir = file.path.parent().unwrap_or(&file.path);
    archive::ensure_room(dir, archived.bytes, reserve)?;
    archive::write_durably(&file.path, &file.bytes, file.meta.captured_at)?;
    // The buffer goes back to the pool for the next image.
    crate::buffers::give(file.bytes);
    Ok(archived)
}

/// [`store_file`] for a bucket: one PUT, carrying what a later run needs
/// to adopt the object with a HEAD.
async fn put_in_bucket(bucket: &Bucket, file: ImageFile) -> Result<ArchivedFile, BucketError> {
    let archived = file.archived();
    let sha256 = archived.sha256.as_deref().unwrap_or_default();
    bucket
        .put_image(
            &file.path,
            file.bytes.into(),
            sha256,
            file.meta.captured_at,
            &tagged_from(&file.meta),
        )
        .await?;
    Ok(archived)
}

/// [`Archive::adopt`] on disk: the first candidate that exists is read and
/// checked (on the blocking pool); one that cannot be taken is replaced by
/// a download.
async fn adopt_local(
    candidates: Vec<(PathBuf, FileKind)>,
    meta: &ImageMeta,
    reserve: u64,
    keeps_jpeg: bool,
) -> Option<ArchivedFile> {
    // Stat here: a blocking task only when there is a file to read.
    let (path, kind) = candidates.into_iter().find(|(path, _)| path.exists())?;
    let meta = meta.clone();
    let adopted = tokio::task::spawn_blocking(move || match kind {
        FileKind::Webp => adopt_webp(path),
        FileKind::Jpeg => adopt_jpeg(path, &meta, reserve, keeps_jpeg),
    })
    .await
    .ok()
    .flatten();
    if let Some(file) = &adopted {
        debug!(path = %file.path.display(), "adopted the file already at the final path");
    }
    adopted
}

/// [`Archive::adopt`] in a bucket: an object we wrote (its checksum in its
/// metadata) is adopted with one HEAD, a JPEG only if it was tagged from the
/// same metadata; anything else is read, checked (and a JPEG re-tagged and
/// put back if that changes it) like a local file.
async fn adopt_from_bucket(
    bucket: &Bucket,
    candidates: Vec<(PathBuf, FileKind)>,
    meta: &ImageMeta,
    keeps_jpeg: bool,
) -> Result<Option<ArchivedFile>, BucketError> {
    let fingerprint = tagged_from(meta);
    for (path, kind) in candidates {
        let Some(head) = bucket.head(&path).await? else {
            continue;
        };
        let current = kind == FileKind::Webp || head.tagged_from.as_deref() == Some(&*fingerprint);
        if let (true, Some(sha256)) = (current, head.sha256) {
            debug!(path = %path.display(), "adopted the object already in the bucket");
            return Ok(Some(ArchivedFile {
                path,
                bytes: head.bytes,
                sha256: Some(sha256),
                kept_jpeg: keeps_jpeg && kind == FileKind::Jpeg,
                packing_id: None,
            }));
        }
        if head.bytes > MAX_ADOPTED_BYTES {
            // Not an image of ours: the download replaces it.
            return Ok(None);
        }
        let Some(existing) = bucket.get(&path).await? else {
            continue;
        };
        // Not ours, and not a file we can take: replaced by a download.
        let Some((bytes, changed)) = check_object(existing, kind, meta.clone()).await else {
            return Ok(None);
        };
        let sha256 = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        if changed || kind == FileKind::Jpeg {
            // Put back re-tagged, or only to record its checksum and
            // fingerprint, so the next run adopts it with a HEAD.
            bucket
                .put_image(&path, bytes.into(), &sha256, meta.captured_at, &fingerprint)
                .await?;
        }
        debug!(path = %path.display(), "adopted the object already in the bucket, re-read");
        return Ok(Some(ArchivedFile {
            path,
            bytes: size,
            sha256: Some(sha256),
            kept_jpeg: keeps_jpeg && kind == FileKind::Jpeg,
            packing_id: None,
        }));
    }
    Ok(None)
}

/// An object's bytes as we would keep them: a WebP as is if it parses, a
/// JPEG re-tagged from `meta` (and whether that changed it). `None`: not a
/// file we can take.
async fn check_object(existing: Bytes, kind: FileKind, meta: ImageMeta) -> Option<(Vec<u8>, bool)> {
    tokio::task::spawn_blocking(move || match kind {
        FileKind::Webp => webp::chunks(&existing).map(|_| (existing.to_vec(), false)),
        FileKind::Jpeg => {
            let tagged = crate::exif::tag_jpeg(&existing, &meta).ok()?;
            let changed = tagged != existing;
            Some((tagged, changed))
        }
    })
    .await
    .ok()
    .flatten()
}

fn adopt_webp(path: PathBuf) -> Option<ArchivedFile> {
    let existing = std::fs::read(&path).ok()?;
    webp::chunks(&existing)?;
    Some(ArchivedFile {
        bytes: existing.len() as u64,
        sha256: Some(sha256_hex(&existing)),
        path,
        kept_jpeg: false,
        packing_id: None,
    })
}

fn adopt_jpeg(
    path: PathBuf,
    meta: &ImageMeta,
    reserve: u64,
    kept_jpeg: bool,
) -> Option<ArchivedFile> {
    let existing = std::fs::read(&path).ok()?;
    let tagged = crate::exif::tag_jpeg(&existing, meta).ok()?;
    if tagged != existing {
        let dir: &Path = path.parent().unwrap_or(&path);
        archive::ensure_room(dir, tagged.len() as u64, reserve).ok()?;
        archive::write_durably(&path, &tagged, meta.captured_at).ok()?;
    }
    Some(ArchivedFile {
        bytes: tagged.len() as u64,
        sha256: Some(sha256_hex(&tagged)),
        path,
        kept_jpeg,
        packing_id: None,
    })
}
