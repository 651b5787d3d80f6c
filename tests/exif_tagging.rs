//! `tag_jpeg` end to end: every written tag is read back by ExifTool (the
//! reference reader GIS tools and photo managers agree with) and by
//! kamadak-exif, on the odd inputs served files really have.

use exif::{In, Reader, Tag, Value};
use mapillary_downloader::exif::{ExifError, tag_jpeg};
use mapillary_downloader::model::{GeoPoint, ImageMeta};
use mld_testkit::jpeg as fx;
use serde_json::{Map, Value as Json};
use std::io::Cursor;
use std::process::Command;

/// `exiftool -j -n -G1` on an output: numbers raw, keys `Group:Tag`, and
/// no warning allowed (ExifTool warns about duplicate or broken blocks).
fn exiftool(jpeg: &[u8]) -> Map<String, Json> {
    let tags = exiftool_lenient(jpeg);
    assert!(
        !tags.contains_key("ExifTool:Warning") && !tags.contains_key("ExifTool:Error"),
        "exiftool complains: {tags:#?}"
    );
    tags
}

/// The same, for inputs, which may well deserve warnings.
fn exiftool_lenient(jpeg: &[u8]) -> Map<String, Json> {
    let file = tempfile::Builder::new()
        .suffix(".jpg")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), jpeg).expect("write temp file");
    let output = Command::new("exiftool")
        .args(["-j", "-n", "-G1"])
        .arg(file.path())
        .output()
        .expect("exiftool is installed (libimage-exiftool-perl)");
    assert!(
        output.status.success(),
        "exiftool failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut parsed: Vec<Map<String, Json>> =
        serde_json::from_slice(&output.stdout).expect("exiftool JSON");
    parsed.pop().expect("one file")
}

fn kamadak(jpeg: &[u8]) -> exif::Exif {
    Reader::new()
        .read_from_container(&mut Cursor::new(jpeg))
        .expect("kamadak-exif reads the output")
}

fn ascii(exif: &exif::Exif, tag: Tag) -> Option<String> {
    match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Ascii(parts) => Some(String::from_utf8(parts.first()?.clone()).expect("UTF-8")),
        other => panic!("{tag} is not ASCII: {other:?}"),
    }
}

fn rationals(exif: &exif::Exif, tag: Tag) -> Option<Vec<f64>> {
    match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Rational(values) => Some(values.iter().map(|r| r.to_f64()).collect()),
        other => panic!("{tag} is not RATIONAL: {other:?}"),
    }
}

fn uint(exif: &exif::Exif, tag: Tag) -> Option<u32> {
    exif.get_field(tag, In::PRIMARY)?.value.get_uint(0)
}

fn num(tags: &Map<String, Json>, key: &str) -> f64 {
    tags.get(key)
        .and_then(Json::as_f64)
        .unwrap_or_else(|| panic!("{key} missing or not a number in {tags:#?}"))
}

fn text(tags: &Map<String, Json>, key: &str) -> String {
    match tags.get(key) {
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => panic!("{key} missing in {tags:#?}"),
    }
}

fn point(lat: f64, lon: f64) -> GeoPoint {
    GeoPoint {
        kind: Some("Point".into()),
        coordinates: vec![lon, lat],
    }
}

fn full_meta() -> ImageMeta {
    ImageMeta {
        id: "1383728082010917".into(),
        captured_at: Some(1_625_097_599_999),
        geometry: Some(point(1.0, 2.0)),
        computed_geometry: Some(point(-33.868_819_7, 151.209_295_5)),
        altitude: Some(4_294_967_281.0),
        computed_altitude: Some(12.0),
        compass_angle: Some(10.0),
        computed_compass_angle: Some(372.25),
        make: Some("GoPro".into()),
        model: Some("MAX".into()),
        width: Some(5760),
        height: Some(2880),
        ..ImageMeta::default()
    }
}

/// Checks what every output must be, and returns it unchanged.
fn assert_valid_output(input: &[u8], output: &[u8]) {
    assert_eq!(&output[..2], &[0xFF, 0xD8], "starts with SOI");
    assert_eq!(fx::exif_segments(output).len(), 1, "exactly one EXIF APP1");
    assert!(fx::xmp_segments(output).len() <= 1, "at most one XMP APP1");
    let before = fx::decode(input);
    let after = fx::decode(output);
    assert_eq!(before.width(), after.width());
    assert_eq!(before.height(), after.height());
    assert!(before.as_bytes() == after.as_bytes(), "pixels changed");
}

fn tag(input: &[u8], meta: &ImageMeta) -> Vec<u8> {
    let output = tag_jpeg(input, meta).expect("tagging succeeds");
    assert_valid_output(input, &output);
    output
}

#[test]
fn every_tag_reads_back_in_exiftool_and_kamadak() {
    let input = fx::jfif(96, 64);
    let output = tag(&input, &full_meta());
    let t = exiftool(&output);

    assert_eq!(text(&t, "IFD0:Make"), "GoPro");
    assert_eq!(text(&t, "IFD0:Model"), "MAX");
    assert_eq!(text(&t, "IFD0:ModifyDate"), "2021:06:30 23:59:59");
    assert_eq!(text(&t, "ExifIFD:DateTimeOriginal"), "2021:06:30 23:59:59");
    assert_eq!(text(&t, "ExifIFD:CreateDate"), "2021:06:30 23:59:59");
    for key in [
        "ExifIFD:OffsetTime",
        "ExifIFD:OffsetTimeOriginal",
        "ExifIFD:OffsetTimeDigitized",
    ] {
        assert_eq!(text(&t, key), "+00:00", "{key}");
    }
    for key in [
        "ExifIFD:SubSecTime",
        "ExifIFD:SubSecTimeOriginal",
        "ExifIFD:SubSecTimeDigitized",
    ] {
        assert_eq!(text(&t, key), "999", "{key}");
    }
    assert_eq!(num(&t, "ExifIFD:ExifImageWidth"), 96.0);
    assert_eq!(num(&t, "ExifIFD:ExifImageHeight"), 64.0);
    assert_eq!(text(&t, "GPS:GPSVersionID"), "2 2 0 0");
    assert_eq!(text(&t, "GPS:GPSLatitudeRef"), "S");
    assert_eq!(text(&t, "GPS:GPSLongitudeRef"), "E");
    assert!((num(&t, "GPS:GPSLatitude") - 33.868_819_7).abs() <= 1e-5);
    assert!((num(&t, "GPS:GPSLongitude") - 151.209_295_5).abs() <= 1e-5);
    assert!((num(&t, "Composite:GPSLatitude") + 33.868_819_7).abs() <= 1e-5);
    assert_eq!(num(&t, "GPS:GPSAltitudeRef"), 1.0);
    assert_eq!(num(&t, "GPS:GPSAltitude"), 15.0);
    assert_eq!(num(&t, "Composite:GPSAltitude"), -15.0);
    assert_eq!(text(&t, "GPS:GPSImgDirectionRef"), "T");
    assert_eq!(num(&t, "GPS:GPSImgDirection"), 12.25);
    assert!(!t.contains_key("IFD0:Orientation"));
    assert!(
        !t.keys().any(|k| k.starts_with("XMP")),
        "no XMP for a non-pano"
    );

    let k = kamadak(&output);
    assert_eq!(ascii(&k, Tag::Make).as_deref(), Some("GoPro"));
    assert_eq!(ascii(&k, Tag::Model).as_deref(), Some("MAX"));
    assert_eq!(
        ascii(&k, Tag::DateTime).as_deref(),
        Some("2021:06:30 23:59:59")
    );
    assert_eq!(
        ascii(&k, Tag::DateTimeOriginal).as_deref(),
        Some("2021:06:30 23:59:59")
    );
    assert_eq!(
        ascii(&k, Tag::OffsetTimeOriginal).as_deref(),
        Some("+00:00")
    );
    assert_eq!(ascii(&k, Tag::SubSecTimeOriginal).as_deref(), Some("999"));
    assert_eq!(uint(&k, Tag::PixelXDimension), Some(96));
    assert_eq!(uint(&k, Tag::PixelYDimension), Some(64));
    assert!(matches!(
        &k.get_field(Tag::GPSVersionID, In::PRIMARY).unwrap().value,
        Value::Byte(v) if v == &[2, 2, 0, 0]
    ));
    assert_eq!(ascii(&k, Tag::GPSLatitudeRef).as_deref(), Some("S"));
    let lat = rationals(&k, Tag::GPSLatitude).unwrap();
    assert!((lat[0] + lat[1] / 60.0 + lat[2] / 3600.0 - 33.868_819_7).abs() <= 1e-5);
    assert_eq!(uint(&k, Tag::GPSAltitudeRef), Some(1));
    assert_eq!(rationals(&k, Tag::GPSAltitude), Some(vec![15.0]));
    assert_eq!(ascii(&k, Tag::GPSImgDirectionRef).as_deref(), Some("T"));
    assert_eq!(rationals(&k, Tag::GPSImgDirection), Some(vec![12.25]));
    assert!(k.get_field(Tag::Orientation, In::PRIMARY).is_none());
}

#[test]
fn hemispheres_get_the_right_refs() {
    let input = fx::jfif(16, 16);
    for (lat, lon, lat_ref, lon_ref) in [
        (48.858_37, 2.294_481, "N", "E"),
        (40.689_247, -74.044_502, "N", "W"),
        (-33.856_784, 151.215_297, "S", "E"),
        (-22.951_916, -43.210_487, "S", "W"),
        (0.0, 0.0, "N", "E"),
        (-89.999_999, -179.999_999, "S", "W"),
    ] {
        let meta = ImageMeta {
            geometry: Some(point(lat, lon)),
            ..ImageMeta::default()
        };
        let output = tag(&input, &meta);
        let t = exiftool(&output);
        assert_eq!(text(&t, "GPS:GPSLatitudeRef"), lat_ref, "{lat}");
        assert_eq!(text(&t, "GPS:GPSLongitudeRef"), lon_ref, "{lon}");
        assert!(
            (num(&t, "Composite:GPSLatitude") - lat).abs() <= 1e-5,
            "{lat}"
        );
        assert!(
            (num(&t, "Composite:GPSLongitude") - lon).abs() <= 1e-5,
            "{lon}"
        );
        let k = kamadak(&output);
        assert_eq!(ascii(&k, Tag::GPSLatitudeRef).as_deref(), Some(lat_ref));
        assert_eq!(ascii(&k, Tag::GPSLongitudeRef).as_deref(), Some(lon_ref));
        let back = rationals(&k, Tag::GPSLongitude).unwrap();
        let back = back[0] + back[1] / 60.0 + back[2] / 3600.0;
        assert!((back - lon.abs()).abs() <= 1e-5, "{lon} -> {back}");
    }
}

/// `(altitude, computed_altitude)` -> expected `(ref, magnitude)` or none.
type AltitudeCase = (Option<f64>, Option<f64>, Option<(u32, f64)>);

#[test]
fn altitude_zero_missing_wrapped_negative_and_implausible() {
    let input = fx::jfif(16, 16);
    let cases: [AltitudeCase; 8] = [
        (Some(0.0), Some(50.0), Some((0, 0.0))),
        (None, Some(50.0), Some((0, 50.0))),
        (None, Some(0.0), Some((0, 0.0))),
        (Some(4_294_967_281.0), None, Some((1, 15.0))),
        (Some(-12.5), Some(50.0), Some((1, 12.5))),
        (Some(1e9), Some(7.25), Some((0, 7.25))),
        (Some(f64::NAN), None, None),
        (None, None, None),
    ];
    for (altitude, computed_altitude, expected) in cases {
        let meta = ImageMeta {
            altitude,
            computed_altitude,
            ..ImageMeta::default()
        };
        let output = tag(&input, &meta);
        let t = exiftool(&output);
        let k = kamadak(&output);
        let label = format!("{altitude:?}/{computed_altitude:?}");
        match expected {
            Some((reference, magnitude)) => {
                assert_eq!(
                    num(&t, "GPS:GPSAltitudeRef"),
                    f64::from(reference),
                    "{label}"
                );
                assert_eq!(num(&t, "GPS:GPSAltitude"), magnitude, "{label}");
                assert_eq!(uint(&k, Tag::GPSAltitudeRef), Some(reference), "{label}");
                assert_eq!(rationals(&k, Tag::GPSAltitude), Some(vec![magnitude]));
                assert_eq!(text(&t, "GPS:GPSVersionID"), "2 2 0 0");
            }
            None => {
                assert!(!t.contains_key("GPS:GPSAltitude"), "{label}");
                assert!(k.get_field(Tag::GPSAltitude, In::PRIMARY).is_none());
                assert!(!t.contains_key("GPS:GPSVersionID"), "no GPS, no version");
            }
        }
    }
}

/// `(computed_compass_angle, compass_angle)` -> expected heading or none.
#[test]
fn heading_zero_missing_and_past_360() {
    let input = fx::jfif(16, 16);
    let cases: [(Option<f64>, Option<f64>, Option<f64>); 8] = [
        (Some(0.0), Some(90.0), Some(0.0)),
        (None, Some(0.0), Some(0.0)),
        (None, Some(90.0), Some(90.0)),
        (Some(360.0), None, Some(0.0)),
        (Some(725.5), None, Some(5.5)),
        (Some(-90.0), None, Some(270.0)),
        (Some(f64::INFINITY), Some(45.0), Some(45.0)),
        (None, None, None),
    ];
    for (computed, measured, expected) in cases {
        let meta = ImageMeta {
            computed_compass_angle: computed,
            compass_angle: measured,
            ..ImageMeta::default()
        };
        let output = tag(&input, &meta);
        let t = exiftool(&output);
        let k = kamadak(&output);
        match expected {
            Some(degrees) => {
                assert_eq!(
                    num(&t, "GPS:GPSImgDirection"),
                    degrees,
                    "{computed:?}/{measured:?}"
                );
                assert_eq!(text(&t, "GPS:GPSImgDirectionRef"), "T");
                assert_eq!(rationals(&k, Tag::GPSImgDirection), Some(vec![degrees]));
            }
            None => {
                assert!(!t.contains_key("GPS:GPSImgDirection"));
                assert!(k.get_field(Tag::GPSImgDirection, In::PRIMARY).is_none());
            }
        }
    }
}

#[test]
fn dates_are_utc_with_milliseconds_across_midnight() {
    let input = fx::jfif(16, 16);
    // 2021-06-30 23:59:59.999 UTC is already July 1st in Tokyo and still
    // June 30th in Los Angeles: only UTC gives one answer.
    for (ms, date, subsec) in [
        (1_625_097_599_999, "2021:06:30 23:59:59", "999"),
        (1_625_097_600_000, "2021:07:01 00:00:00", "000"),
        (1_625_097_600_042, "2021:07:01 00:00:00", "042"),
    ] {
        let meta = ImageMeta {
            captured_at: Some(ms),
            ..ImageMeta::default()
        };
        let output = tag(&input, &meta);
        let t = exiftool(&output);
        assert_eq!(text(&t, "ExifIFD:DateTimeOriginal"), date);
        assert_eq!(text(&t, "IFD0:ModifyDate"), date);
        assert_eq!(text(&t, "ExifIFD:SubSecTimeOriginal"), subsec);
        assert_eq!(text(&t, "ExifIFD:OffsetTimeOriginal"), "+00:00");
        // ExifTool's composite joins the three into one unambiguous instant.
        assert_eq!(
            text(&t, "Composite:SubSecDateTimeOriginal"),
            format!("{date}.{subsec}+00:00")
        );
        let k = kamadak(&output);
        assert_eq!(ascii(&k, Tag::DateTimeDigitized).as_deref(), Some(date));
        assert_eq!(ascii(&k, Tag::SubSecTimeDigitized).as_deref(), Some(subsec));
        assert_eq!(
            ascii(&k, Tag::OffsetTimeDigitized).as_deref(),
            Some("+00:00")
        );
    }
}

#[test]
fn missing_captured_at_writes_no_date_and_keeps_the_files_own() {
    let plain = tag(&fx::jfif(16, 16), &ImageMeta::default());
    let t = exiftool(&plain);
    assert!(!t.contains_key("ExifIFD:DateTimeOriginal"));
    assert!(!t.contains_key("IFD0:ModifyDate"));
    assert!(!t.contains_key("ExifIFD:OffsetTime"));

    let input = fx::insert_segment(
        &fx::jfif(16, 16),
        1,
        fx::APP1,
        &fx::exif_app1(&fx::sane_exif_tiff(false)),
    );
    let t = exiftool(&tag(&input, &ImageMeta::default()));
    assert_eq!(text(&t, "ExifIFD:DateTimeOriginal"), "2001:01:01 01:01:01");
    assert_eq!(text(&t, "ExifIFD:OffsetTimeOriginal"), "+09:00");
}

#[test]
fn non_ascii_make_and_model_read_back_unchanged() {
    let input = fx::jfif(16, 16);
    let make = "Ästhetik Kamera";
    let model = "東京 Ω-360 ✓";
    let meta = ImageMeta {
        make: Some(format!("  {make} ")),
        model: Some(model.into()),
        ..ImageMeta::default()
    };
    let output = tag(&input, &meta);
    let t = exiftool(&output);
    assert_eq!(text(&t, "IFD0:Make"), make);
    assert_eq!(text(&t, "IFD0:Model"), model);
    let k = kamadak(&output);
    assert_eq!(ascii(&k, Tag::Make).as_deref(), Some(make));
    assert_eq!(ascii(&k, Tag::Model).as_deref(), Some(model));
}

#[test]
fn empty_make_and_model_are_not_written() {
    let meta = ImageMeta {
        make: Some(String::new()),
        model: Some("   ".into()),
        ..ImageMeta::default()
    };
    let output = tag(&fx::jfif(16, 16), &meta);
    let t = exiftool(&output);
    assert!(!t.contains_key("IFD0:Make"));
    assert!(!t.contains_key("IFD0:Model"));
    let k = kamadak(&output);
    assert!(k.get_field(Tag::Make, In::PRIMARY).is_none());
    assert!(k.get_field(Tag::Model, In::PRIMARY).is_none());
}

#[test]
fn sane_existing_exif_is_merged_without_orientation() {
    for little_endian in [false, true] {
        let input = fx::insert_segment(
            &fx::jfif(48, 32),
            1,
            fx::APP1,
            &fx::exif_app1(&fx::sane_exif_tiff(little_endian)),
        );
        // The fixture itself says "rotate": make sure the test is meaningful.
        assert_eq!(num(&exiftool_lenient(&input), "IFD0:Orientation"), 6.0);
        let output = tag(&input, &full_meta());
        let t = exiftool(&output);
        assert!(!t.contains_key("IFD0:Orientation"), "{t:#?}");
        assert!(!t.contains_key("IFD1:Orientation"), "{t:#?}");
        assert_eq!(
            text(&t, "IFD0:ImageDescription"),
            "{\"applied_s236562\":true}"
        );
        assert_eq!(text(&t, "IFD0:Artist"), "Jane Doe");
        assert_eq!(text(&t, "IFD0:Software"), "CamFW 1.0");
        assert_eq!(num(&t, "ExifIFD:FNumber"), 2.8);
        assert_eq!(num(&t, "GPS:GPSSpeed"), 5.0);
        // Overwritten by ours.
        assert_eq!(text(&t, "IFD0:Make"), "GoPro");
        assert_eq!(text(&t, "ExifIFD:DateTimeOriginal"), "2021:06:30 23:59:59");
        assert_eq!(text(&t, "ExifIFD:OffsetTimeOriginal"), "+00:00");
        assert_eq!(text(&t, "GPS:GPSLatitudeRef"), "S");
        assert_eq!(num(&t, "ExifIFD:ExifImageWidth"), 48.0);
        assert_eq!(num(&t, "ExifIFD:ExifImageHeight"), 32.0);
        // Offsets inside a moved MakerNote would be wrong: it goes.
        assert!(!t.contains_key("ExifIFD:MakerNoteUnknownText"));
        assert!(!t.keys().any(|k| k.contains("MakerNote")), "{t:#?}");
        // The thumbnail survives, byte for byte.
        assert_eq!(
            num(&t, "IFD1:ThumbnailLength"),
            fx::jfif(16, 16).len() as f64
        );
        let k = kamadak(&output);
        assert!(k.get_field(Tag::Orientation, In::PRIMARY).is_none());
        assert!(k.get_field(Tag::Orientation, In::THUMBNAIL).is_none());
        assert_eq!(k.little_endian(), little_endian, "byte order kept");
        assert_eq!(ascii(&k, Tag::Artist).as_deref(), Some("Jane Doe"));
    }
}

#[test]
fn old_make_is_kept_when_the_api_has_none() {
    let input = fx::insert_segment(
        &fx::jfif(16, 16),
        1,
        fx::APP1,
        &fx::exif_app1(&fx::sane_exif_tiff(false)),
    );
    let meta = ImageMeta {
        make: Some(" ".into()),
        ..ImageMeta::default()
    };
    assert_eq!(text(&exiftool(&tag(&input, &meta)), "IFD0:Make"), "OldMake");
}

#[test]
fn malformed_existing_exif_is_replaced() {
    let base = fx::jfif(32, 32);
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage after Exif\\0\\0", fx::exif_app1(&garbage)),
        ("truncated TIFF header", fx::exif_app1(b"MM\0")),
        ("bad IFD offset", fx::exif_app1(b"MM\0\x2a\xff\xff\xff\x00")),
        ("broken prefix", b"Exif\0\xffMM\0\x2a\0\0\0\x08".to_vec()),
    ];
    for (label, app1) in cases {
        let input = fx::insert_segment(&base, 1, fx::APP1, &app1);
        let output = tag_jpeg(&input, &full_meta()).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_valid_output(&input, &output);
        let t = exiftool(&output);
        assert_eq!(text(&t, "IFD0:Make"), "GoPro", "{label}");
        assert_eq!(text(&t, "GPS:GPSLatitudeRef"), "S", "{label}");
        kamadak(&output);
    }
}

#[test]
fn two_existing_exif_blocks_become_one() {
    let base = fx::jfif(32, 32);
    let valid = fx::exif_app1(&fx::sane_exif_tiff(false));
    let other = fx::exif_app1(&fx::tiny_exif_tiff(Tag::Artist, "Second Block"));
    let garbage = fx::exif_app1(b"II*\0garbage");

    // Two valid blocks: the first one is merged, the second dropped.
    let input = fx::insert_segment(
        &fx::insert_segment(&base, 1, fx::APP1, &valid),
        2,
        fx::APP1,
        &other,
    );
    assert_eq!(fx::exif_segments(&input).len(), 2);
    let output = tag(&input, &full_meta());
    let t = exiftool(&output);
    assert_eq!(text(&t, "IFD0:Artist"), "Jane Doe");

    // A broken block first: the valid one after it is merged.
    let input = fx::insert_segment(
        &fx::insert_segment(&base, 1, fx::APP1, &garbage),
        2,
        fx::APP1,
        &other,
    );
    let output = tag(&input, &full_meta());
    assert_eq!(text(&exiftool(&output), "IFD0:Artist"), "Second Block");
}

#[test]
fn exif_goes_right_after_app0_or_first_without_it() {
    let with_app0 = fx::jfif(16, 16);
    let output = tag(&with_app0, &full_meta());
    let (segments, _) = fx::segments(&output);
    assert_eq!(segments[0].0, fx::APP0);
    assert!(segments[0].1.starts_with(b"JFIF\0"));
    assert_eq!(segments[1].0, fx::APP1);
    assert!(segments[1].1.starts_with(b"Exif\0\0"));

    let no_app0 = fx::without_app0(&with_app0);
    assert!(fx::segments(&no_app0).0.iter().all(|(m, _)| *m != fx::APP0));
    let output = tag(&no_app0, &full_meta());
    let (segments, _) = fx::segments(&output);
    assert_eq!(segments[0].0, fx::APP1);
    assert!(segments[0].1.starts_with(b"Exif\0\0"));
    assert_eq!(text(&exiftool(&output), "IFD0:Make"), "GoPro");

    // An old EXIF block placed after the tables still ends up first.
    let late = fx::insert_segment(
        &no_app0,
        3,
        fx::APP1,
        &fx::exif_app1(&fx::sane_exif_tiff(false)),
    );
    let output = tag(&late, &full_meta());
    assert!(fx::segments(&output).0[0].1.starts_with(b"Exif\0\0"));
}

#[test]
fn progressive_jpeg_is_tagged_and_decodes_the_same() {
    let (input, levels) = fx::progressive_grey(32, 16);
    // The fixture is what it claims: progressive, and it decodes as drawn.
    assert!(fx::segments(&input).0.iter().any(|(m, _)| *m == 0xC2));
    let decoded = fx::decode(&input).to_luma8();
    for (block, level) in levels.iter().enumerate() {
        let (bx, by) = ((block % 4) as u32 * 8, (block / 4) as u32 * 8);
        assert_eq!(
            decoded.get_pixel(bx + 3, by + 3).0[0],
            *level,
            "block {block}"
        );
    }
    let output = tag(&input, &full_meta());
    let t = exiftool(&output);
    assert_eq!(num(&t, "ExifIFD:ExifImageWidth"), 32.0);
    assert_eq!(num(&t, "ExifIFD:ExifImageHeight"), 16.0);
    assert_eq!(text(&t, "IFD0:Make"), "GoPro");
}

#[test]
fn not_a_jpeg_is_an_error() {
    let html = b"<!DOCTYPE html><html><body>Rate limited</body></html>".to_vec();
    let cases: [(&str, Vec<u8>); 5] = [
        ("html", html),
        ("zero bytes", Vec::new()),
        ("png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()),
        ("soi only", vec![0xFF, 0xD8]),
        ("one byte", vec![0xFF]),
    ];
    for (label, body) in cases {
        match tag_jpeg(&body, &full_meta()) {
            Err(ExifError::NotJpeg(_)) => {}
            other => panic!("{label}: expected NotJpeg, got {other:?}"),
        }
    }
}

#[test]
fn broken_jpegs_are_errors() {
    let good = fx::jfif(64, 64);
    let (_, scan_at) = fx::segments(&good);
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated in the scan", good[..good.len() * 2 / 3].to_vec()),
        ("truncated in the headers", good[..scan_at - 5].to_vec()),
        ("headers without image data", vec![0xFF, 0xD8, 0xFF, 0xD9]),
        (
            "scan without frame header",
            fx::rebuild(
                &fx::segments(&good)
                    .0
                    .into_iter()
                    .filter(|(m, _)| *m != 0xC0)
                    .collect::<Vec<_>>(),
                &good,
            ),
        ),
    ];
    for (label, body) in cases {
        match tag_jpeg(&body, &full_meta()) {
            Err(ExifError::Malformed(_)) => {}
            other => panic!("{label}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn panorama_gets_one_gpano_xmp_block() {
    let input = fx::jfif(128, 64);
    let old_xmp = [fx::XMP_PREFIX, b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"].concat();
    let input = fx::insert_segment(&input, 1, fx::APP1, &old_xmp);
    let input = fx::insert_segment(&input, 2, fx::APP1, &old_xmp);
    let meta = ImageMeta {
        is_pano: Some(true),
        computed_compass_angle: Some(0.0),
        width: Some(8000),
        height: Some(4000),
        ..full_meta()
    };
    let output = tag(&input, &meta);
    assert_eq!(fx::xmp_segments(&output).len(), 1);
    let (segments, _) = fx::segments(&output);
    assert!(segments[1].1.starts_with(b"Exif\0\0"));
    assert!(
        segments[2].1.starts_with(fx::XMP_PREFIX),
        "XMP right after EXIF"
    );

    let t = exiftool(&output);
    assert_eq!(text(&t, "XMP-GPano:ProjectionType"), "equirectangular");
    assert_eq!(
        t.get("XMP-GPano:UsePanoramaViewer"),
        Some(&Json::Bool(true))
    );
    // Sizes of the downloaded file, not of the original upload.
    assert_eq!(num(&t, "XMP-GPano:FullPanoWidthPixels"), 128.0);
    assert_eq!(num(&t, "XMP-GPano:FullPanoHeightPixels"), 64.0);
    assert_eq!(num(&t, "XMP-GPano:CroppedAreaImageWidthPixels"), 128.0);
    assert_eq!(num(&t, "XMP-GPano:CroppedAreaImageHeightPixels"), 64.0);
    assert_eq!(num(&t, "XMP-GPano:CroppedAreaLeftPixels"), 0.0);
    assert_eq!(num(&t, "XMP-GPano:CroppedAreaTopPixels"), 0.0);
    assert_eq!(num(&t, "XMP-GPano:PoseHeadingDegrees"), 0.0);
    assert_eq!(num(&t, "GPS:GPSImgDirection"), 0.0);

    let no_heading = ImageMeta {
        computed_compass_angle: None,
        compass_angle: None,
        ..meta
    };
    let t = exiftool(&tag(&input, &no_heading));
    assert!(!t.contains_key("XMP-GPano:PoseHeadingDegrees"));
    assert_eq!(text(&t, "XMP-GPano:ProjectionType"), "equirectangular");
}

#[test]
fn non_panorama_keeps_its_xmp() {
    let old_xmp = [fx::XMP_PREFIX, b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"].concat();
    let input = fx::insert_segment(&fx::jfif(16, 16), 1, fx::APP1, &old_xmp);
    let output = tag(
        &input,
        &ImageMeta {
            is_pano: Some(false),
            ..full_meta()
        },
    );
    assert_eq!(fx::xmp_segments(&output), vec![old_xmp]);
}

#[test]
fn tagging_twice_is_stable() {
    let input = fx::insert_segment(
        &fx::jfif(32, 32),
        1,
        fx::APP1,
        &fx::exif_app1(&fx::sane_exif_tiff(false)),
    );
    let meta = ImageMeta {
        is_pano: Some(true),
        ..full_meta()
    };
    let once = tag(&input, &meta);
    let twice = tag(&once, &meta);
    assert_eq!(once, twice);
}
