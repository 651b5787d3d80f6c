//! PostgreSQL twin of `store::rebase`. The stored paths are on the archive
//! root shared by every daemon; the rebase runs as on SQLite, one daemon at
//! a time.

use super::PgStore;
use crate::store::StoreResult;
use crate::store::rebase::{MAX_OLD_ROOTS, archive_root, in_bucket, old_root_of, switch_refused};
use std::path::Path;

/// The advisory-lock key (`pg_advisory_xact_lock(key1, key2)`) that
/// serialises rebases.
const REBASE_LOCK: (i32, i32) = (0x6d6c_6402, 0);

impl PgStore {
    /// See the SQLite twin.
    pub async fn recorded_archive_root(&self) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_facts WHERE key = 'archive_root'")
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// See the SQLite twin. Daemons starting together take an advisory lock
    /// first, so one rebases and records the root and the others, reading
    /// `store_facts` after it commits, find nothing to do.
    pub async fn rebase_archive(&self, archive_dir: &Path) -> StoreResult<u64> {
        let root = archive_root(archive_dir)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(REBASE_LOCK.0)
            .bind(REBASE_LOCK.1)
            .execute(&mut *tx)
            .await?;
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT value FROM store_facts WHERE key = 'archive_root'")
                .fetch_optional(&mut *tx)
                .await?;
        if recorded.as_deref() == Some(root.as_str()) {
            return Ok(0);
        }
        if in_bucket(&root) || recorded.as_deref().is_some_and(in_bucket) {
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
            let stray: Option<String> = sqlx::query_scalar(
                "SELECT path FROM images WHERE path IS NOT NULL \
                   AND substr(path, 1, length($1) + 1) <> $1 || '/' LIMIT 1",
            )
            .bind(&root)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(path) = stray else { break };
            let Some(old) = old_root_of(&path) else {
                tracing::warn!(%path, "an image path outside any archive layout; left as it is");
                break;
            };
            let result = sqlx::query(
                "UPDATE images SET path = $2 || substr(path, length($1) + 1) \
                 WHERE substr(path, 1, length($1) + 1) = $1 || '/'",
            )
            .bind(old)
            .bind(&root)
            .execute(&mut *tx)
            .await?;
            tracing::info!(from = old, to = %root, rows = result.rows_affected(), "image paths rebased onto the archive directory");
            rewritten += result.rows_affected();
        }
        sqlx::query(
            "INSERT INTO store_facts (key, value) VALUES ('archive_root', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(&root)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rewritten)
    }
}
