//! WebP output: a served JPEG becomes a lossy WebP of the same pixel size,
//! carrying the same EXIF block our JPEGs get (a RIFF `EXIF` chunk) and, for
//! panoramas, the GPano XMP (an `XMP ` chunk), in an extended (VP8X) file.
//!
//! The encoder is libwebp's (`libwebp-sys`, which vendors libwebp's C
//! sources and compiles them with `cc`: no system library, no download, and
//! the reference implementation `cwebp` itself uses), driven through its
//! one-call `WebPEncodeRGB` at `output.webp_quality`. The container is
//! written here, chunk by chunk, after the WebP container specification.
//!
//! Encoding is the heaviest CPU work of the program: callers run it on the
//! blocking pool, a bounded number at once (see `engine::EngineContext`).

use crate::exif::{self, ExifError};
use crate::model::ImageMeta;

/// WebP's largest image side, in pixels.
pub const MAX_SIDE: u32 = 16_383;

/// Why an image did not become a WebP; only `TooLarge` keeps the JPEG instead of retrying.
#[derive(Debug, thiserror::Error)]
pub enum WebpError {
    /// Wider or taller than WebP allows: the caller keeps the JPEG.
    #[error("{width}x{height} is larger than WebP's 16383-pixel side")]
    TooLarge {
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
    },
    /// The JPEG does not decode.
    #[error("cannot decode the JPEG: {0}")]
    Decode(String),
    /// libwebp refused to encode.
    #[error("libwebp could not encode the image")]
    Encode,
    /// The EXIF or XMP to carry could not be built.
    #[error(transparent)]
    Tags(#[from] ExifError),
}

/// Re-encodes a served `jpeg` as lossy WebP at `quality` (0-100) with the
/// tags built from `meta` (merged with the JPEG's own EXIF, as for JPEGs).
pub fn jpeg_to_webp(jpeg: &[u8], meta: &ImageMeta, quality: f32) -> Result<Vec<u8>, WebpError> {
    let tags = exif::tags_for(jpeg, meta)?;
    if let Some((width, height)) = tags.dimensions
        && (width > MAX_SIDE || height > MAX_SIDE)
    {
        return Err(WebpError::TooLarge { width, height });
    }
    let pixels = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| WebpError::Decode(e.to_string()))?
        .into_rgb8();
    let (width, height) = pixels.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(WebpError::TooLarge { width, height });
    }
    let simple = encode_rgb(pixels.as_raw(), width, height, quality)?;
    drop(pixels);
    let bitstream = image_chunk(&simple).ok_or(WebpError::Encode)?;
    Ok(extended_container(
        bitstream,
        width,
        height,
        &tags.exif_tiff,
        tags.gpano_xmp.as_deref(),
    ))
}

/// libwebp's simple lossy encoder: a RIFF WebP file with one `VP8 ` chunk.
fn encode_rgb(rgb: &[u8], width: u32, height: u32, quality: f32) -> Result<Vec<u8>, WebpError> {
    let (w, h) = (
        i32::try_from(width).map_err(|_| WebpError::Encode)?,
        i32::try_from(height).map_err(|_| WebpError::Encode)?,
    );
    let stride = w.checked_mul(3).ok_or(WebpError::Encode)?;
    if rgb.len() < (stride as usize) * (h as usize) {
        return Err(WebpError::Encode);
    }
    let mut output: *mut u8 = std::ptr::null_mut();
    // SAFETY: `rgb` holds `height` rows of `stride` bytes (checked above);
    // libwebp allocates `output` and reports its length, and we free it with
    // `WebPFree` after copying, whatever the length.
    let encoded = unsafe {
        let size = libwebp_sys::WebPEncodeRGB(rgb.as_ptr(), w, h, stride, quality, &mut output);
        let copy = if size == 0 || output.is_null() {
            None
        } else {
            Some(std::slice::from_raw_parts(output, size).to_vec())
        };
        libwebp_sys::WebPFree(output.cast());
        copy
    };
    encoded.ok_or(WebpError::Encode)
}

/// The image chunk (`VP8 ` or `VP8L`, header and payload) of a simple WebP.
fn image_chunk(simple: &[u8]) -> Option<&[u8]> {
    if simple.len() < 20 || &simple[0..4] != b"RIFF" || &simple[8..12] != b"WEBP" {
        return None;
    }
    let fourcc = &simple[12..16];
    if fourcc != b"VP8 " && fourcc != b"VP8L" {
        return None;
    }
    let size = u32::from_le_bytes(simple[16..20].try_into().ok()?) as usize;
    let end = 20 + size + (size & 1);
    simple.get(12..end.min(simple.len()))
}

/// Appends one RIFF chunk: fourcc, little-endian size, payload, pad byte.
fn push_chunk(out: &mut Vec<u8>, fourcc: &[u8; 4], payload: &[u8]) {
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    if payload.len() % 2 == 1 {
        out.push(0);
    }
}

/// An extended WebP: `VP8X` (flags, canvas size), the image chunk, `EXIF`,
/// then `XMP `, in the order the specification requires.
fn extended_container(
    image: &[u8],
    width: u32,
    height: u32,
    exif_tiff: &[u8],
    xmp: Option<&[u8]>,
) -> Vec<u8> {
    const EXIF_FLAG: u8 = 0x08;
    const XMP_FLAG: u8 = 0x04;
    let mut vp8x = [0u8; 10];
    vp8x[0] = EXIF_FLAG | if xmp.is_some() { XMP_FLAG } else { 0 };
    vp8x[4..7].copy_from_slice(&(width - 1).to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&(height - 1).to_le_bytes()[..3]);
    let mut body = Vec::with_capacity(image.len() + exif_tiff.len() + 64);
    body.extend_from_slice(b"WEBP");
    push_chunk(&mut body, b"VP8X", &vp8x);
    body.extend_from_slice(image);
    push_chunk(&mut body, b"EXIF", exif_tiff);
    if let Some(packet) = xmp {
        push_chunk(&mut body, b"XMP ", packet);
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The chunks of a WebP file, `(fourcc, payload)`, for checks and `verify`.
pub fn chunks(webp: &[u8]) -> Option<Vec<([u8; 4], &[u8])>> {
    if webp.len() < 12 || &webp[0..4] != b"RIFF" || &webp[8..12] != b"WEBP" {
        return None;
    }
    let declared = u32::from_le_bytes(webp[4..8].try_into().ok()?) as usize;
    if declared + 8 != webp.len() {
        return None;
    }
    let mut chunks = Vec::new();
    let mut at = 12;
    while at < webp.len() {
        let fourcc: [u8; 4] = webp.get(at..at + 4)?.try_into().ok()?;
        let size = u32::from_le_bytes(webp.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        let payload = webp.get(at + 8..at + 8 + size)?;
        chunks.push((fourcc, payload));
        at += 8 + size + (size & 1);
    }
    Some(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let pixels = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(pixels)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn a_webp_keeps_the_size_and_carries_exif_and_the_panorama_xmp() {
        let meta = ImageMeta {
            id: "1".into(),
            captured_at: Some(1_600_000_000_123),
            is_pano: Some(true),
            make: Some("Ricoh".into()),
            ..Default::default()
        };
        let webp = jpeg_to_webp(&jpeg(96, 48), &meta, 75.0).unwrap();
        let decoded = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (96, 48));
        let chunks = chunks(&webp).unwrap();
        let names: Vec<&[u8]> = chunks.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, vec![&b"VP8X"[..], b"VP8 ", b"EXIF", b"XMP "]);
        let vp8x = chunks[0].1;
        assert_eq!(vp8x[0], 0x08 | 0x04);
        assert_eq!(u32::from_le_bytes([vp8x[4], vp8x[5], vp8x[6], 0]) + 1, 96);
        assert_eq!(u32::from_le_bytes([vp8x[7], vp8x[8], vp8x[9], 0]) + 1, 48);
        let exif = ::exif::Reader::new()
            .read_raw(chunks[2].1.to_vec())
            .unwrap();
        let make = exif
            .get_field(::exif::Tag::Make, ::exif::In::PRIMARY)
            .unwrap()
            .display_value()
            .to_string();
        assert!(make.contains("Ricoh"), "{make}");
        assert!(String::from_utf8_lossy(chunks[3].1).contains("GPano"));
    }

    #[test]
    fn a_plain_image_gets_no_xmp_and_oversized_ones_are_refused() {
        let meta = ImageMeta {
            id: "2".into(),
            ..Default::default()
        };
        let webp = jpeg_to_webp(&jpeg(16, 16), &meta, 75.0).unwrap();
        let names: Vec<[u8; 4]> = chunks(&webp).unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec![*b"VP8X", *b"VP8 ", *b"EXIF"]);
        assert_eq!(chunks(&webp).unwrap()[0].1[0], 0x08);
        let wide = jpeg(MAX_SIDE + 1, 8);
        assert!(matches!(
            jpeg_to_webp(&wide, &meta, 75.0),
            Err(WebpError::TooLarge { width: 16_384, .. })
        ));
        assert!(matches!(
            jpeg_to_webp(b"not a jpeg", &meta, 75.0),
            Err(WebpError::Tags(_))
        ));
    }
}
