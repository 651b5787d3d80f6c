//! The disk half of a worker step: a downloaded body becomes the archived
//! file (the tagged JPEG, or a WebP encoded under an [`EngineContext::encoder`]
//! permit), hashed from the buffer it is written from, written durably; or a
//! file already at the final path is adopted.

use super::Outcome;
use crate::archive::{self, ArchiveError, ArchivedFile, FileKind};
use crate::checksum::sha256_hex;
use crate::engine::EngineContext;
use crate::model::{ImageMeta, OutputFormat};
use crate::store::PauseReason;
use crate::webp::{self, WebpError};
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
}

impl From<ArchiveError> for WriteError {
    fn from(error: ArchiveError) -> Self {
        WriteError::Archive(error)
    }
}

/// Tags (and for WebP jobs re-encodes) `body`, keeps the free-space
/// reserve, and writes it durably.
pub async fn write(ctx: &EngineContext, body: Body) -> Outcome {
    let reserve = ctx.tuning.min_free_bytes;
    let written = match body.target.format {
        OutputFormat::Jpeg => {
            tokio::task::spawn_blocking(move || {
                let path =
                    archive::image_path(&body.target.collection, &body.meta, FileKind::Jpeg)?;
                let tagged = tag(&body.bytes, &body.meta)?;
                store_file(path, tagged, body.meta.captured_at, reserve, false)
            })
            .await
        }
        OutputFormat::Webp => write_webp(ctx, body, reserve).await,
    };
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
        Err(join) => Outcome::Retry {
            error: format!("writing the image panicked: {join}"),
        },
    }
}

/// The WebP path: the encode holds an encoder permit (CPU and decoded-image
/// memory stay bounded); the write does not, so fsyncs never keep a core idle.
async fn write_webp(
    ctx: &EngineContext,
    body: Body,
    reserve: u64,
) -> Result<Result<ArchivedFile, WriteError>, tokio::task::JoinError> {
    let Ok(permit) = ctx.encoder.clone().acquire_owned().await else {
        return Ok(Err(WriteError::Convert(
            "the encoder pool is closed".into(),
        )));
    };
    let quality = ctx.tuning.webp_quality;
    let encoded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let encoded = webp::jpeg_to_webp(&body.bytes, &body.meta, quality);
        (body, encoded)
    })
    .await?;
    tokio::task::spawn_blocking(move || {
        let (body, encoded) = encoded;
        match encoded {
            Ok(webp) => {
                let path =
                    archive::image_path(&body.target.collection, &body.meta, FileKind::Webp)?;
                store_file(path, webp, body.meta.captured_at, reserve, false)
            }
            Err(WebpError::TooLarge { width, height }) => {
                info!(
                    image = %body.meta.id,
                    width,
                    height,
                    "larger than WebP allows: keeping the JPEG"
                );
                let path =
                    archive::image_path(&body.target.collection, &body.meta, FileKind::Jpeg)?;
                let tagged = tag(&body.bytes, &body.meta)?;
                store_file(path, tagged, body.meta.captured_at, reserve, true)
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

/// Hashes `bytes` (the buffer about to be written: no second read) and
/// writes them durably at `path`.
fn store_file(
    path: PathBuf,
    bytes: Vec<u8>,
    mtime_ms: Option<i64>,
    reserve: u64,
    kept_jpeg: bool,
) -> Result<ArchivedFile, WriteError> {
    let sha256 = sha256_hex(&bytes);
    let dir = path.parent().unwrap_or(&path);
    archive::ensure_room(dir, bytes.len() as u64, reserve)?;
    archive::write_durably(&path, &bytes, mtime_ms)?;
    Ok(ArchivedFile {
        path,
        bytes: bytes.len() as u64,
        sha256: Some(sha256),
        kept_jpeg,
        packing_id: None,
    })
}

/// The file already at the image's final path, adopted instead of a
/// download: a JPEG is re-tagged from our metadata (rewritten only if that
/// changes it); a WebP is taken as is if its container is whole. In a WebP
/// collection a `.jpg` is a JPEG kept for its size. `None` when the image
/// must be downloaded.
pub async fn adopt_loose(
    ctx: &EngineContext,
    target: &Target,
    meta: &ImageMeta,
) -> Option<ArchivedFile> {
    let webp_path = archive::image_path(&target.collection, meta, FileKind::Webp).ok()?;
    let jpeg_path = archive::image_path(&target.collection, meta, FileKind::Jpeg).ok()?;
    let candidates = match target.format {
        OutputFormat::Jpeg => vec![(jpeg_path, FileKind::Jpeg)],
        OutputFormat::Webp => vec![(webp_path, FileKind::Webp), (jpeg_path, FileKind::Jpeg)],
    };
    let keeps_jpeg = target.format == OutputFormat::Webp;
    // Stat here: a blocking task only when there is a file to read.
    let (path, kind) = candidates.into_iter().find(|(path, _)| path.exists())?;
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
    adopted
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
