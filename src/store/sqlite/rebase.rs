//! Rebasing stored paths on SQLite, in one transaction on the writer.

use super::SqliteStore;
use crate::store::interface::*;
use crate::store::rebase::*;
use crate::store::sql;
use crate::store::*;
use sqlx::Row;
use std::path::Path;

impl Rebase for SqliteStore {
    async fn rebase_archive(&self, archive_dir: &Path) -> StoreResult<u64> {
        let root = archive_root(archive_dir)?;
        let mut tx = self.writer()?.begin().await?;
        let recorded: Option<String> = sqlx::query_scalar(sql::ARCHIVE_ROOT)
            .fetch_optional(&mut *tx)
            .await?;
        if recorded.as_deref() == Some(root.as_str()) {
            return Ok(0);
        }
        // A bucket does not move with the data dir: paths never rebase onto
        // or off one. A database with archived files stays with its archive.
        if in_bucket(&root) || recorded.as_deref().is_some_and(in_bucket) {
            // A file's row, or a tar's (whose rows a repair may have reset).
            let archived: Option<String> = sqlx::query_scalar(sql::ALL_PATHS)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(path) = archived {
                return Err(switch_refused(recorded, &path, &root));
            }
        }
        let mut rewritten = 0;
        for _ in 0..MAX_OLD_ROOTS {
            // A full scan, run only when the root changed.
            let stray = sqlx::query(sql::PATHS_OUTSIDE_ROOT)
                .bind(&root)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(stray) = stray else { break };
            let path: String = stray.try_get("path")?;
            let Some(old) = old_root_of(&path) else {
                tracing::warn!(%path, "an image path outside any archive layout; left as it is");
                break;
            };
            let result = sqlx::query(sql::REBASE_PATHS)
                .bind(old)
                .bind(&root)
                .execute(&mut *tx)
                .await?;
            tracing::info!(from = old, to = %root, rows = result.rows_affected(), "image paths rebased onto the archive directory");
            rewritten += result.rows_affected();
        }
        sqlx::query(sql::SET_ARCHIVE_ROOT)
            .bind(&root)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rewritten)
    }
}
