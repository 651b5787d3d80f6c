//! The archive half of a worker step: a downloaded body becomes the file to
//! archive (the tagged JPEG, or a WebP encoded under an
//! [`EngineContext::encoder`] permit) and is stored through the engine's
//! [`Archive`](crate::archive::Archive); or a file already at the image's
//! final path is adopted instead of a download.

use super::Outcome;
use crate::archive::webp::{self, WebpError};
use crate::archive::{self, ArchiveError, ArchivedFile, FileKind, ImageFile};
use crate::engine::EngineContext;
use crate::model::{ImageMeta, OutputFormat};
use crate::store::PauseReason;
use std::path::PathBuf;
use tracing::info;

/// Where an image lands: its collection folder, in which format.
pub struct Target {
    /// The collection's folder ([`archive::collection_path`]).
    pub collection: PathBuf,
    /// The image's JPEG path in it ([`archive::image_path`]), made once per
    /// image: the adoption check and the JPEG write both use it.
    pub jpeg: PathBuf,
    /// The job's output format.
    pub format: OutputFormat,
}

/// A downloaded image on its way to the archive.
pub struct Body {
    /// The JPEG as the CDN served it.
    pub bytes: bytes::Bytes,
    /// The metadata its tags are made from.
    pub meta: ImageMeta,
    /// Where it goes.
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

/// Tags (and for WebP jobs re-encodes) `body`, and stores it in the
/// archive (durably on disk, keeping the free-space reserve, or in the
/// bucket).
pub async fn write(ctx: &EngineContext, body: Body) -> Outcome {
    let written = match body.target.format {
        // The common case: tag (and, on disk, write) in one blocking task.
        OutputFormat::Jpeg => ctx.archive.make_and_put(move || convert_jpeg(body)).await,
        OutputFormat::Webp => match convert_webp(ctx, body).await {
            Ok(Ok(file)) => ctx.archive.put_image(file).await.map_err(WriteError::from),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(WriteError::Convert(format!(
                "re-encoding the image panicked: {join}"
            ))),
        },
    };
    match written {
        Ok(file) => {
            crate::metrics::add(&ctx.client.metrics().bytes_written, file.bytes);
            Outcome::Done { file }
        }
        Err(WriteError::Convert(error)) => Outcome::Retry { error },
        Err(WriteError::Archive(ArchiveError::DiskFull { path, source })) => Outcome::PauseJob {
            reason: PauseReason::DiskFull,
            message: format!(
                "disk full: cannot write {} ({source}); the job resumes by itself once space is free",
                path.display()
            ),
        },
        Err(WriteError::Archive(e @ ArchiveError::InvalidId(_))) => Outcome::GiveUp {
            error: e.to_string(),
        },
        Err(WriteError::Archive(ArchiveError::Unavailable(e))) => Outcome::StorageUnavailable {
            error: e.to_string(),
        },
        Err(WriteError::Archive(e)) => Outcome::Retry {
            error: e.to_string(),
        },
    }
}

/// The JPEG path: the body tagged in place of its old EXIF (the parse
/// shares the download's memory), whose buffer then goes back to the pool.
fn convert_jpeg(body: Body) -> Result<ImageFile, WriteError> {
    let tagged = crate::exif::tag_jpeg_shared(body.bytes.clone(), &body.meta);
    crate::buffers::give_bytes(body.bytes);
    let bytes = tagged.map_err(|e| WriteError::Convert(format!("tagging failed: {e}")))?;
    Ok(image_file(body.meta, body.target.jpeg, bytes, false))
}

/// The WebP path: the encode holds an encoder permit (CPU and decoded-image
/// memory stay bounded); the write does not, so fsyncs never keep a core idle.
async fn convert_webp(
    ctx: &EngineContext,
    body: Body,
) -> Result<Result<ImageFile, WriteError>, tokio::task::JoinError> {
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
            Ok(webp) => {
                let path =
                    archive::image_path(&body.target.collection, &body.meta, FileKind::Webp)?;
                Ok(image_file(body.meta, path, webp, false))
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
                let bytes = tag(&body.bytes, &body.meta)?;
                Ok(image_file(body.meta, path, bytes, true))
            }
            Err(e) => Err(WriteError::Convert(format!(
                "re-encoding to WebP failed: {e}"
            ))),
        }
    })
    .await
}

/// The file to store, with what the archive records of its origin.
fn image_file(meta: ImageMeta, path: PathBuf, bytes: Vec<u8>, kept_jpeg: bool) -> ImageFile {
    ImageFile {
        path,
        bytes,
        kept_jpeg,
        meta,
    }
}

fn tag(jpeg: &[u8], meta: &ImageMeta) -> Result<Vec<u8>, WriteError> {
    crate::exif::tag_jpeg(jpeg, meta)
        .map_err(|e| WriteError::Convert(format!("tagging failed: {e}")))
}

/// The file already at the image's final path, adopted instead of a
/// download: a JPEG is re-tagged from our metadata (rewritten only if that
/// changes it); a WebP is taken as is if its container is whole. In a WebP
/// collection a `.jpg` is a JPEG kept for its size. `None` when the image
/// must be downloaded; an error when the archive's bucket does not answer
/// (downloading would be wasted: the write could not land either).
pub async fn adopt_loose(
    ctx: &EngineContext,
    target: &Target,
    meta: &ImageMeta,
) -> Result<Option<ArchivedFile>, ArchiveError> {
    let jpeg = (target.jpeg.clone(), FileKind::Jpeg);
    let candidates = match target.format {
        OutputFormat::Jpeg => vec![jpeg],
        OutputFormat::Webp => {
            let Ok(webp_path) = archive::image_path(&target.collection, meta, FileKind::Webp)
            else {
                return Ok(None);
            };
            vec![(webp_path, FileKind::Webp), jpeg]
        }
    };
    let keeps_jpeg = target.format == OutputFormat::Webp;
    ctx.archive.adopt(candidates, meta, keeps_jpeg).await
}
