//! Checking one archived copy: presence, that it is a readable regular
//! file, size, SHA-256, then a full decode. Each way a copy can fail is
//! its own [`ProblemKind`], because each calls for a different repair (or
//! none): only a copy proven damaged is ever moved.

use super::ProblemKind;
use crate::archive::checksum::sha256_hex;
use crate::archive::{FileKind, member_name};
use crate::archive::{Found, in_parallel};
use crate::package::tarball;
use crate::store::StoredCopy;
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// What checking one row's copy found.
pub enum Check {
    Ok,
    /// Fine, and this is its first checksum.
    Hashed {
        sha256: String,
        bytes: u64,
    },
    Problem(ProblemKind, String),
}

fn problem(kind: ProblemKind, detail: impl Into<String>) -> Check {
    Check::Problem(kind, detail.into())
}

/// A loose file's check from what reading it found ([`Archive::check_each`](crate::archive::Archive::check_each)):
/// a missing or unreadable file, or something that is not a file, is its
/// own problem; bytes are checked by [`check_bytes`].
pub fn check_found(row: &StoredCopy, found: Found<'_>) -> Check {
    match found {
        Found::Bytes(data) => check_bytes(data, &row.path, row),
        Found::Missing(detail) => problem(ProblemKind::Missing, detail),
        Found::NotAFile(detail) => problem(ProblemKind::NotAFile, detail),
        Found::Unreadable(error) => {
            problem(ProblemKind::Unreadable, format!("cannot read it: {error}"))
        }
    }
}

/// Size, then SHA-256, then a full decode. A copy whose SHA-256 matches
/// its record is the bytes we archived: if it does not decode, that is
/// reported (`undecodable`), never called corrupt.
pub fn check_bytes(data: &[u8], name: &str, row: &StoredCopy) -> Check {
    if let Some(expected) = row.bytes
        && expected != data.len() as u64
    {
        return problem(
            ProblemKind::Corrupt,
            format!("{} bytes, expected {expected}", data.len()),
        );
    }
    let sha256 = sha256_hex(data);
    if let Some(expected) = &row.sha256
        && *expected != sha256
    {
        return problem(
            ProblemKind::Corrupt,
            format!("SHA-256 {sha256}, expected {expected}"),
        );
    }
    let undecodable = match &row.sha256 {
        Some(_) => ProblemKind::Undecodable,
        None => ProblemKind::Corrupt,
    };
    let format = match FileKind::of(name) {
        Some(FileKind::Jpeg) => image::ImageFormat::Jpeg,
        Some(FileKind::Webp) => image::ImageFormat::WebP,
        None => return problem(undecodable, "neither a .jpg nor a .webp"),
    };
    if let Err(e) = decode_check(data, format) {
        let mut detail = format!("does not decode as {format:?}: {e}");
        if undecodable == ProblemKind::Undecodable {
            detail.push_str(" (its SHA-256 matches its record: left as it is)");
        }
        return problem(undecodable, detail);
    }
    match &row.sha256 {
        Some(_) => Check::Ok,
        None => Check::Hashed {
            sha256,
            bytes: data.len() as u64,
        },
    }
}

/// Pixels a full decode may allocate (RGBA bytes); above it only the header
/// is decoded.
const FULL_DECODE_MAX_BYTES: u64 = 512 << 20;

/// Decodes `data` in full, or only its header when the pixels would need
/// more than [`FULL_DECODE_MAX_BYTES`]: the image crate's default allocation
/// limit would otherwise call a large panorama (over ~18,900×9,450) corrupt.
/// Its size and SHA-256 still stand for its bytes.
pub fn decode_check(data: &[u8], format: image::ImageFormat) -> image::ImageResult<()> {
    let header = image::ImageReader::with_format(std::io::Cursor::new(data), format);
    let (width, height) = header.into_dimensions()?;
    if u64::from(width) * u64::from(height) * 4 > FULL_DECODE_MAX_BYTES {
        return Ok(());
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(data), format);
    reader.no_limits();
    reader.decode().map(drop)
}

/// Members read before checking them together: bounds memory (a batch is
/// at most this many images) while every core decodes.
const TAR_BATCH: usize = 32;

/// One tar to check: its local copy, the path to show, and its folder.
pub struct TarToCheck<'a> {
    pub local: &'a Path,
    pub shown_as: &'a Path,
    pub folder: &'a Path,
}

/// Reads one tar front to back, checking each member a row expects; rows
/// whose member never came (a truncated or missing tar) are missing, and
/// all of them are unreadable when the tar cannot be read at all.
pub fn check_tar(
    tar: &TarToCheck<'_>,
    rows: Vec<StoredCopy>,
    threads: usize,
) -> Vec<(StoredCopy, Check, String)> {
    let tar_text = tar.shown_as.display().to_string();
    let mut expected: HashMap<String, Vec<StoredCopy>> = HashMap::new();
    let mut results = Vec::with_capacity(rows.len());
    for row in rows {
        match member_name(tar.folder, Path::new(&row.path)) {
            Some(member) => expected.entry(member).or_default().push(row),
            None => {
                let location = row.path.clone();
                let detail = format!("its path is outside {}", tar.folder.display());
                results.push((row, problem(ProblemKind::Outside, detail), location));
            }
        }
    }
    let mut batch: Vec<(String, Vec<u8>, Vec<StoredCopy>)> = Vec::new();
    let flush = |batch: &mut Vec<(String, Vec<u8>, Vec<StoredCopy>)>,
                 results: &mut Vec<(StoredCopy, Check, String)>| {
        let work: Vec<(String, Vec<u8>, StoredCopy)> = batch
            .drain(..)
            .flat_map(|(name, data, rows)| {
                rows.into_iter()
                    .map(move |row| (name.clone(), data.clone(), row))
            })
            .collect();
        let checks = in_parallel(&work, threads, |(name, data, row)| {
            check_bytes(data, name, row)
        });
        for ((name, _, row), check) in work.into_iter().zip(checks) {
            results.push((row, check, format!("{tar_text}:{name}")));
        }
    };
    let read = if tar.local.is_dir() {
        Err(io::Error::other("a directory is where the tar should be"))
    } else {
        tarball::read_members(tar.local, |member| {
            if let Some(rows) = expected.remove(&member.name) {
                batch.push((member.name, member.data, rows));
                if batch.len() >= TAR_BATCH {
                    flush(&mut batch, &mut results);
                }
            }
        })
    };
    flush(&mut batch, &mut results);
    results.extend(never_read(read, tar, expected));
    results
}

/// The rows whose member reading the tar never reached, and why: not in
/// it, the tar missing, unreadable, not a file, or cut short.
fn never_read(
    read: io::Result<()>,
    tar: &TarToCheck<'_>,
    expected: HashMap<String, Vec<StoredCopy>>,
) -> Vec<(StoredCopy, Check, String)> {
    let tar_text = tar.shown_as.display();
    let mut results = Vec::new();
    let (kind, why) = match read {
        Ok(()) => (ProblemKind::Missing, "not in the tar".to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            (ProblemKind::Missing, "the tar is missing".to_string())
        }
        Err(e) if tar.local.is_dir() => (ProblemKind::NotAFile, e.to_string()),
        Err(e) if e.raw_os_error().is_some() => {
            (ProblemKind::Unreadable, format!("cannot read the tar: {e}"))
        }
        Err(e) => (
            ProblemKind::Missing,
            format!("the tar ends early or is damaged before it: {e}"),
        ),
    };
    let mut left: Vec<(String, Vec<StoredCopy>)> = expected.into_iter().collect();
    left.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, rows) in left {
        for row in rows {
            let check = problem(kind, why.clone());
            results.push((row, check, format!("{tar_text}:{name}")));
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use mld_testkit::jpeg::claiming as jpeg_claiming;

    #[test]
    fn a_panorama_too_large_to_decode_in_memory_is_not_called_corrupt() {
        let jpeg = image::ImageFormat::Jpeg;
        assert!(decode_check(&jpeg_claiming(16, 16), jpeg).is_ok());
        // 30,000 × 20,000 gray needs 600 MB of pixels: the image crate's default
        // limit (512 MiB) refuses it, which verify once reported as damage.
        let huge = jpeg_claiming(30_000, 20_000);
        assert!(image::load_from_memory_with_format(&huge, jpeg).is_err());
        assert!(decode_check(&huge, jpeg).is_ok());
        // A header that does not parse is still damage.
        assert!(decode_check(&huge[..huge.len().min(20)], jpeg).is_err());
        assert!(decode_check(b"not an image", jpeg).is_err());
    }
}
