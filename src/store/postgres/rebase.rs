//! The [`crate::store::interface::Rebase`] half on PostgreSQL. The stored paths are on the archive
//! root shared by every daemon; the rebase runs as on SQLite, one daemon at
//! a time.

use super::PgStore;
use crate::store::StoreResult;
use crate::store::interface::*;
use crate::store::rebase::{MAX_OLD_ROOTS, archive_root, in_bucket, old_root_of, switch_refused};
use crate::store::sql;
use std::path::Path;

/// The advisory-lock key (`pg_advisory_xact_lock(key1, key2)`) that
/// serialises rebases.
const REBASE_LOCK: (i32, i32) = (0x6d6c_6402, 0);

impl Rebase for PgStore {
    /// PostgreSQL: Daemons starting together take an advisory lock
    /// first, so one rebases and records the root and the others, reading
    /// `store_facts` after it commits, find nothing to do.
    async fn rebase_archive(&self, archive_dir: &Path) -> StoreResult<u64> {
        let root = archive_root(archive_dir)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(REBASE_LOCK.0)
            .bind(REBASE_LOCK.1)
            .execute(&mut *tx)
            .await?;
        let recorded: Option<String> = sqlx::query_scalar(sql::ARCHIVE_ROOT)
            .fetch_optional(&mut *tx)
            .await?;
        if recorded.as_deref() == Some(root.as_str()) {
            return Ok(0);
        }
        if in_bucket(&root) || recorded.as_deref().is_some_and(in_bucket) {
            let archived: Option<String> = sqlx::query_scalar(sql::ALL_PATHS)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(path) = archived {
                return Err(switch_refused(recorded, &path, &root));
            }
        }
        let mut rewritten = 0;
        for _ in 0..MAX_OLD_ROOTS {
            let stray: Option<String> = sqlx::query_scalar(sql::PATHS_OUTSIDE_ROOT)
                .bind(&root)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(path) = stray else { break };
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
