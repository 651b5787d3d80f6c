//! No-progress marks on SQLite.

use super::SqliteStore;
use crate::store::interface::*;
use crate::store::stalls::*;
use crate::store::*;

impl Stalls for SqliteStore {
    async fn stall_candidates(&self, before_ms: i64) -> StoreResult<Vec<StallCandidate>> {
        let rows: Vec<CandidateRow> = sqlx::query_as(
            "SELECT id, n_pending + n_in_progress, enumeration_complete, progress_at, last_error \
             FROM jobs WHERE state IN ('queued', 'enumerating', 'downloading') \
               AND stalled_at IS NULL AND progress_at < ? \
               AND (n_pending + n_in_progress > 0 OR enumeration_complete = 0) ORDER BY id",
        )
        .bind(before_ms)
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows.into_iter().map(candidate_from_row).collect())
    }

    async fn latest_image_error(&self, job_id: i64) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT last_error FROM (SELECT last_error FROM images INDEXED BY images_due \
             WHERE job_id = ? AND state = 'pending' ORDER BY run_at DESC LIMIT 1000) \
             WHERE last_error IS NOT NULL LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(self.reader()?)
        .await?)
    }

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
