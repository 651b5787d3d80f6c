//! Image rows store full paths. The database lives in the data dir, so the
//! archive it describes is always `<data dir>/archive` as opened now: when
//! that differs from the root the rows begin with (the data dir was given
//! under another spelling, was relative before, or was moved), the paths are
//! rebased once, in one transaction, before anything reads them.

use super::{Store, StoreError, StoreResult, on_postgres};
use sqlx::Row;
use std::path::Path;

/// Distinct old roots one open rebases at most (a database written under
/// more spellings than this keeps the rest, which `verify` then reports).
pub(super) const MAX_OLD_ROOTS: usize = 16;

/// How a bucket archive's root begins (see [`crate::bucket`]).
const BUCKET_SCHEME: &str = "s3://";

impl Store {
    /// Makes every image path begin with `archive_dir`. Returns how many
    /// rows were rewritten. A no-op (one read) once the root is recorded.
    pub async fn rebase_archive(&self, archive_dir: &Path) -> StoreResult<u64> {
        on_postgres!(self.rebase_archive(archive_dir));
        let root = archive_root(archive_dir)?;
        let mut tx = self.writer()?.begin().await?;
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT value FROM store_facts WHERE key = 'archive_root'")
                .fetch_optional(&mut *tx)
                .await?;
        if recorded.as_deref() == Some(root.as_str()) {
            return Ok(0);
        }
        // A bucket does not move with the data dir: paths never rebase onto
        // or off one. A database with archived files stays with its archive.
        if in_bucket(&root) || recorded.as_deref().is_some_and(in_bucket) {
            // A file's row, or a tar's (whose rows a repair may have reset).
            let archived: Option<String> = sqlx::query_scalar(
                "SELECT path FROM images WHERE path IS NOT NULL \
                 UNION ALL SELECT collection || '/' || tar_name FROM packings LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(path) = archived {
                return Err(switch_refused(recorded, &path, &root));
            }
        }
        let mut rewritten = 0;
        for _ in 0..MAX_OLD_ROOTS {
            // A full scan, run only when the root changed.
            let stray = sqlx::query(
                "SELECT path FROM images WHERE path IS NOT NULL \
                   AND substr(path, 1, length(?1) + 1) <> ?1 || '/' LIMIT 1",
            )
            .bind(&root)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(stray) = stray else { break };
            let path: String = stray.try_get("path")?;
            let Some(old) = old_root_of(&path) else {
                tracing::warn!(%path, "an image path outside any archive layout; left as it is");
                break;
            };
            let result = sqlx::query(
                "UPDATE images SET path = ?2 || substr(path, length(?1) + 1) \
                 WHERE substr(path, 1, length(?1) + 1) = ?1 || '/'",
            )
            .bind(old)
            .bind(&root)
            .execute(&mut *tx)
            .await?;
            tracing::info!(from = old, to = %root, rows = result.rows_affected(), "image paths rebased onto the archive directory");
            rewritten += result.rows_affected();
        }
        sqlx::query(
            "INSERT INTO store_facts (key, value) VALUES ('archive_root', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(&root)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rewritten)
    }
}

impl Store {
    /// The archive root the paths were last rebased onto (by a daemon, or
    /// `download`), if any. Read-only: for `verify`, which maps stored
    /// paths onto its own root in memory instead of rewriting them.
    pub async fn recorded_archive_root(&self) -> StoreResult<Option<String>> {
        on_postgres!(self.recorded_archive_root());
        Ok(
            sqlx::query_scalar("SELECT value FROM store_facts WHERE key = 'archive_root'")
                .fetch_optional(self.reader()?)
                .await?,
        )
    }
}

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
