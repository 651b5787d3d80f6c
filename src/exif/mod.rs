//! EXIF/XMP tagging: JPEG bytes + API metadata -> tagged JPEG bytes.
//!
//! The archive's value is its metadata: dropped into a GIS tool or a photo
//! manager, every image must land in the right place, facing the right way,
//! at the right instant. [`tag_jpeg`] is pure (no I/O, no clock, no time
//! zone) so the daemon can call it on any thread and tests can pin it down.
//!
//! Decisions worth knowing, beyond the EXIF rules in README and ARCHITECTURE.md:
//! - **No `captured_at`**: none of the date-time tags are written, and the
//!   served file's own `DateTime*`/`OffsetTime*`/`SubSecTime*` stay as they
//!   were. They are the camera's statement, possibly in local time, but
//!   better than nothing, and they are never mixed with ours: with a
//!   `captured_at` all nine tags are overwritten together.
//! - **Old EXIF** is read strictly with kamadak-exif: the first EXIF segment
//!   that parses cleanly is merged, every other one (and any that fails to
//!   parse, or has a broken `Exif\0` prefix) is dropped. Old tags we do not
//!   write are kept, except `Orientation`, the size tags, `MakerNote` and
//!   other offset-bearing tags (see `fields::NEVER_KEPT`), fields of unknown
//!   type, and IFDs past the thumbnail's. A JPEG thumbnail in IFD1 is kept;
//!   if the merged block would not fit one segment, the thumbnail goes,
//!   then all old tags.
//! - **Make/Model** are written as UTF-8 bytes in the ASCII-typed field
//!   (see `fields::clean_text`); ExifTool reads them back unchanged.
//! - **Altitude**: an `altitude` that is implausible after unwrapping counts
//!   as missing, so `computed_altitude` is used instead.
//! - **Segments**: every APP1 that looks like EXIF goes, one new block is
//!   inserted right after the leading APP0 (JFIF) segments. For panoramas,
//!   every XMP (and extended XMP) APP1 is replaced by one GPano packet; other
//!   images keep their XMP untouched. An MPF index is kept valid for the
//!   EXIF change by img-parts; a replaced XMP block in a multi-picture file
//!   is not accounted for (Mapillary serves single-picture JPEGs).

mod datetime;
mod fields;
mod segments;
mod values;
mod xmp;

pub use datetime::{ExifDateTime, UTC_OFFSET, timestamp_to_exif_datetime};
pub use values::{decimal_to_dms, normalize_altitude, normalize_heading};

use crate::model::ImageMeta;

/// Why a body could not be tagged. `NotJpeg` and `Malformed` mean the body
/// must not be saved as a `.jpg`: the caller treats it like a bad download.
#[derive(Debug, thiserror::Error)]
pub enum ExifError {
    /// The bytes do not start like a JPEG (an HTML error page, empty body).
    #[error("not a JPEG: {0}")]
    NotJpeg(&'static str),
    /// It starts like a JPEG but its structure is broken or truncated.
    #[error("malformed JPEG: {0}")]
    Malformed(String),
    /// The metadata could not be encoded (too big for one segment).
    #[error("cannot write EXIF: {0}")]
    Write(String),
}

/// Returns `jpeg` with one fresh EXIF APP1 block built from `meta` (merged
/// with the tags the file already had) and, for panoramas, one GPano XMP
/// block. The image data is copied byte for byte, so the pixels are unchanged.
pub fn tag_jpeg(jpeg: &[u8], meta: &ImageMeta) -> Result<Vec<u8>, ExifError> {
    tag_jpeg_shared(bytes::Bytes::copy_from_slice(jpeg), meta)
}

/// [`tag_jpeg`] for a body already held as [`bytes::Bytes`] (a download):
/// the parsed segments share its memory instead of copying it first, one
/// image-sized allocation and copy less per image on the worker's path.
pub fn tag_jpeg_shared(jpeg: bytes::Bytes, meta: &ImageMeta) -> Result<Vec<u8>, ExifError> {
    let parsed = segments::parse_shared(jpeg)?;
    let tags = tags_of(&parsed, meta)?;
    parsed.into_tagged_bytes(&tags.exif_tiff, tags.gpano_xmp.as_deref())
}

/// The metadata blocks [`tag_jpeg`] would write, for a container other than
/// JPEG (a WebP's `EXIF` and `XMP ` chunks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    /// The EXIF block as TIFF (no `Exif\0\0` prefix): built from `meta`,
    /// merged with the served file's own tags.
    pub exif_tiff: Vec<u8>,
    /// The GPano XMP packet, for panoramas.
    pub gpano_xmp: Option<Vec<u8>>,
    /// The pixel size the JPEG's frame header gives.
    pub dimensions: Option<(u32, u32)>,
}

/// [`Tags`] for a served JPEG and its metadata.
pub fn tags_for(jpeg: &[u8], meta: &ImageMeta) -> Result<Tags, ExifError> {
    tags_of(&segments::parse(jpeg)?, meta)
}

fn tags_of(parsed: &segments::CheckedJpeg, meta: &ImageMeta) -> Result<Tags, ExifError> {
    let dimensions = parsed.dimensions();
    let exif_tiff = fields::build_exif_tiff(meta, parsed.exif_payloads(), dimensions)?;
    let gpano_xmp = (meta.is_pano == Some(true)).then(|| {
        let heading = values::pick_heading(meta).map(values::rounded_heading);
        xmp::gpano_packet(dimensions, heading)
    });
    Ok(Tags {
        exif_tiff,
        gpano_xmp,
        dimensions,
    })
}
