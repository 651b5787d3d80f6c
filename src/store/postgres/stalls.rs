//! The [`crate::store::interface::Stalls`] half on PostgreSQL. `progress_at` and the counts are
//! read from `job_rows` (the job row's are not current).

use super::PgStore;
use crate::store::StoreResult;
use crate::store::interface::*;

impl Stalls for PgStore {
    crate::store::shared::shared_stalls!();

    /// PostgreSQL: The caller's `before_ms` becomes an age
    /// (`now_ms - before_ms`) before the database's now, as `stalled_at` is
    /// the database's now. A completion committing while this runs is not
    /// seen: the job may be marked just after progressing, and is unmarked
    /// by its next progress, as a job marked an instant earlier would be.
    async fn mark_stalled(
        &self,
        job_id: i64,
        before_ms: i64,
        message: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE jobs j SET stalled_at = t.now_ms, last_error = $2, updated_at = t.now_ms \
             FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t, job_rows r \
             WHERE j.id = $3 AND r.id = j.id AND j.stalled_at IS NULL \
               AND r.progress_at < t.now_ms - $4 \
               AND j.state IN ('queued', 'enumerating', 'downloading')",
        )
        .bind(self.at(now_ms))
        .bind(message)
        .bind(job_id)
        .bind(now_ms.saturating_sub(before_ms))
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// PostgreSQL: `progress_at` from `job_rows`, ids in order.
    async fn clear_recovered_stalls(&self, now_ms: i64) -> StoreResult<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "WITH cleared AS ( \
               UPDATE jobs j SET stalled_at = NULL, last_error = NULL, updated_at = t.now_ms \
               FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t, job_rows r \
               WHERE r.id = j.id AND j.stalled_at IS NOT NULL AND r.progress_at > j.stalled_at \
               RETURNING j.id) \
             SELECT id FROM cleared ORDER BY id",
        )
        .bind(self.at(now_ms))
        .fetch_all(self.pool())
        .await?)
    }
}
