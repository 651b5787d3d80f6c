//! Checks of an archive on disk against the fake's truth: one correct file
//! per image (its body, exactly one EXIF block, position, UTC time, mtime),
//! nothing else, no `.part`, and a sorted `metadata.jsonl`.
//!
//! The layout is re-implemented here from the spec, independently of the
//! daemon's `archive` module, so the check is an oracle rather than the code
//! under test calling itself:
//! `<archive>/mapillary-<user>-<quality>/<YYYY-MM-DD>/<sequence>/<id>.jpg`,
//! the date being the UTC day of `captured_at` (`unknown-date` without one),
//! the sequence folder absent when the image has none.

use crate::fake::{FakeImage, Quality};
use chrono::DateTime;
use std::path::{Path, PathBuf};

/// The folder of one user's images at one quality.
pub fn collection_dir(archive: &Path, username: &str, quality: Quality) -> PathBuf {
    archive.join(format!("mapillary-{username}-{}", quality.as_str()))
}

/// Where an image's file belongs inside its collection. Panics on an id or
/// a sequence that is not a plain path component: tests never need one, and
/// a fixture must not write outside the archive.
pub fn image_path(collection: &Path, image: &FakeImage) -> PathBuf {
    assert!(
        !image.id.is_empty() && image.id.bytes().all(|b| b.is_ascii_digit()),
        "not an image id for a path: {:?}",
        image.id
    );
    let day = image
        .captured_at
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "unknown-date".to_string());
    let mut dir = collection.join(day);
    if let Some(sequence) = image.sequence.as_deref().filter(|s| !s.is_empty()) {
        assert!(
            sequence
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "not a sequence id for a path: {sequence:?}"
        );
        dir.push(sequence);
    }
    dir.join(format!("{}.jpg", image.id))
}

/// An image's path inside its collection with extension `ext`,
/// `/`-separated: its tar member name once its date is packed.
pub fn member_name(image: &FakeImage, ext: &str) -> String {
    let path = image_path(Path::new(""), image).with_extension(ext);
    path.to_string_lossy().into_owned()
}

/// The `.tar` files directly in `folder`, by name, sorted.
pub fn tar_names(folder: &Path) -> Vec<String> {
    let mut tars: Vec<String> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tar"))
        .collect();
    tars.sort();
    tars
}

/// Every `*.part` file under `root`.
pub fn part_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".part") {
                found.push(path);
            }
        }
    }
    found
}

/// Counts JPEG APP1 segments that start with `Exif\0\0`, walking the
/// markers up to the first scan.
pub fn exif_segment_count(jpeg: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if marker == 0xE1 && jpeg[i + 4..].starts_with(b"Exif\0\0") {
            count += 1;
        }
        i += 2 + len;
    }
    count
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads an EXIF field with kamadak-exif, as display text.
fn exif_text(exif: &exif::Exif, tag: exif::Tag) -> Option<String> {
    exif.get_field(tag, exif::In::PRIMARY)
        .map(|f| f.display_value().to_string())
}

fn dms_to_degrees(exif: &exif::Exif, tag: exif::Tag, reference: exif::Tag) -> Option<f64> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    let exif::Value::Rational(parts) = &field.value else {
        return None;
    };
    let deg = parts[0].to_f64() + parts[1].to_f64() / 60.0 + parts[2].to_f64() / 3600.0;
    let r = exif_text(exif, reference)?;
    Some(if r.contains('S') || r.contains('W') {
        -deg
    } else {
        deg
    })
}

/// Checks one archived image against the fake's truth: the right body (its
/// marker), exactly one EXIF block, position and UTC time, and the mtime.
pub fn check_image(path: &Path, meta: &FakeImage, marker: &[u8]) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "{} is not a JPEG",
        path.display()
    );
    assert!(
        find(&bytes, marker),
        "{} holds another image's body",
        path.display()
    );
    assert_eq!(
        exif_segment_count(&bytes),
        1,
        "{}: EXIF blocks",
        path.display()
    );
    let exif = exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(&bytes))
        .unwrap_or_else(|e| panic!("{}: unreadable EXIF: {e}", path.display()));
    assert!(
        exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
            .is_none()
    );
    if let Some((lat, lon)) = meta.position() {
        let got_lat =
            dms_to_degrees(&exif, exif::Tag::GPSLatitude, exif::Tag::GPSLatitudeRef).expect("lat");
        let got_lon = dms_to_degrees(&exif, exif::Tag::GPSLongitude, exif::Tag::GPSLongitudeRef)
            .expect("lon");
        assert!(
            (got_lat - lat).abs() <= 1e-5,
            "{}: lat {got_lat} vs {lat}",
            path.display()
        );
        assert!(
            (got_lon - lon).abs() <= 1e-5,
            "{}: lon {got_lon} vs {lon}",
            path.display()
        );
    }
    if let Some(ms) = meta.captured_at {
        let want = chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let got = exif_text(&exif, exif::Tag::DateTimeOriginal).expect("DateTimeOriginal");
        assert_eq!(got, want, "{}", path.display());
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let mtime_ms = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert_eq!(mtime_ms, ms, "{}: mtime", path.display());
    }
}

/// Checks a whole collection: one correct file per expected image, nothing
/// else, no `.part`, and a `metadata.jsonl` sorted by `captured_at`.
pub fn check_collection(
    archive_dir: &Path,
    username: &str,
    quality: Quality,
    expected: &[FakeImage],
    marker: impl Fn(&str) -> Vec<u8>,
) {
    let collection = collection_dir(archive_dir, username, quality);
    assert!(
        part_files(archive_dir).is_empty(),
        "no .part files may remain"
    );
    let mut jpgs = 0;
    let mut stack = vec![collection.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "jpg") {
                jpgs += 1;
            }
        }
    }
    assert_eq!(jpgs, expected.len(), "files in {}", collection.display());
    for meta in expected {
        let path = image_path(&collection, meta);
        check_image(&path, meta, &marker(&meta.id));
    }
    let lines = std::fs::read_to_string(collection.join("metadata.jsonl")).expect("metadata.jsonl");
    let rows: Vec<FakeImage> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("metadata line is JSON"))
        .collect();
    assert_eq!(rows.len(), expected.len(), "metadata.jsonl lines");
    assert!(!lines.contains("_url"), "metadata.jsonl must not hold URLs");
    let order: Vec<i64> = rows
        .iter()
        .map(|m| m.captured_at.unwrap_or(i64::MAX))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "metadata.jsonl sorted by captured_at"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_spec_one() {
        let collection = collection_dir(Path::new("/a"), "kim", Quality::Q2048);
        assert_eq!(collection, Path::new("/a/mapillary-kim-2048"));
        let mut image = FakeImage {
            id: "123".into(),
            // 2023-06-01T23:30:00Z: the UTC day, whatever the local zone.
            captured_at: Some(1_685_662_200_000),
            sequence: Some("Ab_c-9".into()),
            ..FakeImage::default()
        };
        assert_eq!(
            image_path(&collection, &image),
            Path::new("/a/mapillary-kim-2048/2023-06-01/Ab_c-9/123.jpg")
        );
        image.captured_at = None;
        image.sequence = Some(String::new());
        assert_eq!(
            image_path(&collection, &image),
            Path::new("/a/mapillary-kim-2048/unknown-date/123.jpg")
        );
    }

    #[test]
    #[should_panic(expected = "not an image id")]
    fn a_hostile_id_never_becomes_a_path() {
        let image = FakeImage {
            id: "12/../../x".into(),
            ..FakeImage::default()
        };
        image_path(Path::new("/a"), &image);
    }
}
