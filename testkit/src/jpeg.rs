//! JPEG inputs for the EXIF tests and benchmark, built in code: the image
//! crate's encoder for baseline files, a tiny hand-written encoder for a
//! progressive one, and segment surgery for the odd cases served files have.

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder};
use std::io::Cursor;

pub const APP0: u8 = 0xE0;
pub const APP1: u8 = 0xE1;
pub const SOS: u8 = 0xDA;
pub const XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// A plain JFIF baseline JPEG (APP0 first) of a smooth colour gradient.
pub fn jfif(width: u32, height: u32) -> Vec<u8> {
    let pixels: Vec<u8> = (0..height)
        .flat_map(|y| {
            (0..width).flat_map(move |x| {
                [
                    (x * 255 / width.max(1)) as u8,
                    (y * 255 / height.max(1)) as u8,
                    ((x + y) % 256) as u8,
                ]
            })
        })
        .collect();
    encode_rgb(&pixels, width, height, 85)
}

/// A JPEG of seeded noise, whose size grows with the pixel count and quality:
/// photos compress about as badly, so it stands in for a real download.
pub fn noisy(width: u32, height: u32, quality: u8, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    let pixels: Vec<u8> = (0..width * height)
        .flat_map(|i| {
            let base = ((i % width) * 200 / width.max(1)) as u8;
            let n = next() / 4;
            [base.wrapping_add(n), n.wrapping_mul(2), base / 2 + n]
        })
        .collect();
    encode_rgb(&pixels, width, height, quality)
}

fn encode_rgb(pixels: &[u8], width: u32, height: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(pixels, width, height, ExtendedColorType::Rgb8)
        .expect("encode fixture JPEG");
    out
}

/// The segments before the first scan, as `(marker, contents)`, and the
/// offset where the SOS segment starts. Panics on a malformed fixture.
pub fn segments(jpeg: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "fixture must start with SOI");
    let mut at = 2;
    let mut found = Vec::new();
    loop {
        assert_eq!(jpeg[at], 0xFF, "marker expected at {at}");
        let marker = jpeg[at + 1];
        if marker == SOS {
            return (found, at);
        }
        let len = u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]) as usize;
        found.push((marker, jpeg[at + 4..at + 2 + len].to_vec()));
        at += 2 + len;
    }
}

/// Rebuilds a JPEG from `segments` and the scan data of `original`.
pub fn rebuild(segments: &[(u8, Vec<u8>)], original: &[u8]) -> Vec<u8> {
    let (_, scan_at) = self::segments(original);
    let mut out = vec![0xFF, 0xD8];
    for (marker, contents) in segments {
        out.extend_from_slice(&[0xFF, *marker]);
        out.extend_from_slice(&((contents.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(contents);
    }
    out.extend_from_slice(&original[scan_at..]);
    out
}

/// `jpeg` with a segment inserted at `index` among the pre-scan segments.
pub fn insert_segment(jpeg: &[u8], index: usize, marker: u8, contents: &[u8]) -> Vec<u8> {
    let (mut segs, _) = segments(jpeg);
    segs.insert(index.min(segs.len()), (marker, contents.to_vec()));
    rebuild(&segs, jpeg)
}

/// `jpeg` without its APP0 (JFIF) segments.
pub fn without_app0(jpeg: &[u8]) -> Vec<u8> {
    let (mut segs, _) = segments(jpeg);
    segs.retain(|(marker, _)| *marker != APP0);
    rebuild(&segs, jpeg)
}

/// APP1 contents: `Exif\0\0` + TIFF.
pub fn exif_app1(tiff: &[u8]) -> Vec<u8> {
    let mut contents = b"Exif\0\0".to_vec();
    contents.extend_from_slice(tiff);
    contents
}

/// A served file's typical EXIF: an Orientation that must not survive, the
/// odd ImageDescription Mapillary leaves, tags we overwrite (Make, date,
/// GPS latitude, size) and tags we must keep (Artist, Software, FNumber),
/// a MakerNote and a JPEG thumbnail.
pub fn sane_exif_tiff(little_endian: bool) -> Vec<u8> {
    let ascii = |s: &str| Value::Ascii(vec![s.as_bytes().to_vec()]);
    let field = |tag, ifd_num, value| Field {
        tag,
        ifd_num,
        value,
    };
    let fields = [
        field(Tag::Orientation, In::PRIMARY, Value::Short(vec![6])),
        field(
            Tag::ImageDescription,
            In::PRIMARY,
            ascii("{\"applied_s236562\":true}"),
        ),
        field(Tag::Make, In::PRIMARY, ascii("OldMake")),
        field(Tag::Artist, In::PRIMARY, ascii("Jane Doe")),
        field(Tag::Software, In::PRIMARY, ascii("CamFW 1.0")),
        field(
            Tag::DateTimeOriginal,
            In::PRIMARY,
            ascii("2001:01:01 01:01:01"),
        ),
        field(Tag::OffsetTimeOriginal, In::PRIMARY, ascii("+09:00")),
        field(
            Tag::FNumber,
            In::PRIMARY,
            Value::Rational(vec![Rational { num: 28, denom: 10 }]),
        ),
        field(Tag::PixelXDimension, In::PRIMARY, Value::Long(vec![8000])),
        field(Tag::PixelYDimension, In::PRIMARY, Value::Long(vec![6000])),
        field(
            Tag::MakerNote,
            In::PRIMARY,
            Value::Undefined(b"VENDOR\0\x00\x01\x00\x00\x00\x10".to_vec(), 0),
        ),
        field(Tag::GPSLatitudeRef, In::PRIMARY, ascii("N")),
        field(
            Tag::GPSLatitude,
            In::PRIMARY,
            Value::Rational(vec![
                Rational { num: 1, denom: 1 },
                Rational { num: 2, denom: 1 },
                Rational { num: 3, denom: 1 },
            ]),
        ),
        field(
            Tag::GPSSpeed,
            In::PRIMARY,
            Value::Rational(vec![Rational { num: 5, denom: 1 }]),
        ),
        field(Tag::Orientation, In::THUMBNAIL, Value::Short(vec![6])),
        field(Tag::Compression, In::THUMBNAIL, Value::Short(vec![6])),
    ];
    let thumbnail = jfif(16, 16);
    let mut writer = Writer::new();
    for f in &fields {
        writer.push_field(f);
    }
    writer.set_jpeg(&thumbnail, In::THUMBNAIL);
    let mut buf = Cursor::new(Vec::new());
    writer
        .write(&mut buf, little_endian)
        .expect("write fixture EXIF");
    buf.into_inner()
}

/// A minimal TIFF/EXIF block holding one ASCII tag in IFD0.
pub fn tiny_exif_tiff(tag: Tag, text: &str) -> Vec<u8> {
    let f = Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Ascii(vec![text.as_bytes().to_vec()]),
    };
    let mut writer = Writer::new();
    writer.push_field(&f);
    let mut buf = Cursor::new(Vec::new());
    writer.write(&mut buf, false).expect("write fixture EXIF");
    buf.into_inner()
}

/// The contents of every EXIF-looking APP1 before the first scan.
pub fn exif_segments(jpeg: &[u8]) -> Vec<Vec<u8>> {
    app1_matching(jpeg, |c| {
        c.len() >= 5 && c[..c.len().min(10)].windows(5).any(|w| w == b"Exif\0")
    })
}

/// The contents of every standard XMP APP1 before the first scan.
pub fn xmp_segments(jpeg: &[u8]) -> Vec<Vec<u8>> {
    app1_matching(jpeg, |c| c.starts_with(XMP_PREFIX))
}

fn app1_matching(jpeg: &[u8], keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    segments(jpeg)
        .0
        .into_iter()
        .filter(|(marker, contents)| *marker == APP1 && keep(contents))
        .map(|(_, contents)| contents)
        .collect()
}

/// Decoded pixels, as the image crate sees them.
pub fn decode(jpeg: &[u8]) -> image::DynamicImage {
    image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).expect("decodable JPEG")
}

/// A progressive (SOF2) greyscale JPEG of 8x8 blocks of flat grey, one DC
/// scan and one AC scan, hand-encoded: the image crate only writes baseline.
/// Width and height must be multiples of 8. Returns the file and the grey
/// level of each block in raster order.
pub fn progressive_grey(width: u16, height: u16) -> (Vec<u8>, Vec<u8>) {
    assert!(width.is_multiple_of(8) && height.is_multiple_of(8) && width > 0 && height > 0);
    let blocks = usize::from(width / 8) * usize::from(height / 8);
    let levels: Vec<u8> = (0..blocks).map(|b| (16 + b * 37 % 224) as u8).collect();

    let mut out = vec![0xFF, 0xD8];
    let segment = |out: &mut Vec<u8>, marker: u8, contents: &[u8]| {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((contents.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(contents);
    };
    // Quantisation table 0: all ones, so a DC of 8*(p-128) decodes to p.
    let mut dqt = vec![0x00];
    dqt.extend_from_slice(&[1; 64]);
    segment(&mut out, 0xDB, &dqt);
    let mut sof2 = vec![8];
    sof2.extend_from_slice(&height.to_be_bytes());
    sof2.extend_from_slice(&width.to_be_bytes());
    sof2.extend_from_slice(&[1, 1, 0x11, 0]);
    segment(&mut out, 0xC2, &sof2);
    // DC table: categories 0..=11, all 4-bit codes (category k -> code k).
    let mut dht_dc = vec![0x00];
    let mut counts = [0u8; 16];
    counts[3] = 12;
    dht_dc.extend_from_slice(&counts);
    dht_dc.extend(0..12u8);
    segment(&mut out, 0xC4, &dht_dc);
    // AC table: only EOB0 (one block, all AC zero), code "0".
    let mut dht_ac = vec![0x10];
    let mut counts = [0u8; 16];
    counts[0] = 1;
    dht_ac.extend_from_slice(&counts);
    dht_ac.push(0x00);
    segment(&mut out, 0xC4, &dht_ac);

    // Scan 1: DC coefficients.
    segment(&mut out, SOS, &[1, 1, 0x00, 0, 0, 0x00]);
    let mut bits = BitWriter::default();
    let mut previous = 0i32;
    for level in &levels {
        let dc = (i32::from(*level) - 128) * 8;
        let diff = dc - previous;
        previous = dc;
        let category = 32 - diff.unsigned_abs().leading_zeros();
        bits.put(category, 4);
        if category > 0 {
            let value = if diff < 0 {
                diff + (1 << category) - 1
            } else {
                diff
            };
            bits.put(value as u32, category);
        }
    }
    out.extend_from_slice(&bits.finish());
    // Scan 2: AC coefficients 1..=63, every block empty.
    segment(&mut out, SOS, &[1, 1, 0x00, 1, 63, 0x00]);
    let mut bits = BitWriter::default();
    for _ in 0..blocks {
        bits.put(0, 1);
    }
    out.extend_from_slice(&bits.finish());
    out.extend_from_slice(&[0xFF, 0xD9]);
    (out, levels)
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    current: u32,
    filled: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, count: u32) {
        for i in (0..count).rev() {
            self.current = (self.current << 1) | ((value >> i) & 1);
            self.filled += 1;
            if self.filled == 8 {
                self.flush_byte();
            }
        }
    }

    fn flush_byte(&mut self) {
        let byte = self.current as u8;
        self.bytes.push(byte);
        if byte == 0xFF {
            self.bytes.push(0x00);
        }
        self.current = 0;
        self.filled = 0;
    }

    /// Pads the last byte with one-bits, as JPEG asks.
    fn finish(mut self) -> Vec<u8> {
        while self.filled != 0 {
            self.put(1, 1);
        }
        self.bytes
    }
}

/// A whole 16×16 gray JPEG whose frame header (SOF0) claims
/// `width`×`height`: a header that parses, for an image too large to decode
/// in memory, without making one.
pub fn claiming(width: u16, height: u16) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode(&[128u8; 16 * 16], 16, 16, image::ExtendedColorType::L8)
        .expect("encoding a 16×16 JPEG");
    let sof = out
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has an SOF0");
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}
