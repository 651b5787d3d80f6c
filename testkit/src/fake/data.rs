//! Deterministic fake images: metadata generated on demand from (seed, index),
//! so a user of a million images costs a few bytes, and JPEG bodies built from
//! one small encoded base per quality plus per-image segments.

use super::{FakeImage, GeoPoint, Quality};
use image::{ImageEncoder, RgbImage, codecs::jpeg::JpegEncoder};
use serde_json::json;

/// 2023-06-01T23:30:00Z: images start half an hour before a UTC midnight.
const T0_MS: i64 = 1_685_662_200_000;
const DAY_MS: i64 = 86_400_000;
/// First generated image id; ids look like real 16-digit Mapillary ids.
pub const FIRST_ID: u64 = 1_383_728_082_000_000;
/// `altitude` as Mapillary sometimes serves -15 m: unsigned-wrapped.
pub const WRAPPED_ALTITUDE: f64 = 4_294_967_281.0;
/// The region generated images lie in (around Paris): `[west, south, east, north]`.
pub const REGION: [f64; 4] = [2.25, 48.80, 2.45, 48.90];
/// The ImageDescription the served JPEGs' existing EXIF carries.
pub const SERVED_DESCRIPTION: &str = r#"{"applied_s236562":true}"#;

/// SplitMix64: a tiny, well-mixed, dependency-free hash for deterministic data.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn h(seed: u64, i: u64, salt: u64) -> u64 {
    mix(seed ^ mix(i ^ mix(salt)))
}

/// Rounds to `digits` decimals so the value prints (and parses back) exactly.
fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |acc, b| {
        (acc ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A run of generated images of one user.
#[derive(Debug, Clone)]
pub struct Block {
    pub id_base: u64,
    pub count: u64,
    pub seed: u64,
    /// Every image of the block in this sequence (`add_sequence`), instead
    /// of the generator's own pick.
    pub sequence: Option<String>,
}

/// A ~22-character `[A-Za-z0-9]` sequence id.
pub fn sequence_id(seed: u64, group: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let len = 21 + (h(seed, group, 11) % 3) as usize;
    (0..len)
        .map(|k| {
            ALPHABET[(h(seed, group * 64 + k as u64, 12) % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Image `i` of a block, without URLs. Realistic oddities on purpose: wrapped
/// altitudes, 0.0 and >= 360 headings, missing computed_geometry, non-ASCII
/// and empty makes, images without a sequence or a capture time, panoramas.
pub fn generate(block: &Block, i: u64, username: &str, user_id: &str) -> FakeImage {
    let s = block.seed;
    let mut m = FakeImage {
        id: (block.id_base + i).to_string(),
        ..FakeImage::default()
    };
    let day = (i / 60) as i64;
    if h(s, i, 9) % 499 != 7 {
        m.captured_at = Some(
            T0_MS
                + (s % 97) as i64 * DAY_MS
                + day * 2 * DAY_MS
                + (i % 60) as i64 * 37_000
                + (h(s, i, 10) % 1000) as i64,
        );
    }
    if !h(s, i, 1).is_multiple_of(17) {
        m.sequence = Some(sequence_id(s, i / 25));
    }
    if let Some(forced) = &block.sequence {
        m.sequence = Some(forced.clone());
    }
    let lon = REGION[0] + unit(h(s, i, 2)) * (REGION[2] - REGION[0]);
    let lat = REGION[1] + unit(h(s, i, 3)) * (REGION[3] - REGION[1]);
    let lon = round(lon, 7);
    let lat = round(lat, 7);
    m.geometry = Some(point(lon, lat));
    if !h(s, i, 4).is_multiple_of(5) {
        m.computed_geometry = Some(point(round(lon + 0.00001, 7), round(lat - 0.00001, 7)));
    }
    let plain_alt = round(35.0 + unit(h(s, i, 5)) * 100.0, 3);
    m.altitude = Some(match h(s, i, 6) % 10 {
        0 => WRAPPED_ALTITUDE,
        1 => 0.0,
        _ => plain_alt,
    });
    if !h(s, i, 7).is_multiple_of(7) {
        m.computed_altitude = Some(round(plain_alt - 1.5, 3));
    }
    let heading = round(unit(h(s, i, 8)) * 360.0, 3);
    m.compass_angle = Some(match h(s, i, 13) % 12 {
        0 => 0.0,
        1 => round(360.0 + heading / 12.0, 3),
        2 => 360.0,
        _ => heading,
    });
    m.computed_compass_angle = match h(s, i, 14) % 6 {
        0 => None,
        1 => Some(0.0),
        _ => Some(round((heading + 1.25) % 360.0, 3)),
    };
    let (make, model, pano, camera) = match h(s, i, 15) % 6 {
        0 => (Some("GoPro"), Some("HERO9 Black"), false, "fisheye"),
        1 => (Some("Ricoh Θ"), Some("THETA Z1"), true, "equirectangular"),
        2 => (Some("Xiaomi 小米"), Some("Mi 9"), false, "perspective"),
        3 => (Some(""), Some(""), false, "perspective"),
        4 => (None, None, false, "perspective"),
        _ => (Some("Apple"), Some("iPhone 12"), false, "perspective"),
    };
    m.make = make.map(str::to_string);
    m.model = model.map(str::to_string);
    m.is_pano = Some(pano);
    m.camera_type = Some(camera.to_string());
    let (w, hgt) = if pano { (6720, 3360) } else { (4000, 3000) };
    m.width = Some(w);
    m.height = Some(hgt);
    m.extra.insert("exif_orientation".into(), json!(1));
    m.extra.insert(
        "creator".into(),
        json!({"username": username, "id": user_id}),
    );
    m
}

fn point(lon: f64, lat: f64) -> GeoPoint {
    GeoPoint {
        kind: Some("Point".into()),
        coordinates: vec![lon, lat],
    }
}

/// Pixel size of the small base JPEG each quality is served from.
fn base_size(q: Quality) -> (u32, u32) {
    match q {
        Quality::Q256 => (32, 24),
        Quality::Q1024 => (64, 48),
        Quality::Q2048 => (96, 72),
        Quality::Original => (128, 96),
    }
}

/// One encoded JPEG per quality, made once per fake.
pub struct JpegBases {
    bases: [Vec<u8>; 4],
}

impl JpegBases {
    pub fn new() -> JpegBases {
        JpegBases {
            bases: Quality::ALL.map(encode_base),
        }
    }

    fn base(&self, q: Quality) -> &[u8] {
        let index = Quality::ALL.iter().position(|x| *x == q).unwrap_or(0);
        &self.bases[index]
    }

    /// The exact bytes the CDN serves for `(id, quality)`.
    pub fn body(&self, id: &str, q: Quality) -> Vec<u8> {
        let base = self.base(q);
        let hid = hash_str(id) ^ hash_str(q.as_str());
        // SOI, then JFIF APP0 if the encoder wrote one.
        let mut head_end = 2;
        if base.len() > 6 && base[2] == 0xFF && base[3] == 0xE0 {
            head_end = 4 + usize::from(u16::from_be_bytes([base[4], base[5]]));
        }
        let mut out = Vec::with_capacity(base.len() + 64 * 1024);
        out.extend_from_slice(&base[..head_end]);
        match hash_str(id) % 11 {
            0 => {}
            1 | 5 => out.extend_from_slice(&segment(0xE1, &malformed_exif())),
            _ => out.extend_from_slice(&segment(0xE1, &served_exif())),
        }
        out.extend_from_slice(&segment(0xFE, &marker(id, q)));
        let (min, max) = padding_range(q);
        let mut pad = min + (mix(hid) % (max - min + 1) as u64) as usize;
        let mut k = 0u64;
        while pad > 0 {
            let n = pad.min(65_000);
            let payload: Vec<u8> = (0..n)
                .map(|j| (mix(hid ^ k) as u8).wrapping_add(j as u8))
                .collect();
            out.extend_from_slice(&segment(0xFE, &payload));
            pad -= n;
            k += 1;
        }
        out.extend_from_slice(&base[head_end..]);
        out
    }
}

/// Padding per quality, so sizes vary like real ones (for size estimates).
fn padding_range(q: Quality) -> (usize, usize) {
    match q {
        Quality::Q256 => (0, 5_000),
        Quality::Q1024 => (4_000, 30_000),
        Quality::Q2048 => (10_000, 80_000),
        Quality::Original => (20_000, 200_000),
    }
}

/// The COM payload that identifies a served body: `mly-fake:<id>:<quality>`.
pub fn marker(id: &str, q: Quality) -> Vec<u8> {
    format!("mly-fake:{id}:{}", q.as_str()).into_bytes()
}

fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len() + 2).expect("segment payload fits a JPEG segment");
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A valid little-endian EXIF block: Orientation=1 and the ImageDescription
/// Mapillary's pipeline leaves behind.
fn served_exif() -> Vec<u8> {
    let desc: Vec<u8> = SERVED_DESCRIPTION
        .bytes()
        .chain(std::iter::once(0))
        .collect();
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II\x2A\x00");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    let data_offset: u32 = 8 + 2 + 2 * 12 + 4;
    // 0x010E ImageDescription, ASCII, offset to the text after the IFD.
    tiff.extend_from_slice(&0x010Eu16.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    tiff.extend_from_slice(&data_offset.to_le_bytes());
    // 0x0112 Orientation, SHORT, 1.
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&[1, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&desc);
    let mut out = b"Exif\0\0".to_vec();
    out.extend_from_slice(&tiff);
    out
}

/// `Exif\0\0` and garbage: an IFD offset far past the end.
fn malformed_exif() -> Vec<u8> {
    let mut out = b"Exif\0\0II\x2A\x00".to_vec();
    out.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
    out.extend_from_slice(b"\x07\x00garbage-not-an-ifd\xff\xfe");
    out
}

fn encode_base(q: Quality) -> Vec<u8> {
    let (w, hgt) = base_size(q);
    let img = RgbImage::from_fn(w, hgt, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / hgt) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 80)
        .write_image(img.as_raw(), w, hgt, image::ExtendedColorType::Rgb8)
        .expect("encoding a small in-memory JPEG cannot fail");
    out
}
