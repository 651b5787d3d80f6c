//! JPEG structure: checking that a body really is a JPEG, finding the EXIF
//! and XMP APP1 segments, and splicing the new ones in with img-parts.

use super::ExifError;
use img_parts::jpeg::{Jpeg, JpegSegment, markers};
use img_parts::{Bytes, ImageEXIF};

/// What precedes the TIFF structure in an EXIF APP1 segment.
pub(crate) const EXIF_PREFIX: &[u8] = b"Exif\0\0";
/// The namespace that opens a standard XMP APP1 segment.
pub(crate) const XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
/// Extended XMP continues a standard packet that is too big for one segment.
const XMP_EXTENSION_PREFIX: &[u8] = b"http://ns.adobe.com/xmp/extension/\0";
/// A segment's contents hold at most 65535 - 2 length bytes.
pub(crate) const MAX_SEGMENT_CONTENTS: usize = 65_533;
/// The TIFF structure inside one EXIF APP1 segment.
pub(crate) const MAX_EXIF_TIFF: usize = MAX_SEGMENT_CONTENTS - EXIF_PREFIX.len();

/// A parsed JPEG that has passed [`parse`]'s checks, with the pieces
/// the tagger needs.
pub(crate) struct CheckedJpeg {
    jpeg: Jpeg,
}

/// Parses `bytes` and checks it is a JPEG worth saving: SOI, a frame header
/// (SOFn) before the first scan, scan data, and an EOI marker somewhere after
/// it (a missing EOI means a truncated download).
pub(crate) fn parse(bytes: &[u8]) -> Result<CheckedJpeg, ExifError> {
    if bytes.len() < 3 || bytes[..3] != [0xFF, 0xD8, 0xFF] {
        return Err(ExifError::NotJpeg(
            "the body does not start with a JPEG SOI marker",
        ));
    }
    parse_shared(Bytes::copy_from_slice(bytes))
}

/// [`parse`] of bytes the segments may share (no copy of the body).
pub(crate) fn parse_shared(body: Bytes) -> Result<CheckedJpeg, ExifError> {
    let bytes = &body[..];
    if bytes.len() < 3 || bytes[..3] != [0xFF, 0xD8, 0xFF] {
        return Err(ExifError::NotJpeg(
            "the body does not start with a JPEG SOI marker",
        ));
    }
    let jpeg = Jpeg::from_bytes(body.clone())
        .map_err(|e| ExifError::Malformed(format!("cannot parse the JPEG segments: {e}")))?;

    let segments = jpeg.segments();
    let scan = segments
        .iter()
        .position(|s| s.marker() == markers::SOS)
        .ok_or_else(|| ExifError::Malformed("no scan (SOS) segment: no image data".into()))?;
    if !segments[..scan].iter().any(|s| is_frame_header(s.marker())) {
        return Err(ExifError::Malformed(
            "no frame header (SOFn) before the first scan".into(),
        ));
    }
    // img-parts keeps everything after the first scan header, up to the end
    // of the input, as that segment's entropy: it is the tail of `bytes`.
    let scan_segment = &segments[scan];
    let tail_len = scan_segment.len_with_entropy() - scan_segment.len();
    let tail = &bytes[bytes.len().saturating_sub(tail_len)..];
    if !tail.windows(2).rev().any(|w| w == [0xFF, markers::EOI]) {
        return Err(ExifError::Malformed(
            "no EOI marker after the image data: the file is truncated".into(),
        ));
    }
    Ok(CheckedJpeg { jpeg })
}

fn is_frame_header(marker: u8) -> bool {
    // SOF0..SOF15 minus DHT (C4), JPG (C8) and DAC (CC).
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// True for any APP1 that a reader might take for EXIF, including broken
/// ones such as `Exif\0\xff` or a few junk bytes before `Exif\0` (ExifTool
/// accepts up to four). All of them go, so the output holds exactly one.
pub(crate) fn is_exif_like(segment: &JpegSegment) -> bool {
    if segment.marker() != markers::APP1 {
        return false;
    }
    let head = &segment.contents()[..segment.contents().len().min(10)];
    head.windows(5).any(|w| w == b"Exif\0")
}

fn is_xmp(segment: &JpegSegment) -> bool {
    segment.marker() == markers::APP1
        && (segment.contents().starts_with(XMP_PREFIX)
            || segment.contents().starts_with(XMP_EXTENSION_PREFIX))
}

impl CheckedJpeg {
    /// The TIFF payloads of the well-formed-looking EXIF segments, in file order.
    pub(crate) fn exif_payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.jpeg
            .segments()
            .iter()
            .filter(|s| s.marker() == markers::APP1 && s.contents().starts_with(EXIF_PREFIX))
            .map(|s| &s.contents()[EXIF_PREFIX.len()..])
    }

    /// `(width, height)` from the frame header, `None` when the height is
    /// deferred to a DNL marker (height 0).
    pub(crate) fn dimensions(&self) -> Option<(u32, u32)> {
        self.jpeg
            .dimensions()
            .map(|(w, h)| (u32::from(w), u32::from(h)))
    }

    /// Replaces every EXIF APP1 with one built from `exif_tiff` and, when
    /// `xmp_packet` is given, every XMP APP1 with one holding that packet.
    ///
    /// The new segments go right after the leading APP0 segments (JFIF wants
    /// to be first), EXIF before XMP. Other segments keep their order.
    pub(crate) fn into_tagged_bytes(
        mut self,
        exif_tiff: &[u8],
        xmp_packet: Option<&[u8]>,
    ) -> Result<Vec<u8>, ExifError> {
        if exif_tiff.len() > MAX_EXIF_TIFF {
            return Err(ExifError::Write(format!(
                "the EXIF block is {} bytes, more than one segment holds",
                exif_tiff.len()
            )));
        }
        let xmp_segment = match xmp_packet {
            Some(packet) => {
                if XMP_PREFIX.len() + packet.len() > MAX_SEGMENT_CONTENTS {
                    return Err(ExifError::Write(format!(
                        "the XMP packet is {} bytes, more than one segment holds",
                        packet.len()
                    )));
                }
                let mut contents = Vec::with_capacity(XMP_PREFIX.len() + packet.len());
                contents.extend_from_slice(XMP_PREFIX);
                contents.extend_from_slice(packet);
                Some(JpegSegment::new_with_contents(
                    markers::APP1,
                    Bytes::from(contents),
                ))
            }
            None => None,
        };
        let replace_xmp = xmp_segment.is_some();

        // Going through set_exif lets img-parts keep an MPF (multi-picture)
        // index valid. Clearing first makes set_exif insert the new block
        // right after APP0 instead of where the old one was.
        self.jpeg.set_exif(None);
        self.jpeg
            .segments_mut()
            .retain(|s| !(is_exif_like(s) || (replace_xmp && is_xmp(s))));
        self.jpeg.set_exif(Some(Bytes::copy_from_slice(exif_tiff)));
        let segments = self.jpeg.segments_mut();
        let exif_at = segments
            .iter()
            .position(|s| s.marker() == markers::APP1 && s.contents().starts_with(EXIF_PREFIX))
            .ok_or_else(|| ExifError::Write("the EXIF segment was not inserted".into()))?;
        if let Some(xmp) = xmp_segment {
            segments.insert(exif_at + 1, xmp);
        }

        let mut out = crate::buffers::take(self.jpeg.len());
        self.jpeg
            .encoder()
            .write_to(&mut out)
            .map_err(|e| ExifError::Write(format!("cannot encode the JPEG: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app1(contents: &[u8]) -> JpegSegment {
        JpegSegment::new_with_contents(markers::APP1, Bytes::copy_from_slice(contents))
    }

    #[test]
    fn exif_like_catches_broken_prefixes() {
        assert!(is_exif_like(&app1(b"Exif\0\0MM")));
        assert!(is_exif_like(&app1(b"Exif\0\xff")));
        assert!(is_exif_like(&app1(b"\0\0Exif\0\0")));
        assert!(!is_exif_like(&app1(b"http://ns.adobe.com/xap/1.0/\0")));
        assert!(!is_exif_like(&app1(b"")));
        let app2 = JpegSegment::new_with_contents(markers::APP2, Bytes::from_static(b"Exif\0\0"));
        assert!(!is_exif_like(&app2));
    }

    #[test]
    fn non_jpeg_bodies_are_rejected() {
        for body in [&b""[..], b"\xFF", b"\xFF\xD8", b"<html>", b"\x89PNG\r\n"] {
            assert!(
                matches!(parse(body), Err(ExifError::NotJpeg(_))),
                "{body:?}"
            );
        }
        for body in [
            &b"\xFF\xD8\xFF\xD9"[..],
            b"\xFF\xD8\xFF\xE0\x00\x02\xFF\xD9",
            b"\xFF\xD8\xFF\xE0\xFF\xFF",
        ] {
            assert!(
                matches!(parse(body), Err(ExifError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn frame_header_markers() {
        let sof: Vec<u8> = (0..=0xFF).filter(|m| is_frame_header(*m)).collect();
        assert_eq!(
            sof,
            [
                0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF
            ]
        );
    }
}
