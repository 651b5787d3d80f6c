//! The EXIF block: our fields from the API metadata, merged with the fields
//! the served file already carried, encoded by kamadak-exif's writer.

use super::ExifError;
use super::datetime::{ExifDateTime, UTC_OFFSET, timestamp_to_exif_datetime};
use super::segments::MAX_EXIF_TIFF;
use super::values::{
    altitude_rational, decimal_to_dms, heading_rational, pick_altitude, pick_heading,
};
use crate::model::ImageMeta;
use ::exif::experimental::Writer;
use ::exif::{Context, Exif, Field, In, Reader, Tag, Value};
use std::collections::HashSet;
use std::io::Cursor;

/// Make and Model longer than this are cut (at a character boundary): the
/// whole EXIF block must fit one 64 KiB segment.
const MAX_TEXT_BYTES: usize = 1_000;

/// Old tags that are never carried over, whatever we write:
/// - `Orientation`: served JPEGs are already upright; keeping it rotates twice.
/// - `ImageWidth`/`ImageLength`, `PixelX/YDimension`: describe the upload, not
///   the downloaded file. We write the real ones from the frame header.
/// - `MakerNote`, `SubIFDs`, `DNGPrivateData`, `OffsetSchema`: hold or depend
///   on offsets into the old block, which are wrong once the block moves.
/// - IFD pointers, strip/tile offsets, thumbnail offsets: the writer
///   synthesises them from what it actually writes.
const NEVER_KEPT: &[Tag] = &[
    Tag::Orientation,
    Tag::ImageWidth,
    Tag::ImageLength,
    Tag::PixelXDimension,
    Tag::PixelYDimension,
    Tag::MakerNote,
    Tag(Context::Tiff, 0x014A), // SubIFDs
    Tag(Context::Tiff, 0xC634), // DNGPrivateData
    Tag(Context::Exif, 0xEA1D), // OffsetSchema (Microsoft), a MakerNote fix-up
    Tag::ExifIFDPointer,
    Tag::GPSInfoIFDPointer,
    Tag::InteropIFDPointer,
    Tag::StripOffsets,
    Tag::StripByteCounts,
    Tag::TileOffsets,
    Tag::TileByteCounts,
    Tag::JPEGInterchangeFormat,
    Tag::JPEGInterchangeFormatLength,
    // Written by us whenever the block has GPS data; alone it says nothing.
    Tag::GPSVersionID,
];

/// Builds the TIFF structure for the EXIF APP1 segment.
///
/// `old_payloads` are the TIFF payloads of the file's EXIF segments; the
/// first one that parses cleanly is merged, the others are dropped. If the
/// merged block is too big for one segment, the old thumbnail goes first,
/// then every old field: our own fields always fit.
pub(crate) fn build_exif_tiff<'p>(
    meta: &ImageMeta,
    old_payloads: impl Iterator<Item = &'p [u8]>,
    dimensions: Option<(u32, u32)>,
) -> Result<Vec<u8>, ExifError> {
    let ours = fields_from_meta(meta, dimensions);
    let old = old_payloads
        .filter(|payload| !payload.is_empty())
        .find_map(|payload| Reader::new().read_raw(payload.to_vec()).ok());
    let little_endian = old.as_ref().is_some_and(Exif::little_endian);

    let attempts = [(true, true), (true, false), (false, false)];
    let mut last_len = 0;
    for (keep_old, keep_thumbnail) in attempts {
        let old_for_attempt = old.as_ref().filter(|_| keep_old);
        let tiff = encode(&ours, old_for_attempt, keep_thumbnail, little_endian)?;
        if tiff.len() <= MAX_EXIF_TIFF {
            return Ok(tiff);
        }
        last_len = tiff.len();
    }
    Err(ExifError::Write(format!(
        "the EXIF block is {last_len} bytes even without the old tags"
    )))
}

fn encode(
    ours: &[Field],
    old: Option<&Exif>,
    keep_thumbnail: bool,
    little_endian: bool,
) -> Result<Vec<u8>, ExifError> {
    let thumbnail = old
        .filter(|_| keep_thumbnail)
        .and_then(|exif| jpeg_thumbnail(exif));
    let kept = old
        .map(|exif| kept_fields(ours, exif, thumbnail.is_some()))
        .unwrap_or_default();

    let implied = implied_fields(ours, &kept);
    let mut writer = Writer::new();
    for field in ours.iter().chain(kept.iter().copied()).chain(&implied) {
        writer.push_field(field);
    }
    if let Some(jpeg) = thumbnail {
        writer.set_jpeg(jpeg, In::THUMBNAIL);
    }
    let mut buf = Cursor::new(Vec::with_capacity(1024));
    writer
        .write(&mut buf, little_endian)
        .map_err(|e| ExifError::Write(format!("kamadak-exif cannot encode the block: {e}")))?;
    Ok(buf.into_inner())
}

/// The fields the others imply: the GPS and EXIF versions when those IFDs
/// are written (an old EXIF version is kept as it was), and `Software` when
/// IFD0 would be empty: TIFF needs at least one entry in it, even when we
/// know nothing and the old block had nothing worth keeping (it still
/// replaces that block).
fn implied_fields(ours: &[Field], kept: &[&Field]) -> Vec<Field> {
    let all = || ours.iter().chain(kept.iter().copied());
    let mut implied = Vec::new();
    if all().any(|f| f.tag.context() == Context::Gps) {
        implied.push(primary(Tag::GPSVersionID, Value::Byte(vec![2, 2, 0, 0])));
    }
    let old_exif_version = kept
        .iter()
        .any(|f| f.tag == Tag::ExifVersion && f.ifd_num == In::PRIMARY);
    if all().any(|f| f.tag.context() == Context::Exif) && !old_exif_version {
        let version = Value::Undefined(b"0232".to_vec(), 0);
        implied.push(primary(Tag::ExifVersion, version));
    }
    let ifd0_empty = ours.is_empty() && !kept.iter().any(|f| f.ifd_num == In::PRIMARY);
    if ifd0_empty {
        implied.push(primary(Tag::Software, ascii("mapillary-downloader")));
    }
    implied
}

/// The served file's own fields that survive into our block: IFD0 (and
/// IFD1 when its thumbnail is kept), minus what we write ourselves, what must
/// never be written (e.g. `Orientation`), unreadable values and repeats.
fn kept_fields<'a>(ours: &[Field], old: &'a Exif, thumbnail_kept: bool) -> Vec<&'a Field> {
    let written: HashSet<(Tag, In)> = ours.iter().map(|f| (f.tag, f.ifd_num)).collect();
    let mut seen = HashSet::new();
    old.fields()
        .filter(|f| f.ifd_num == In::PRIMARY || (f.ifd_num == In::THUMBNAIL && thumbnail_kept))
        .filter(|f| !matches!(f.value, Value::Unknown(..)))
        .filter(|f| !NEVER_KEPT.contains(&f.tag))
        .filter(|f| !written.contains(&(f.tag, f.ifd_num)))
        // A duplicated entry would make the writer emit it twice.
        .filter(|f| seen.insert((f.tag, f.ifd_num)))
        .collect()
}

/// The old JPEG thumbnail, when IFD1 points at one that is in bounds and
/// looks like a JPEG. Anything else (strip thumbnails, bad offsets) is dropped
/// along with the rest of IFD1.
fn jpeg_thumbnail(exif: &Exif) -> Option<&[u8]> {
    let offset = exif
        .get_field(Tag::JPEGInterchangeFormat, In::THUMBNAIL)?
        .value
        .get_uint(0)? as usize;
    let length = exif
        .get_field(Tag::JPEGInterchangeFormatLength, In::THUMBNAIL)?
        .value
        .get_uint(0)? as usize;
    let bytes = exif.buf().get(offset..offset.checked_add(length)?)?;
    bytes.starts_with(&[0xFF, 0xD8]).then_some(bytes)
}

/// Every field we derive from the API metadata and the file's real size.
fn fields_from_meta(meta: &ImageMeta, dimensions: Option<(u32, u32)>) -> Vec<Field> {
    let mut fields = Vec::with_capacity(24);
    if let Some(make) = meta.make.as_deref().and_then(clean_text) {
        fields.push(primary(Tag::Make, Value::Ascii(vec![make])));
    }
    if let Some(model) = meta.model.as_deref().and_then(clean_text) {
        fields.push(primary(Tag::Model, Value::Ascii(vec![model])));
    }
    if let Some(when) = meta.captured_at.and_then(timestamp_to_exif_datetime) {
        push_capture_time(&mut fields, &when);
    }
    if let Some((width, height)) = dimensions {
        fields.push(primary(Tag::PixelXDimension, Value::Long(vec![width])));
        fields.push(primary(Tag::PixelYDimension, Value::Long(vec![height])));
    }
    push_gps(&mut fields, meta);
    fields
}

/// A field of IFD0 (or of the EXIF and GPS IFDs it points to).
fn primary(tag: Tag, value: Value) -> Field {
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value,
    }
}

fn ascii(s: &str) -> Value {
    Value::Ascii(vec![s.as_bytes().to_vec()])
}

/// The capture time, as the three `DateTime*` fields with their UTC
/// offsets and sub-seconds.
fn push_capture_time(fields: &mut Vec<Field>, when: &ExifDateTime) {
    for tag in [Tag::DateTime, Tag::DateTimeOriginal, Tag::DateTimeDigitized] {
        fields.push(primary(tag, ascii(&when.datetime)));
    }
    for tag in [
        Tag::OffsetTime,
        Tag::OffsetTimeOriginal,
        Tag::OffsetTimeDigitized,
    ] {
        fields.push(primary(tag, ascii(UTC_OFFSET)));
    }
    for tag in [
        Tag::SubSecTime,
        Tag::SubSecTimeOriginal,
        Tag::SubSecTimeDigitized,
    ] {
        fields.push(primary(tag, ascii(&when.subsec)));
    }
}

/// Position, altitude and heading, each when the metadata has it.
fn push_gps(fields: &mut Vec<Field>, meta: &ImageMeta) {
    if let Some((lat, lon)) = meta.position() {
        let lat_ref = if lat < 0.0 { "S" } else { "N" };
        let lon_ref = if lon < 0.0 { "W" } else { "E" };
        fields.push(primary(Tag::GPSLatitudeRef, ascii(lat_ref)));
        let lat_dms = Value::Rational(decimal_to_dms(lat).to_vec());
        fields.push(primary(Tag::GPSLatitude, lat_dms));
        fields.push(primary(Tag::GPSLongitudeRef, ascii(lon_ref)));
        let lon_dms = Value::Rational(decimal_to_dms(lon).to_vec());
        fields.push(primary(Tag::GPSLongitude, lon_dms));
    }
    if let Some(metres) = pick_altitude(meta) {
        let (reference, magnitude) = altitude_rational(metres);
        fields.push(primary(Tag::GPSAltitudeRef, Value::Byte(vec![reference])));
        fields.push(primary(Tag::GPSAltitude, Value::Rational(vec![magnitude])));
    }
    if let Some(degrees) = pick_heading(meta) {
        fields.push(primary(Tag::GPSImgDirectionRef, ascii("T")));
        let heading = Value::Rational(vec![heading_rational(degrees)]);
        fields.push(primary(Tag::GPSImgDirection, heading));
    }
}

/// Make/Model as written: trimmed, NULs removed (a NUL would end the ASCII
/// value early), capped in length, `None` when nothing is left.
///
/// Non-ASCII text is written as its UTF-8 bytes in the ASCII-typed field.
/// EXIF 2.32 says ASCII is 7-bit, but EXIF 3.0's UTF-8 type is not
/// something kamadak-exif can write, and ExifTool, exiv2 and most photo
/// managers decode these bytes as UTF-8: transliterating would lose data.
fn clean_text(raw: &str) -> Option<Vec<u8>> {
    let text: String = raw.trim().chars().filter(|c| *c != '\0').collect();
    let text = crate::units::clip(&text, MAX_TEXT_BYTES).trim_end();
    (!text.is_empty()).then(|| text.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_capped() {
        assert_eq!(clean_text("  GoPro \n"), Some(b"GoPro".to_vec()));
        assert_eq!(clean_text("   "), None);
        assert_eq!(clean_text(""), None);
        assert_eq!(clean_text("\0"), None);
        assert_eq!(clean_text("a\0b"), Some(b"ab".to_vec()));
        assert_eq!(clean_text("Ästhetik"), Some("Ästhetik".as_bytes().to_vec()));
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = clean_text(&long).unwrap();
        assert!(cut.len() <= MAX_TEXT_BYTES);
        assert!(String::from_utf8(cut).is_ok());
    }

    #[test]
    fn empty_meta_still_builds_a_valid_block() {
        let tiff = build_exif_tiff(&ImageMeta::default(), std::iter::empty(), None).unwrap();
        let exif = Reader::new().read_raw(tiff).unwrap();
        assert!(exif.get_field(Tag::Software, In::PRIMARY).is_some());
    }
}
