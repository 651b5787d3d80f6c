//! No-progress marks on SQLite.

use super::SqliteStore;
use crate::store::interface::*;
use crate::store::*;

impl Stalls for SqliteStore {
    crate::store::shared::shared_stalls!();

    async fn mark_stalled(
        &self,
        job_id: i64,
        before_ms: i64,
        message: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE jobs SET stalled_at = ?1, last_error = ?2, updated_at = ?1 \
             WHERE id = ?3 AND stalled_at IS NULL AND progress_at < ?4 \
               AND state IN ('queued', 'enumerating', 'downloading')",
        )
        .bind(now_ms)
        .bind(message)
        .bind(job_id)
        .bind(before_ms)
        .execute(self.writer()?)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn clear_recovered_stalls(&self, now_ms: i64) -> StoreResult<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "UPDATE jobs SET stalled_at = NULL, last_error = NULL, updated_at = ? \
             WHERE stalled_at IS NOT NULL AND progress_at > stalled_at RETURNING id",
        )
        .bind(now_ms)
        .fetch_all(self.writer()?)
        .await?)
    }
}
