//! Rebasing stored paths on SQLite, in one transaction on the writer.

use super::SqliteStore;
use crate::store::interface::*;
use crate::store::rebase::*;
use crate::store::*;
use sqlx::Row;
use std::path::Path;

impl Rebase for SqliteStore {
    async fn rebase_archive(&self, archive_dir: &Path) -> StoreResult<u64> {
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
