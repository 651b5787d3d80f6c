//! Image rows store full paths. The database lives in the data dir, so the
//! archive it describes is always `<data dir>/archive` as opened now: when
//! that differs from the root the rows begin with (the data dir was given
//! under another spelling, was relative before, or was moved), the paths are
//! rebased once, in one transaction, before anything reads them.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/rebase.rs` and
//! `postgres/rebase.rs`, behind [`super::interface`].

use super::{StoreError, StoreResult};
use std::path::Path;

/// Distinct old roots one open rebases at most (a database written under
/// more spellings than this keeps the rest, which `verify` then reports).
pub(super) const MAX_OLD_ROOTS: usize = 16;

/// How a bucket archive's root begins (see [`crate::archive::bucket`]).
const BUCKET_SCHEME: &str = "s3://";

/// The root every stored path should begin with: `archive_dir` as UTF-8,
/// without a trailing `/`.
pub(super) fn archive_root(archive_dir: &Path) -> StoreResult<String> {
    Ok(archive_dir
        .to_str()
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "the archive directory {} is not UTF-8",
                archive_dir.display()
            ))
        })?
        .trim_end_matches('/')
        .to_string())
}

/// Whether an archive root is a bucket's.
pub(super) fn in_bucket(root: &str) -> bool {
    root.starts_with(BUCKET_SCHEME)
}

/// The error for a database with archived files (`path`, one of them)
/// opened on an archive across the disk/bucket line from its own.
pub(super) fn switch_refused(recorded: Option<String>, path: &str, root: &str) -> StoreError {
    let was = recorded.unwrap_or_else(|| {
        old_root_of(path).map_or_else(|| "on the local disk".into(), str::to_string)
    });
    StoreError::Invalid(format!(
        "this database's archive is {was}, not {root}: an archive cannot switch between \
         a local disk and a bucket, or between buckets (copy it and use a new data dir)"
    ))
}

/// The archive directory a stored path was written under: everything before
/// its last `archive/mapillary-…` (the collection folders' parent).
pub(super) fn old_root_of(path: &str) -> Option<&str> {
    const MARK: &str = "archive/mapillary-";
    let at = path.rfind(MARK)?;
    if at > 0 && !path[..at].ends_with('/') {
        return None;
    }
    Some(&path[..at + "archive".len()])
}

#[cfg(test)]
mod tests {
    use super::old_root_of;

    #[test]
    fn old_roots_are_the_collections_parent() {
        assert_eq!(
            old_root_of("./mapillary-data/archive/mapillary-alice-2048/2024-01-02/1.jpg"),
            Some("./mapillary-data/archive")
        );
        assert_eq!(
            old_root_of("archive/mapillary-a-256/unknown-date/1.jpg"),
            Some("archive")
        );
        assert_eq!(
            old_root_of("/data/archive/mapillary-old/archive/mapillary-b-1024/2024-01-02/1.jpg"),
            Some("/data/archive/mapillary-old/archive")
        );
        assert_eq!(old_root_of("/srv/myarchive/mapillary-b-1024/x.jpg"), None);
        assert_eq!(old_root_of("/srv/other/x.jpg"), None);
    }
}
