//! No-progress detection: jobs that have work but have not moved forward for
//! too long are marked stalled, with `last_error` saying why, and unmarked by
//! their next progress. Everything is read from the database (`progress_at`
//! is stamped by the counter triggers), so any process sees the same answer.

use super::{Store, StoreResult, on_postgres, to_u64};

/// A job that has work but has not progressed since the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallCandidate {
    pub job_id: i64,
    /// Images pending or in flight.
    pub waiting: u64,
    pub enumeration_complete: bool,
    /// Unix ms of the last progress.
    pub progress_at: i64,
    /// The job's own last error (e.g. of its listing), if any.
    pub last_error: Option<String>,
}

/// A candidate's columns: id, images waiting, `enumeration_complete`,
/// `progress_at`, `last_error`.
pub(super) type CandidateRow = (i64, i64, bool, i64, Option<String>);

/// A candidate from its columns, whichever database they came from.
pub(super) fn candidate_from_row(
    (job_id, waiting, enumeration_complete, progress_at, last_error): CandidateRow,
) -> StallCandidate {
    StallCandidate {
        job_id,
        waiting: to_u64(waiting),
        enumeration_complete,
        progress_at,
        last_error,
    }
}

impl Store {
    /// Active jobs with work left that have made no progress since
    /// `before_ms` and are not marked stalled yet.
    pub async fn stall_candidates(&self, before_ms: i64) -> StoreResult<Vec<StallCandidate>> {
        on_postgres!(self.stall_candidates(before_ms));
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

    /// The most recent error recorded on one of the job's waiting images:
    /// what held it back. Looks at the newest 1000 due rows only, so the
    /// cost stays flat however many images wait.
    pub async fn latest_image_error(&self, job_id: i64) -> StoreResult<Option<String>> {
        on_postgres!(self.latest_image_error(job_id));
        Ok(sqlx::query_scalar(
            "SELECT last_error FROM (SELECT last_error FROM images INDEXED BY images_due \
             WHERE job_id = ? AND state = 'pending' ORDER BY run_at DESC LIMIT 1000) \
             WHERE last_error IS NOT NULL LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(self.reader()?)
        .await?)
    }

    /// Marks the job stalled with `message` as its `last_error`, unless it
    /// progressed (or changed state) since the check. Returns whether it did.
    pub async fn mark_stalled(
        &self,
        job_id: i64,
        before_ms: i64,
        message: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        on_postgres!(self.mark_stalled(job_id, before_ms, message, now_ms));
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

    /// Unmarks every stalled job that has progressed since it was marked,
    /// clearing the stall message. Returns their ids.
    pub async fn clear_recovered_stalls(&self, now_ms: i64) -> StoreResult<Vec<i64>> {
        on_postgres!(self.clear_recovered_stalls(now_ms));
        Ok(sqlx::query_scalar(
            "UPDATE jobs SET stalled_at = NULL, last_error = NULL, updated_at = ? \
             WHERE stalled_at IS NOT NULL AND progress_at > stalled_at RETURNING id",
        )
        .bind(now_ms)
        .fetch_all(self.writer()?)
        .await?)
    }
}
