//! Where each image goes in the archive, the same for a disk and a bucket:
//! `<archive>/mapillary-<username>-<quality>[-webp]/<YYYY-MM-DD>/<sequence_id>/<image_id>.<jpg|webp>`
//! (the Python tool's layout, so archives are interchangeable), and what an
//! archived file's row records.

use super::ArchiveError;
use crate::model::{ImageMeta, validate_image_id, validate_sequence_id, validate_username};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// The folder of one collection (`mapillary-<user>-<quality>[-webp]`, as
/// [`crate::model::collection_name`] makes it). The name is checked again
/// before it becomes a path: one plain component, nothing else.
pub fn collection_path(archive: &Path, collection: &str) -> Result<PathBuf, ArchiveError> {
    validate_username(collection)
        .map_err(|e| ArchiveError::InvalidId(format!("collection {collection:?}: {e}")))?;
    if !collection.starts_with("mapillary-") {
        return Err(ArchiveError::InvalidId(format!(
            "collection {collection:?} is not a mapillary-<user>-<quality> folder"
        )));
    }
    Ok(archive.join(collection))
}

/// The UTC date folder of a capture time, or `unknown-date`.
pub fn date_folder(captured_at_ms: Option<i64>) -> String {
    captured_at_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "unknown-date".to_string())
}

/// What an archived image file is: the extension it gets and the decoder
/// `verify` checks it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A tagged JPEG: `<id>.jpg`.
    Jpeg,
    /// A tagged lossy WebP: `<id>.webp`.
    Webp,
}

impl FileKind {
    /// The file name's extension (no dot).
    pub fn extension(self) -> &'static str {
        match self {
            FileKind::Jpeg => "jpg",
            FileKind::Webp => "webp",
        }
    }

    /// The kind a stored path or tar member names, by its extension.
    pub fn of(path: &str) -> Option<FileKind> {
        match Path::new(path).extension()?.to_str()? {
            "jpg" => Some(FileKind::Jpeg),
            "webp" => Some(FileKind::Webp),
            _ => None,
        }
    }
}

/// An image file as archived: where, how big, its SHA-256, and whether it
/// is the JPEG a WebP job had to keep. `packing_id` is set when the image
/// was adopted from a copy already packed in a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    /// The loose file, or (with `packing_id`) its tar member path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// `None` only for a copy archived before checksums existed.
    pub sha256: Option<String>,
    /// A JPEG a WebP job kept because the image is too large for WebP.
    pub kept_jpeg: bool,
    /// The packing whose tar holds it, for a copy adopted from a tar.
    pub packing_id: Option<i64>,
}

impl ArchivedFile {
    /// A freshly written loose file.
    pub fn loose(path: impl Into<PathBuf>, bytes: u64, sha256: Option<String>) -> ArchivedFile {
        ArchivedFile {
            path: path.into(),
            bytes,
            sha256,
            kept_jpeg: false,
            packing_id: None,
        }
    }
}

/// Where an image's file goes. Validates every id before it touches a path.
pub fn image_path(
    collection: &Path,
    meta: &ImageMeta,
    kind: FileKind,
) -> Result<PathBuf, ArchiveError> {
    validate_image_id(&meta.id).map_err(ArchiveError::InvalidId)?;
    let mut dir = collection.join(date_folder(meta.captured_at));
    if let Some(sequence) = meta.sequence.as_deref().filter(|s| !s.is_empty()) {
        validate_sequence_id(sequence).map_err(ArchiveError::InvalidId)?;
        dir.push(sequence);
    }
    Ok(dir.join(format!("{}.{}", meta.id, kind.extension())))
}

/// `file`'s path inside its collection folder, `/`-separated: its tar
/// member name (`<date>/<sequence>/<id>.<ext>`). `None` if it lies outside.
pub fn member_name(collection: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(collection).ok()?;
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect();
    let parts = parts?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;

    fn meta(id: &str, captured_at: Option<i64>, sequence: Option<&str>) -> ImageMeta {
        ImageMeta {
            id: id.into(),
            captured_at,
            sequence: sequence.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn layout_matches_the_python_tool() {
        let name = crate::model::collection_name(Some("bob"), Quality::Q2048, Default::default());
        let c = collection_path(Path::new("/a"), &name).unwrap();
        assert_eq!(c, Path::new("/a/mapillary-bob-2048"));
        // 2021-03-04T23:59:59.999Z, UTC date, not local.
        let p = image_path(
            &c,
            &meta("123", Some(1_614_902_399_999), Some("seqA")),
            FileKind::Jpeg,
        )
        .unwrap();
        assert_eq!(
            p,
            Path::new("/a/mapillary-bob-2048/2021-03-04/seqA/123.jpg")
        );
        assert_eq!(
            member_name(&c, &p).as_deref(),
            Some("2021-03-04/seqA/123.jpg")
        );
        let p = image_path(&c, &meta("124", None, None), FileKind::Webp).unwrap();
        assert_eq!(p, Path::new("/a/mapillary-bob-2048/unknown-date/124.webp"));
        assert_eq!(FileKind::of(&p.to_string_lossy()), Some(FileKind::Webp));
        assert_eq!(member_name(Path::new("/b"), &p), None);
    }

    #[test]
    fn hostile_ids_never_become_paths() {
        let c = Path::new("/a/c");
        assert!(matches!(
            image_path(c, &meta("../1", None, None), FileKind::Jpeg),
            Err(ArchiveError::InvalidId(_))
        ));
        assert!(matches!(
            image_path(c, &meta("1", None, Some("../../etc")), FileKind::Jpeg),
            Err(ArchiveError::InvalidId(_))
        ));
        assert!(collection_path(c, "../x").is_err());
        assert!(collection_path(c, "mapillary-a/b").is_err());
        assert!(collection_path(c, "elsewhere").is_err());
        assert_eq!(
            crate::model::collection_name(Some("../x"), Quality::Original, Default::default()),
            "mapillary-unknown-original",
            "an unsafe creator name gives the unknown collection"
        );
    }
}
