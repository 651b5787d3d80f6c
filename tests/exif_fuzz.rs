//! Property test: thousands of random and mutated bodies and random metadata,
//! from a fixed seed. `tag_jpeg` must never panic, and must either return an
//! error or a JPEG with exactly one readable EXIF block whose pixels are those
//! of the input.

use exif::Tag;
use img_parts::Bytes;
use img_parts::jpeg::{Jpeg, markers};
use mapillary_downloader::exif::tag_jpeg;
use mapillary_downloader::model::{GeoPoint, ImageMeta};
use mld_testkit::jpeg as fx;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

const CASES: usize = 3_000;
const SEED: u64 = 0x6d61_7069_6c6c_6172;

fn corpus() -> Vec<Vec<u8>> {
    let plain = fx::jfif(24, 16);
    let sane = fx::exif_app1(&fx::sane_exif_tiff(false));
    let xmp = [fx::XMP_PREFIX, b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"].concat();
    vec![
        plain.clone(),
        fx::without_app0(&plain),
        fx::progressive_grey(16, 8).0,
        fx::insert_segment(&plain, 1, fx::APP1, &sane),
        fx::insert_segment(
            &fx::insert_segment(&plain, 1, fx::APP1, &sane),
            2,
            fx::APP1,
            &xmp,
        ),
        fx::insert_segment(
            &plain,
            1,
            fx::APP1,
            &fx::exif_app1(&fx::sane_exif_tiff(true)),
        ),
    ]
}

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut body = corpus[rng.random_range(0..corpus.len())].clone();
    match rng.random_range(0..8) {
        // Flip a few bytes anywhere.
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..body.len());
                body[at] = rng.random();
            }
        }
        // Flip bytes in the headers, where the structure lives.
        1 => {
            let (_, scan_at) = fx::segments(&body);
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(2..scan_at + 4);
                body[at] = rng.random();
            }
        }
        // Truncate.
        2 => body.truncate(rng.random_range(0..body.len())),
        // An APP1 EXIF with random or bit-flipped TIFF contents.
        3 => {
            let mut tiff = fx::sane_exif_tiff(rng.random());
            if rng.random_bool(0.3) {
                tiff.truncate(rng.random_range(0..tiff.len()));
            }
            for _ in 0..rng.random_range(0..6) {
                let at = rng.random_range(0..tiff.len().max(1));
                if let Some(byte) = tiff.get_mut(at) {
                    *byte = rng.random();
                }
            }
            let index = rng.random_range(0..4);
            body = fx::insert_segment(&body, index, fx::APP1, &fx::exif_app1(&tiff));
        }
        // Random bytes behind a JPEG signature.
        4 => {
            let mut random = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut random);
            body = [&[0xFF, 0xD8, 0xFF][..], &random].concat();
        }
        // Pure noise.
        5 => {
            let mut random = vec![0u8; rng.random_range(0..256)];
            rng.fill_bytes(&mut random);
            body = random;
        }
        // Insert random bytes in the middle.
        6 => {
            let at = rng.random_range(0..body.len());
            let mut random = vec![0u8; rng.random_range(1..16)];
            rng.fill_bytes(&mut random);
            body.splice(at..at, random);
        }
        // Many EXIF-looking blocks at once.
        _ => {
            for i in 0..rng.random_range(2..5) {
                let contents = if rng.random() {
                    fx::exif_app1(&fx::tiny_exif_tiff(Tag::Artist, "x"))
                } else {
                    b"Exif\0\0II*\0\x08\0\0\0\xff\xff".to_vec()
                };
                body = fx::insert_segment(&body, i, fx::APP1, &contents);
            }
        }
    }
    body
}

fn random_f64(rng: &mut StdRng) -> Option<f64> {
    match rng.random_range(0..10) {
        0 => None,
        1 => Some(0.0),
        2 => Some(f64::NAN),
        3 => Some(f64::INFINITY),
        4 => Some(4_294_967_281.0),
        5 => Some(rng.random_range(-1e12..1e12)),
        _ => Some(rng.random_range(-1_000.0..1_000.0)),
    }
}

fn random_text(rng: &mut StdRng) -> Option<String> {
    let pool = ["", "  ", "GoPro", "Ästhetik", "東京", "a\0b", "x\u{7}y"];
    match rng.random_range(0..3) {
        0 => None,
        1 => Some(pool[rng.random_range(0..pool.len())].to_string()),
        _ => Some("é".repeat(rng.random_range(0..2_000))),
    }
}

fn random_meta(rng: &mut StdRng) -> ImageMeta {
    let point = |rng: &mut StdRng| {
        rng.random_bool(0.7).then(|| GeoPoint {
            kind: None,
            coordinates: (0..rng.random_range(0..4))
                .map(|_| random_f64(rng).unwrap_or(0.0))
                .collect(),
        })
    };
    ImageMeta {
        id: "1".into(),
        captured_at: rng
            .random_bool(0.8)
            .then(|| rng.random::<i64>() >> rng.random_range(0..40)),
        geometry: point(rng),
        computed_geometry: point(rng),
        altitude: random_f64(rng),
        computed_altitude: random_f64(rng),
        compass_angle: random_f64(rng),
        computed_compass_angle: random_f64(rng),
        make: random_text(rng),
        model: random_text(rng),
        is_pano: [None, Some(false), Some(true)][rng.random_range(0..3)],
        ..ImageMeta::default()
    }
}

fn pixels(jpeg: &[u8]) -> Option<Vec<u8>> {
    catch_unwind(|| image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).ok())
        .ok()
        .flatten()
        .map(|img| img.into_bytes())
}

#[test]
fn random_and_mutated_inputs_never_panic_and_give_valid_jpegs_or_errors() {
    let corpus = corpus();
    let mut rng = StdRng::seed_from_u64(SEED);
    let (mut tagged, mut rejected, mut pixel_checks) = (0, 0, 0);
    for case in 0..CASES {
        let body = mutate(&mut rng, &corpus);
        let meta = random_meta(&mut rng);
        let result = catch_unwind(AssertUnwindSafe(|| tag_jpeg(&body, &meta)))
            .unwrap_or_else(|_| panic!("case {case} panicked; body {body:02x?}, meta {meta:?}"));
        let Ok(output) = result else {
            rejected += 1;
            continue;
        };
        tagged += 1;
        assert_eq!(&output[..2], &[0xFF, 0xD8], "case {case}");
        let parsed = Jpeg::from_bytes(Bytes::from(output.clone()))
            .unwrap_or_else(|e| panic!("case {case}: output does not parse: {e}"));
        let exif_blocks = parsed
            .segments()
            .iter()
            .filter(|s| {
                let c = s.contents();
                s.marker() == markers::APP1
                    && c[..c.len().min(10)].windows(5).any(|w| w == b"Exif\0")
            })
            .count();
        assert_eq!(exif_blocks, 1, "case {case}");
        if meta.is_pano == Some(true) {
            let xmp_blocks = parsed
                .segments()
                .iter()
                .filter(|s| s.marker() == markers::APP1 && s.contents().starts_with(fx::XMP_PREFIX))
                .count();
            assert_eq!(xmp_blocks, 1, "case {case}");
        }
        exif::Reader::new()
            .read_from_container(&mut Cursor::new(&output))
            .unwrap_or_else(|e| panic!("case {case}: kamadak-exif cannot read the output: {e}"));
        if let Some(before) = pixels(&body) {
            pixel_checks += 1;
            assert!(
                pixels(&output) == Some(before),
                "case {case}: pixels changed"
            );
        }
    }
    // The corpus must exercise both outcomes, or the test proves little.
    assert!(tagged > CASES / 5, "only {tagged} tagged");
    assert!(rejected > CASES / 10, "only {rejected} rejected");
    assert!(
        pixel_checks > CASES / 10,
        "only {pixel_checks} pixel checks"
    );
    println!("{tagged} tagged, {rejected} rejected, {pixel_checks} pixel checks");
}
