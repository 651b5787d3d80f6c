//! The disk half of a worker step: a downloaded body becomes the archived
//! file (the tagged JPEG, or a WebP encoded under an [`EngineContext::encoder`]
//! permit), hashed from the buffer it is written from, written durably; or a
//! file already at the final path is adopted.

use super::Outcome;
use crate::archive::{self, ArchiveError, ArchivedFile, FileKind};
use crate::bucket::{Bucket, BucketError};
use crate::checksum::sha256_hex;
use crate::engine::EngineContext;
use crate::model::{ImageMeta, OutputFormat};
use crate::store::PauseReason;
use crate::webp::{self, WebpError};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use tracing::{debug, info};

/// Where an image lands: its collection folder, in which format.
pub struct Target {
    pub collection: PathBuf,
    pub format: OutputFormat,
}

/// A downloaded image on its way to disk.
pub struct Body {
    pub bytes: bytes::Bytes,
    pub meta: ImageMeta,
    pub target: Target,
}

enum WriteError {
    /// The body cannot become our file (broken JPEG, encoder failure).
    Convert(String),
    Archive(ArchiveError),
    /// The bucket refused or did not answer (after the client's own retries).
    Bucket(BucketError),
}

impl From<BucketError> for WriteError {
    fn from(error: BucketError) -> Self {
        WriteError::Bucket(error)
    }
}

impl From<ArchiveError> for WriteError {
    fn from(error: ArchiveError) -> Self {
        WriteError::Archive(error)
    }
}

/// Tags (and for WebP jobs re-encodes) `body`, and stores it: durably on
/// the local disk (keeping the free-space reserve), or in the bucket.
pub async fn write(ctx: &EngineContext, body: Body) -> Outcome {
    let written = store(ctx, body).await;
    match written {
        Ok(Ok(file)) => {
            crate::metrics::add(&ctx.client.metrics().bytes_written, file.bytes);
            Outcome::Done { file }
        }
        Ok(Err(WriteError::Convert(error))) => Outcome::Retry { error },
        Ok(Err(WriteError::Archive(ArchiveError::DiskFull { path, source }))) => {
            Outcome::PauseJob {
                reason: PauseReason::DiskFull,
                message: format!(
                    "disk full: cannot write {} ({source}); the job resumes by itself once space is free",
                    path.display()
                ),
            }
        }
        Ok(Err(WriteError::Archive(e @ ArchiveError::InvalidId(_)))) => Outcome::GiveUp {
            error: e.to_string(),
        },
        Ok(Err(WriteError::Archive(e))) => Outcome::Retry {
            error: e.to_string(),
        },
        Ok(Err(WriteError::Bucket(e))) => Outcome::StorageUnavailable {
            error: e.to_string(),
        },
        Err(join) => Outcome::Retry {
            error: format!("writing the image panicked: {join}"),
        },
    }
}

/// Tags (and re-encodes) `body` and stores the file; what [`write`] then
/// turns into an outcome.
async fn store(
    ctx: &EngineContext,
    body: Body,
) -> Result<Result<ArchivedFile, WriteError>, tokio::task::JoinError> {
    let captured_at = body.meta.captured_at;
    let reserve = ctx.tuning.min_free_bytes;
    if ctx.bucket.is_none() && matches!(body.target.format, OutputFormat::Jpeg) {
        // The common case in one blocking task: tag, hash, write (a second
        // task would cost one more hand-off between threads per image).
        return tokio::task::spawn_blocking(move || {
            store_file(convert_jpeg(body)?, captured_at, reserve)
        })
        .await;
    }
    let tagged_from = ctx.bucket.as_ref().map(|_| bucket_fingerprint(&body.meta));
    let file = match convert(ctx, body).await {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => return Ok(Err(e)),
        Err(join) => return Err(join),
    };
    match (&ctx.bucket, tagged_from) {
        (Some(bucket), Some(tagged_from)) => {
            Ok(put_in_bucket(bucket, file, captured_at, &tagged_from).await)
        }
        _ => tokio::task::spawn_blocking(move || store_file(file, captured_at, reserve)).await,
    }
}

/// A file's final bytes and where they go, before they are stored.
struct Converted {
    path: PathBuf,
    bytes: Vec<u8>,
    kept_jpeg: bool,
}

/// The body as the file to archive: the tagged JPEG, or the WebP (a JPEG
/// kept when the image is too large for WebP).
async fn convert(
    ctx: &EngineContext,
    body: Body,
) -> Result<Result<Converted, WriteError>, tokio::task::JoinError> {
    match body.target.format {
        OutputFormat::Jpeg => tokio::task::spawn_blocking(move || convert_jpeg(body)).await,
        OutputFormat::Webp => convert_webp(ctx, body).await,
    }
}

/// The JPEG path: the body tagged in place of its old EXIF.
fn convert_jpeg(body: Body) -> Result<Converted, WriteError> {
    let path = archive::image_path(&body.target.collection, &body.meta, FileKind::Jpeg)?;
    let tagged = crate::exif::tag_jpeg_shared(body.bytes.clone(), &body.meta);
    // The download's buffer, now that tagging let go of it: the next one.
    crate::buffers::give_bytes(body.bytes);
    let bytes = tagged.map_err(|e| WriteError::Convert(format!("tagging failed: {e}")))?;
    Ok(Converted {
        path,
        bytes,
        kept_jpeg: false,
    })
}

/// The WebP path: the encode holds an encoder permit (CPU and decoded-image
/// memory stay bounded); the write does not, so fsyncs never keep a core idle.
async fn convert_webp(
    ctx: &EngineContext,
    body: Body,
) -> Result<Result<Converted, WriteError>, tokio::task::JoinError> {
    let Ok(permit) = ctx.encoder.clone().acquire_owned().await else {
        return Ok(Err(WriteError::Convert(
            "the encoder pool is closed".into(),
        )));
    };
    let quality = ctx.tuning.webp_quality;
    tokio::task::spawn_blocking(move || {
        let encoded = webp::jpeg_to_webp(&body.bytes, &body.meta, quality);
        drop(permit);
        match encoded {
            Ok(webp) => Ok(Converted {
                path: archive::image_path(&body.target.collection, &body.meta, FileKind::Webp)?,
                bytes: webp,
                kept_jpeg: false,
            }),
            Err(WebpError::TooLarge { width, height }) => {
                info!(
                    image = %body.meta.id,
                    width,
                    height,
                    "larger than WebP allows: keeping the JPEG"
                );
                Ok(Converted {
                    path: archive::image_path(&body.target.collection, &body.meta, FileKind::Jpeg)?,
                    bytes: tag(&body.bytes, &body.meta)?,
                    kept_jpeg: true,
                })
            }
            Err(e) => Err(WriteError::Convert(format!(
                "re-encoding to WebP failed: {e}"
            ))),
        }
    })
    .await
}

fn tag(jpeg: &[u8], meta: &ImageMeta) -> Result<Vec<u8>, WriteError> {
    crate::exif::tag_jpeg(jpeg, meta)
        .map_err(|e| WriteError::Convert(format!("tagging failed: {e}")))
}

impl Converted {
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

/// Writes the file durably at its path, keeping the free-space reserve.
fn store_file(
    file: Converted,
    mtime_ms: Option<i64>,
    reserve: u64,
) -> Result<ArchivedFile, WriteError> {
    let archived = file.archived();
    let dir = file.path.parent().unwrap_or(&file.path);
    archive::ensure_room(dir, archived.bytes, reserve)?;
    archive::write_durably(&file.path, &file.bytes, mtime_ms)?;
    crate::buffers::give(file.bytes);
    Ok(archived)
}

/// [`store_file`] for a bucket: one PUT, carrying what a later run needs
/// to adopt the object with a HEAD.
async fn put_in_bucket(
    bucket: &Bucket,
    file: Converted,
    captured_at: Option<i64>,
    tagged_from: &str,
) -> Result<ArchivedFile, WriteError> {
    let archived = file.archived();
    let sha256 = archived.sha256.as_deref().unwrap_or_default();
    bucket
        .put_image(
            &file.path,
            file.bytes.into(),
            sha256,
            captured_at,
            tagged_from,
        )
        .await?;
    Ok(archived)
}

/// The largest object adoption reads into memory to check it (our largest
/// images are panoramas of tens of MB).
const MAX_ADOPTED_BYTES: u64 = 256 << 20;

/// What an object's tags were made from: the image's stored metadata. An
/// object with the same fingerprint carries the tags we would write now.
fn bucket_fingerprint(meta: &ImageMeta) -> String {
    sha256_hex(&serde_json::to_vec(meta).unwrap_or_default())
}

/// The file already at the image's final path, adopted instead of a
/// download: a JPEG is re-tagged from our metadata (rewritten only if that
/// changes it); a WebP is taken as is if its container is whole. In a WebP
/// collection a `.jpg` is a JPEG kept for its size. `None` when the image
/// must be downloaded; an error when the bucket does not answer (downloading
/// would be wasted: the write could not land either).
pub async fn adopt_loose(
    ctx: &EngineContext,
    target: &Target,
    meta: &ImageMeta,
) -> Result<Option<ArchivedFile>, BucketError> {
    let (Ok(webp_path), Ok(jpeg_path)) = (
        archive::image_path(&target.collection, meta, FileKind::Webp),
        archive::image_path(&target.collection, meta, FileKind::Jpeg),
    ) else {
        return Ok(None);
    };
    let candidates = match target.format {
        OutputFormat::Jpeg => vec![(jpeg_path, FileKind::Jpeg)],
        OutputFormat::Webp => vec![(webp_path, FileKind::Webp), (jpeg_path, FileKind::Jpeg)],
    };
    let keeps_jpeg = target.format == OutputFormat::Webp;
    if let Some(bucket) = &ctx.bucket {
        return adopt_from_bucket(bucket, candidates, meta, keeps_jpeg).await;
    }
    // Stat here: a blocking task only when there is a file to read.
    let Some((path, kind)) = candidates.into_iter().find(|(path, _)| path.exists()) else {
        return Ok(None);
    };
    let meta = meta.clone();
    let reserve = ctx.tuning.min_free_bytes;
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
    Ok(adopted)
}

/// [`adopt_loose`] in a bucket: an object we wrote (its checksum in its
/// metadata) is adopted with one HEAD, a JPEG only if it was tagged from the
/// same metadata; anything else is read, checked (and a JPEG re-tagged and
/// put back if that changes it) like a local file.
async fn adopt_from_bucket(
    bucket: &Bucket,
    candidates: Vec<(PathBuf, FileKind)>,
    meta: &ImageMeta,
    keeps_jpeg: bool,
) -> Result<Option<ArchivedFile>, BucketError> {
    let fingerprint = bucket_fingerprint(meta);
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
